"""tfx-e2e: the Chicago taxi TFX pipeline, from a laptop to Dataflow, Vertex, Airflow and TF Serving.

Dependencies are pinned in requirements/lock.txt and installed by `make setup`
(tfx 1.16.0's metadata excludes Python 3.11, so pip cannot resolve it here).
"""
from setuptools import find_packages, setup

setup(
    name="tfx-e2e",
    version="0.1.0",
    # 3.11 on a developer machine (requirements/lock.txt), 3.10 in the TFX image (requirements/image-lock.txt).
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["pipeline*", "modules*", "runners*", "reports*", "schema*", "serving*", "monitoring*",
                                    "registry*", "console*"]),
    package_data={"": ["*.pbtxt", "*.yaml"], "console": ["templates/*.html"],
                  "reports": ["templates/*.j2"], "registry": ["templates/*.j2"]},
)

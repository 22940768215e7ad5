"""The Dockerfile (no Docker engine runs here): it references only files that exist and versions that
agree with the installed stack, and its lock (Python 3.10, the TFX image's) agrees with ours."""
import importlib.metadata
import re
from pathlib import Path

import tfx
import yaml
from packaging.requirements import Requirement

from pipeline.config import CONFIG_FILE, IMAGE_ROOT

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
# The stack the pipeline's components run on: the image must have exactly what is tested here.
SAME_IN_BOTH_LOCKS = ("tensorflow", "tensorflow-transform", "tensorflow-data-validation", "tensorflow-model-analysis",
                      "tfx-bsl", "ml-metadata", "tensorflow-metadata", "apache-beam", "tensorflow-serving-api",
                      "tensorflow-hub", "keras-tuner", "numpy", "pyarrow", "scikit-learn", "google-cloud-aiplatform",
                      "google-cloud-bigquery", "dill")


def _instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _args():
    return dict(rest.split("=", 1) for op, rest in _instructions() if op == "ARG" and "=" in rest)


def _pins(path):
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", path.read_text(), re.M))


def _lock_python(path):
    return re.search(r"uv pip compile --python-version (\S+)", path.read_text()).group(1)


def test_base_image_is_the_official_tfx_image_of_the_installed_version():
    args = _args()
    froms = [rest.split()[0] for op, rest in _instructions() if op == "FROM"]
    assert froms[-1] == "gcr.io/tfx-oss-public/tfx:${TFX_VERSION}"  # the final stage
    assert args["TFX_VERSION"] == tfx.__version__ == "1.16.0"
    assert _pins(REPO / "requirements/tfx.txt") == {"tfx": tfx.__version__, "ml-pipelines-sdk": tfx.__version__}


def test_beam_boot_comes_from_the_sdk_image_of_the_locked_beam():
    args = _args()
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam" in DOCKERFILE.read_text()
    assert args["BEAM_VERSION"] == _pins(REPO / "requirements/image-lock.txt")["apache-beam"]
    assert args["BEAM_VERSION"] == importlib.metadata.version("apache-beam")
    assert args["PYTHON_VERSION"] == _lock_python(REPO / "requirements/image-lock.txt") == "3.10"
    assert _lock_python(REPO / "requirements/lock.txt") == "3.11"


def test_every_copied_path_exists():
    copies = [rest.split() for op, rest in _instructions() if op == "COPY"]
    sources = [source for parts in copies if not parts[0].startswith("--from") for source in parts[:-1]]
    assert {"requirements/image-lock.txt", "requirements/tfx.txt", "setup.py", "pipeline", "modules",
            "schema"} <= set(sources)
    # Every package setup.py installs is in the image (the editable install there finds it in /pipeline).
    packages = re.search(r"find_packages\(include=\[(.*?)\]", (REPO / "setup.py").read_text(), re.S).group(1)
    assert {p.strip(' "*\n') for p in packages.split(",")} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
    # What the vertex profile reads inside the image is copied to that path.
    in_image = yaml.safe_load(CONFIG_FILE.read_text())["profiles"]["vertex"]["schema_path"]
    relative = Path(in_image).relative_to(IMAGE_ROOT)
    assert (REPO / relative).is_file() and relative.parts[0] in sources
    assert ["WORKDIR", IMAGE_ROOT.rstrip("/")] in [[op, rest.strip()] for op, rest in _instructions()]

def _hashed_pins(path):
    """{name: (version, [sha256, ...])} of a `uv pip compile --generate-hashes` file."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)(.*)$", line)
        if match:
            pins[match.group(1)] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", match.group(3)))
    return pins


def test_installs_pin_the_tfx_version_and_check_every_hash():
    """pip refuses any file whose sha256 is not in the lock: the image lock, then tfx and ml-pipelines-sdk."""
    runs = [rest for op, rest in _instructions() if op == "RUN"]
    installs = [part.strip() for run in runs for part in run.split("&&") if "pip install" in part]
    assert installs[:2] == [
        "python -m pip install --no-cache-dir --require-hashes --no-deps -r requirements/image-lock.txt",
        "python -m pip install --no-cache-dir --require-hashes --no-deps -r requirements/tfx.txt"]
    # The only install without hashes is the project itself, from the build context.
    assert all("--require-hashes" in install or install.endswith(" -e .") for install in installs)
    tfx_pins = _hashed_pins(REPO / "requirements/tfx.txt")
    assert {name: version for name, (version, _) in tfx_pins.items()} == {
        "tfx": _args()["TFX_VERSION"], "ml-pipelines-sdk": _args()["TFX_VERSION"]}
    assert _pins(REPO / "requirements/tfx.in") == {"tfx": tfx.__version__, "ml-pipelines-sdk": tfx.__version__}


def test_every_lock_pins_hashes():
    """make setup and the Dockerfile install with --require-hashes: every pin carries its files' sha256 (regenerated
    by `make lock`, whose compile commands the files' headers record)."""
    for name in ("lock.txt", "image-lock.txt", "tfx.txt", "uv.txt"):
        path = REPO / "requirements" / name
        pins = _hashed_pins(path)
        assert pins and all(hashes for _, hashes in pins.values()), name
        assert len(pins) == len(_pins(path)), name  # every pinned line was parsed
        assert "--generate-hashes" in path.read_text().splitlines()[1], name
    makefile = (REPO / "Makefile").read_text()
    assert "uv pip sync --require-hashes" in makefile
    assert "--require-hashes --no-deps --ignore-requires-python -r requirements/tfx.txt" in makefile
    assert "--require-hashes --no-deps -r requirements/uv.txt" in makefile
    assert _hashed_pins(REPO / "requirements/uv.txt")["uv"][0] == _pins(REPO / "requirements/uv.in")["uv"]


def test_the_image_runs_as_a_non_root_user():
    """The final stage ends as a numeric, non-zero uid (Kubernetes' runAsNonRoot can only verify a number) that the
    image creates, with a home of its own, after every install; what it runs is made world-readable."""
    instructions = _instructions()
    final = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    stage = instructions[final:]
    users = [rest.strip() for op, rest in stage if op == "USER"]
    assert users and re.fullmatch(r"\d+:\d+", users[-1]), users
    uid, gid = users[-1].split(":")
    assert int(uid) > 0 and int(gid) > 0
    last_user = max(i for i, (op, _) in enumerate(stage) if op == "USER")
    assert all(op not in ("RUN", "COPY") for op, _ in stage[last_user:])  # nothing runs as root after it
    runs = " ".join(rest for op, rest in stage if op == "RUN")
    assert f"useradd --uid {uid} --user-group --create-home --home-dir /home/pipeline" in runs
    assert ["ENV", "HOME=/home/pipeline"] in [[op, rest.strip()] for op, rest in stage]
    # Copied files keep the checkout's modes (a umask of 077 would leave them root-only): made readable after the
    # last COPY into /pipeline.
    chmod = next(i for i, (op, rest) in enumerate(stage) if op == "RUN" and "chmod -R a+rX /pipeline" in rest)
    assert all(not (op == "COPY" and not rest.startswith("--from")) for op, rest in stage[chmod:])


def test_the_two_locks_agree_on_the_stack():
    dev, image = _pins(REPO / "requirements/lock.txt"), _pins(REPO / "requirements/image-lock.txt")
    for name in SAME_IN_BOTH_LOCKS:
        assert image[name] == dev[name], name
    # The image carries no developer tools.
    assert not {"apache-airflow", "pytest", "ruff"} & set(image)


def test_image_lock_satisfies_every_requirement_of_tfx():
    """The image re-installs tfx with --no-deps: the lock must meet every requirement tfx declares."""
    image = _pins(REPO / "requirements/image-lock.txt")
    environment = {"python_version": "3.10", "python_full_version": "3.10.0", "extra": "kfp"}
    checked = 0
    for line in importlib.metadata.requires("tfx"):
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        if requirement.name == "ml-pipelines-sdk":  # installed beside tfx, from the Dockerfile
            continue
        assert requirement.name in image, requirement
        assert requirement.specifier.contains(image[requirement.name], prereleases=True), (requirement, image[requirement.name])
        checked += 1
    assert checked >= 30


def test_build_context_leaves_out_the_local_environment():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "output", "build", ".git"} <= {entry.strip("/") for entry in ignored}

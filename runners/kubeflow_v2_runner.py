"""Compiles the pipeline for Vertex AI Pipelines and Kubeflow Pipelines 2 (one pipeline-spec JSON both accept).

    TFX_E2E_CONFIG=my-gcp.yaml python -m runners.kubeflow_v2_runner      (make compile-vertex)

Writes build/<pipeline_name>.json; runners/submit.py sends it to Vertex AI or a KFP 2 endpoint.
"""
import os

from pipeline.config import REPO_ROOT
from runners.harness import load_or_exit

COMPILED_DIR = REPO_ROOT / "build"


def compiled_path(pipeline_name: str) -> str:
    return str(COMPILED_DIR / f"{pipeline_name}.json")


def main() -> None:
    config = load_or_exit(default_profile="vertex")
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_v2

    from pipeline.pipeline import create_pipeline

    path = compiled_path(config.pipeline_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runner = kfp_v2.KubeflowV2DagRunner(
        config=kfp_v2.KubeflowV2DagRunnerConfig(default_image=config.image),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    runner.run(create_pipeline(config))
    print(f"compiled {path} (pipeline root {config.pipeline_root}, image {config.image})")


if __name__ == "__main__":
    main()

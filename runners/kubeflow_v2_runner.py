"""Compiles the pipeline for Vertex AI Pipelines and Kubeflow Pipelines 2 (one pipeline-spec JSON both accept).

    TFX_E2E_CONFIG=my-gcp.yaml python -m runners.kubeflow_v2_runner      (make compile-vertex)

Writes build/<pipeline_name>.json; runners/submit.py sends it to Vertex AI or a KFP 2 endpoint.

Retries (continuous.retries): TFX 1.16's KFP v2 compiler ignores a node's execution options
(`with_node_execution_options(NodeExecutionOptions(max_execution_retries=...))` is read by TFX's own
orchestrators only; nothing under tfx/orchestration/kubeflow/v2/ reads it), so the retry policy is written
into the compiled spec here: every task's PipelineTaskSpec.retryPolicy (max retry count, backoff duration,
factor 2, maximum backoff), the field KFP's own `set_retry` compiles to. The pipeline spec has no per-task
timeout field, so `task_timeout_seconds` applies to Airflow only.
"""
import json
import os

from pipeline.config import REPO_ROOT
from runners.harness import load_or_exit

COMPILED_DIR = REPO_ROOT / "build"


def compiled_path(pipeline_name: str) -> str:
    return str(COMPILED_DIR / f"{pipeline_name}.json")


def retry_policy(retries) -> dict | None:
    """A KFP pipeline-spec RetryPolicy (JSON form) from continuous.retries; None for a single attempt."""
    if retries.attempts <= 1:
        return None
    return {"maxRetryCount": retries.attempts - 1, "backoffDuration": f"{retries.initial_delay_seconds:g}s",
            "backoffFactor": 2.0, "backoffMaxDuration": f"{retries.max_delay_seconds:g}s"}


def producer_fixes(tasks: dict) -> int:
    """Points each task-output parameter at its producer's task name. TFX 1.16's compiler writes
    `<producer>_task` for a dynamic execution property (ExampleGen's range config from 'SpanRange', TFX's own
    expected specs do the same), but a pipeline spec names a producer by its key under root.dag.tasks, as KFP's
    own compiler does; returns how many references were fixed."""
    fixed = 0
    for task in tasks.values():
        for parameter in task.get("inputs", {}).get("parameters", {}).values():
            output = parameter.get("taskOutputParameter")
            if output and output["producerTask"] not in tasks and output["producerTask"].removesuffix("_task") in tasks:
                output["producerTask"] = output["producerTask"].removesuffix("_task")
                fixed += 1
    return fixed


def finish_spec(path: str, retries) -> None:
    """Rewrites the compiled PipelineJob JSON at `path`: producer references by task name, and the retry policy
    (continuous.retries) on every task."""
    with open(path) as f:
        job = json.load(f)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    producer_fixes(tasks)
    policy = retry_policy(retries)
    for task in tasks.values() if policy else ():
        task["retryPolicy"] = dict(policy)
    with open(path, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)


def main() -> None:
    config = load_or_exit(default_profile="vertex")
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_v2

    from pipeline.pipeline import create_pipeline

    path = compiled_path(config.pipeline_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    runner = kfp_v2.KubeflowV2DagRunner(
        config=kfp_v2.KubeflowV2DagRunnerConfig(default_image=config.image),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    from pipeline import span_parameter

    # The compiler drops a RuntimeParameter's default; the job's runtimeConfig carries it instead.
    defaults = ({span_parameter.PARAMETER: span_parameter.NEWEST,
                 span_parameter.REASON_PARAMETER: span_parameter.DEFAULT_REASON}
                if span_parameter.takes_span(config) else None)
    runner.run(create_pipeline(config), parameter_values=defaults)
    finish_spec(path, config.continuous.retries)
    print(f"compiled {path} (pipeline root {config.pipeline_root}, image {config.image})")


if __name__ == "__main__":
    main()

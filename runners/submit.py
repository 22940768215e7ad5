"""Submits the compiled pipeline (runners/kubeflow_v2_runner.py) to Vertex AI Pipelines or a KFP 2 endpoint.

    python -m runners.submit vertex [--schedule]      project, region, service account, cron from the config
    python -m runners.submit kfp --host https://...   an open-source Kubeflow Pipelines 2 endpoint

--template takes another compiled JSON (Vertex: also a gs:// URI, as cloudbuild.yaml uploads it).
--schedule replaces the pipeline's schedule (same display name) so that it runs the new template.

Credentials come from the environment (gcloud auth / workload identity), never from the configuration.
"""
import argparse
import os
import sys

from pipeline.config import Config
from runners.harness import load_or_exit
from runners.kubeflow_v2_runner import compiled_path
from runners.why import REASONS


def _why(config: Config, reason: str, parameter_values: dict | None) -> tuple[dict, dict]:
    """(parameter values, labels) that record why the run ran: the `reason` parameter where the pipeline takes
    one (pipeline/span_parameter.py: Vertex keeps a run's parameters in its ML Metadata), and job labels."""
    from pipeline import span_parameter

    values = dict(parameter_values or {})
    labels = {"tfx-e2e-reason": reason}
    if span_parameter.takes_span(config):
        values.setdefault(span_parameter.REASON_PARAMETER, reason)
        if span_parameter.PARAMETER in values:
            labels["tfx-e2e-span"] = str(values[span_parameter.PARAMETER])
    return values, labels


def submit_vertex(config: Config, template_path: str, schedule: bool, aiplatform=None,
                  parameter_values: dict | None = None, job_id: str | None = None, reason: str | None = None):
    """Creates a Vertex AI PipelineJob from the JSON; with `schedule`, a recurring schedule on vertex.schedule_cron.
    `parameter_values` (runtime parameters) and `job_id` (Vertex refuses a second job with the same id) are
    passed when given (runners/vertex_trigger.py: the span, and an id per span). `reason` (default: schedule or
    manual) is recorded as the `reason` parameter and the job label tfx-e2e-reason."""
    if aiplatform is None:
        from google.cloud import aiplatform
    values, labels = _why(config, reason or ("schedule" if schedule else "manual"), parameter_values)
    extra = {"labels": labels}
    if values:
        extra["parameter_values"] = values
    if job_id:
        extra["job_id"] = job_id
    job = aiplatform.PipelineJob(
        display_name=config.pipeline_name,
        template_path=template_path,
        pipeline_root=config.pipeline_root,
        project=config.gcp.project,
        location=config.gcp.region,
        enable_caching=config.enable_cache,
        **extra,
    )
    service_account = config.gcp.service_account or None
    if schedule:
        if not config.vertex.schedule_cron:
            raise SystemExit("error: --schedule needs vertex.schedule_cron in the configuration")
        display_name = f"{config.pipeline_name}-schedule"
        # A schedule's pipeline spec cannot be updated in place: the new one replaces the old.
        for old in aiplatform.PipelineJobSchedule.list(filter=f'display_name="{display_name}"',
                                                       project=config.gcp.project, location=config.gcp.region):
            old.delete()
        return job.create_schedule(cron=config.vertex.schedule_cron, display_name=display_name,
                                   service_account=service_account)
    job.submit(service_account=service_account)
    return job


def submit_kfp(config: Config, package_path: str, host: str, kfp_client=None, reason: str = "manual"):
    """Starts a run on a Kubeflow Pipelines 2 endpoint (the same JSON Vertex takes)."""
    if kfp_client is None:
        import kfp
        kfp_client = kfp.Client(host=host)
    arguments, _ = _why(config, reason, None)
    return kfp_client.create_run_from_pipeline_package(
        package_path, arguments=arguments, run_name=config.pipeline_name, experiment_name=config.pipeline_name,
        enable_caching=config.enable_cache)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["vertex", "kfp"])
    parser.add_argument("--schedule", action="store_true", help="Vertex: create a recurring schedule instead")
    parser.add_argument("--host", help="KFP: the endpoint URL")
    parser.add_argument("--template", help="the compiled JSON (default: build/<pipeline>.json; Vertex: gs:// too)")
    parser.add_argument("--reason", choices=sorted(REASONS), help="why the run runs (default: manual; schedule "
                        "with --schedule)")
    args = parser.parse_args(argv)
    config = load_or_exit(default_profile="vertex")
    path = args.template or compiled_path(config.pipeline_name)
    if args.target == "kfp" and path.startswith("gs://"):
        sys.exit("error: kfp takes a local --template file")
    if not path.startswith("gs://") and not os.path.exists(path):
        sys.exit(f"error: {path} not found; compile first: make compile-vertex")
    if args.target == "vertex":
        result = submit_vertex(config, path, args.schedule, reason=args.reason)
    else:
        if not args.host:
            sys.exit("error: kfp needs --host (the Kubeflow Pipelines endpoint)")
        result = submit_kfp(config, path, args.host, reason=args.reason or "manual")
    print(f"submitted {path}: {result}")


if __name__ == "__main__":
    main()

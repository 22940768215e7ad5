"""Every runner builds its pipeline: Vertex AI / KFP 2 compiles to a pipeline spec the protos accept,
whose executors and module functions import here; the dataflow profile carries Dataflow's Beam args;
BeamDagRunner runs end to end on the slice to a pushed model."""
import datetime
import importlib
import json
import os
import re

import pytest
from conftest import SMALL_DATA, PipelineRun
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.config import ConfigError, load_config
from pipeline.versions import served_versions
from runners import kubeflow_v2_runner

IMAGE = "europe-west4-docker.pkg.dev/tfx-e2e-test/tfx-e2e/pipeline:abc123"
GCP_OVERLAY = f"""
output_root: gs://tfx-e2e-test-bucket/tfx-e2e
gcp: {{project: tfx-e2e-test, region: europe-west4, service_account: pipelines@tfx-e2e-test.iam.gserviceaccount.com}}
dataflow: {{temp_location: gs://tfx-e2e-test-bucket/tmp, staging_location: gs://tfx-e2e-test-bucket/staging}}
image: {IMAGE}
"""
COMPONENTS = {"ExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "previous_statistics_resolver",
              "DataGate", "Transform", "Tuner", "Trainer", "Evaluator", "Pusher"}
DATAFLOW_ARGS = ["--runner=DataflowRunner", "--project=tfx-e2e-test", "--region=europe-west4",
                 "--temp_location=gs://tfx-e2e-test-bucket/tmp", "--staging_location=gs://tfx-e2e-test-bucket/staging",
                 f"--sdk_container_image={IMAGE}"]


def _compile(tmp_path, monkeypatch, profile, extra=""):
    overlay = tmp_path / "gcp.yaml"
    overlay.write_text(GCP_OVERLAY + extra)
    monkeypatch.setenv("TFX_E2E_CONFIG", str(overlay))
    monkeypatch.setenv("TFX_E2E_PROFILE", profile)
    monkeypatch.setattr(kubeflow_v2_runner, "COMPILED_DIR", tmp_path / "build")
    kubeflow_v2_runner.main()
    with open(tmp_path / "build" / "chicago-taxi.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def vertex_dataflow_job(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _compile(tmp_path_factory.mktemp("kfp"), monkeypatch, "vertex,dataflow")


def _executors(job):
    return job["pipelineSpec"]["deploymentSpec"]["executors"]


def test_compiled_json_is_a_pipeline_job_with_a_task_per_component(vertex_dataflow_job):
    job = json_format.ParseDict(vertex_dataflow_job, pipeline_spec_pb2.PipelineJob())  # unknown fields fail
    spec = json_format.ParseDict(vertex_dataflow_job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert job.runtime_config.gcs_output_directory == "gs://tfx-e2e-test-bucket/tfx-e2e/pipelines/chicago-taxi"
    assert spec.pipeline_info.name == "chicago-taxi"
    tasks = set(spec.root.dag.tasks)
    assert COMPONENTS <= tasks
    assert {t for t in tasks - COMPONENTS if not t.startswith("latest_blessed_model_resolver")} == set()


def test_every_task_retries_with_backoff_from_continuous_retries(vertex_dataflow_job):
    """continuous.retries (2 attempts, 60 s doubling up to 600 s by default) becomes each task's retryPolicy."""
    spec = json_format.ParseDict(vertex_dataflow_job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    policies = {name: task.retry_policy for name, task in spec.root.dag.tasks.items()}
    assert COMPONENTS <= set(policies)
    for policy in policies.values():
        assert (policy.max_retry_count, policy.backoff_duration.seconds, policy.backoff_factor,
                policy.backoff_max_duration.seconds) == (1, 60, 2.0, 600)


def test_every_container_runs_our_image(vertex_dataflow_job):
    containers = [e["container"] for e in _executors(vertex_dataflow_job).values() if "container" in e]
    assert {c["image"] for c in containers} == {IMAGE}
    # The image's entrypoint is Beam's worker boot (Dockerfile): every KFP container must give its own command.
    assert all(c["command"][:2] == ["python", "-m"] for c in containers)


def test_every_executor_class_imports_here(vertex_dataflow_job):
    """What Vertex runs is `--executor_class_path X`: each must import from the installed package."""
    paths = set()
    for executor in _executors(vertex_dataflow_job).values():
        args = executor.get("container", {}).get("args", [])
        if "--executor_class_path" in args:
            paths.add(args[args.index("--executor_class_path") + 1])
    assert "pipeline.pusher.AtomicPushExecutor" in paths
    assert "tfx.extensions.google_cloud_big_query.example_gen.executor.Executor" in paths
    assert "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor" in paths
    for path in paths:
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), path


def test_module_functions_are_dotted_paths_that_import(vertex_dataflow_job):
    text = json.dumps(vertex_dataflow_job)
    for path in ("modules.preprocessing.preprocessing_fn", "modules.tuning.tuner_fn", "modules.training.run_fn"):
        assert f'\\"{path}\\"' in text or f'"{path}"' in text, path
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))
    assert "module_file" not in text.replace('"module_file": null', "")


def test_dataflow_args_reach_beam_components(vertex_dataflow_job):
    transform = _executors(vertex_dataflow_job)["Transform_executor"]["container"]["args"]
    for arg in DATAFLOW_ARGS:
        assert arg in transform, arg


def test_vertex_training_requests_a_gpu(vertex_dataflow_job):
    trainer = json.dumps(vertex_dataflow_job["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"])
    for fragment in ("ai_platform_enable_vertex", "europe-west4", "NVIDIA_TESLA_T4", IMAGE, "n1-standard-8"):
        assert fragment in trainer, fragment
    tuner = json.dumps(vertex_dataflow_job["pipelineSpec"]["root"]["dag"]["tasks"]["Tuner"])
    for fragment in ("ai_platform_enable_vertex", "ai_platform_tuning_args", "tuner_trials", "NVIDIA_TESLA_T4"):
        assert fragment in tuner, fragment


DAY = 86400
WINDOW_QUERY = """
continuous: {window_spans: 4}
vertex:
  bigquery_query: >-
    SELECT * FROM `p.d.trips` WHERE trip_start_timestamp >= TIMESTAMP_SECONDS(@window_begin_timestamp)
    AND trip_start_timestamp < TIMESTAMP_SECONDS(@span_end_timestamp)
"""


def _spec(job):
    return json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


def tasks_reason(spec):
    return spec.root.dag.tasks["SpanRange"].inputs.parameters["reason"].component_input_parameter


def _takes_span_from_span_range(job):
    """The pipeline declares the runtime parameter `span` (default -1, the newest); 'SpanRange' reads it and
    ExampleGen's range config is SpanRange's output, referenced by a task name of the DAG ExampleGen depends on."""
    spec = _spec(job)
    assert spec.root.input_definitions.parameters["span"].type == pipeline_spec_pb2.PrimitiveType.INT
    runtime = json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob()).runtime_config
    assert runtime.parameters["span"].int_value == -1
    assert runtime.parameters["reason"].string_value == "schedule"
    assert tasks_reason(spec) == "reason"
    tasks = spec.root.dag.tasks
    assert tasks["SpanRange"].inputs.parameters["span"].component_input_parameter == "span"
    producer = tasks["ExampleGen"].inputs.parameters["range_config"].task_output_parameter
    assert (producer.producer_task, producer.output_parameter_key) == ("SpanRange", "range_config")
    assert "SpanRange" in tasks["ExampleGen"].dependent_tasks
    for name, task in tasks.items():  # every producer reference names a task (TFX writes '<id>_task' otherwise)
        for parameter in task.inputs.parameters.values():
            if parameter.HasField("task_output_parameter"):
                assert parameter.task_output_parameter.producer_task in tasks, name


def _example_gen_pattern(spec):
    input_config = spec.root.dag.tasks["ExampleGen"].inputs.parameters["input_config"].runtime_value.constant_value
    return json.loads(input_config.string_value)["splits"][0]["pattern"]


def test_vertex_bigquery_window_of_days_ends_at_the_span_parameter(tmp_path, monkeypatch):
    """On Vertex the window is BigQuery's: the query starts at @window_begin_timestamp, compiled into TFX's span
    placeholders, so the run given span S (a day) reads days S-3..S; TFX's own query filling proves the dates."""
    from tfx.components.example_gen import utils

    from pipeline.span_parameter import range_config_json

    job = _compile(tmp_path, monkeypatch, "vertex", WINDOW_QUERY)
    _takes_span_from_span_range(job)
    spec = _spec(job)
    # Warm start (continuous.warm_start): the Trainer's base_model is the resolver's latest Model (the compiler
    # takes LatestArtifactStrategy).
    base_model = spec.root.dag.tasks["Trainer"].inputs.artifacts["base_model"].task_output_artifact
    assert base_model.producer_task == "warm_start_model_resolver"
    span = 16891  # 2016-03-31
    query = utils.get_query_for_span(_example_gen_pattern(spec), span)
    begin, minus, end = (int(n) for n in re.search(r"TIMESTAMP_SECONDS\(\((\d+) - (\d+)\)\).*TIMESTAMP_SECONDS\((\d+)\)",
                                                    query).groups())
    assert (begin - minus, end) == ((span - 3) * DAY, (span + 1) * DAY)
    assert json.loads(range_config_json(span, bigquery=True)) == {
        "static_range": {"start_span_number": span, "end_span_number": span}}
    # No span given (a schedule): yesterday, the day a daily schedule trains on.
    assert json.loads(range_config_json(-1, bigquery=True, today=datetime.date(2016, 4, 1)))["static_range"][
        "start_span_number"] == span


def test_vertex_csv_span_folders_read_the_span_parameter(tmp_path, monkeypatch):
    """CSV span folders on Cloud Storage (continuous.span_folders): ExampleGen reads span-{SPAN}/*.csv, the span
    being the run's parameter (the newest folder without one)."""
    from pipeline.span_parameter import range_config_json

    job = _compile(tmp_path, monkeypatch, "vertex", """
example_gen: csv
data_root: gs://tfx-e2e-test-bucket/landing/taxi
continuous: {span_folders: span}
""")
    _takes_span_from_span_range(job)
    spec = _spec(job)
    assert _example_gen_pattern(spec) == "span-{SPAN}/*.csv"
    assert range_config_json(-1, bigquery=False) == ""


@pytest.mark.parametrize("extra, message", [
    ("continuous: {window_spans: 2}\n", "a vertex.bigquery_query that starts the window at @window_begin_timestamp"),
    ("example_gen: csv\ncontinuous: {window_spans: 2, span_folders: span}\n", "needs example_gen: bigquery"),
    ("continuous: {span_folders: days}\n", "continuous.span_folders: must be '', 'span' or 'date', got 'days'"),
])
def test_vertex_window_errors(tmp_path, extra, message):
    (tmp_path / "o.yaml").write_text(GCP_OVERLAY + extra)
    with pytest.raises(ConfigError) as error:
        load_config(env={"TFX_E2E_PROFILE": "vertex", "TFX_E2E_CONFIG": str(tmp_path / "o.yaml")}, check_data=False)
    assert message in str(error.value)


def test_vertex_without_dataflow_runs_beam_in_the_container(tmp_path, monkeypatch):
    job = _compile(tmp_path, monkeypatch, "vertex")
    assert "DataflowRunner" not in json.dumps(job)


def test_dataflow_profile_with_the_local_runner(tmp_path):
    overlay = tmp_path / "gcp.yaml"
    overlay.write_text(GCP_OVERLAY.replace("output_root: gs://tfx-e2e-test-bucket/tfx-e2e\n", ""))
    config = load_config(env={"TFX_E2E_PROFILE": "local,dataflow", "TFX_E2E_CONFIG": str(overlay),
                              "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")})  # create_pipeline makes its metadata dir
    assert config.beam_args[:len(DATAFLOW_ARGS) - 1] == DATAFLOW_ARGS[:-1]
    assert "--service_account_email=pipelines@tfx-e2e-test.iam.gserviceaccount.com" in config.beam_args
    from pipeline.pipeline import create_pipeline
    assert create_pipeline(config).beam_pipeline_args == config.beam_args


@pytest.mark.parametrize("overlay, message", [
    (GCP_OVERLAY.replace("image: " + IMAGE, ""), "image: required by training: vertex"),
    (GCP_OVERLAY.replace("output_root: gs://tfx-e2e-test-bucket/tfx-e2e", "output_root: /tmp/x"),
     "output_root: must be a gs:// path for Vertex AI"),
    (GCP_OVERLAY.replace("project: tfx-e2e-test,", "project: '',"), "gcp.project: required by"),
])
def test_vertex_profile_errors(tmp_path, overlay, message):
    (tmp_path / "o.yaml").write_text(overlay)
    with pytest.raises(ConfigError) as error:
        load_config(env={"TFX_E2E_PROFILE": "vertex", "TFX_E2E_CONFIG": str(tmp_path / "o.yaml")})
    assert message in str(error.value)


@pytest.mark.e2e
def test_beam_dag_runner_end_to_end(tmp_path):
    from runners.beam_runner import beam_dag_runner

    run = PipelineRun(tmp_path, SMALL_DATA, overlay="tuner: {enabled: false}\n"
                      "trainer: {train_steps: 100, eval_steps: 10, batch_size: 64}\nevaluator: {auc_lower_bound: 0.6}\n")
    run.env["TFX_E2E_PROFILE"] = "beam"
    assert run(make_runner=beam_dag_runner) == 0
    config = run.config()
    assert config.beam_args == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    versions = served_versions(config.serving_model_dir)
    assert len(versions) == 1
    assert os.path.isfile(os.path.join(config.serving_model_dir, str(versions[0]), "saved_model.pb"))

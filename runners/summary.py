"""The end-of-run summary, read back from ML Metadata: each component's status and duration,
anomalies, metrics against thresholds with the blessing decision, and what was pushed."""
import collections
import datetime
import os
import sys
import time
import uuid
from typing import NamedTuple

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants
from tfx.types import artifact_utils

import reports
from monitoring.monitor import report_directory as monitoring_directory
from pipeline import drift, evaluation, gate
from pipeline import metadata as metadata_store
from pipeline.config import Config
from pipeline.pusher import ALREADY_SERVED
from registry.graph import RUN_CONTEXT_TYPES, launcher_component_id
from reports.html import write_evaluation, write_statistics

_STATE = {
    metadata_store_pb2.Execution.COMPLETE: "ran",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.FAILED: "FAILED",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.CANCELED: "canceled",
}


class NodeRun(NamedTuple):
    node_id: str
    status: str
    seconds: float
    inputs: dict[str, list[metadata_store_pb2.Artifact]]
    outputs: dict[str, list[metadata_store_pb2.Artifact]]
    started: float = 0.0  # epoch seconds


def open_store(config: Config) -> mlmd.MetadataStore:
    return metadata_store.open_store(config, readonly=True)


def new_run_id() -> str:
    """A pipeline run id no other run has, on any machine sharing the store: LocalDagRunner's (the start time),
    made unique."""
    return f"{datetime.datetime.now().isoformat()}-{uuid.uuid4().hex[:8]}"


def run_pipeline(runner, tfx_pipeline, run_id: str) -> None:
    """Runs `tfx_pipeline` with `runner` (LocalDagRunner, BeamDagRunner) as the pipeline run `run_id`: the name of
    its `pipeline_run` context in ML Metadata, where the summary finds this run and no other one. The runner
    would otherwise name the run by the time it starts, unknown here, and runs sharing a store (a database
    server) could not tell theirs apart."""
    from tfx.dsl.compiler import compiler
    from tfx.orchestration.portable import runtime_parameter_utils

    # What runner.run() compiles; it would also package module_file components' pip dependencies, which a pipeline
    # of dotted-path modules (pipeline/pipeline.py) does not have.
    ir = compiler.Compiler().compile(tfx_pipeline)
    runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    runner.run_with_ir(ir)


def latest_run(store: mlmd.MetadataStore, config: Config, run_id: str | None = None) -> dict[str, NodeRun]:
    """node id -> NodeRun for the pipeline run `run_id` (its `pipeline_run` context's name, or the `run` context's,
    `<pipeline>.<DAG run id>`, that TFX's Airflow launcher files a DAG run's executions under), else for this
    pipeline's newest run; {} when there is none."""
    node_prefix = f"{config.pipeline_name}."
    node_contexts = {c.id: c.name[len(node_prefix):]
                     for c in store.get_contexts_by_type(constants.NODE_CONTEXT_TYPE_NAME)
                     if c.name.startswith(node_prefix)}
    if run_id is not None:
        run = next(filter(None, (store.get_context_by_type_and_name(kind, run_id) for kind in RUN_CONTEXT_TYPES)),
                   None)
    else:
        pipeline = store.get_context_by_type_and_name(constants.PIPELINE_CONTEXT_TYPE_NAME, config.pipeline_name)
        runs = store.get_children_contexts_by_context(pipeline.id) if pipeline else []
        run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id), default=None)
    if run is None:
        return {}
    executions = sorted(store.get_executions_by_context(run.id), key=lambda x: x.id)  # a retry's after its failure
    nodes = {}
    for execution in executions:
        node_ids = [node_contexts[c.id] for c in store.get_contexts_by_execution(execution.id)
                    if c.id in node_contexts] or list(filter(None, [launcher_component_id(execution)]))
        if not node_ids:
            continue
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        by_direction = {"inputs": collections.defaultdict(list), "outputs": collections.defaultdict(list)}
        for event in events:
            direction = "inputs" if event.type == metadata_store_pb2.Event.INPUT else "outputs"
            by_direction[direction][event.path.steps[0].key].append(artifacts[event.artifact_id])
        nodes[node_ids[0]] = NodeRun(
            node_id=node_ids[0],
            status=_STATE.get(execution.last_known_state, "unknown"),
            seconds=(execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000,
            inputs=dict(by_direction["inputs"]),
            outputs=dict(by_direction["outputs"]),
            started=execution.create_time_since_epoch / 1000,
        )
    return nodes


def report_dir(config: Config) -> str:
    return reports.report_dir(config.output_root, config.pipeline_name)


def run_report_dir(config: Config, run_id: str) -> str:
    return reports.run_report_dir(config.output_root, config.pipeline_name, run_id)


def _drift_line(config: Config, store, nodes: dict, statistics) -> tuple[str, list[gate.Anomaly]]:
    """The drift check's outcome, as the data gate saw it ("" when the run has no drift check or no statistics),
    and the features that drifted."""
    previous = nodes.get(drift.PREVIOUS_STATISTICS_RESOLVER)
    schema = nodes.get("ImportSchemaGen")
    if previous is None or not (statistics and statistics.outputs.get("statistics")):
        return "", []
    if not previous.outputs.get("statistics"):
        return "Data: no statistics of a previous span in ML Metadata (the first span): no drift check.", []
    if not (schema and schema.outputs.get("schema")):
        return "", []
    drifted = drift.drift_anomalies(tfx_artifact(store, statistics.outputs["statistics"][0]),
                                    tfx_artifact(store, previous.outputs["statistics"][0]),
                                    tfx_artifact(store, schema.outputs["schema"][0]))
    if drifted:
        return gate.format_drift(drifted, stops=config.continuous.drift == "stop"), drifted
    return "Data: no drift from the previous span over the schema's drift thresholds.", []


def tfx_artifact(store, proto: metadata_store_pb2.Artifact):
    artifact_type = store.get_artifact_types_by_id([proto.type_id])[0]
    return artifact_utils.deserialize_artifact(artifact_type, proto)


def _prop(artifact: metadata_store_pb2.Artifact, key: str):
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    return value.int_value if value.HasField("int_value") else value.string_value


def data_line(config: Config, span: int, counts: dict[str, int]) -> str:
    """Which span the run trained and evaluated on, and how many rows: `Data: span 16 (span-16/, 201 rows), ...`."""
    from pipeline import spans

    rows = sum(counts.values())
    split = "/".join(f"{name} {n}" for name, n in gate.ordered(counts))
    try:
        found = spans.discover(config.data_root, config.continuous.settle_seconds)
    except (OSError, spans.SpanError):
        found = []
    names = [s.name for s in found if s.number == span and s.name]
    where = f"span {span} ({names[0]}/, {rows} rows)" if names else f"{config.data_root} (one span, {rows} rows)"
    return f"Data: {where}, for training and evaluation, split by hash into {split}."


def window_line(config: Config, trained: list[int], evaluated: int, eval_rows: int | None) -> str:
    """With a rolling window: `Training: spans 2, 3 (2000 rows); evaluation: span 3, eval split (345 rows).`
    The rows of the training spans are counted in their files (the older spans have no statistics in this run)."""
    from pipeline import spans

    try:
        found = {s.number: s for s in spans.discover(config.data_root, config.continuous.settle_seconds)}
    except (OSError, spans.SpanError):
        found = {}
    rows = 0
    for number in trained:
        for path in spans.data_files(found[number].path) if number in found else []:
            with open(path, "rb") as f:
                rows += max(sum(1 for _ in f) - 1, 0)  # less the header
    names = ", ".join(str(n) for n in trained)
    held = f" ({eval_rows} rows)" if eval_rows is not None else ""
    return (f"Training: span{'s' if len(trained) > 1 else ''} {names} ({rows} rows, split by hash: their train splits "
            f"train, their eval splits check training); evaluation: span {evaluated}, eval split{held}.")


def warm_start_line(trainer: NodeRun) -> str:
    """`Trainer: warm start from model 12 (trained before this span), 100 steps.` or `Trainer: cold (no base
    model), 500 steps.`, from the record run_fn writes in its model_run directory (modules/training.py)."""
    import json

    from modules.contract import TRAINING_RECORD

    try:
        with open(f"{trainer.outputs['model_run'][0].uri}/{TRAINING_RECORD}") as f:
            record = json.load(f)
    except OSError:
        return "Trainer: no training record (a Trainer older than warm start)."
    if record["warm_start_from"]:
        base = trainer.inputs["base_model"][0].id
        return f"Trainer: warm start from model {base} (trained before this span), {record['steps']} steps."
    return f"Trainer: cold ({record['cold_reason']}), {record['steps']} steps."


class Outcome(NamedTuple):
    ok: bool
    served_path: str | None  # the version directory serving this run's model, if any


def print_summary(config: Config, tfx_pipeline, started: float, error: BaseException | None, run_id: str,
                  out=sys.stdout, failed_nodes=()) -> Outcome:
    """Prints the summary of the pipeline run `run_id`, which started at `started` (epoch seconds). `failed_nodes`:
    the orchestrator's word on which failed (TFX's Airflow launcher leaves a failed component's execution running)."""
    store = open_store(config)
    nodes = latest_run(store, config, run_id)
    for node_id in set(failed_nodes) & set(nodes):
        nodes[node_id] = nodes[node_id]._replace(status="FAILED")

    def p(*parts):
        print(*parts, file=out)

    p("\n" + "=" * 72)
    p(f"Run summary: pipeline '{config.pipeline_name}', profile '{config.profile}', run {run_id}, "
      f"{time.time() - started:.1f} s")
    p("=" * 72)
    for component in tfx_pipeline.components:
        node = nodes.get(component.id)
        p(f"  {component.id:<32} {node.status:<8} {node.seconds:7.1f} s" if node else f"  {component.id:<32} not run")
    ok = error is None and bool(nodes) and all(n.status in ("ran", "cached") for n in nodes.values())

    statistics = nodes.get("StatisticsGen")
    validator = nodes.get("ExampleValidator")
    anomalies = (gate.read_anomalies(tfx_artifact(store, validator.outputs["anomalies"][0]))
                 if validator and validator.outputs.get("anomalies") else None)
    drift_line, drifted = _drift_line(config, store, nodes, statistics)
    written, reports_started = [], time.monotonic()
    if statistics and statistics.outputs.get("statistics"):
        # The data drifted from the previous span's statistics: the report draws them too.
        previous = nodes[drift.PREVIOUS_STATISTICS_RESOLVER].outputs["statistics"][0].uri if drifted else None
        written.append(write_statistics(statistics.outputs["statistics"][0].uri, run_report_dir(config, run_id),
                                        config.pipeline_name, None if anomalies is None else anomalies + drifted,
                                        monitoring_directory(config), previous, copy_to=report_dir(config)))
    reports_seconds = time.monotonic() - reports_started

    too_few, data_printed = "", False
    example_gen = nodes.get("ExampleGen")
    if statistics and statistics.outputs.get("statistics") and example_gen and example_gen.outputs.get("examples"):
        examples = tfx_artifact(store, example_gen.outputs["examples"][0])
        span = gate.span_of(examples)
        counts = gate.read_example_counts(tfx_artifact(store, statistics.outputs["statistics"][0]))
        p("\n" + data_line(config, span, counts))
        too_few = gate.check_example_counts(counts, span, config.continuous.min_examples, gate.input_rows(examples))
        data_printed = True
        transform = nodes.get("Transform")
        if transform and nodes.get("span_window_resolver") and transform.inputs.get("examples"):
            trained = sorted({gate.span_of(tfx_artifact(store, a)) for a in transform.inputs["examples"]})
            p(window_line(config, trained, span, counts.get("eval")))
            if nodes.get("Trainer") and nodes["Trainer"].outputs.get("model_run"):
                p(warm_start_line(nodes["Trainer"]))

    if anomalies is not None:
        p(("" if data_printed else "\n") + (gate.format_anomalies(anomalies) if anomalies
          else f"Data: no anomalies against the schema ({config.schema_path})."))
    if too_few:
        p(too_few)
    if drift_line:
        p(drift_line)

    evaluator = nodes.get("Evaluator")
    if evaluator and evaluator.outputs.get("evaluation") and evaluator.outputs.get("blessing"):
        blessed = _prop(evaluator.outputs["blessing"][0], "blessed") == 1
        report = evaluation.explain_blessing(evaluator.outputs["evaluation"][0].uri, config.evaluator)
        p("\nEvaluation (eval split, all examples):")
        for name in ("example_count", "auc", "binary_accuracy", "precision", "recall", "calibration"):
            if name in report.metrics:
                p(f"  {name:<16} {report.metrics[name]:.4f}")
        p(f"\nModel {'BLESSED' if blessed else 'NOT blessed'}:")
        for check in report.checks:
            p(f"  [{'pass' if check.passed else 'FAIL'}] {check.description}")
        for failure in report.failures:
            p(f"  [FAIL] {failure}")
        reports_started = time.monotonic()
        written.append(write_evaluation(evaluator.outputs["evaluation"][0].uri, blessed, report,
                                        run_report_dir(config, run_id), config.pipeline_name,
                                        copy_to=report_dir(config)))
        reports_seconds += time.monotonic() - reports_started

    served_path = None
    pusher = nodes.get("Pusher")
    if pusher and pusher.outputs.get("pushed_model"):
        pushed = pusher.outputs["pushed_model"][0]
        if _prop(pushed, "pushed") == 1:
            version, served_path = _prop(pushed, "pushed_version"), _prop(pushed, "pushed_destination")
            if pusher.status == "cached" or _prop(pushed, ALREADY_SERVED) == 1:
                p(f"\nNothing new to push: this model is already served as version {version} ({served_path}).")
            else:
                p(f"\nPushed version {version}: {served_path}")
            p("Serve it: make serve (TF Serving's API on 127.0.0.1:8501/8500), then make predict; or with TF Serving:")
            p(f"  docker run --rm -p 127.0.0.1:8501:8501 -v {config.serving_model_dir}:/models/{config.model_name} "
              f"-e MODEL_NAME={config.model_name} {config.serving.tf_serving_image.removesuffix('-gpu')}")
        else:
            p("\nNothing pushed: the model was not blessed.")

    written = [r for r in written if r]
    if written:
        # The pipeline's folder (links to the newest run's) as before; this run's own folder keeps them after the next.
        latest = [os.path.join(report_dir(config), os.path.basename(r)) for r in written]
        p("\nReports: " + "\n         ".join(latest) + f"\n         (written in {reports_seconds:.1f} s; this run's: "
          f"{run_report_dir(config, run_id)}/)")

    failed = [n.node_id for n in nodes.values() if n.status == "FAILED"]
    p("\nResult: " + ("OK" if ok else "FAILED" + (f" in {', '.join(failed)}" if failed else "")))
    return Outcome(ok, served_path)

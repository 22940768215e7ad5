"""One pipeline's ML Metadata as a graph: its executions (with their node and pipeline run), artifacts and events,
read once; the walks back from an artifact to what made it; and each pushed version's record (the run that pushed
it and why, the model, its training, evaluation and data). No TensorFlow import: `make lineage` stays fast.

Runs: LocalDagRunner and BeamDagRunner file executions under `pipeline_run` and `node` contexts, TFX's Airflow
integration under `run` and `component` ones (`<pipeline>.<id>` both); both are read.
"""
import collections
import json
import os
import re
import time
from dataclasses import dataclass, field

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants

Event, Execution = metadata_store_pb2.Event, metadata_store_pb2.Execution
# A run's context types: LocalDagRunner's and BeamDagRunner's `pipeline_run`, and `run`, under which TFX's Airflow
# launcher (tfx.orchestration.metadata) files a DAG run's executions.
RUN_CONTEXT_TYPES = (constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, "run")
# The run id of a DAG run's backfill of one span (runners/airflow_runner.py), its own run context.
_AIRFLOW_BACKFILL = re.compile(r"\.backfill-span-\d+$")
_NODE_TYPES = (constants.NODE_CONTEXT_TYPE_NAME, "component")
# Inputs that are no part of what a model was made from: the Evaluator's baseline (an earlier model) and Transform's
# analyzer cache (earlier spans' analysis); walking them would reach every earlier run (pipeline/retention.py too).
NOT_LINEAGE = {"baseline_model", "analyzer_cache"}
STATES = {Execution.COMPLETE: "ran", Execution.CACHED: "cached", Execution.FAILED: "FAILED",
          Execution.RUNNING: "running", Execution.CANCELED: "canceled", Execution.NEW: "new"}
EXAMPLE_GEN, TRAINER, EVALUATOR, PUSHER, GATE = "ExampleGen", "Trainer", "Evaluator", "Pusher", "DataGate"
STATISTICS_GEN = "StatisticsGen"


def prop(message, key: str):
    """A custom property of an artifact, execution or context (else a property: TFX's Airflow launcher files an
    execution's exec properties as properties): its int, float or string value; None when absent or of another
    kind (a struct: ExampleAnomalies' `blessed` per split)."""
    value = message.custom_properties.get(key) or message.properties.get(key)
    kind = value.WhichOneof("value") if value is not None else None
    return getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else None


def airflow_backfill_run_id(run_id: str, span: int) -> str:
    return f"{run_id}.backfill-span-{span}"


def airflow_backfill_parent(run_name: str) -> str | None:
    """The run whose backfill `run_name` is, else None."""
    return _AIRFLOW_BACKFILL.sub("", run_name) if _AIRFLOW_BACKFILL.search(run_name) else None


def launcher_component_id(execution) -> str | None:
    """The component of an execution TFX's Airflow launcher filed (an execution property there, under a
    `component_run` context and no node context); None for the other runners' executions."""
    return execution.properties["component_id"].string_value if "component_id" in execution.properties else None


def utc(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def input_fingerprint(examples) -> dict:
    """What CsvExampleGen's driver recorded of its input (pipeline/example_gen_driver.py): the SHA-256 of the files'
    names and bytes and their CSV rows; {} for an input fingerprinted by TFX alone (size and mtime)."""
    text = prop(examples, "input_fingerprint") or ""
    found = {}
    if m := re.search(r"\bsha256:([0-9a-f]{64})", text):
        found["sha256"] = m.group(1)
    if m := re.search(r"\bcsv_rows:(\d+)", text):
        found["csv_rows"] = int(m.group(1))
    return found


@dataclass
class Step:
    """One execution: its node, pipeline run, state, and artifacts by input/output key."""
    execution: metadata_store_pb2.Execution
    node: str
    run: metadata_store_pb2.Context | None
    inputs: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    outputs: dict[str, list[int]] = field(default_factory=lambda: collections.defaultdict(list))

    @property
    def state(self) -> str:
        return STATES.get(self.execution.last_known_state, "unknown")

    @property
    def run_name(self) -> str | None:
        return self.run.name if self.run is not None else None


class Graph:
    """The executions, artifacts and events of the pipeline `pipeline_name` in `store` (all of them: a pipeline's
    history is hundreds of runs at most, read in a few queries per node and run)."""

    def __init__(self, store, pipeline_name: str):
        self.store, self.pipeline_name = store, pipeline_name
        self.steps: dict[int, Step] = {}
        self.artifacts: dict[int, metadata_store_pb2.Artifact] = {}
        self.type_names: dict[int, str] = {}
        self.producers: dict[int, list[int]] = collections.defaultdict(list)   # artifact -> executions, oldest first
        self.consumers: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)  # -> (execution, key)
        pipeline = store.get_context_by_type_and_name(constants.PIPELINE_CONTEXT_TYPE_NAME, pipeline_name)
        if pipeline is None:
            return
        executions = {x.id: x for x in store.get_executions_by_context(pipeline.id)}
        prefix = f"{pipeline_name}."
        node_of, run_of = {}, {}
        for kind in _NODE_TYPES:
            for context in store.get_contexts_by_type(kind):
                if context.name.startswith(prefix):
                    for x in store.get_executions_by_context(context.id):
                        node_of[x.id] = context.name[len(prefix):]
        for kind in RUN_CONTEXT_TYPES:
            for context in store.get_contexts_by_type(kind):
                for x in store.get_executions_by_context(context.id):
                    if x.id in executions:
                        run_of[x.id] = context
        for x in executions.values():
            self.steps[x.id] = Step(x, node_of.get(x.id) or launcher_component_id(x) or "?", run_of.get(x.id))
        events = store.get_events_by_execution_ids(list(executions)) if executions else []
        ids = {e.artifact_id for e in events}
        self.artifacts = {a.id: a for a in store.get_artifacts_by_id(list(ids))} if ids else {}
        self.type_names = {t.id: t.name for t in store.get_artifact_types()}
        for e in sorted(events, key=lambda e: (e.execution_id, e.artifact_id)):
            key = e.path.steps[0].key if e.path.steps else ""
            step = self.steps[e.execution_id]
            if e.type == Event.INPUT:
                step.inputs[key].append(e.artifact_id)
                self.consumers[e.artifact_id].append((e.execution_id, key))
            elif e.type == Event.OUTPUT:
                step.outputs[key].append(e.artifact_id)
                self.producers[e.artifact_id].append(e.execution_id)

    def type_of(self, artifact_id: int) -> str:
        return self.type_names.get(self.artifacts[artifact_id].type_id, "?")

    def producer(self, artifact_id: int) -> Step | None:
        """The execution that made the artifact: the first that output it (a cached execution outputs it again)."""
        made = self.producers.get(artifact_id)
        return self.steps[made[0]] if made else None

    def one(self, step: Step | None, key: str, outputs: bool = False) -> int | None:
        """The first artifact of a step's input (or output) `key`, None when there is none."""
        if step is None:
            return None
        found = (step.outputs if outputs else step.inputs).get(key)
        return found[0] if found else None

    def ancestry(self, artifact_id: int, start: Step | None = None, exclude=NOT_LINEAGE) -> list[Step]:
        """Every execution the artifact (or the inputs of `start`) descends from, through the inputs of each
        (`exclude`d keys left out), oldest first: for a PushedModel, the Pusher, Evaluator, Trainer, Tuner,
        Transform, ImportSchemaGen and ExampleGen that made it (the data gate's checks are no input of Transform:
        gate_checks)."""
        seen_artifacts, found = set(), {}
        todo = [artifact_id] if start is None else [a for k, ids in start.inputs.items() if k not in exclude
                                                    for a in ids]
        while todo:
            current = todo.pop()
            if current in seen_artifacts:
                continue
            seen_artifacts.add(current)
            step = self.producer(current)
            if step is None or step.execution.id in found:
                continue
            found[step.execution.id] = step
            todo += [a for key, ids in step.inputs.items() if key not in exclude for a in ids]
        return [found[x] for x in sorted(found)]

    def gate_checks(self, examples_id: int, before: int) -> list[Step]:
        """The data gate that passed (or stopped) these Examples, the newest before execution `before`, with the
        StatisticsGen, ImportSchemaGen and ExampleValidator it read (not the previous span's statistics)."""
        gates = [self.steps[x] for x, key in self.consumers.get(examples_id, [])
                 if key == "examples" and self.steps[x].node == GATE and x < before]
        if not gates:
            return []
        gate = gates[-1]
        return [*self.ancestry(0, start=gate, exclude=NOT_LINEAGE | {"previous_statistics"}), gate]

    def examples_read(self, artifact_id: int) -> list[int]:
        """The ExampleGen outputs (Examples, one per span ingested) the artifact descends from, oldest first."""
        return sorted(a for step in self.ancestry(artifact_id) if step.node == EXAMPLE_GEN
                      for a in step.outputs.get("examples", []))

    def statistics_of(self, examples_id: int) -> int | None:
        """The statistics StatisticsGen computed of these Examples (the first execution that made them)."""
        for x, key in self.consumers.get(examples_id, []):
            if key == "examples" and self.steps[x].node == STATISTICS_GEN and self.steps[x].state in ("ran", "cached"):
                return self.one(self.steps[x], "statistics", outputs=True)
        return None

    def span(self, examples_id: int) -> int:
        return prop(self.artifacts[examples_id], "span") or 0

    def pushed_models(self) -> list[int]:
        """Every PushedModel whose Pusher pushed (or found already serving) a version, oldest first."""
        return sorted(a for a, artifact in self.artifacts.items()
                      if self.type_of(a) == "PushedModel" and prop(artifact, "pushed") == 1
                      and prop(artifact, "pushed_version"))

    def pushes_of_model(self, model_id: int) -> list[int]:
        """The PushedModels of the pushes that took `model_id` (pushed or found already serving)."""
        return [a for x, key in self.consumers.get(model_id, []) if key == "model" and self.steps[x].node == PUSHER
                for a in self.steps[x].outputs.get("pushed_model", []) if a in self.pushed_models()]

    def models(self) -> list[int]:
        """Every model a Trainer produced, oldest first."""
        return sorted(a for a in self.artifacts if self.type_of(a) == "Model"
                      and (step := self.producer(a)) is not None and step.node == TRAINER)

    def evaluations_of(self, model_id: int) -> list[Step]:
        """The Evaluator executions that evaluated `model_id` as the candidate."""
        return [self.steps[x] for x, key in self.consumers.get(model_id, [])
                if key == "model" and self.steps[x].node == EVALUATOR]


def run_reason(run) -> tuple[str | None, list[int]]:
    """Why the run ran and the spans it read, as runners/why.py recorded them (None, [] when not recorded)."""
    if run is None:
        return None, []
    spans = prop(run, "tfx_e2e_spans") or ""
    return prop(run, "tfx_e2e_reason"), [int(s) for s in spans.split(",") if s.strip().isdigit()]


def _json_property(step: Step, key: str) -> dict:
    text = prop(step.execution, key) if step is not None else None
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def training_settings(graph: Graph, trainer: Step | None) -> dict:
    """The Trainer's steps and batch size, as that execution ran (its exec properties)."""
    if trainer is None:
        return {}
    settings = {"train_steps": _json_property(trainer, "train_args").get("num_steps"),
                "eval_steps": _json_property(trainer, "eval_args").get("num_steps"),
                "batch_size": _json_property(trainer, "custom_config").get("batch_size")}
    return {k: v for k, v in settings.items() if v is not None}


def tuned_values(graph: Graph, trainer: Step | None) -> dict | None:
    """The Tuner's best hyperparameters the Trainer took (Keras Tuner's config JSON), None without a Tuner."""
    hyperparameters = graph.one(trainer, "hyperparameters")
    if hyperparameters is None:
        return None
    path = os.path.join(graph.artifacts[hyperparameters].uri, "best_hyperparameters.txt")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def thresholds(evaluator: Step | None) -> tuple[float | None, float | None]:
    """(AUC lower bound, largest drop allowed against the baseline) in the EvalConfig the Evaluator ran with."""
    lower, drop = None, None
    for spec in _json_property(evaluator, "eval_config").get("metrics_specs", []):
        for metric in spec.get("metrics", []):
            for per_slice in metric.get("per_slice_thresholds", []):
                threshold = per_slice.get("threshold", {})
                # Wrapped doubles: a plain number in the proto's JSON.
                bound = threshold.get("value_threshold", {}).get("lower_bound")
                change = threshold.get("change_threshold", {}).get("absolute")
                lower = bound.get("value") if isinstance(bound, dict) else lower if bound is None else bound
                if change is not None:
                    drop = -(change.get("value") if isinstance(change, dict) else change)
    return lower, drop


@dataclass
class Push:
    """A pushed version as ML Metadata holds it: the push that made it, the model, its training and evaluation."""
    version: int
    pushed: int                      # the PushedModel artifact id of the push that made the version
    confirmed: list[int]             # later pushes that found this very model already serving
    pusher: Step
    model: int | None
    blessing: int | None
    trainer: Step | None
    evaluator: Step | None


def pushes(graph: Graph) -> dict[int, Push]:
    """version -> its Push: the first PushedModel naming the version that was no `already_served` confirmation."""
    by_version = collections.defaultdict(list)
    for a in graph.pushed_models():
        by_version[int(prop(graph.artifacts[a], "pushed_version"))].append(a)
    found = {}
    for version, ids in by_version.items():
        made = [a for a in ids if prop(graph.artifacts[a], "already_served") != 1] or ids
        pusher = graph.producer(made[0])
        model, blessing = graph.one(pusher, "model"), graph.one(pusher, "model_blessing")
        found[version] = Push(version, made[0], [a for a in ids if a != made[0]], pusher, model, blessing,
                              graph.producer(model) if model is not None else None,
                              graph.producer(blessing) if blessing is not None else None)
    return found


def data_of(graph: Graph, push: Push) -> dict:
    """The spans (with their ExampleGen inputs) the version was trained on and the span it was evaluated on."""
    def describe(examples: int) -> dict:
        artifact = graph.artifacts[examples]
        made = graph.producer(examples)
        return {"span": graph.span(examples), "examples": artifact.uri, "artifact_id": examples,
                "input_base": prop(made.execution, "input_base") if made else None, **input_fingerprint(artifact)}

    trained = graph.examples_read(push.model) if push.model is not None else []
    evaluated = graph.one(push.evaluator, "examples")
    return {"trained_on": [describe(a) for a in sorted(trained, key=graph.span)],
            "evaluated_on": describe(evaluated) if evaluated is not None else None}


def baseline_version(graph: Graph, evaluator: Step | None) -> dict | None:
    """The Evaluator's baseline model and the version it was pushed as (None on the first blessing)."""
    model = graph.one(evaluator, "baseline_model")
    if model is None:
        return None
    versions = sorted({int(prop(graph.artifacts[a], "pushed_version")) for a in graph.pushes_of_model(model)})
    return {"model": graph.artifacts[model].uri, "versions": versions}

"""What the console shows, read from the same places as `make models`, `make lineage`, `make rollout status` and
`make monitor`: ML Metadata (read-only, registry/graph.py), the serving base path and its rollout record and audit
log (serving/registry.py), the monitoring windows (monitoring/) and the run reports (reports/). Nothing here writes.

Experiments are pipelines, as Kubeflow groups runs: each configuration's `pipeline_name` has its own runs (with
SQLite, its own store under <output_root>/metadata/<pipeline>/; on a MySQL server, one pipeline context each)."""
import dataclasses
import functools
import glob
import json
import os

from pipeline.config import Config
from registry import graph as g

# The metric the Evaluator's thresholds judge (pipeline/evaluation.py's THRESHOLD_METRIC, which imports TFMA: a page
# without evaluations stays fast), and the overall-slice metrics charted over time, the blessing's own first.
BLESSING_METRIC = "auc"
CHARTED_METRICS = (BLESSING_METRIC, "binary_accuracy", "precision", "recall")


class NotFound(LookupError):
    """A run, version or file the console does not have; the message says what it has."""


@dataclasses.dataclass
class Run:
    name: str
    experiment: str
    steps: list[g.Step]                # the run's executions, oldest first

    @property
    def started(self) -> int:
        return min(s.execution.create_time_since_epoch for s in self.steps)

    @property
    def ended(self) -> int:
        return max(s.execution.last_update_time_since_epoch for s in self.steps)

    @property
    def state(self) -> str:
        states = {s.state for s in self.steps}
        for state in ("FAILED", "running", "canceled"):
            if state in states:
                return state
        return "ok"

    def node(self, name: str) -> g.Step | None:
        found = [s for s in self.steps if s.node == name]
        return found[-1] if found else None


def duration(step: g.Step) -> float:
    """Seconds from the execution's creation to its last update (0 for a cached one: ML Metadata files both at once)."""
    return max(0, step.execution.last_update_time_since_epoch - step.execution.create_time_since_epoch) / 1000


def experiments(config: Config) -> dict[str, g.Graph]:
    """pipeline name -> its graph, the configured pipeline first; {} when no store exists yet."""
    from pipeline import metadata

    names = [config.pipeline_name]
    if config.metadata == "sqlite":
        names += sorted(os.path.basename(os.path.dirname(p)) for p in
                        glob.glob(os.path.join(config.output_root, "metadata", "*", "metadata.db")))
    found = {}
    for name in dict.fromkeys(names):
        other = dataclasses.replace(config, pipeline_name=name)
        if not metadata.exists(other):
            continue
        try:
            store = metadata.open_store(other, readonly=True)
        except metadata.MetadataError:
            if name == config.pipeline_name:
                raise  # the page says which store cannot be read (503)
            continue  # another pipeline's file that is no store: its experiment is left out
        if config.metadata == "mysql":
            found.update({c.name: g.Graph(store, c.name) for c in store.get_contexts_by_type("pipeline")})
            break
        found[name] = g.Graph(store, name)
    return found


def runs(graph: g.Graph) -> list[Run]:
    """The pipeline's runs, newest first."""
    by_run: dict[str, list[g.Step]] = {}
    for x in sorted(graph.steps):
        step = graph.steps[x]
        by_run.setdefault(step.run_name or "(no run context)", []).append(step)
    found = [Run(name, graph.pipeline_name, steps) for name, steps in by_run.items()]
    return sorted(found, key=lambda r: r.started, reverse=True)


def find_run(graphs: dict[str, g.Graph], name: str) -> tuple[g.Graph, Run]:
    for graph in graphs.values():
        for run in runs(graph):
            if run.name == name:
                return graph, run
    known = [r.name for graph in graphs.values() for r in runs(graph)]
    raise NotFound(f"run {name!r} is not in ML Metadata (runs: {', '.join(known[:10]) or 'none'}"
                   f"{', ...' if len(known) > 10 else ''})")


def dag(graph: g.Graph, run: Run) -> tuple[list[g.Step], list[tuple[int, int]]]:
    """The run's executions (the last of each node) and the edges between them: B takes an artifact that A output
    in this run (a cached execution outputs its artifacts again, so cached steps stay connected)."""
    steps = {s.node: s for s in run.steps}
    ids = {s.execution.id for s in steps.values()}
    edges = set()
    for step in steps.values():
        for artifacts in step.inputs.values():
            for a in artifacts:
                for producer in graph.producers.get(a, []):
                    if producer in ids and producer != step.execution.id:
                        edges.add((producer, step.execution.id))
    return sorted(steps.values(), key=lambda s: s.execution.id), sorted(edges)


@functools.lru_cache(maxsize=256)
def overall_metrics(evaluation_uri: str, lower: float | None, drop: float | None) -> tuple[dict, list]:
    """The candidate's overall-slice metrics of an Evaluator output and its checks (artifacts never change once
    written, so they are read once); ({}, []) when the output is gone or unreadable."""
    from pipeline import evaluation
    from pipeline.config import EvaluatorConfig

    settings = EvaluatorConfig(auc_lower_bound=0.0 if lower is None else lower,
                               auc_max_drop=0.0 if drop is None else drop, slices=[])
    try:
        report = evaluation.explain_blessing(evaluation_uri, settings)
    except Exception:  # noqa: BLE001 - retention removed it, or a run died writing it: shown as no metrics
        return {}, []
    return dict(report.metrics), [(c.description, c.passed) for c in report.checks]


def evaluations(graph: g.Graph) -> list[dict]:
    """Every Evaluator execution of the pipeline that wrote an evaluation, oldest first: its run, time, metrics,
    threshold, blessing and the version its model was pushed as."""
    pushed = {}
    for version, push in g.pushes(graph).items():
        pushed.setdefault(push.model, []).append(version)
    found = []
    for x in sorted(graph.steps):
        step = graph.steps[x]
        evaluation = graph.one(step, "evaluation", outputs=True)
        if step.node != g.EVALUATOR or evaluation is None:
            continue
        lower, drop = g.thresholds(step)
        metrics, checks = overall_metrics(graph.artifacts[evaluation].uri, lower, drop)
        blessing = graph.one(step, "blessing", outputs=True)
        model = graph.one(step, "model")
        found.append({"experiment": graph.pipeline_name, "run": step.run_name, "execution": x,
                      "time": step.execution.last_update_time_since_epoch / 1000, "metrics": metrics,
                      "checks": checks, "auc_lower_bound": lower,
                      "blessed": g.prop(graph.artifacts[blessing], "blessed") == 1 if blessing is not None else None,
                      "versions": sorted(pushed.get(model, []))})
    return found


# --- files under the output root --------------------------------------------------------------------------------
def safe_path(root: str, relative: str) -> str:
    """The file `relative` names under `root`, links resolved; NotFound for anything outside it (../, an absolute
    path, a link out of it) or that is no file."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base or relative.startswith("/") or not os.path.isfile(path):
        raise NotFound(f"{relative!r}: no such file under the output root")
    return path


def relative(root: str, path: str | None) -> str | None:
    """`path` relative to the output root when it is a file under it (a link target), else None."""
    if not path:
        return None
    base, full = os.path.realpath(root), os.path.realpath(path)
    return os.path.relpath(full, base) if os.path.commonpath([base, full]) == base and os.path.isfile(full) else None


def readable_file(root: str, uri: str) -> str | None:
    """An artifact's file a person can read in a browser (a report, JSON, text, a text proto), relative to the output
    root; the first by name in its folder, None when there is none (TFRecords, protos, SavedModels)."""
    if not uri or not os.path.isdir(uri):
        return relative(root, uri)
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(uri) for f in files
                   if f.endswith((".html", ".json", ".txt", ".pbtxt")))
    return relative(root, found[0]) if found else None


def report_files(config: Config, pipeline_name: str, run_name: str) -> list[str]:
    """The reports of the pipeline run `run_name` (<output_root>/reports/<pipeline>/runs/<run>/, whatever reports/
    wrote there), relative to the output root; [] for a run that wrote none (or whose folder retention removed)."""
    from reports import run_report_dir

    directory = run_report_dir(config.output_root, pipeline_name, run_name)
    found = glob.glob(os.path.join(glob.escape(directory), "**", "*"), recursive=True)
    return sorted(os.path.relpath(p, config.output_root) for p in found if os.path.isfile(p))


# --- serving and monitoring -------------------------------------------------------------------------------------
def rollout(config: Config, last: int = 50) -> dict:
    """The rollout record and the newest `last` decisions of the audit log, newest first."""
    from serving.registry import AUDIT_LOG, read_record

    base = config.serving_model_dir
    try:
        record, error = read_record(base), None
    except ValueError as e:
        record, error = None, str(e)
    decisions = []
    try:
        with open(os.path.join(base, AUDIT_LOG)) as f:
            for line in f:
                try:
                    decisions.append(json.loads(line))
                except ValueError:
                    continue  # a line a killed controller left half-written
    except OSError:
        pass
    return {"record": dataclasses.asdict(record) if record else None, "error": error,
            "decisions": decisions[-last:][::-1], "strategy": config.rollout.strategy, "steps": config.rollout.steps}


def monitoring_windows(config: Config) -> list[dict]:
    """Every window `make monitor` wrote, oldest first, with its report files relative to the output root."""
    from monitoring.monitor import report_directory

    found = []
    for path in sorted(glob.glob(os.path.join(report_directory(config), "window-*.json"))):
        try:
            with open(path) as f:
                window = json.load(f)
        except (OSError, ValueError):
            continue
        page = path[:-len(".json")] + ".html"
        found.append({**window, "json_file": relative(config.output_root, path),
                      "html_file": relative(config.output_root, page)})
    return found

"""`make models` (python -m registry.models [--json]): every version of the model, newest first: when it was
pushed, by which pipeline run and why (runners/why.py), the spans it was trained and evaluated on, its
hyperparameters, its metrics against its baseline and the blessing's reasons, its serving state and its monitoring
status. From ML Metadata (pipeline/metadata.py: SQLite or a MySQL server), the serving base path and its rollout
record (serving/registry.py), and the monitoring reports (monitoring/monitor.py).

Serving states: AVAILABLE (a complete version folder the server loads: the version policy's, or with a canary
rollout the record's stable, canary and retiring versions), NOT LOADED (on disk, outside the policy), INCOMPLETE
(a folder the server refuses), PRUNED (pushed, its folder gone: retention), with the `stable`/`canary`/`retiring`
labels and ROLLED BACK for a version a canary rollout rejected.

Exit status: 0, 1 when ML Metadata cannot be read, 2 for a usage or configuration error.
"""
import argparse
import dataclasses
import glob
import json
import math
import os
import sys

from pipeline.config import Config, is_uri
from registry import graph as g
from registry import model_card

SCHEMA_VERSION = 1  # of the JSON: bumped when a key changes meaning or goes


class RegistryError(RuntimeError):
    """ML Metadata cannot be read (a server down, a corrupt file); the message names the store."""


def open_graph(config: Config) -> g.Graph | None:
    """The pipeline's ML Metadata graph; None when there is no store yet (nothing ever ran)."""
    from pipeline import metadata

    if not metadata.exists(config):
        return None
    try:
        return g.Graph(metadata.open_store(config, readonly=True), config.pipeline_name)
    except metadata.MetadataError as e:
        raise RegistryError(str(e)) from None


# --- serving -----------------------------------------------------------------------------------------------------
def _model_config(config: Config):
    """The ModelConfig the server runs with: from serving.model_config_file, else from the serving settings."""
    from serving import policy

    if config.serving.model_config_file:
        for model in policy.read_model_config_file(config.serving.model_config_file).model_config_list.config:
            if model.name == config.model_name:
                return model
    s = config.serving
    return policy.single_model_config(config.model_name, config.serving_model_dir, s.version_policy,
                                      s.latest_versions, s.versions, s.labels).model_config_list.config[0]


def serving_states(config: Config) -> tuple[dict[int, dict], list[str]]:
    """version -> {state, labels, rolled_back} for every version folder under the serving base path, and notes
    (a rollout record that cannot be read, a remote base path that is not listed)."""
    from serving import policy, registry, source

    base = config.serving_model_dir
    if is_uri(base):
        return {}, [f"{base}: a remote serving base path is not listed; versions show as pushed"]
    notes = []
    try:
        complete, incomplete = source.list_versions(base)
    except source.SourceError as e:
        return {}, [f"{base}: {e.strerror}"]
    try:
        record = registry.read_record(base)
    except ValueError as e:
        record, notes = None, [f"rollout record not read: {e}"]
    model = _model_config(config)
    if config.rollout.strategy in ("canary", "ab") and record is not None and record.stable is not None:
        loaded = record.served() & set(complete)
    else:
        loaded = policy.aspired_versions(model.model_version_policy, complete)
    labels = {label: v for label, v in model.version_labels.items()}
    if record is not None:
        labels.update(record.labels())
    states = {}
    for version in sorted({*complete, *incomplete}):
        names = sorted(label for label, v in labels.items() if v == version)
        if record is not None and record.retiring == version:
            names.append("retiring")
        if record is not None and record.canary == version:
            names = [f"canary {record.canary_percent}%" if n == "canary" else n for n in names]
        states[version] = {
            "state": "INCOMPLETE" if version in incomplete else "AVAILABLE" if version in loaded else "NOT LOADED",
            "labels": names,
            "rolled_back": record.rejected.get(str(version)) if record is not None else None,
        }
    return states, notes


# --- monitoring --------------------------------------------------------------------------------------------------
def monitoring_status(config: Config) -> dict[int, dict]:
    """version -> the newest monitoring window that saw requests for it: its status, the alerts naming the version
    (skew, scores) and the report."""
    from monitoring.monitor import report_directory

    found = {}
    for path in sorted(glob.glob(os.path.join(report_directory(config), "window-*.json")), reverse=True):
        try:
            with open(path) as f:
                window = json.load(f)
        except (OSError, ValueError):
            continue
        for version, info in window.get("versions", {}).items():
            if not version.isdigit() or int(version) in found:
                continue
            alerts = [f"{f.get('check')}: {f.get('feature')} {f.get('measure')} {f.get('value', 0):.3f} > "
                      f"{f.get('threshold', 0):g}" for f in info.get("skew", []) + info.get("score", []) if f.get("alert")]
            found[int(version)] = {
                "window": window.get("window", {}).get("start"), "requests": info.get("requests"),
                "status": "ALERT" if alerts else window.get("status"), "window_status": window.get("status"),
                "alerts": alerts, "report": path}
    return found


# --- evaluation and training --------------------------------------------------------------------------------------
def evaluation_of(config: Config, graph: g.Graph, push: g.Push) -> dict:
    """The candidate's metrics (overall slice), the baseline's, and each threshold check, as TFMA computed them
    with the thresholds that Evaluator ran with."""
    evaluation = graph.one(push.evaluator, "evaluation", outputs=True)
    blessed = g.prop(graph.artifacts[push.blessing], "blessed") == 1 if push.blessing is not None else None
    result = {"blessed": blessed, "metrics": {}, "baseline": g.baseline_version(graph, push.evaluator),
              "baseline_metrics": {}, "checks": [], "failures": []}
    if evaluation is None:
        return result
    from pipeline import evaluation as tfma_evaluation

    lower, drop = g.thresholds(push.evaluator)
    settings = dataclasses.replace(config.evaluator, **{k: v for k, v in (("auc_lower_bound", lower),
                                                                          ("auc_max_drop", drop)) if v is not None})
    try:
        report = tfma_evaluation.explain_blessing(graph.artifacts[evaluation].uri, settings)
    except Exception as e:  # noqa: BLE001 - a deleted or unreadable evaluation: the rest of the record stands
        result["failures"].append(f"evaluation not readable at {graph.artifacts[evaluation].uri}: {e}")
        return result
    result.update(metrics=_finite(report.metrics), baseline_metrics=_finite(report.baseline_metrics),
                  checks=[{"check": c.description, "passed": c.passed} for c in report.checks],
                  failures=list(report.failures))
    return result


def _finite(metrics: dict) -> dict:
    """NaN and infinities as null: JSON has no such numbers (TFMA gives NaN for a metric a slice cannot have)."""
    return {k: v if math.isfinite(v) else None for k, v in metrics.items()}


def hyperparameters_of(graph: g.Graph, trainer: g.Step | None) -> tuple[dict, str]:
    """The values the Trainer trained with (modules/hparams.py: the Tuner's best over the search space's defaults)
    and where they came from."""
    from modules import hparams

    tuned = g.tuned_values(graph, trainer)
    return dict(hparams.resolve(tuned).values), "Tuner" if tuned else "defaults (no Tuner)"


# --- the versions -------------------------------------------------------------------------------------------------
def push_record(config: Config, graph: g.Graph, push: g.Push) -> dict:
    """What ML Metadata and TFMA hold of one pushed version: when, by which run and why, its data, hyperparameters,
    training settings and evaluation (also the model card's facts: registry/model_card.py)."""
    pushed = graph.artifacts[push.pushed]
    reason, run_spans = g.run_reason(push.pusher.run)
    hyperparameters, source = hyperparameters_of(graph, push.trainer)
    data = g.data_of(graph, push)
    return dict(
        pushed_at=g.utc(pushed.create_time_since_epoch), run=push.pusher.run_name, reason=reason,
        run_spans=run_spans, destination=g.prop(pushed, "pushed_destination"),
        confirmed_by_runs=[graph.producer(a).run_name for a in push.confirmed],
        model=graph.artifacts[push.model].uri if push.model is not None else None,
        trained_in_run=push.trainer.run_name if push.trainer else None,
        trained_on_spans=[d["span"] for d in data["trained_on"]],
        evaluated_on_span=data["evaluated_on"]["span"] if data["evaluated_on"] else None,
        data=data, hyperparameters=hyperparameters, hyperparameters_from=source,
        training=g.training_settings(graph, push.trainer), evaluation=evaluation_of(config, graph, push))


def versions(config: Config, graph: g.Graph | None) -> dict:
    """The registry as one JSON-ready dict, versions newest first."""
    pushes = g.pushes(graph) if graph is not None else {}
    states, notes = serving_states(config)
    monitoring = monitoring_status(config)
    rows = []
    for version in sorted({*pushes, *states}, reverse=True):
        push = pushes.get(version)
        row = {"version": version, "serving": states.get(version) or {"state": "PRUNED", "labels": [],
                                                                      "rolled_back": None},
               "monitoring": monitoring.get(version), "model_card": model_card.card_path(config, version)}
        if push is None:
            row.update(pushed_at=None, run=None, reason=None, note="not in ML Metadata (not pushed by this "
                       "pipeline's Pusher, or its store was replaced)")
            rows.append(row)
            continue
        row.update(push_record(config, graph, push))
        rows.append(row)
    from pipeline import metadata

    return {"schema_version": SCHEMA_VERSION, "pipeline": config.pipeline_name, "model": config.model_name,
            "serving_base": config.serving_model_dir, "metadata": metadata.describe(config),
            "notes": notes, "versions": rows}


# --- the table ------------------------------------------------------------------------------------------------------
def _spans(spans: list[int]) -> str:
    return ",".join(map(str, spans)) if spans else "-"


def _metric_cell(row: dict) -> tuple[str, str]:
    evaluation = row.get("evaluation") or {}
    auc = evaluation.get("metrics", {}).get("auc")
    base = evaluation.get("baseline_metrics", {}).get("auc")
    baseline = evaluation.get("baseline")
    if auc is None:
        return "-", "-"
    against = "first (no baseline)" if baseline is None else (
        f"{auc - base:+.4f} vs {_spans(baseline['versions'])}" if base is not None else "baseline without AUC")
    return f"{auc:.4f}", against


def _blessing_cell(row: dict) -> str:
    evaluation = row.get("evaluation") or {}
    if evaluation.get("blessed") is None:
        return "-"
    failed = [c["check"] for c in evaluation.get("checks", []) if not c["passed"]] + evaluation.get("failures", [])
    return "BLESSED" if evaluation["blessed"] and not failed else "NOT BLESSED: " + "; ".join(failed)


def _serving_cell(row: dict) -> str:
    serving = row["serving"]
    text = " ".join([serving["state"], *serving["labels"]])
    if serving["rolled_back"]:
        text += f" ROLLED BACK ({serving['rolled_back'].get('reason', '')})"
    return text


def _monitoring_cell(row: dict) -> str:
    m = row.get("monitoring")
    if not m:
        return "-"
    return f"{m['status']} {m['window']}" + (f" ({'; '.join(m['alerts'])})" if m["alerts"] else "")


def _hyperparameters_cell(row: dict) -> str:
    values = row.get("hyperparameters")
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) if values else "-"


COLUMNS = ("VERSION", "PUSHED (UTC)", "RUN", "WHY", "TRAINED ON", "EVAL", "AUC", "VS BASELINE", "SERVING",
           "MONITORING", "BLESSING", "HYPERPARAMETERS", "MODEL CARD")


def table(registry: dict) -> str:
    """One line per version, newest first, columns aligned."""
    lines = []
    for row in registry["versions"]:
        auc, against = _metric_cell(row)
        evaluated = row.get("evaluated_on_span")
        lines.append((str(row["version"]), row.get("pushed_at") or "-", row.get("run") or row.get("note", "-"),
                      row.get("reason") or "-", _spans(row.get("trained_on_spans", [])),
                      "-" if evaluated is None else str(evaluated), auc, against, _serving_cell(row),
                      _monitoring_cell(row), _blessing_cell(row), _hyperparameters_cell(row),
                      row.get("model_card") or "-"))
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *lines, strict=False)]
    text = [f"Model '{registry['model']}' of pipeline '{registry['pipeline']}': {len(lines)} version"
            f"{'' if len(lines) == 1 else 's'} ({registry['serving_base']}; ML Metadata: {registry['metadata']})"]
    text += [f"note: {n}" for n in registry["notes"]]
    if lines:
        text += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in [COLUMNS, *lines]]
    return "\n".join(text)


def load_config_or_exit() -> Config:
    """The configuration ($TFX_E2E_PROFILE, else local; the data root need not exist still); exit 2 on an error,
    or for metadata: managed (ML Metadata is the orchestrator's: Vertex AI, Kubeflow)."""
    from pipeline.config import ConfigError, exit_on_config_error, load_config

    with exit_on_config_error():
        config = load_config(check_data=False)
        if config.metadata == "managed":
            raise ConfigError("metadata: managed: ML Metadata is kept by the orchestrator (Vertex AI, Kubeflow); "
                              "the registry reads TFX's own store (metadata: sqlite or mysql)")
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.models", description=(
        "Every version of the model, newest first: pushed when, by which run and why, trained and evaluated on "
        "which spans, hyperparameters, metrics against the baseline, blessing, serving and monitoring state."))
    parser.add_argument("--json", action="store_true", help="the registry as JSON (docs/registry.md)")
    args = parser.parse_args(argv)
    config = load_config_or_exit()
    try:
        registry = versions(config, open_graph(config))
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(registry, indent=2, sort_keys=True) if args.json else table(registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The model card of every pushed version (Mitchell et al. 2019, "Model Cards for Model Reporting"), in HTML,
Markdown and JSON, with the field names of Google's Model Card Toolkit schema (docs/registry.md#model-cards).

model-card-toolkit 2.0 cannot be installed beside TFMA 0.47 and protobuf 4 (and tfx-addons' generator needs
tfx < 1.11), so the card is made here from what the registry reads (registry/models.py: ML Metadata) and from the
Evaluator's TFMA result (per-slice metrics and plots) and the statistics of the data.

Where: <output_root>/model_cards/<model_name>/<version>/ (card_dir), beside the serving base path and never in
a version folder (TF Serving, the push's byte-identity check and the Kubernetes publisher see only the model).
When: runners/harness.py, once the run has succeeded, for the versions this run's Pusher pushed: a failed push
has no pushed version, and a run that found its model already serving, or an unchanged re-run, pushed nothing
and writes nothing. A card that cannot be written is a warning, never a failed run: the version is pushed,
recorded and serving by then; `python -m registry.model_card` writes it later. A card is written whole (a hidden
folder renamed into place); retention (pipeline/retention.py) removes it with its version.

`python -m registry.model_card [--version V]`: writes the card of V, or of every pushed version on disk that has
none (Airflow runs, or a card a run could not write). Exit 0, 1 when the version or ML Metadata is not found,
2 for a usage or configuration error.
"""
import argparse
import base64
import json
import math
import os
import re
import secrets
import shutil
import sys

from pipeline.config import Config, ModelCardConfig, is_uri
from pipeline.versions import PRUNE_PREFIX, TMP_PREFIX, clean_leftovers

CARDS = "model_cards"
FILES = {"json": "model_card.json", "md": "model_card.md", "html": "model_card.html"}
OVERALL = "all examples"
JUDGED_METRIC = "auc"
# TFMA's metric names as the card states them.
METRIC_NAMES = {"example_count": "examples", "auc": "AUC", "binary_accuracy": "accuracy", "precision": "precision",
                "recall": "recall", "calibration": "calibration (mean prediction / mean label)"}


def card_dir(config: Config, version: int | str) -> str:
    """Where the card of `version` lives: <output_root>/model_cards/<model_name>/<version>/ (beside the serving
    base path, never inside a version folder that TF Serving loads and the push fingerprints)."""
    return os.path.join(config.output_root, CARDS, config.model_name, str(version))


def card_path(config: Config, version: int | str, kind: str = "html") -> str | None:
    """The card's file of that kind (html, md, json), None when the version has no card."""
    path = os.path.join(card_dir(config, version), FILES[kind])
    return path if os.path.isfile(path) else None


def remove_card(config: Config, version: int) -> None:
    """Retention: the card goes with its version."""
    if os.path.isdir(card_dir(config, version)):
        shutil.rmtree(card_dir(config, version), ignore_errors=True)


# --- the facts: TFMA's result and the statistics ------------------------------------------------------------------
def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def slice_metrics(evaluation_uri: str) -> list[dict]:
    """The candidate's metrics per slice, overall first: [{slice, features {column: value}, metrics {name: value},
    intervals {name: [lower, upper]} (when TFMA computed confidence intervals), positives, negatives}]. Positives
    and negatives (the label's classes in the slice) come from TFMA's confusion matrices, when computed."""
    import tensorflow_model_analysis as tfma

    from pipeline.evaluation import slice_name

    found = {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        metrics, intervals = {}, {}
        for entry in per_slice.metric_keys_and_values:
            key = entry.key
            if key.is_diff or key.model_name not in ("", "candidate") or not entry.value.HasField("double_value"):
                continue
            metrics[key.name] = entry.value.double_value.value
            if entry.HasField("confidence_interval"):
                interval = entry.confidence_interval
                intervals[key.name] = [interval.lower_bound.double_value.value, interval.upper_bound.double_value.value]
        features = {}
        for key in per_slice.slice_key.single_slice_keys:
            value = getattr(key, key.WhichOneof("kind"))
            features[key.column] = value.decode() if isinstance(value, bytes) else value
        name = slice_name(per_slice.slice_key)
        found[name] = {"slice": name, "features": features, "metrics": metrics, "intervals": intervals,
                       "positives": None, "negatives": None}
    for per_slice in tfma.load_plots(evaluation_uri):
        entry = found.get(slice_name(per_slice.slice_key))
        for plot in per_slice.plot_keys_and_values:
            if plot.key.model_name not in ("", "candidate") or not plot.value.HasField("confusion_matrix_at_thresholds"):
                continue
            matrices = plot.value.confusion_matrix_at_thresholds.matrices
            if entry is not None and matrices:
                m = matrices[0]
                entry["positives"] = round(m.true_positives + m.false_negatives)
                entry["negatives"] = round(m.true_negatives + m.false_positives)
    return sorted(found.values(), key=lambda s: (s["slice"] != OVERALL, sorted(s["features"].items())))


def overall_curves(evaluation_uri: str) -> dict:
    """The overall slice's plots as TFMA wrote them: `matrices` (ConfusionMatrixPlot's matrices at thresholds) and
    `buckets` (CalibrationPlot's histogram buckets), for reports/charts.py."""
    import tensorflow_model_analysis as tfma

    curves = {"matrices": [], "buckets": []}
    for per_slice in tfma.load_plots(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for plot in per_slice.plot_keys_and_values:
            if plot.key.model_name not in ("", "candidate"):
                continue
            if plot.value.HasField("confusion_matrix_at_thresholds"):
                curves["matrices"] = list(plot.value.confusion_matrix_at_thresholds.matrices)
            if plot.value.HasField("calibration_histogram_buckets"):
                curves["buckets"] = list(plot.value.calibration_histogram_buckets.buckets)
    return curves


def feature_summary(statistics_uri: str, split: str) -> dict:
    """TFDV's statistics of one split (StatisticsGen's Split-<split>/FeatureStats.pb): examples, and per feature
    its type, missing share and mean / standard deviation / range (numbers) or distinct values / most frequent."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
    if not os.path.isfile(path):
        return {}
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with open(path, "rb") as f:
        stats.ParseFromString(f.read())
    if not stats.datasets:
        return {}
    dataset = stats.datasets[0]
    features = []
    for feature in sorted(dataset.features, key=lambda f: ".".join(f.path.step) or f.name):
        row = {"name": ".".join(feature.path.step) or feature.name,
               "type": statistics_pb2.FeatureNameStatistics.Type.Name(feature.type),
               "mean": None, "std_dev": None, "min": None, "max": None, "unique": None, "top": None}
        kind = feature.WhichOneof("stats")
        if kind == "num_stats":
            s = feature.num_stats
            row.update(mean=_number(s.mean), std_dev=_number(s.std_dev), min=_number(s.min), max=_number(s.max))
            common = s.common_stats
        elif kind == "string_stats":
            s = feature.string_stats
            row.update(unique=s.unique, top=s.top_values[0].value if s.top_values else None)
            common = s.common_stats
        else:
            continue
        total = common.num_non_missing + common.num_missing
        row["missing"] = common.num_missing / total if total else 0.0
        features.append(row)
    return {"split": split, "examples": dataset.num_examples, "features": features}


def worse_slices(slices: list[dict], margin: float, min_examples: int, metric: str = JUDGED_METRIC) -> list[dict]:
    """Every slice but the overall one, judged against overall: {slice, feature, value, count, judged, worse, gap,
    why}. Markedly worse: `metric` below overall by more than `margin`, with at least `min_examples` examples.
    Not judged: too few examples, the metric missing, or one class only (an AUC needs both)."""
    overall = next((s for s in slices if not s["features"]), None)
    base = overall["metrics"].get(metric) if overall else None
    judged = []
    for s in slices:
        if not s["features"]:
            continue
        value = s["metrics"].get(metric)
        value = value if value is not None and math.isfinite(value) else None
        count = round(s["metrics"].get("example_count", 0))
        row = {"slice": s["slice"], "feature": ", ".join(s["features"]),
               "label": ", ".join(str(v) for v in s["features"].values()), "value": value, "count": count,
               "judged": False, "worse": False, "gap": None, "why": None,
               "one_class": 0 in (s.get("positives"), s.get("negatives"))}
        if base is None or value is None:
            row["why"] = f"no {metric}"
        elif count < min_examples:
            row["why"] = f"{count} example{'' if count == 1 else 's'}, fewer than {min_examples}"
        elif row["one_class"]:
            row["why"] = f"one class only ({s['positives']} positive, {s['negatives']} negative)"
        else:
            row.update(judged=True, gap=value - base, worse=value < base - margin)
        judged.append(row)
    return judged


# --- the card -------------------------------------------------------------------------------------------------------
def _described(texts: list[str]) -> list[dict]:
    return [{"description": t} for t in texts]


def _svg_graphic(name: str, svg: str) -> dict:
    # The Model Card Toolkit's Graphic: a name and a base64 image (here SVG, not PNG).
    return {"name": name, "image": base64.b64encode(svg.encode()).decode()}


def build_card(facts: dict, settings: ModelCardConfig, charts: dict[str, str]) -> dict:
    """The card as the Model Card Toolkit's schema names its fields (model_details, model_parameters,
    quantitative_analysis, considerations), and the facts it was made from under `tfx_e2e`.

    `facts`: model_name, pipeline, version, record (registry/models.py push_record), slices (slice_metrics),
    training_data and evaluation_data (feature_summary); `charts`: name -> SVG."""
    record, slices = facts["record"], facts["slices"]
    judged = worse_slices(slices, settings.worse_slice_margin, settings.min_slice_examples)
    worse = [s for s in judged if s["worse"]]
    overall = next((s for s in slices if not s["features"]), {"metrics": {}})
    base = overall["metrics"].get(JUDGED_METRIC)
    evaluation = record.get("evaluation") or {}
    performance = []
    for s in slices:
        for name, value in s["metrics"].items():
            if not math.isfinite(value):  # TFMA's NaN: a metric the slice cannot have (precision with no positive)
                continue
            metric = {"type": name, "value": repr(value), "slice": s["slice"]}
            if name in s["intervals"]:
                lower, upper = s["intervals"][name]
                metric["confidence_interval"] = {"lower_bound": repr(lower), "upper_bound": repr(upper)}
            performance.append(metric)
    data = record.get("data") or {}
    datasets = [{"name": f"training: span {d['span']}", "path": d.get("examples"),
                 "description": _data_line(d)} for d in data.get("trained_on", [])]
    if data.get("evaluated_on"):
        d = data["evaluated_on"]
        datasets.append({"name": f"evaluation: span {d['span']}, eval split", "path": d.get("examples"),
                         "description": _data_line(d)})
    limitations = [f"Markedly worse on {s['slice']}: AUC {s['value']:.4f} against {base:.4f} overall "
                   f"({s['gap']:+.4f}, {s['count']} examples)" for s in worse]
    limitations += [f"Not judged on {s['slice']}: {s['why']}" for s in judged if not s["judged"]]
    limitations += list(settings.limitations)
    blessing = "BLESSED" if evaluation.get("blessed") else "NOT BLESSED"
    return {
        "model_details": {
            "name": facts["model_name"],
            "overview": (f"A TFX model of pipeline '{facts['pipeline']}', pushed as version {facts['version']} by "
                         f"run {record.get('run')} (why: {record.get('reason')}); {blessing} by TFMA's thresholds."),
            "version": {"name": str(facts["version"]), "date": record.get("pushed_at"),
                        "diff": _baseline_line(evaluation)},
            "owners": [{"name": owner} for owner in settings.owners],
            "licenses": [{"identifier": settings.license}],
            "references": [{"reference": r} for r in (record.get("model"), record.get("destination")) if r],
            "path": record.get("destination"),
        },
        "model_parameters": {
            "model_architecture": ("Keras DNN over TF Transform features (modules/model.py); hyperparameters: "
                                   + ", ".join(f"{k}={v}" for k, v in (record.get("hyperparameters") or {}).items())
                                   + f"; from the {record.get('hyperparameters_from')}"),
            "data": datasets,
            "input_format": "tf.Example (serving_default: serialized tf.Example; the raw CSV columns)",
            "output_format": "the probability that the tip is more than 20% of the fare",
        },
        "quantitative_analysis": {
            "performance_metrics": performance,
            "graphics": {"description": "TFMA's result on the evaluation split: AUC per slice, and the ROC curve, "
                                        "precision-recall curve and calibration of all examples",
                         "collection": [_svg_graphic(name, svg) for name, svg in charts.items()]},
        },
        "considerations": {
            "users": _described(settings.users),
            "use_cases": _described([settings.intended_use]),
            "limitations": _described(limitations),
            "tradeoffs": _described([f"Out of scope: {u}" for u in settings.out_of_scope]),
            "ethical_considerations": [{"name": e, "mitigation_strategy": "compare the slices' metrics in this card"}
                                       for e in settings.ethical_considerations],
        },
        "tfx_e2e": {
            "pipeline": facts["pipeline"], "version": facts["version"], "run": record.get("run"),
            "reason": record.get("reason"), "pushed_at": record.get("pushed_at"),
            "out_of_scope": list(settings.out_of_scope), "intended_use": settings.intended_use,
            "blessed": evaluation.get("blessed"), "checks": evaluation.get("checks", []),
            "failures": evaluation.get("failures", []), "baseline": evaluation.get("baseline"),
            "hyperparameters": record.get("hyperparameters"), "training": record.get("training"),
            "data": data, "training_data": facts.get("training_data") or {},
            "evaluation_data": facts.get("evaluation_data") or {},
            "slices": [{**{k: s[k] for k in ("slice", "features", "positives", "negatives")},
                        "metrics": {k: _number(v) for k, v in s["metrics"].items()}} for s in slices],
            "worse_slices": judged, "worse_slice_margin": settings.worse_slice_margin,
            "min_slice_examples": settings.min_slice_examples, "charts": list(charts),
        },
    }


def _data_line(d: dict) -> str:
    rows = f"{d['csv_rows']} CSV rows" if d.get("csv_rows") is not None else "CSV rows not recorded"
    return f"{rows}, input {d.get('input_base') or '-'}, sha256 {d.get('sha256') or '-'}"


def _baseline_line(evaluation: dict) -> str:
    baseline = evaluation.get("baseline")
    if not baseline:
        return "the first blessed model (no baseline)"
    auc, base = evaluation.get("metrics", {}).get("auc"), evaluation.get("baseline_metrics", {}).get("auc")
    change = f": AUC {auc - base:+.4f}" if auc is not None and base is not None else ""
    return f"against the baseline pushed as version {', '.join(map(str, baseline['versions'])) or '?'}{change}"


# --- rendering --------------------------------------------------------------------------------------------------------
def _markdown_text(value) -> str:
    """Text from the configuration or the data in Markdown, read as text on one line: emphasis, links, code,
    HTML, table pipes and a leading block marker escaped (an underscore inside a word is no emphasis)."""
    text = " ".join(str(value).split())
    text = re.sub(r"[\\`*\[\]<>&|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", lambda m: "\\" + m.group(0), text)
    text = re.sub(r"^(\d+)([.)])", r"\1\\\2", text)  # "1." would start a list
    return re.sub(r"^([#+=-])", r"\\\1", text)


def _statistic(value) -> str:
    """A feature statistic: whole beyond 1,000 (a census tract, a timestamp), else to 4 decimals."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4f}"


def _format(value, name: str = "") -> str:
    """A metric as the card prints it: counts whole, rates to 4 decimals, '-' where TFMA has no value (NaN)."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "-"
    if name == "example_count":
        return str(round(value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(card: dict, charts: dict[str, str]) -> tuple[str, str]:
    """(Markdown, HTML) of the card: one template, two autoescaped renderings. The HTML inlines its charts (no
    URL, script or font from anywhere); the Markdown links the SVG files written beside it."""
    import jinja2

    rows = _metric_rows(card)
    common = {"card": card, "x": card["tfx_e2e"], "rows": rows, "metric_names": METRIC_NAMES,
              "columns": [c for c in METRIC_NAMES if any(c in r["metrics"] for r in rows)]}
    loader = jinja2.PackageLoader("registry", "templates")  # registry/templates/model_card.{md,html}.j2
    markdown_env = jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                      undefined=jinja2.StrictUndefined)
    markdown_env.filters.update(t=_markdown_text, f=_format, n=_statistic)
    markdown = markdown_env.get_template("model_card.md.j2").render(**common, charts=list(charts))
    html_env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)
    html_env.filters.update(t=lambda v: " ".join(str(v).split()), f=_format, n=_statistic)
    page = html_env.get_template("model_card.html.j2").render(
        **common, charts={name: jinja2.utils.markupsafe.Markup(svg) for name, svg in charts.items()})
    return markdown, page


def _metric_rows(card: dict) -> list[dict]:
    flags = {s["slice"]: s for s in card["tfx_e2e"]["worse_slices"]}
    return [{"slice": s["slice"], "metrics": s["metrics"], "flag": flags.get(s["slice"])}
            for s in card["tfx_e2e"]["slices"]]


def make_charts(slices: list[dict], curves: dict, settings: ModelCardConfig) -> dict[str, str]:
    """name -> SVG (reports/charts.py): AUC per slice of each slicing feature against overall, and the ROC curve,
    precision-recall curve and calibration of all examples (TFMA's binary metrics decide at 0.5)."""
    from reports import charts as c

    found = {}
    overall = next((s for s in slices if not s["features"]), None)
    base = overall["metrics"].get(JUDGED_METRIC) if overall else None
    judged = worse_slices(slices, settings.worse_slice_margin, settings.min_slice_examples)
    if base is not None and math.isfinite(base):
        lines = [c.Threshold(f"overall {base:.3f}", base),
                 c.Threshold(f"overall - {settings.worse_slice_margin:g}", base - settings.worse_slice_margin)]
        for feature in sorted({s["feature"] for s in judged}):
            rows = [s for s in judged if s["feature"] == feature]
            labels = [s["label"] + (" (markedly worse)" if s["worse"] else "" if s["judged"] else " (not judged)")
                      for s in rows]
            found[f"auc_by_{feature}"] = c.to_svg(c.slice_bars(
                # One class only: TFMA's AUC (0) means nothing; n/a on the chart, TFMA's number in the tables.
                labels, {"AUC": [None if s["one_class"] else s["value"] for s in rows]},
                [s["count"] for s in rows], {"AUC": lines},
                title=f"AUC by {feature}"))
    if curves.get("matrices"):
        found["roc"] = c.to_svg(c.roc_curve(curves["matrices"], auc=base, threshold=0.5))
        found["precision_recall"] = c.to_svg(c.precision_recall_curve(curves["matrices"], threshold=0.5))
    if curves.get("buckets"):
        found["calibration"] = c.to_svg(c.calibration_plot(curves["buckets"], threshold=0.5))
    return found


# --- writing ----------------------------------------------------------------------------------------------------------
def collect(config: Config, graph, push) -> dict:
    """The facts of one pushed version from ML Metadata (registry/graph.py, registry/models.py), its TFMA
    result and its statistics."""
    from registry import models

    record = models.push_record(config, graph, push)
    evaluation = graph.one(push.evaluator, "evaluation", outputs=True)
    if evaluation is None:
        raise ValueError(f"version {push.version}: no Evaluator output in ML Metadata")
    evaluation_uri = graph.artifacts[evaluation].uri
    data = record["data"]
    training, evaluated = {}, {}
    if data["trained_on"]:
        statistics = graph.statistics_of(data["trained_on"][-1]["artifact_id"])
        training = feature_summary(graph.artifacts[statistics].uri, "train") if statistics else {}
    if data["evaluated_on"]:
        statistics = graph.statistics_of(data["evaluated_on"]["artifact_id"])
        evaluated = feature_summary(graph.artifacts[statistics].uri, "eval") if statistics else {}
    return {"model_name": config.model_name, "pipeline": config.pipeline_name, "version": push.version,
            "record": record, "slices": slice_metrics(evaluation_uri), "curves": overall_curves(evaluation_uri),
            "training_data": training, "evaluation_data": evaluated}


def write_card(directory: str, facts: dict, settings: ModelCardConfig) -> str:
    """Writes the card's files into `directory` whole: into a hidden folder beside it, renamed into place (a card
    already there is replaced the same way). Returns the HTML's path."""
    charts = make_charts(facts["slices"], facts["curves"], settings)
    card = build_card(facts, settings, charts)
    markdown, page = render(card, charts)
    parent, name = os.path.split(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    clean_leftovers(parent)  # what a killed writer left (pid in the name, as a push's)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}-{os.getpid()}")
    old = os.path.join(parent, f"{PRUNE_PREFIX}{name}.{secrets.token_hex(4)}-{os.getpid()}")
    os.makedirs(tmp)
    try:
        files = {FILES["json"]: json.dumps(card, indent=2, sort_keys=True, allow_nan=False) + "\n",
                 FILES["md"]: markdown, FILES["html"]: page, **{f"{n}.svg": svg for n, svg in charts.items()}}
        for file_name, text in files.items():
            with open(os.path.join(tmp, file_name), "w") as f:
                f.write(text)
        if os.path.isdir(directory):
            os.rename(directory, old)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return os.path.join(directory, FILES["html"])


def write_version(config: Config, graph, version: int) -> str:
    from registry import graph as g

    push = g.pushes(graph).get(version)
    if push is None:
        raise LookupError(f"version {version} was not pushed by this pipeline's Pusher (ML Metadata has no record)")
    return write_card(card_dir(config, version), collect(config, graph, push), config.model_card)


def pushed_by_run(graph, run_id: str) -> list[int]:
    """The versions this run's Pusher put in place (not those it found already serving)."""
    from registry import graph as g

    return sorted(v for v, push in g.pushes(graph).items()
                  if push.pusher.run_name == run_id and g.prop(graph.artifacts[push.pushed], "already_served") != 1)


def write_after_run(config: Config, run_id: str, out=sys.stdout, err=sys.stderr) -> list[str]:
    """runners/harness.py, after a successful run: the cards of the versions it pushed (none when it pushed
    nothing). A failure is a warning naming the version and the command that writes the card later."""
    if is_uri(config.output_root) or config.metadata == "managed":
        return []
    from registry import models

    written = []
    try:
        graph = models.open_graph(config)
        versions = pushed_by_run(graph, run_id) if graph is not None else []
    except Exception as e:  # noqa: BLE001 - the run succeeded; say what could not be read
        print(f"warning: model card: ML Metadata not read ({type(e).__name__}: {e}); no card written. Write it "
              "with: python -m registry.model_card", file=err)
        return []
    for version in versions:
        try:
            written.append(write_version(config, graph, version))
        except Exception as e:  # noqa: BLE001 - the version is pushed and serving; the card can be written later
            print(f"warning: model card of version {version} not written ({type(e).__name__}: {e}); the version "
                  f"is pushed and serves. Write it with: python -m registry.model_card --version {version}", file=err)
            continue
        print(f"Model card: {written[-1]}", file=out)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.model_card", description=(
        "Writes the model card (HTML, Markdown, JSON) of a pushed version, or of every pushed version on disk "
        "that has none, from ML Metadata and TFMA's result."))
    parser.add_argument("--version", type=int, help="the version (default: every version on disk without a card)")
    args = parser.parse_args(argv)
    from registry import graph as g
    from registry import models

    config = models.load_config_or_exit()
    try:
        graph = models.open_graph(config)
    except models.RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if graph is None:
        print(f"error: no ML Metadata yet for pipeline '{config.pipeline_name}': nothing was pushed", file=sys.stderr)
        return 1
    pushes = g.pushes(graph)
    if args.version is not None:
        if args.version not in pushes:
            known = ", ".join(map(str, sorted(pushes))) or "none"
            print(f"error: version {args.version} was not pushed by pipeline '{config.pipeline_name}' "
                  f"(pushed: {known})", file=sys.stderr)
            return 1
        versions = [args.version]
    else:
        on_disk = set(models.serving_states(config)[0])
        versions = [v for v in sorted(pushes) if v in on_disk and card_path(config, v) is None]
    for version in versions:
        print(f"Model card of version {version}: {write_version(config, graph, version)}")
    if not versions:
        print("Every pushed version on disk has its model card.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

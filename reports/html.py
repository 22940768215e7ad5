"""The run's reports, self-contained HTML (inline SVG charts and CSS; nothing fetched when opened):

- statistics.html: per feature, training against evaluation (and serving: make monitor's newest window) as TFDV's
  histograms or top values, counts and missing shares, the anomalies ExampleValidator found highlighted;
- evaluation.html: the blessing decision with its reasons, TFMA's metrics, ROC and precision-recall curves, a
  calibration plot, the confusion matrix at the decision threshold, per-slice bars of AUC and accuracy with example
  counts, the EvalConfig's thresholds drawn on the charts; slices in natural order.

Pages come from the jinja2 templates in templates/ (autoescaped); charts from reports/charts.py."""
import math
import os
import re

import jinja2
from markupsafe import Markup

from pipeline.evaluation import BlessingReport
from pipeline.files import link_atomic, write_atomic
from reports import charts
from reports.results import EvaluationResult, MetricBound, load_evaluation
from reports.statistics import Dataset, feature_rows, newest_serving_statistics, read_split_statistics

METRIC_COLUMNS = ("example_count", "auc", "binary_accuracy", "precision", "recall", "calibration")
SLICE_BAR_METRICS = ("auc", "binary_accuracy")
CLASS_LABELS = ("small tip", "big tip")  # the label big_tipper: 0, 1

_templates = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _svg(fig) -> Markup:
    # matplotlib writes the SVG, and escapes the labels it keeps (as comments): trusted markup.
    return Markup(charts.to_svg(fig))


def _anchor(name: str, taken: set) -> str:
    """An id for a feature's section: letters, digits and dashes only, unique on the page."""
    base = "feature-" + (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "x")
    anchor, n = base, 1
    while anchor in taken:
        n += 1
        anchor = f"{base}-{n}"
    taken.add(anchor)
    return anchor


def statistics_page(pipeline: str, datasets: list[Dataset], anomalies: list | None) -> str:
    """The statistics page for `datasets` (training first); `anomalies` (pipeline.gate.Anomaly, for the run's splits)
    None when the run has no ExampleValidator output."""
    rows = feature_rows(datasets, anomalies or [])
    taken: set = set()
    anchors = {row.name: _anchor(row.name, taken) for row in rows}
    chart_svgs = {row.name: _svg(charts.distribution(row.name, [(s.dataset, s.statistics) for s in row.sides],
                                                     highlight=bool(row.anomalies))) for row in rows}
    return _templates.get_template("statistics.html.j2").render(
        pipeline=pipeline, datasets=datasets, anomalies=anomalies or [], anomalies_known=anomalies is not None,
        rows=rows, anchors=anchors, charts=chart_svgs)


def _write(directory: str, copy_to: str | None, name: str, page: str) -> str:
    """`name` in `directory`, written atomically, and under the same name in `copy_to` (the pipeline's folder of
    the newest run's reports) as a hard link to it; returns the path in `directory`."""
    path = write_atomic(os.path.join(directory, name), page)
    if copy_to:
        link_atomic(path, os.path.join(copy_to, name))
    return path


def write_statistics(statistics_uri: str, directory: str, pipeline: str = "", anomalies: list | None = None,
                     monitoring_dir: str | None = None, previous_uri: str | None = None,
                     copy_to: str | None = None) -> str | None:
    """statistics.html in `directory` (and `copy_to`) from StatisticsGen's output, with the previous span's training
    statistics (`previous_uri`: what the data gate's drift check compared with) and the newest serving window's
    statistics under `monitoring_dir`, when make monitor wrote any; None when there are no statistics."""
    datasets = read_split_statistics(statistics_uri)
    if not datasets:
        return None
    if previous_uri:
        datasets += [d._replace(label="previous span") for d in read_split_statistics(previous_uri)
                     if d.label == "training"]
    serving = newest_serving_statistics(monitoring_dir) if monitoring_dir else None
    page = statistics_page(pipeline, datasets + ([serving] if serving else []), anomalies)
    return _write(directory, copy_to, "statistics.html", page)


def _fmt(value, metric: str) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if metric == "example_count" else f"{value:.4f}"


def _describe(bound: MetricBound) -> str:
    if bound.change:
        return f"{bound.metric} change against the baseline >= {bound.lower:+g} (change threshold)"
    parts = [f">= {bound.lower:g}" if bound.lower is not None else "", f"<= {bound.upper:g}" if bound.upper is not None
             else ""]
    return f"{bound.metric} {' and '.join(p for p in parts if p)} (value threshold)"


def threshold_lines(result: EvaluationResult) -> dict[str, list[charts.Threshold]]:
    """metric name -> the lines its charts draw: value thresholds, and a change threshold as the value it allows
    (the baseline's value plus the allowed change) when the Evaluator had a baseline."""
    lines: dict[str, list[charts.Threshold]] = {}
    for bound in result.bounds:
        if bound.change:
            base = result.overall.baseline_metrics.get(bound.metric)
            if base is not None and bound.lower is not None:
                lines.setdefault(bound.metric, []).append(
                    charts.Threshold(f"baseline {base:.4f} {bound.lower:+g}", base + bound.lower))
            continue
        for value, side in ((bound.lower, "lower"), (bound.upper, "upper")):
            if value is not None:
                lines.setdefault(bound.metric, []).append(charts.Threshold(f"{bound.metric} {side} bound {value:g}",
                                                                           value))
    return lines


def evaluation_page(pipeline: str, result: EvaluationResult, blessed: bool, report: BlessingReport) -> str:
    overall, plots = result.overall, result.plots
    matrices = list(plots.confusion_matrix_at_thresholds.matrices) if plots is not None else []
    # Evaluations from before the ConfusionMatrixAtThresholds metric: the plot's matrix nearest the threshold.
    confusion = overall.confusion or min(matrices, key=lambda m: abs(m.threshold - result.decision_threshold),
                                         default=None)
    threshold = result.decision_threshold
    curves = []
    if matrices:
        curves += [("ROC", _svg(charts.roc_curve(matrices, overall.metrics.get("auc"), threshold))),
                   ("precision-recall", _svg(charts.precision_recall_curve(matrices, threshold)))]
    if plots is not None and plots.calibration_histogram_buckets.buckets:
        curves.append(("calibration", _svg(charts.calibration_plot(plots.calibration_histogram_buckets.buckets,
                                                                   threshold=threshold))))
    if confusion is not None:
        curves.append(("confusion matrix", _svg(charts.confusion_matrix(confusion, CLASS_LABELS))))

    lines = threshold_lines(result)
    slice_charts = []
    for column in dict.fromkeys(s.column for s in result.slices[1:]):
        shown = [overall] + [s for s in result.slices if s.column == column]
        slice_charts.append((column, _svg(charts.slice_bars(
            [s.name.removeprefix(f"{column} = ") for s in shown],
            {m: [s.metrics.get(m) for s in shown] for m in SLICE_BAR_METRICS},
            [s.metrics.get("example_count") for s in shown],
            {m: lines.get(m, []) for m in SLICE_BAR_METRICS}, title=f"by {column}"))))
    thresholds = [_describe(b) for b in result.bounds] + [
        f"decision threshold {threshold:g}: a score above it predicts a {CLASS_LABELS[1]} (binary_accuracy, "
        "precision, recall, the confusion matrix)"]
    return _templates.get_template("evaluation.html.j2").render(
        pipeline=pipeline, blessed=blessed, checks=report.checks, failures=report.failures, overall=overall,
        columns=METRIC_COLUMNS, fmt=_fmt, thresholds=thresholds, curves=curves, slice_charts=slice_charts,
        slices=result.slices, uri=result.uri)


def write_evaluation(evaluation_uri: str, blessed: bool, report: BlessingReport, directory: str,
                     pipeline: str = "", copy_to: str | None = None) -> str:
    """evaluation.html in `directory` (and `copy_to`) from the Evaluator's output."""
    page = evaluation_page(pipeline, load_evaluation(evaluation_uri), blessed, report)
    return _write(directory, copy_to, "evaluation.html", page)

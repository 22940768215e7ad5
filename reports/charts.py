"""Charts for the offline reports, model cards and the console: matplotlib figures rendered to inline SVG.

Text is drawn as paths (matplotlib's default svg.fonttype), so a page needs no font, script or image from anywhere;
ids are salted with a constant, so the same figure gives the same bytes (a re-run rewrites nothing that changed).

The builders take TFMA's and TFDV's own outputs (plot protos, feature statistics) and draw their numbers; each returns
a Figure: `to_svg(slice_bars(...))` is the inline SVG.

- slice_bars: a metric per slice (horizontal bars, example counts in the labels), threshold lines
- roc_curve, precision_recall_curve: from TFMA's ConfusionMatrixPlot matrices, the decision threshold marked
- calibration_plot: from TFMA's CalibrationPlot buckets, regrouped into equal-width bins
- confusion_matrix: one TFMA confusion matrix (ConfusionMatrixAtThresholds) as a 2x2 grid of counts
- distribution: one feature across datasets (training, evaluation, serving): TFDV's histogram or its top values
"""
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import matplotlib
from matplotlib.figure import Figure

matplotlib.rcParams["svg.hashsalt"] = "tfx-e2e"
# Labels are data (feature names, slice values): a "$" in one is text, not mathtext.
matplotlib.rcParams["text.parse_math"] = False
# Census tracts (17031081000) read as themselves, not as an offset from 1.703e10.
matplotlib.rcParams["axes.formatter.useoffset"] = False

# One color per dataset, the same on every chart and page.
DATASET_COLORS = {"training": "#1f77b4", "evaluation": "#ff7f0e", "serving": "#2ca02c", "previous span": "#9467bd"}
OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2")
THRESHOLD_COLORS = ("#d62728", "#7f7f7f", "#17becf")
METRIC_COLORS = ("#4c72b0", "#55a868", "#8172b3", "#937860")  # slice_bars' panels
TOP_VALUES = 10  # categories drawn per categorical feature


class Threshold(NamedTuple):
    """A line drawn on a chart: `label` (e.g. 'AUC lower bound 0.9') at `value`."""
    label: str
    value: float


def figure(width: float = 6.0, height: float = 3.2, layout: str | None = "constrained") -> Figure:
    """A figure outside pyplot's global state (safe from threads; nothing to close). `layout=None` leaves the
    margins to the caller (subplots_adjust): constrained layout measures every text twice, half a figure's time."""
    return Figure(figsize=(width, height), layout=layout)


def to_svg(fig: Figure) -> str:
    """The figure as an <svg> element to inline in HTML (no XML declaration or DOCTYPE)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def slice_bars(labels: Sequence[str], values: Mapping[str, Sequence[float | None]],
               counts: Sequence[float | None] = (), thresholds: Mapping[str, Sequence[Threshold]] | None = None,
               title: str = "") -> Figure:
    """One panel per metric (`values`: metric name -> a value per label, None or NaN where the slice has none),
    a horizontal bar per slice in the order given, its example count in the label, and each metric's
    `thresholds` as vertical lines."""
    thresholds = thresholds or {}
    names = [f"{label}  (n={count:.0f})" if _finite(count) else label
             for label, count in zip(labels, list(counts) or [None] * len(labels), strict=True)]
    fig = figure(3.2 + 2.6 * len(values), 1.0 + 0.22 * max(len(labels), 1))
    axes = fig.subplots(1, len(values), sharey=True, squeeze=False)[0]
    positions = range(len(labels))
    for i, (ax, (metric, per_slice)) in enumerate(zip(axes, values.items(), strict=True)):
        per_slice = list(per_slice)
        bars = [v if _finite(v) else 0.0 for v in per_slice]
        ax.barh(positions, bars, color=METRIC_COLORS[i % len(METRIC_COLORS)], height=0.7)
        for y, v in enumerate(per_slice):
            ax.text(v if _finite(v) else 0.0, y, f" {v:.3f}" if _finite(v) else " n/a", va="center", fontsize=7)
        for j, line in enumerate(thresholds.get(metric, ())):
            ax.axvline(line.value, color=THRESHOLD_COLORS[j % len(THRESHOLD_COLORS)], linestyle="--", linewidth=1.2,
                       label=line.label)
        if thresholds.get(metric):
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlim(0, 1.15 * max([1.0] + bars + [t.value for t in thresholds.get(metric, ())]))
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(list(positions), names)
    axes[0].invert_yaxis()  # the first slice on top
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _operating_point(matrices, threshold: float | None):
    if threshold is None:
        return None
    return min(matrices, key=lambda m: abs(m.threshold - threshold), default=None)


def roc_curve(matrices: Iterable, auc: float | None = None, threshold: float | None = None,
              title: str = "ROC curve") -> Figure:
    """The ROC curve (false positive rate, recall) through TFMA's ConfusionMatrixPlot `matrices` (its
    `confusion_matrix_at_thresholds.matrices`), TFMA's `auc` in the legend, the matrix nearest `threshold` marked."""
    matrices = [m for m in matrices if _finite(m.false_positive_rate) and _finite(m.recall)]
    fig = figure(4.0, 3.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", linewidth=1, label="chance")
    ax.plot([m.false_positive_rate for m in matrices], [m.recall for m in matrices], color=DATASET_COLORS["training"],
            label=f"model (AUC {auc:.4f})" if _finite(auc) else "model")
    point = _operating_point(matrices, threshold)
    if point is not None:
        ax.plot([point.false_positive_rate], [point.recall], "o", color=THRESHOLD_COLORS[0],
                label=f"threshold {threshold:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="recall (true positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def precision_recall_curve(matrices: Iterable, threshold: float | None = None,
                           title: str = "Precision-recall curve") -> Figure:
    """Precision against recall through TFMA's ConfusionMatrixPlot `matrices`, the matrix nearest `threshold` marked
    (thresholds with no predicted positive, where precision is undefined, are left out)."""
    matrices = [m for m in matrices if _finite(m.precision) and _finite(m.recall)
                and m.true_positives + m.false_positives > 0]
    fig = figure(4.0, 3.6)
    ax = fig.subplots()
    ax.plot([m.recall for m in matrices], [m.precision for m in matrices], color=DATASET_COLORS["training"],
            label="model")
    point = _operating_point(matrices, threshold)
    if point is not None:
        ax.plot([point.recall], [point.precision], "o", color=THRESHOLD_COLORS[0], label=f"threshold {threshold:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return fig


class CalibrationBin(NamedTuple):
    low: float
    high: float
    examples: float           # weighted
    mean_prediction: float    # NaN when empty
    positive_rate: float      # the labels' mean; NaN when empty


def calibration_bins(buckets: Iterable, bins: int = 10) -> list[CalibrationBin]:
    """TFMA's CalibrationPlot buckets (`calibration_histogram_buckets.buckets`: fine, equal-width over [0, 1] plus
    an underflow and an overflow bucket) summed into `bins` equal-width bins over [0, 1]."""
    sums = [[0.0, 0.0, 0.0] for _ in range(bins)]
    for b in buckets:
        low = b.lower_threshold_inclusive
        index = min(max(int(math.floor(low * bins + 1e-9)) if math.isfinite(low) else 0, 0), bins - 1)
        sums[index][0] += b.num_weighted_examples.value
        sums[index][1] += b.total_weighted_refined_prediction.value
        sums[index][2] += b.total_weighted_label.value
    return [CalibrationBin(i / bins, (i + 1) / bins, n, p / n if n else math.nan, y / n if n else math.nan)
            for i, (n, p, y) in enumerate(sums)]


def calibration_plot(buckets: Iterable, bins: int = 10, threshold: float | None = None,
                     title: str = "Calibration") -> Figure:
    """Observed positive rate against the mean prediction per bin (calibration_bins), the examples per bin below,
    the decision `threshold` as a vertical line."""
    grouped = calibration_bins(buckets, bins)
    full = [b for b in grouped if b.examples > 0]
    fig = figure(4.0, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", linewidth=1, label="perfectly calibrated")
    top.plot([b.mean_prediction for b in full], [b.positive_rate for b in full], "o-", color=DATASET_COLORS["training"],
             label="model")
    bottom.bar([(b.low + b.high) / 2 for b in grouped], [b.examples for b in grouped], width=1 / bins * 0.9,
               color=DATASET_COLORS["evaluation"])
    if threshold is not None:
        for ax in (top, bottom):
            ax.axvline(threshold, color=THRESHOLD_COLORS[0], linestyle="--", linewidth=1.2,
                       label=f"threshold {threshold:g}" if ax is top else None)
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="observed positive rate", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="mean prediction", ylabel="examples")
    return fig


def confusion_matrix(matrix, labels: tuple[str, str] = ("negative", "positive"), title: str = "") -> Figure:
    """One TFMA confusion matrix (an entry of `confusion_matrix_at_thresholds.matrices`) as a 2x2 grid: actual class
    in rows, predicted class in columns, each cell's count and share of the examples."""
    cells = [[matrix.true_negatives, matrix.false_positives], [matrix.false_negatives, matrix.true_positives]]
    total = sum(map(sum, cells)) or 1.0
    fig = figure(3.6, 3.0)
    ax = fig.subplots()
    ax.imshow(cells, cmap="Blues", vmin=0, vmax=max(map(max, cells)) or 1.0)
    peak = max(map(max, cells))
    for row in range(2):
        for column in range(2):
            count = cells[row][column]
            ax.text(column, row, f"{count:.0f}\n{count / total:.1%}", ha="center", va="center", fontsize=10,
                    color="white" if count > peak / 2 else "black")
    ax.set_xticks([0, 1], [f"predicted {labels[0]}", f"predicted {labels[1]}"], fontsize=8)
    ax.set_yticks([0, 1], [f"actual {labels[0]}", f"actual {labels[1]}"], fontsize=8)
    ax.set_title(title or f"Confusion matrix at threshold {matrix.threshold:g}", fontsize=9)
    return fig


def _histogram(feature_statistics):
    """TFDV's STANDARD histogram of a numeric feature: [(low, high, share of the non-missing values)]."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    buckets = [b for h in feature_statistics.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD
               for b in h.buckets]
    total = sum(b.sample_count for b in buckets) or 1.0
    return [(b.low_value, b.high_value, b.sample_count / total) for b in buckets]


def _top_values(feature_statistics):
    """A categorical feature's values with their share of all its values (TFDV's rank histogram, else its top
    values)."""
    string_stats = feature_statistics.string_stats
    pairs = ([(b.label, b.sample_count) for b in string_stats.rank_histogram.buckets]
             or [(v.value, v.frequency) for v in string_stats.top_values])
    total = string_stats.common_stats.tot_num_values or sum(c for _, c in pairs) or 1.0
    return [(label, count / total) for label, count in pairs]


def distribution(name: str, sides: Sequence[tuple[str, object]], highlight: bool = False) -> Figure:
    """Feature `name` across datasets: `sides` is [(dataset label, TFDV FeatureNameStatistics)] (training,
    evaluation, serving). Numeric features: step histograms of TFDV's STANDARD histogram (share of values per bucket);
    categorical ones: the shares of the first dataset's top values, side by side. `highlight` frames the chart red
    (an anomaly)."""
    fig = figure(5.6, 2.6, layout=None)
    fig.subplots_adjust(left=0.11, right=0.98, top=0.9, bottom=0.3)
    ax = fig.subplots()
    colors = [DATASET_COLORS.get(label, OTHER_COLORS[i % len(OTHER_COLORS)]) for i, (label, _) in enumerate(sides)]
    if sides and sides[0][1].HasField("num_stats"):
        for (label, stats), color in zip(sides, colors, strict=True):
            buckets = _histogram(stats) if stats.HasField("num_stats") else []
            if buckets:
                edges = [buckets[0][0]] + [b[1] for b in buckets]
                ax.stairs([b[2] for b in buckets], edges, color=color, linewidth=1.5, label=label)
        ax.set_ylabel("share of values", fontsize=8)
    else:
        shares = [dict(_top_values(stats)) if stats.HasField("string_stats") else {} for _, stats in sides]
        order = []
        for per_side in shares:
            order += [v for v in per_side if v not in order]
        order = order[:TOP_VALUES]
        width = 0.8 / max(len(sides), 1)
        for i, ((label, _), per_side, color) in enumerate(zip(sides, shares, colors, strict=True)):
            ax.bar([j + i * width for j in range(len(order))], [per_side.get(v, 0.0) for v in order], width=width,
                   color=color, label=label)
        ax.set_xticks([j + width * (len(sides) - 1) / 2 for j in range(len(order))],
                      [v if len(v) <= 18 else v[:17] + "…" for v in order], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("share of values", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(name, fontsize=9, color=THRESHOLD_COLORS[0] if highlight else "black")
    if ax.get_legend_handles_labels()[0]:  # a feature no dataset has a value of draws nothing
        ax.legend(fontsize=7)
    if highlight:
        for spine in ax.spines.values():
            spine.set(color=THRESHOLD_COLORS[0], linewidth=2)
    return fig

"""The model card's charts (reports/charts.py: matplotlib to inline, byte-stable SVG): AUC per slice against
overall, the ROC curve and the calibration of the overall slice."""
from reports.charts import figure, to_svg

WORSE, JUDGED, UNJUDGED, OVERALL = "#c0392b", "#4c72b0", "#bbbbbb", "#333333"


def slice_bars(feature: str, slices: list[dict], overall: float, margin: float) -> str:
    """One bar per value of `feature`: its AUC, red where markedly worse (`worse`), grey where not judged;
    the overall AUC and overall - margin as vertical lines."""
    rows = sorted(slices, key=lambda s: s["label"])
    fig = figure(6.0, max(1.6, 0.28 * len(rows) + 0.9))
    ax = fig.add_subplot()
    values = [s["auc"] if s["auc"] is not None else 0.0 for s in rows]
    colors = [WORSE if s["worse"] else JUDGED if s["judged"] else UNJUDGED for s in rows]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), [f"{s['label']} (n={s['count']})" for s in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(overall, color=OVERALL, linewidth=1)
    ax.axvline(overall - margin, color=OVERALL, linewidth=1, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_title(f"AUC by {feature}", fontsize=9)
    ax.set_xlabel(f"line: overall {overall:.3f}; dashed: overall - {margin:g}\n"
                  "red: markedly worse; grey: not judged (too few examples, one class)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    return to_svg(fig)


def roc_curve(points: list[tuple[float, float]], auc: float | None) -> str:
    """The ROC curve: (false positive rate, true positive rate) points, from TFMA's confusion matrices."""
    fig = figure(3.4, 3.2)
    ax = fig.add_subplot()
    xs, ys = zip(*sorted(points), strict=True)
    ax.plot(xs, ys, color=JUDGED, label=f"model (AUC {auc:.3f})" if auc is not None else "model")
    ax.plot([0, 1], [0, 1], color=UNJUDGED, linestyle="--", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return to_svg(fig)


def calibration(buckets: list[dict]) -> str:
    """Mean label against mean prediction per prediction bucket (area: examples), with the diagonal."""
    fig = figure(3.4, 3.2)
    ax = fig.add_subplot()
    total = sum(b["count"] for b in buckets) or 1
    ax.plot([0, 1], [0, 1], color=UNJUDGED, linestyle="--", label="perfect calibration")
    ax.scatter([b["prediction"] for b in buckets], [b["label"] for b in buckets],
               s=[8 + 400 * b["count"] / total for b in buckets], color=JUDGED, label="buckets (area: examples)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean prediction", ylabel="share of big tips")
    ax.legend(fontsize=7, loc="upper left")
    return to_svg(fig)

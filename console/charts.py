"""The console's charts (reports/charts.py: matplotlib to inline SVG): metrics of every evaluation over time, per
experiment, with the blessing threshold; monitoring windows over time."""
from datetime import datetime, timezone

from reports.charts import figure, to_svg

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


def metric_over_time(evaluations: list[dict], metric: str, threshold_metric: str) -> str:
    """`metric` of each evaluation on a time axis, a series per experiment: filled when blessed, hollow when not, a
    star where the model was pushed as a version; the value threshold each Evaluator ran with, dashed, for the
    blessing's metric. '' when no evaluation has the metric."""
    points = [e for e in evaluations if e["metrics"].get(metric) is not None]
    if not points:
        return ""
    fig = figure(6.0, 2.6)
    ax = fig.add_subplot()
    for i, experiment in enumerate(dict.fromkeys(e["experiment"] for e in points)):
        color = PALETTE[i % len(PALETTE)]
        mine = [e for e in points if e["experiment"] == experiment]
        times = [_when(e["time"]) for e in mine]
        ax.plot(times, [e["metrics"][metric] for e in mine], color=color, linewidth=1, label=experiment)
        for e, t in zip(mine, times, strict=True):
            ax.plot([t], [e["metrics"][metric]], marker="*" if e["versions"] else "o",
                    markersize=11 if e["versions"] else 6, color=color,
                    markerfacecolor=color if e["blessed"] else "white")
        bounds = [(t, e["auc_lower_bound"]) for e, t in zip(mine, times, strict=True)
                  if e["auc_lower_bound"] is not None]
        if metric == threshold_metric and bounds:
            ax.step([t for t, _ in bounds], [b for _, b in bounds], where="post", color=color, linestyle="--",
                    linewidth=1, label=f"{experiment}: blessing threshold")
            if len(bounds) == 1:
                ax.axhline(bounds[0][1], color=color, linestyle="--", linewidth=1)
    ax.set_ylabel(metric)
    ax.set_xlabel("evaluated (UTC); filled: blessed, hollow: not, star: pushed as a version")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.tick_params(axis="x", labelrotation=20)
    return to_svg(fig)


def monitoring_over_time(windows: list[dict]) -> str:
    """Per window: the largest skew, drift and score distance as a share of its threshold (1 = the alert line),
    and the requests; '' without windows."""
    if not windows:
        return ""
    fig = figure(7.0, 3.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    times = [_when(w["window"]["start_seconds"]) for w in windows]
    for i, check in enumerate(("skew", "drift", "score")):
        ratios = []
        for w in windows:
            found = (w["drift"]["findings"] if check == "drift" else
                     [f for info in w["versions"].values() for f in info.get(check, [])])
            values = [f["value"] / f["threshold"] for f in found if f.get("threshold")]
            ratios.append(max(values) if values else float("nan"))
        top.plot(times, ratios, marker="o", color=PALETTE[i], label=check)
    top.axhline(1.0, color="#c62828", linestyle="--", linewidth=1, label="alert (= threshold)")
    top.set_ylabel("largest distance / threshold")
    top.grid(alpha=0.3)
    top.legend(fontsize="small", loc="best")
    days = windows[-1]["window"].get("minutes", 60) / 1440 * 0.8  # bar width: a bar per window, in days
    bottom.bar(times, [w["requests"] for w in windows], width=days, color=["#c62828" if w["status"] == "ALERT"
                                                                          else "#5c7cba" for w in windows])
    bottom.set_ylabel("requests")
    bottom.set_xlabel("window start (UTC); red: ALERT")
    bottom.tick_params(axis="x", labelrotation=20)
    return to_svg(fig)

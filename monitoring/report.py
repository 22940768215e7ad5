"""A window's JSON and self-contained HTML reports (charts as inline SVG: nothing fetched),
and the newest window's distances as Prometheus gauges in a node_exporter textfile."""
import html
import json
import os
import time

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import statistics_pb2

from pipeline.files import write_atomic

TOP_VALUES = 12  # categories charted per categorical feature
COLORS = ("#1f77b4", "#ff7f0e")
STYLE = ("<style>body{font-family:sans-serif;max-width:70em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
         ".alert{color:#b00;font-weight:bold}</style>")


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(epoch))


def _feature(stats: statistics_pb2.DatasetFeatureStatisticsList, name: str):
    for feature in stats.datasets[0].features:
        if ".".join(feature.path.step) == name or feature.name == name:
            return feature
    return None


def _distribution(feature) -> tuple[str, list]:
    """('numeric', [(low, high, share)]) from the STANDARD histogram, or ('categorical', [(value, share)])."""
    if feature.HasField("num_stats"):
        buckets = [b for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD
                   for b in h.buckets]
        total = sum(b.sample_count for b in buckets) or 1.0
        return "numeric", [(b.low_value, b.high_value, b.sample_count / total) for b in buckets]
    buckets = feature.string_stats.rank_histogram.buckets
    total = sum(b.sample_count for b in buckets) or 1.0
    return "categorical", [(b.label, b.sample_count / total) for b in buckets]


def chart(name: str, sides: list[tuple[str, statistics_pb2.DatasetFeatureStatisticsList]]) -> str:
    """An inline SVG comparing `name` across [(label, statistics)]: step histograms (shares of examples per bucket)
    or the shares of the top values side by side; '' when no side has the feature. Plain SVG: the page must
    fetch nothing."""
    found = [(label, _distribution(f)) for label, stats in sides if stats is not None
             for f in [_feature(stats, name)] if f is not None]
    if not found:
        return ""
    left, top, width, height = 50, 24, 560, 150
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{top + height + 90}" '
             'font-family="sans-serif" font-size="10">',
             f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(name)}</text>',
             f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" stroke="#444"/>']
    if found[0][1][0] == "numeric":
        low = min(b[0] for _, (_, buckets) in found for b in buckets[:1])
        high = max(b[1] for _, (_, buckets) in found for b in buckets[-1:])
        peak = max((b[2] for _, (_, buckets) in found for b in buckets), default=0) or 1.0
        span = (high - low) or 1.0
        for i, (_, (_, buckets)) in enumerate(found):
            points = []
            for b in buckets:
                y = top + height * (1 - b[2] / peak)
                points += [(left + width * (b[0] - low) / span, y), (left + width * (b[1] - low) / span, y)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.5" '
                         f'points="{path}"/>')
        parts += [f'<text x="{left}" y="{top + height + 14}">{low:.4g}</text>',
                  f'<text x="{left + width}" y="{top + height + 14}" text-anchor="end">{high:.4g}</text>',
                  f'<text x="4" y="{top + 8}">{peak:.0%}</text>']
    else:
        order = []
        for _, (_, values) in found:
            order += [v for v, _ in values if v not in order]
        order = order[:TOP_VALUES]
        peak = max((share for _, (_, values) in found for v, share in values if v in order), default=0) or 1.0
        slot = width / max(len(order), 1)
        bar = slot * 0.8 / len(found)
        for i, (_, (_, values)) in enumerate(found):
            shares = dict(values)
            for j, value in enumerate(order):
                h = height * shares.get(value, 0.0) / peak
                parts.append(f'<rect x="{left + j * slot + i * bar:.1f}" y="{top + height - h:.1f}" width="{bar:.1f}" '
                             f'height="{h:.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
        for j, value in enumerate(order):
            x, y = left + (j + 0.4) * slot, top + height + 8
            parts.append(f'<text x="{x:.1f}" y="{y}" transform="rotate(35 {x:.1f} {y})">'
                         f'{html.escape(value[:22])}</text>')
        parts.append(f'<text x="4" y="{top + 8}">{peak:.0%}</text>')
    for i, (label, _) in enumerate(found):
        x = left + width - 170
        parts += [f'<rect x="{x}" y="{top + 12 * i}" width="10" height="8" fill="{COLORS[i % len(COLORS)]}"/>',
                  f'<text x="{x + 14}" y="{top + 8 + 12 * i}">{html.escape(label)}</text>']
    return "".join(parts) + "</svg>"


def _rows(findings: list[dict], columns: list[str]) -> str:
    cells = []
    for f in findings:
        values = []
        for c in columns:
            v = f.get(c)
            values.append(f"{v:.4f}" if isinstance(v, float) else html.escape("" if v is None else str(v)))
        mark = ' class="alert"' if f.get("alert") else ""
        cells.append(f"<tr{mark}>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in columns)
    return f"<table><tr>{head}</tr>{''.join(cells)}</table>" if findings else "<p>none</p>"


def write_window(directory: str, window: dict, charts: list[tuple[str, str]],
                 statistics: statistics_pb2.DatasetFeatureStatisticsList | None = None) -> tuple[str, str]:
    """window-<start>.json and window-<start>.html in `directory`, and the window's serving statistics (TFDV, text
    format) as window-<start>-statistics.pbtxt, which the run's statistics report draws beside training and
    evaluation (reports/statistics.py); returns the JSON's and the HTML's paths."""
    name = "window-" + window["window"]["start"].replace(":", "")
    if statistics is not None:
        write_atomic(os.path.join(directory, name + "-statistics.pbtxt"), text_format.MessageToString(statistics))
    json_path = write_atomic(os.path.join(directory, name + ".json"), json.dumps(window, indent=2) + "\n")
    status = window["status"]
    not_compared = ": under monitoring.min_requests, not compared"
    versions = "".join(
        f"<h3>version {v} ({info['requests']} requests{'' if info.get('compared', True) else not_compared})</h3>"
        f"<p>trained in run {html.escape(str(info['training_run']))}</p>"
        f"{_rows(info['skew'] + info['score'], ['check', 'feature', 'measure', 'value', 'threshold', 'alert', 'description'])}"
        for v, info in window["versions"].items())
    figures = "".join(f"<h3>{html.escape(title)}</h3>{svg}" for title, svg in charts)
    alerts = "".join(f"<li>{html.escape(a)}</li>" for a in window["alerts"])
    skipped = "".join(f"<li>{html.escape(p['path'])}: {html.escape(p['error'])}</li>" for p in window["files_skipped"])
    # make decay's history of the served versions on labelled spans, beside the windows (monitoring/decay.py)
    decay = ('<h2>Model decay</h2><p><a href="decay.html">the served versions\' metrics on labelled spans</a></p>'
             if os.path.exists(os.path.join(directory, "decay.html")) else "")
    page = f"""<!doctype html><meta charset="utf-8"><title>Monitoring {html.escape(window['model'])}</title>{STYLE}
<h1>{html.escape(window['model'])}: {window['window']['start']} to {window['window']['end']}:
<span{' class="alert"' if status == 'ALERT' else ''}>{status}</span></h1>
<p>{window['requests']} requests, {window['examples']} examples ({window['undecodable']} not decodable);
previous window: {window['drift']['previous_window'] or 'none'}. Times: {html.escape(window['time_source'])}.</p>
<ul>{alerts}</ul>
<h2>Skew against training, scores against the evaluation</h2>{versions}
<h2>Drift against the previous window</h2>
{_rows(window['drift']['findings'], ['feature', 'measure', 'value', 'threshold', 'alert', 'description'])}
<h2>Schema anomalies (environment SERVING)</h2>
{_rows(window['anomalies'], ['feature', 'kind', 'share', 'description', 'alert'])}
<h2>Features that moved</h2>{figures or '<p>none</p>'}
{f'<h2>Files skipped</h2><ul>{skipped}</ul>' if skipped else ''}
{decay}"""
    return json_path, write_atomic(os.path.join(directory, name + ".html"), page)


def write_gauges(path: str, model: str, window: dict) -> str:
    """The window's distances, thresholds, anomaly shares, request counts and alert state in node_exporter's
    textfile format (prometheus_client's write_to_textfile: written beside, then renamed)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = ["model", "version", "check", "feature", "measure"]
    distance = Gauge("tfx_e2e_monitoring_distance", "Distance of a feature's serving distribution (skew: against "
                     "training; drift: the previous window; score: the evaluation)", labels, registry=registry)
    threshold = Gauge("tfx_e2e_monitoring_threshold", "The comparator's threshold", labels, registry=registry)
    share = Gauge("tfx_e2e_monitoring_anomaly_share", "Share of the window's requests with a schema anomaly",
                  ["model", "feature", "kind"], registry=registry)
    requests = Gauge("tfx_e2e_monitoring_requests", "Requests in the window", ["model", "version"], registry=registry)
    alert = Gauge("tfx_e2e_monitoring_alert", "1 when the window is over a threshold", ["model"], registry=registry)
    start = Gauge("tfx_e2e_monitoring_window_start_seconds", "The window's start", ["model"], registry=registry)
    measured = [(v, f) for v, info in window["versions"].items() for f in info["skew"] + info["score"]]
    measured += [("all", f) for f in window["drift"]["findings"]]
    for version, f in measured:
        key = dict(model=model, version=str(version), check=f["check"], feature=f["feature"], measure=f["measure"])
        distance.labels(**key).set(f["value"])
        threshold.labels(**key).set(f["threshold"])
    for f in window["anomalies"]:
        share.labels(model=model, feature=f["feature"], kind=f["kind"]).set(
            f["share"] if f["share"] is not None else float("nan"))
    for version, info in window["versions"].items():
        requests.labels(model=model, version=str(version)).set(info["requests"])
    alert.labels(model=model).set(1 if window["status"] == "ALERT" else 0)
    start.labels(model=model).set(window["window"]["start_seconds"])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_to_textfile(path, registry)
    return path

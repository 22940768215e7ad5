"""HTML reports: TFDV statistics (train vs eval, Facets) and the evaluation (blessing decision with its reasons,
metrics for every slice)."""
import html
import os

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma

from pipeline.evaluation import BlessingReport, slice_name
from pipeline.files import write_atomic

METRIC_COLUMNS = ("example_count", "auc", "binary_accuracy", "precision", "recall", "calibration")
TABLE_STYLE = ("<style>body{font-family:sans-serif}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}</style>")


def write_statistics(statistics_uri: str, directory: str) -> str | None:
    splits = {}
    for split in ("train", "eval"):
        path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
        if os.path.exists(path):
            splits[split] = tfdv.load_stats_binary(path)
    if not splits:
        return None
    names = list(splits)
    page = tfdv.utils.display_util.get_statistics_html(
        splits[names[0]], splits[names[1]] if len(names) > 1 else None,
        lhs_name=names[0], rhs_name=names[1] if len(names) > 1 else "rhs_statistics")
    return write_atomic(os.path.join(directory, "statistics.html"), page)


def write_evaluation(evaluation_uri: str, blessed: bool, report: BlessingReport, directory: str) -> str:
    rows: list[str] = []
    for per_slice in sorted(tfma.load_metrics(evaluation_uri), key=lambda m: slice_name(m.slice_key)):
        values = {}
        for entry in per_slice.metric_keys_and_values:
            if not entry.key.is_diff and entry.key.model_name in ("", "candidate") \
                    and entry.value.HasField("double_value"):
                values[entry.key.name] = entry.value.double_value.value
        cells = "".join(f"<td>{values[c]:.4f}</td>" if c in values else "<td></td>" for c in METRIC_COLUMNS)
        rows.append(f"<tr><td>{html.escape(slice_name(per_slice.slice_key))}</td>{cells}</tr>")
    checks = "".join(f"<li>{'pass' if c.passed else '<b>FAIL</b>'}: {html.escape(c.description)}</li>"
                     for c in report.checks)
    failures = "".join(f"<li><b>FAIL</b>: {html.escape(f)}</li>" for f in report.failures)
    page = f"""<!doctype html><meta charset="utf-8"><title>Evaluation</title>
{TABLE_STYLE}
<h1>Model {'BLESSED' if blessed else 'NOT blessed'}</h1><ul>{checks}{failures}</ul>
<h2>Metrics by slice (eval split)</h2>
<table><tr><th>slice</th>{''.join(f'<th>{c}</th>' for c in METRIC_COLUMNS)}</tr>{''.join(rows)}</table>
<p>TFMA output: {html.escape(evaluation_uri)}</p>"""
    return write_atomic(os.path.join(directory, "evaluation.html"), page)

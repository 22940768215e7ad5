"""What a person opens after a run, written to <output_root>/reports/<pipeline>/runs/<run id>/ and hard-linked into
<output_root>/reports/<pipeline>/ (the newest run's; docs/reports.md): html.py writes statistics.html and
evaluation.html from templates/; charts.py draws their charts (and the model cards' and the console's); results.py
and statistics.py read TFMA's and TFDV's outputs for them."""
import os
from urllib.parse import quote


def report_dir(output_root: str, pipeline_name: str) -> str:
    """The pipeline's report folder: each report as the newest run that wrote it wrote it."""
    return os.path.join(output_root, "reports", pipeline_name)


def run_report_dir(output_root: str, pipeline_name: str, run_id: str) -> str:
    """The reports of the pipeline run `run_id` (its `pipeline_run` context's name in ML Metadata, the console's run
    name). The id is the folder's name, percent-encoded where it would be no single plain folder ('/', a leading
    dot: '..' must not climb out)."""
    name = quote(run_id, safe=":+,=@")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return os.path.join(report_dir(output_root, pipeline_name), "runs", name)

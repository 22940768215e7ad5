"""What a person opens after a run, written to <output_root>/reports/<pipeline>/ (docs/reports.md): html.py writes
statistics.html and evaluation.html from templates/; charts.py draws their charts (and the model cards' and the
console's); results.py and statistics.py read TFMA's and TFDV's outputs for them."""
import os


def report_dir(output_root: str, pipeline_name: str) -> str:
    return os.path.join(output_root, "reports", pipeline_name)

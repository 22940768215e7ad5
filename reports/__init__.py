"""What a person opens after a run, written to <output_root>/reports/<pipeline>/: html.py (TFDV statistics,
the evaluation with its blessing decision)."""
import os


def report_dir(output_root: str, pipeline_name: str) -> str:
    return os.path.join(output_root, "reports", pipeline_name)

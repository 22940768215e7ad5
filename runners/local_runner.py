"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam's DirectRunner.

    python -m runners.local_runner        (make run)
"""
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipeline.run import run

if __name__ == "__main__":
    run(LocalDagRunner(), default_profile="local")

"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam's DirectRunner.

    python -m runners.local_runner [--span N | --date YYYY-MM-DD]        (make run)
"""
import sys

from runners.harness import run


def local_dag_runner():
    # Imported on demand: TFX takes ~15 s to import, and a config error or an unchanged
    # re-run is answered before that.
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    return LocalDagRunner()


if __name__ == "__main__":
    run(local_dag_runner, default_profile="local", argv=sys.argv[1:])

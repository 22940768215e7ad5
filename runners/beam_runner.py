"""Runs the pipeline with BeamDagRunner: each component a Beam transform, Beam's DirectRunner with a
process per core (profile `beam`); Beam-based components on Dataflow with TFX_E2E_PROFILE=beam,dataflow.

    TFX_E2E_PROFILE=beam python -m runners.beam_runner [--span N | --date YYYY-MM-DD]        (make run-beam)
"""
import sys

from runners.harness import run


def beam_dag_runner():
    from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
    return BeamDagRunner()


if __name__ == "__main__":
    run(beam_dag_runner, default_profile="beam", argv=sys.argv[1:])

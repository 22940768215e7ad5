"""The `tfx` CLI drives our runners: pipeline create/update and run create with the local engine (end to end),
pipeline create with the beam engine, pipeline compile with the vertex engine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_DATA
from test_runners import GCP_OVERLAY

from pipeline.config import REPO_ROOT
from pipeline.versions import served_versions

pytestmark = pytest.mark.e2e  # whole pipelines (make test-unit leaves them out)

SMALL_FAST = """
tuner: {enabled: false}
trainer: {train_steps: 100, eval_steps: 10, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
"""


@pytest.fixture
def cli(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(SMALL_FAST)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ,
               # The CLI finds kfp/airflow with `pip freeze` from PATH: the venv's pip must come first.
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
               LOCAL_HOME=str(tmp_path / "local"), BEAM_HOME=str(tmp_path / "beam"),
               VERTEX_HOME=str(tmp_path / "vertex"), TFX_E2E_CONFIG=str(overlay),
               TFX_E2E_DATA_ROOT=str(SMALL_DATA), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"),
               TF_CPP_MIN_LOG_LEVEL="2")

    def tfx(*args, extra_env=None):
        result = subprocess.run([str(Path(bin_dir) / "tfx"), *args], cwd=REPO_ROOT, env={**env, **(extra_env or {})},
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout
    tfx.env = env
    return tfx


def test_local_engine_create_run_update(cli, tmp_path):
    out = cli("pipeline", "create", "--engine", "local", "--pipeline_path", "runners/local_runner.py")
    assert 'Pipeline "chicago-taxi" created successfully.' in out
    args = json.loads((tmp_path / "local" / "chicago-taxi" / "pipeline_args.json").read_text())
    assert args["pipeline_root"] == str(tmp_path / "out" / "pipelines" / "chicago-taxi")
    assert not (tmp_path / "out" / "serving").exists()  # create only reads the pipeline

    out = cli("run", "create", "--engine", "local", "--pipeline_name", "chicago-taxi")
    assert "Result: OK" in out
    versions = served_versions(str(tmp_path / "out" / "serving" / "chicago_taxi"))
    assert len(versions) == 1

    out = cli("pipeline", "update", "--engine", "local", "--pipeline_path", "runners/local_runner.py")
    assert 'Pipeline "chicago-taxi" updated successfully.' in out


def test_beam_engine_create(cli, tmp_path):
    out = cli("pipeline", "create", "--engine", "beam", "--pipeline_path", "runners/beam_runner.py")
    assert 'Pipeline "chicago-taxi" created successfully.' in out
    assert (tmp_path / "beam" / "chicago-taxi" / "pipeline_args.json").exists()


def test_vertex_engine_compile(cli, tmp_path):
    overlay = tmp_path / "gcp.yaml"
    overlay.write_text(GCP_OVERLAY)
    # runners/kubeflow_v2_runner.py's main() writes <checkout>/build/; the CLI runs it through this file, which
    # points it under tmp_path, so that the test writes nothing in the checkout.
    pipeline_file = tmp_path / "kubeflow_v2_runner.py"
    pipeline_file.write_text("from pathlib import Path\n"
                             "from runners import kubeflow_v2_runner\n"
                             f"kubeflow_v2_runner.COMPILED_DIR = Path({str(tmp_path / 'build')!r})\n"
                             "kubeflow_v2_runner.main()\n")
    in_checkout = REPO_ROOT / "build" / "chicago-taxi.json"
    before = in_checkout.stat().st_mtime_ns if in_checkout.exists() else None
    out = cli("pipeline", "compile", "--engine", "vertex", "--pipeline_path", str(pipeline_file),
              extra_env={"TFX_E2E_CONFIG": str(overlay), "TFX_E2E_OUTPUT_ROOT": ""})  # the overlay's gs:// root
    assert "Pipeline chicago-taxi compiled successfully." in out
    assert (in_checkout.stat().st_mtime_ns if in_checkout.exists() else None) == before
    job = json.loads((tmp_path / "build" / "chicago-taxi.json").read_text())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://tfx-e2e-test-bucket/tfx-e2e/pipelines/chicago-taxi"

"""Bad input stops the run with a clear message, a non-zero exit, and nothing trained or pushed."""
import os
import subprocess
import sys

import pytest
from conftest import SMALL_DATA, SMALL_OVERLAY, PipelineRun, write_csv_variant

from pipeline.config import REPO_ROOT
from runners import summary

SOURCE = SMALL_DATA / "data.csv"


def _edit_column(name, new_value, every=20):
    def edit(header, rows):
        column = header.index(name)
        for row in rows[::every]:
            row[column] = new_value
        return header, rows
    return edit


def _drop_column(name):
    def edit(header, rows):
        column = header.index(name)
        return header[:column] + header[column + 1:], [r[:column] + r[column + 1:] for r in rows]
    return edit


def _assert_stopped_at_gate(config):
    store = summary.open_store(config)
    nodes = summary.latest_run(store, config)
    assert nodes["DataGate"].status == "FAILED"
    for downstream in ("Transform", "Tuner", "Trainer", "Evaluator", "Pusher"):
        assert downstream not in nodes, downstream
    assert not os.path.exists(config.serving_model_dir)


@pytest.mark.e2e
def test_new_category_stops_the_cli_run_with_exit_1(tmp_path):
    data = write_csv_variant(SOURCE, tmp_path / "data", _edit_column("payment_type", "Bitcoin"))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(SMALL_OVERLAY)
    env = dict(os.environ, TFX_E2E_DATA_ROOT=str(data), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"),
               TFX_E2E_CONFIG=str(overlay), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "runners.local_runner"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the run stops before Transform" in result.stdout
    assert "payment_type" in result.stdout and "ENUM_TYPE_UNEXPECTED_STRING_VALUES" in result.stdout
    assert "Bitcoin" in result.stdout
    assert "Result: FAILED in DataGate" in result.stdout
    from pipeline.config import load_config
    _assert_stopped_at_gate(load_config(env=env))


@pytest.mark.parametrize("edit, feature, kind", [
    (_edit_column("trip_start_hour", "30"), "trip_start_hour", "INT_TYPE_BIG_INT"),
    (_edit_column("fare", "-5.0"), "fare", "FLOAT_TYPE_SMALL_FLOAT"),
    (_edit_column("fare", "twelve"), "fare", "UNEXPECTED_DATA_TYPE"),
    (_drop_column("payment_type"), "payment_type", "SCHEMA_MISSING_COLUMN"),
])
@pytest.mark.e2e
def test_schema_anomalies_stop_before_transform(tmp_path, capsys, edit, feature, kind):
    data = write_csv_variant(SOURCE, tmp_path / "data", edit)
    run = PipelineRun(tmp_path, data)
    assert run() == 1
    out = capsys.readouterr().out
    assert "the run stops before Transform" in out
    assert any(feature in line and kind in line for line in out.splitlines()), out
    _assert_stopped_at_gate(run.config())


@pytest.mark.e2e
def test_malformed_csv_fails_in_example_gen_and_pushes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    lines = SOURCE.read_text().splitlines()
    # A row with two extra fields: CsvExampleGen cannot decode it.
    (data / "data.csv").write_text("\n".join(lines[:50] + [lines[50] + ",1,2"] + lines[51:100]) + "\n")
    run = PipelineRun(tmp_path, data)
    assert run() == 1
    captured = capsys.readouterr()
    assert "Result: FAILED in ExampleGen" in captured.out
    config = run.config()
    nodes = summary.latest_run(summary.open_store(config), config)
    assert nodes["ExampleGen"].status == "FAILED"
    assert set(nodes) <= {"ExampleGen", "ImportSchemaGen"}
    assert not os.path.exists(config.serving_model_dir)


@pytest.mark.parametrize("env, message", [
    ({"TFX_E2E_DATAROOT": "/tmp"}, "unknown variable(s) TFX_E2E_DATAROOT"),
    ({"TFX_E2E_DATA_ROOT": "/nonexistent/taxi"}, "data_root: directory not found: /nonexistent/taxi"),
    ({"TFX_E2E_PROFILE": "prod"}, "unknown profile 'prod'"),
])
def test_configuration_errors_exit_2_before_anything_runs(tmp_path, env, message):
    full_env = dict(os.environ, TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"), **env)
    result = subprocess.run([sys.executable, "-m", "runners.local_runner"], cwd=REPO_ROOT, env=full_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: configuration:")  # before TensorFlow is even imported
    assert not (tmp_path / "out").exists()

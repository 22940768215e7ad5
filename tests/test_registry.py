"""make models and make lineage (registry/): the versions, their runs, reasons, spans, metrics and serving state,
and lineage back to ExampleGen's input files and forward from a span or a file, read from the ML Metadata of a
real pipeline run (the shared span_pipeline run); the serving states and the command lines on their own."""
import dataclasses
import hashlib
import json
import os
import re

import pytest
from conftest import SMALL_DATA

from registry import lineage, models


def _make_version(base, version: int, complete: bool = True) -> None:
    path = base / str(version)
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"model")
    if complete:
        (path / "variables" / "variables.index").write_bytes(b"index")


def _env(monkeypatch, env: dict) -> None:
    for key in [k for k in os.environ if k.startswith("TFX_E2E_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _config(tmp_path, overlay: str = ""):
    from pipeline.config import load_config

    (tmp_path / "overlay.yaml").write_text(overlay)
    return load_config(env={"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(SMALL_DATA),
                            "TFX_E2E_CONFIG": str(tmp_path / "overlay.yaml")}, check_data=False)


def test_serving_states_follow_the_rollout_record(tmp_path):
    """With a canary rollout the server loads the record's stable and canary; a rejected version is ROLLED BACK,
    a folder without variables INCOMPLETE, the rest NOT LOADED."""
    from serving.registry import RolloutRecord, write_record

    config = _config(tmp_path, "rollout: {strategy: canary}\n")
    base = tmp_path / "out" / "serving" / config.model_name
    for version in (10, 20, 30, 40):
        _make_version(base, version)
    _make_version(base, 50, complete=False)
    write_record(str(base), RolloutRecord(stable=20, canary=30, canary_percent=25,
                                          rejected={"40": {"time": "t", "reason": "error rate 0.5 > 0.01"}}))
    states, notes = models.serving_states(config)
    assert notes == []
    assert {v: (s["state"], s["labels"]) for v, s in states.items()} == {
        10: ("NOT LOADED", []), 20: ("AVAILABLE", ["stable"]), 30: ("AVAILABLE", ["canary 25%"]),
        40: ("NOT LOADED", []), 50: ("INCOMPLETE", [])}
    assert states[40]["rolled_back"] == {"time": "t", "reason": "error rate 0.5 > 0.01"}
    # An A/B test's two arms are loaded as the record says, as a canary's are.
    config = _config(tmp_path, "rollout: {strategy: ab}\n")
    assert {v: s["state"] for v, s in models.serving_states(config)[0].items()} == {
        10: "NOT LOADED", 20: "AVAILABLE", 30: "AVAILABLE", 40: "NOT LOADED", 50: "INCOMPLETE"}
    # Without a canary rollout TF Serving's policy decides: the latest 1 of the complete versions.
    config = _config(tmp_path)
    assert {v: s["state"] for v, s in models.serving_states(config)[0].items()} == {
        10: "NOT LOADED", 20: "NOT LOADED", 30: "NOT LOADED", 40: "AVAILABLE", 50: "INCOMPLETE"}


def test_versions_on_disk_without_ml_metadata(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    _make_version(tmp_path / "out" / "serving" / config.model_name, 7)
    _env(monkeypatch, {"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(SMALL_DATA)})
    assert models.main(["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["versions"]
    assert row["version"] == 7 and row["run"] is None and row["serving"]["state"] == "AVAILABLE"
    assert "not in ML Metadata" in row["note"]
    assert lineage.main(["--span", "1"]) == 1
    assert "no ML Metadata yet" in capsys.readouterr().err


def test_monitoring_status_is_the_newest_window_with_the_version(tmp_path):
    config = _config(tmp_path)
    directory = tmp_path / "out" / "monitoring" / config.model_name
    directory.mkdir(parents=True)
    skew = {"check": "skew", "feature": "fare", "measure": "jensen_shannon", "value": 0.31, "threshold": 0.1,
            "alert": True}
    for start, versions, status in (("2026-11-30T0400Z", {"7": [skew], "8": []}, "ALERT"),
                                    ("2026-11-30T0500Z", {"8": []}, "OK")):
        (directory / f"window-{start}.json").write_text(json.dumps({
            "window": {"start": start}, "status": status,
            "versions": {v: {"requests": 50, "skew": findings, "score": []} for v, findings in versions.items()}}))
    (directory / "window-2026-11-30T0600Z.json").write_text("{not json")  # a report being written: skipped
    status = models.monitoring_status(config)
    assert status[7]["status"] == "ALERT" and status[7]["alerts"] == ["skew: fare jensen_shannon 0.310 > 0.1"]
    assert status[7]["window"] == "2026-11-30T0400Z"
    assert (status[8]["status"], status[8]["window"], status[8]["alerts"]) == ("OK", "2026-11-30T0500Z", [])


@pytest.mark.parametrize("argv", [[], ["--version", "x"], ["--span", "1", "--version", "2"], ["--span", "-"]])
def test_lineage_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        lineage.main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def _pushed_version(span_pipeline) -> int:
    assert span_pipeline.first_exit_code == 0, span_pipeline.first_output
    return int(re.search(r"Pushed version (\d+):", span_pipeline.first_output).group(1))


def _run(main, argv, span_pipeline, monkeypatch, capsys):
    _env(monkeypatch, span_pipeline.env)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.e2e
def test_models_lists_the_pushed_version(span_pipeline, monkeypatch, capsys):
    import tensorflow_model_analysis as tfma

    from runners.summary import latest_run, open_store

    version = _pushed_version(span_pipeline)
    config = span_pipeline.config()
    code, out, _ = _run(models.main, ["--json"], span_pipeline, monkeypatch, capsys)
    assert code == 0
    registry = json.loads(out)
    listed = [row["version"] for row in registry["versions"]]
    assert listed == sorted(listed, reverse=True)
    (row,) = [r for r in registry["versions"] if r["version"] == version]
    assert row["destination"] == os.path.join(config.serving_model_dir, str(version))
    assert os.path.isdir(row["destination"])
    assert (row["reason"], row["run_spans"], row["trained_on_spans"], row["evaluated_on_span"]) == ("manual", [2],
                                                                                                      [2], 2)
    assert row["data"]["trained_on"][0]["csv_rows"] == 3001

    nodes = latest_run(open_store(config), config, row["run"])
    assert row["trained_in_run"] == row["run"] and nodes["Pusher"].status == "ran"
    (overall,) = [s for s in tfma.load_metrics(nodes["Evaluator"].outputs["evaluation"][0].uri)
                  if not s.slice_key.single_slice_keys]
    auc = [e.value.double_value.value for e in overall.metric_keys_and_values
           if e.key.name == "auc" and not e.key.model_name and not e.key.is_diff]
    assert [row["evaluation"]["metrics"]["auc"]] == auc
    assert row["evaluation"]["blessed"] is True and row["evaluation"]["baseline"] is None
    assert row["evaluation"]["checks"][0] == {"check": f"AUC {auc[0]:.4f} >= 0.6 (value threshold)", "passed": True}
    with open(os.path.join(nodes["Tuner"].outputs["best_hyperparameters"][0].uri, "best_hyperparameters.txt")) as f:
        assert row["hyperparameters"] == json.load(f)["values"] and row["hyperparameters_from"] == "Tuner"
    assert row["training"] == {"train_steps": 150, "eval_steps": 10, "batch_size": 64}
    newest = max(int(n) for n in os.listdir(config.serving_model_dir) if n.isdigit())
    assert row["serving"]["state"] == ("AVAILABLE" if version == newest else "NOT LOADED")

    code, out, _ = _run(models.main, [], span_pipeline, monkeypatch, capsys)
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith(f"{version} ")]
    assert f" {row['run']} " in line and " manual " in line and f" {auc[0]:.4f} " in line

    # A pushed version whose folder is gone (retention) is PRUNED.
    empty = dataclasses.replace(config, output_root=str(span_pipeline.root / "elsewhere"))
    (gone,) = [r for r in models.versions(empty, models.open_graph(config))["versions"] if r["version"] == version]
    assert gone["serving"]["state"] == "PRUNED" and gone["run"] == row["run"]


@pytest.mark.e2e
def test_lineage_back_from_a_version_reaches_the_input_files(span_pipeline, monkeypatch, capsys):
    from pipeline.example_gen_driver import content_fingerprint

    version = _pushed_version(span_pipeline)
    code, out, _ = _run(lineage.main, ["--version", str(version), "--json"], span_pipeline, monkeypatch, capsys)
    assert code == 0
    result = json.loads(out)
    steps = {s["node"]: s for s in result["steps"]}
    for node in ("ExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate", "Transform",
                 "Tuner", "Trainer", "Evaluator", "Pusher"):
        assert node in steps and steps[node]["run"] == result["run"], node
    assert result["steps"][0]["node"] in ("ExampleGen", "ImportSchemaGen") and result["steps"][-1]["node"] == "Pusher"
    data = span_pipeline.root / "data" / "span-2" / "data.csv"
    read = steps["ExampleGen"]["details"]
    assert read["span"] == 2 and read["csv_rows"] == 3001
    assert read["sha256"] == content_fingerprint([("single_split/span-2/data.csv", str(data))])[0]
    assert read["files"] == [{"path": str(data), "bytes": data.stat().st_size,
                              "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}]
    assert read["files_unchanged"] is True
    assert steps["ExampleValidator"]["details"]["anomalies"] == {"eval": [], "train": []}
    assert steps["DataGate"]["details"]["passed"] is True
    assert steps["Tuner"]["details"]["trials"] == 1
    assert steps["Evaluator"]["details"] == {"blessed": True, "auc_lower_bound": 0.6, "auc_max_drop": 0.01,
                                             "baseline": None}
    assert steps["Pusher"]["details"]["pushed_version"] == str(version)
    (model,) = steps["Trainer"]["outputs"]["model"]
    assert steps["Evaluator"]["inputs"]["model"][0]["id"] == model["id"]

    code, out, _ = _run(lineage.main, ["--version", str(version)], span_pipeline, monkeypatch, capsys)
    assert code == 0 and f"Version {version} of 'chicago_taxi'" in out and "files unchanged since" in out

    code, _, err = _run(lineage.main, ["--version", "12345"], span_pipeline, monkeypatch, capsys)
    assert code == 1 and "version 12345: no Pusher of pipeline 'chicago-taxi' pushed it" in err


@pytest.mark.e2e
def test_lineage_forward_from_a_span_or_a_file_reaches_the_version(span_pipeline, monkeypatch, capsys):
    version = _pushed_version(span_pipeline)
    data = span_pipeline.root / "data" / "span-2" / "data.csv"
    for argv in (["--span", "2"], ["--file", str(data)]):
        code, out, _ = _run(lineage.main, [*argv, "--json"], span_pipeline, monkeypatch, capsys)
        assert code == 0, argv
        result = json.loads(out)
        (model,) = [m for m in result["models"] if version in [v["version"] for v in m["versions"]]]
        assert model["trained_on"] and model["evaluated_on"] and model["blessed"], argv
        assert model["trained_on_spans"] == [2] and model["evaluated_on_spans"] == [2]
        (pushed,) = [v for v in model["versions"] if v["version"] == version]
        assert (version in result["served_versions"]) == (pushed["serving"]["state"] == "AVAILABLE")
        assert {i["span"] for i in result["ingested"]} == {2} and {i["csv_rows"] for i in result["ingested"]} == {3001}
    code, out, _ = _run(lineage.main, ["--span", "2"], span_pipeline, monkeypatch, capsys)
    assert code == 0 and f"{version} (" in out and "trained+evaluated" in out

    code, _, err = _run(lineage.main, ["--span", "7"], span_pipeline, monkeypatch, capsys)
    assert code == 1 and "span 7: ExampleGen never ingested it" in err
    code, _, err = _run(lineage.main, ["--file", str(span_pipeline.root / "data" / "span-3" / "data.csv")],
                        span_pipeline, monkeypatch, capsys)
    assert code == 1 and "no ExampleGen execution read it" in err


def test_metrics_json_has_no_nan():
    """TFMA gives NaN for a metric a slice cannot have; the JSON says null (NaN is no JSON number)."""
    assert models._finite({"auc": float("nan"), "recall": 0.5, "calibration": float("inf")}) == {
        "auc": None, "recall": 0.5, "calibration": None}

"""Model cards (registry/model_card.py): the sections of Mitchell et al. 2019 and the Model Card Toolkit's JSON
field names, slices markedly worse than overall, hostile text from the configuration escaped, cards written only
for the versions a run pushed, whole or not at all, and pruned with their version. The e2e test reads the card the
session's pipeline run wrote and compares it with TFMA's result."""
import base64
import dataclasses
import io
import json
import os
import re
from types import SimpleNamespace

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import retention
from pipeline.config import load_config
from registry import graph as g
from registry import model_card, models

OVERALL = {"slice": "all examples", "features": {}, "metrics": {"example_count": 1000.0, "auc": 0.90,
                                                                "precision": 0.7, "recall": float("nan")},
           "intervals": {"auc": [0.88, 0.92]}, "positives": 300, "negatives": 700}


def _slice(column, value, auc, count, positives=10, negatives=None):
    return {"slice": f"{column} = {value}", "features": {column: value},
            "metrics": {"example_count": float(count), "auc": auc}, "intervals": {}, "positives": positives,
            "negatives": count - positives if negatives is None else negatives}


SLICES = [OVERALL,
          _slice("payment_type", "Credit Card", 0.66, 348),        # 0.24 below: markedly worse
          _slice("payment_type", "Mobile", 0.86, 100),             # 0.04 below: within the margin
          _slice("payment_type", "Dispute", 0.10, 5),              # too few examples
          _slice("payment_type", "Cash", 0.0, 663, positives=0),   # one class: no AUC to judge
          _slice("trip_start_hour", 3, 0.84, 50)]                  # 0.06 below: markedly worse


def _config(tmp_path, **card):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(json.dumps({"model_card": card}) if card else "")
    return load_config(env={"TFX_E2E_CONFIG": str(overlay), "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "output")},
                       check_data=False)


def _facts(version=1796000000):
    data = {"span": 2, "examples": "/out/ExampleGen/examples/1", "artifact_id": 1, "input_base": "/data",
            "sha256": "ab" * 32, "csv_rows": 3001}
    record = {"pushed_at": "2026-11-30T06:19:03Z", "run": "run-1", "reason": "manual", "run_spans": [2],
              "destination": f"/out/serving/chicago_taxi/{version}", "confirmed_by_runs": [],
              "model": "/out/Trainer/model/9", "trained_in_run": "run-1", "trained_on_spans": [2],
              "evaluated_on_span": 2, "data": {"trained_on": [data], "evaluated_on": data},
              "hyperparameters": {"learning_rate": 0.001, "units": 64}, "hyperparameters_from": "Tuner",
              "training": {"train_steps": 150}, "evaluation": {
                  "blessed": True, "metrics": {"auc": 0.9}, "baseline": None, "baseline_metrics": {},
                  "checks": [{"check": "AUC 0.9000 >= 0.6 (value threshold)", "passed": True}], "failures": []}}
    summary = {"split": "train", "examples": 1981, "features": [
        {"name": "fare", "type": "FLOAT", "mean": 11.5, "std_dev": 9.2, "min": 0.0, "max": 100.0, "unique": None,
         "top": None, "missing": 0.0},
        {"name": "payment_type", "type": "STRING", "mean": None, "std_dev": None, "min": None, "max": None,
         "unique": 5, "top": "Cash", "missing": 0.0}]}
    return {"model_name": "chicago_taxi", "pipeline": "chicago-taxi", "version": version, "record": record,
            "slices": SLICES, "curves": CURVES,
            "training_data": summary, "evaluation_data": {**summary, "split": "eval", "examples": 1020}}


def _matrix(threshold, fpr, recall, precision):
    return SimpleNamespace(threshold=threshold, false_positive_rate=fpr, recall=recall, precision=precision,
                           true_positives=recall * 300, false_positives=fpr * 700)


def _bucket(low, examples, predictions, labels):
    return SimpleNamespace(lower_threshold_inclusive=low, num_weighted_examples=SimpleNamespace(value=examples),
                           total_weighted_refined_prediction=SimpleNamespace(value=predictions),
                           total_weighted_label=SimpleNamespace(value=labels))


# TFMA's plot protos of the overall slice, as far as reports/charts.py reads them.
CURVES = {"matrices": [_matrix(0.0, 1.0, 1.0, 0.3), _matrix(0.5, 0.1, 0.6, 0.72), _matrix(1.0, 0.0, 0.0, 1.0)],
          "buckets": [_bucket(0.1, 600, 60, 48), _bucket(0.8, 400, 320, 340)]}


def test_slices_markedly_worse_than_overall_are_found_with_the_margin_and_enough_examples():
    judged = {s["slice"]: s for s in model_card.worse_slices(SLICES, margin=0.05, min_examples=30)}
    assert [name for name, s in judged.items() if s["worse"]] == ["payment_type = Credit Card", "trip_start_hour = 3"]
    assert judged["payment_type = Credit Card"]["gap"] == pytest.approx(-0.24)
    assert judged["payment_type = Mobile"]["judged"] and not judged["payment_type = Mobile"]["worse"]
    assert judged["payment_type = Dispute"]["why"] == "5 examples, fewer than 30"
    assert judged["payment_type = Cash"]["why"] == "one class only (0 positive, 663 negative)"
    # A wider margin keeps only the credit-card trips; more examples required leaves the hour unjudged.
    wider = model_card.worse_slices(SLICES, margin=0.1, min_examples=30)
    assert [s["slice"] for s in wider if s["worse"]] == ["payment_type = Credit Card"]
    fewer = {s["slice"]: s for s in model_card.worse_slices(SLICES, margin=0.05, min_examples=60)}
    assert not fewer["trip_start_hour = 3"]["judged"] and fewer["payment_type = Credit Card"]["worse"]


def test_the_card_has_the_papers_sections_and_the_toolkits_json_fields(tmp_path):
    """The one unit test that draws the five charts (about 1 s of matplotlib)."""
    config = _config(tmp_path)
    directory = model_card.card_dir(config, 1796000000)
    assert directory == os.path.join(config.output_root, "model_cards", "chicago_taxi", "1796000000")
    html_path = model_card.write_card(directory, _facts(), config.model_card)
    assert html_path == model_card.card_path(config, 1796000000)
    assert sorted(os.listdir(directory)) == ["auc_by_payment_type.svg", "auc_by_trip_start_hour.svg",
                                             "calibration.svg", "model_card.html", "model_card.json",
                                             "model_card.md", "precision_recall.svg", "roc.svg"]
    with open(model_card.card_path(config, 1796000000, "json")) as f:
        card = json.load(f)
    # The Model Card Toolkit's schema, by its field names and types.
    assert set(card) == {"model_details", "model_parameters", "quantitative_analysis", "considerations", "tfx_e2e"}
    details = card["model_details"]
    assert details["name"] == "chicago_taxi"
    assert details["version"] == {"name": "1796000000", "date": "2026-11-30T06:19:03Z",
                                  "diff": "the first blessed model (no baseline)"}
    assert details["owners"] == [{"name": "tfx-e2e maintainers"}]
    assert details["licenses"] == [{"identifier": "Apache-2.0"}]
    assert [r["reference"] for r in details["references"]] == ["/out/Trainer/model/9",
                                                               "/out/serving/chicago_taxi/1796000000"]
    assert [d["name"] for d in card["model_parameters"]["data"]] == ["training: span 2",
                                                                     "evaluation: span 2, eval split"]
    assert "3001 CSV rows" in card["model_parameters"]["data"][0]["description"]
    metrics = card["quantitative_analysis"]["performance_metrics"]
    assert all(set(m) <= {"type", "value", "slice", "confidence_interval"} and isinstance(m["value"], str)
               for m in metrics)
    by_key = {(m["slice"], m["type"]): m for m in metrics}
    assert float(by_key["all examples", "auc"]["value"]) == 0.90  # TFMA's number, exactly
    assert by_key["all examples", "auc"]["confidence_interval"] == {"lower_bound": "0.88", "upper_bound": "0.92"}
    assert ("all examples", "recall") not in by_key  # TFMA's NaN: no value to state
    assert float(by_key["payment_type = Credit Card", "auc"]["value"]) == 0.66
    graphics = card["quantitative_analysis"]["graphics"]["collection"]
    assert [c["name"] for c in graphics] == ["auc_by_payment_type", "auc_by_trip_start_hour", "roc",
                                             "precision_recall", "calibration"]
    assert all(base64.b64decode(c["image"]).startswith(b"<svg") for c in graphics)
    considerations = card["considerations"]
    assert set(considerations) == {"users", "use_cases", "limitations", "tradeoffs", "ethical_considerations"}
    assert considerations["limitations"][0] == {"description": "Markedly worse on payment_type = Credit Card: AUC "
                                                               "0.6600 against 0.9000 overall (-0.2400, 348 examples)"}
    assert all(set(e) == {"name", "mitigation_strategy"} for e in considerations["ethical_considerations"])
    assert card["tfx_e2e"]["slices"][0]["metrics"]["recall"] is None

    with open(model_card.card_path(config, 1796000000, "md")) as f:
        markdown = f.read()
    with open(html_path) as f:
        page = f.read()
    for section in ("Model details", "Intended use", "Factors and metrics", "Training data", "Evaluation data",
                    "Quantitative analysis", "Slices markedly worse than overall", "Ethical considerations",
                    "Caveats and recommendations"):
        assert f"\n## {section}\n" in markdown
        assert f"<h2>{section}</h2>" in page
    assert "| payment_type = Credit Card | 348 | 0.6600 |" in markdown
    assert "- payment_type = Credit Card: AUC 0.6600 (-0.2400 against overall), 348 examples" in markdown
    assert "![roc](roc.svg)" in markdown
    # Self-contained: the charts inline, nothing fetched from anywhere (SVG's own references are #fragments).
    assert page.count("<svg") == 5
    assert not re.search(r"<(script|img|link|iframe)\b|\b(src|href)=\"(?!#)|url\((?!#)", page)


def test_hostile_text_from_the_configuration_is_text_in_html_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(model_card, "make_charts", lambda slices, curves, settings: {})  # no configuration text
    config = _config(tmp_path, owners=["</td><script>alert(1)</script>"],
                     intended_use="# Use <img src=x onerror=alert(1)> [here](javascript:alert(1)) | *now*",
                     out_of_scope=["1. <b>all</b> & more"])
    directory = model_card.card_dir(config, 7)
    model_card.write_card(directory, _facts(7), config.model_card)
    with open(os.path.join(directory, "model_card.html")) as f:
        page = f.read()
    with open(os.path.join(directory, "model_card.md")) as f:
        markdown = f.read()
    assert "<script" not in page and "<img" not in page and "<b>all" not in page
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "# Use &lt;img src=x onerror=alert(1)&gt; [here](javascript:alert(1)) | *now*" in page
    assert "\\<script\\>" in markdown and "<script" not in markdown.replace("\\<script", "")
    assert "\n\\# Use \\<img src=x onerror=alert(1)\\> \\[here\\](javascript:alert(1)) \\| \\*now\\*\n" in markdown
    assert "- 1\\. \\<b\\>all\\</b\\> \\& more\n" in markdown
    with open(os.path.join(directory, "model_card.json")) as f:
        assert json.load(f)["model_details"]["owners"] == [{"name": "</td><script>alert(1)</script>"}]


def _store_with_pushes(tmp_path):
    """ML Metadata as the local orchestrator leaves it after three runs of one pipeline: run-1 pushed version 7,
    run-2 found that model already serving, run-3's push failed (a full disk)."""
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(tmp_path / "metadata.db")
    store = metadata_store.MetadataStore(connection)
    types = {name: store.put_context_type(metadata_store_pb2.ContextType(name=name))
             for name in ("pipeline", "node", "pipeline_run")}
    execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Pusher"))
    pushed_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="PushedModel"))

    def context(kind, name):
        [found] = store.put_contexts([metadata_store_pb2.Context(type_id=types[kind], name=name)])
        return metadata_store_pb2.Context(id=found, type_id=types[kind], name=name)

    pipeline, node = context("pipeline", "chicago-taxi"), context("node", "chicago-taxi.Pusher")
    for run, state, properties in (("run-1", metadata_store_pb2.Execution.COMPLETE, {"pushed_version": "7"}),
                                   ("run-2", metadata_store_pb2.Execution.COMPLETE,
                                    {"pushed_version": "7", "already_served": 1}),
                                   ("run-3", metadata_store_pb2.Execution.FAILED, None)):
        execution = metadata_store_pb2.Execution(type_id=execution_type, last_known_state=state)
        artifact = metadata_store_pb2.Artifact(type_id=pushed_type, uri=f"/out/Pusher/pushed_model/{run}")
        artifact.custom_properties["pushed"].int_value = 1 if properties else 0
        for key, value in (properties or {}).items():
            if isinstance(value, int):
                artifact.custom_properties[key].int_value = value
            else:
                artifact.custom_properties[key].string_value = value
        event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
        event.path.steps.add().key = "pushed_model"
        store.put_execution(execution, [(artifact, event)], [pipeline, node, context("pipeline_run", run)])
    return g.Graph(store, "chicago-taxi")


def test_a_run_writes_the_cards_of_its_own_pushes_only(tmp_path, monkeypatch):
    graph = _store_with_pushes(tmp_path)
    assert model_card.pushed_by_run(graph, "run-1") == [7]
    assert model_card.pushed_by_run(graph, "run-2") == []  # already serving: nothing pushed
    assert model_card.pushed_by_run(graph, "run-3") == []  # the push failed
    config = _config(tmp_path)
    monkeypatch.setattr(models, "open_graph", lambda config: graph)
    written = []

    def write_version(config, graph, version):
        written.append(version)
        return f"card of {version}"
    monkeypatch.setattr(model_card, "write_version", write_version)
    out = io.StringIO()
    for run in ("run-2", "run-3"):
        assert model_card.write_after_run(config, run, out=out) == []
    assert written == [] and out.getvalue() == ""
    assert not os.path.exists(os.path.join(config.output_root, model_card.CARDS))
    assert model_card.write_after_run(config, "run-1", out=out) == ["card of 7"]
    assert out.getvalue() == "Model card: card of 7\n"


def test_a_card_that_cannot_be_written_leaves_nothing_and_says_so(tmp_path, monkeypatch):
    graph = _store_with_pushes(tmp_path)
    config = _config(tmp_path)
    monkeypatch.setattr(models, "open_graph", lambda config: graph)
    monkeypatch.setattr(model_card, "collect", lambda config, graph, push: _facts(7))
    monkeypatch.setattr(model_card, "make_charts", lambda slices, curves, settings: {})  # charts: another test

    def render(card, charts):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(model_card, "render", render)
    out, err = io.StringIO(), io.StringIO()
    assert model_card.write_after_run(config, "run-1", out=out, err=err) == []
    assert err.getvalue() == ("warning: model card of version 7 not written (OSError: [Errno 28] No space left on "
                              "device); the version is pushed and serves. Write it with: python -m "
                              "registry.model_card --version 7\n")
    cards = os.path.join(config.output_root, model_card.CARDS, config.model_name)
    assert not os.path.exists(cards) or os.listdir(cards) == []  # no card, no hidden half of one


def test_a_card_is_replaced_whole_and_pruned_with_its_version(tmp_path, monkeypatch):
    monkeypatch.setattr(model_card, "make_charts", lambda slices, curves, settings: {})  # charts: another test
    config = _config(tmp_path)
    config = dataclasses.replace(config, retention=dataclasses.replace(config.retention, keep_versions=1))
    base = config.serving_model_dir
    for version in (1, 2):
        os.makedirs(os.path.join(base, str(version), "variables"))
        for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
            with open(os.path.join(base, str(version), name), "w") as f:
                f.write("x")
        os.makedirs(model_card.card_dir(config, version))
        with open(os.path.join(model_card.card_dir(config, version), "model_card.html"), "w") as f:
            f.write("old")
    # Written again (python -m registry.model_card --version 2): the new card replaces the old one whole.
    model_card.write_card(model_card.card_dir(config, 2), _facts(2), config.model_card)
    with open(model_card.card_path(config, 2)) as f:
        assert "<h1>Model card: chicago_taxi, version 2</h1>" in f.read()
    assert sorted(os.listdir(os.path.dirname(model_card.card_dir(config, 2)))) == ["1", "2"]
    retention.prune(config, out=io.StringIO())
    assert model_card.card_path(config, 1) is None and not os.path.exists(model_card.card_dir(config, 1))
    assert model_card.card_path(config, 2) is not None


def test_make_models_shows_each_versions_card():
    registry = {"model": "m", "pipeline": "p", "serving_base": "/s", "metadata": "sqlite", "notes": [],
                "versions": [{"version": 2, "serving": {"state": "AVAILABLE", "labels": [], "rolled_back": None},
                              "model_card": "/out/model_cards/m/2/model_card.html"},
                             {"version": 1, "serving": {"state": "PRUNED", "labels": [], "rolled_back": None},
                              "model_card": None}]}
    lines = models.table(registry).splitlines()
    assert lines[1].split()[-3:] == ["HYPERPARAMETERS", "MODEL", "CARD"]
    assert lines[2].endswith("/out/model_cards/m/2/model_card.html") and lines[3].endswith(" -")


@pytest.mark.e2e
def test_the_runs_push_wrote_a_card_whose_numbers_are_tfmas(small_pipeline):
    """The card the session's first run wrote for the version it pushed, against TFMA's own result."""
    import tensorflow_model_analysis as tfma

    from pipeline.evaluation import slice_name

    config = small_pipeline.config()
    graph = models.open_graph(config)
    pushes = g.pushes(graph)
    first = min(pushes)
    with open(model_card.card_path(config, first, "json")) as f:
        card = json.load(f)
    evaluation = graph.artifacts[graph.one(pushes[first].evaluator, "evaluation", outputs=True)].uri
    expected = {}
    for per_slice in tfma.load_metrics(evaluation):
        name = slice_name(per_slice.slice_key)
        for entry in per_slice.metric_keys_and_values:
            if entry.value.HasField("double_value") and not entry.key.is_diff:
                expected[name, entry.key.name] = entry.value.double_value.value
    stated = {(m["slice"], m["type"]): float(m["value"]) for m in card["quantitative_analysis"]["performance_metrics"]}
    assert stated and all(stated[key] == expected[key] for key in stated)
    assert ("all examples", "auc") in stated and ("payment_type = Credit Card", "auc") in stated
    assert card["model_details"]["version"]["name"] == str(first)
    details = card["tfx_e2e"]
    assert details["run"] == pushes[first].pusher.run_name
    assert details["training_data"]["examples"] > 0 and details["evaluation_data"]["split"] == "eval"
    assert {f["name"] for f in details["training_data"]["features"]} >= {"fare", "payment_type", "tips"}
    worse = [s["slice"] for s in details["worse_slices"] if s["worse"]]
    base = stated["all examples", "auc"]
    assert worse == [s for (s, metric), v in stated.items() if metric == "auc" and s != "all examples"
                     and v < base - config.model_card.worse_slice_margin
                     and next(x for x in details["worse_slices"] if x["slice"] == s)["judged"]]
    with open(model_card.card_path(config, first, "md")) as f:
        markdown = f.read()
    assert f"# Model card: chicago_taxi, version {first}\n" in markdown
    assert model_card.card_path(config, first) in models.table(models.versions(config, graph))


def test_the_command_writes_a_named_or_every_missing_card_and_refuses_an_unknown_version(tmp_path, monkeypatch,
                                                                                         capsys):
    graph = _store_with_pushes(tmp_path)
    config = _config(tmp_path)
    monkeypatch.setattr(models, "load_config_or_exit", lambda: config)
    monkeypatch.setattr(models, "open_graph", lambda config: graph)
    written = []
    monkeypatch.setattr(model_card, "write_version", lambda config, graph, v: written.append(v) or f"card {v}")
    assert model_card.main(["--version", "8"]) == 1
    assert capsys.readouterr().err == "error: version 8 was not pushed by pipeline 'chicago-taxi' (pushed: 7)\n"
    # Version 7 is pushed but not on disk (pruned): nothing to write until its folder is there.
    assert model_card.main([]) == 0 and written == []
    os.makedirs(os.path.join(config.serving_model_dir, "7", "variables"))
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        with open(os.path.join(config.serving_model_dir, "7", name), "w") as f:
            f.write("x")
    assert model_card.main([]) == 0 and written == [7]
    assert model_card.main(["--version", "7"]) == 0 and written == [7, 7]
    assert capsys.readouterr().out.splitlines()[-2:] == ["Model card of version 7: card 7"] * 2
    monkeypatch.setattr(models, "open_graph", lambda config: None)
    assert model_card.main([]) == 1
    assert "no ML Metadata yet" in capsys.readouterr().err

"""Continuous training, first stage: a data root of span folders, the span a run reads (--span/--date, default
the newest complete one), ExampleGen on that span only, the gate's example counts, the re-run shortcut and the
summary's Data line; the rolling window (continuous.window_spans) with its temporal holdout, analyzer cache and
backfill of the spans ML Metadata has not ingested, and the Trainer's warm start from the previous model."""
import json
import os
import re
from pathlib import Path

import pytest
from conftest import SMALL_DATA, SMALL_OVERLAY, PipelineRun, write_span_root

from pipeline.config import ConfigError, load_config, resolve_span
from pipeline.spans import SpanError
from runners import harness


def _env(tmp_path, data_root, **extra):
    return {"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(data_root), **extra}


# --- which span a run reads (unit) ---

def test_the_newest_complete_span_by_default(tmp_path):
    root = write_span_root(tmp_path / "data")
    assert resolve_span(load_config(env=_env(tmp_path, root))).span == 2  # span-3 has no _SUCCESS
    assert resolve_span(load_config(env=_env(tmp_path, root, TFX_E2E_SPAN="1"))).span == 1
    # A flat root is span 0.
    assert resolve_span(load_config(env=_env(tmp_path, SMALL_DATA))).span == 0


def test_a_settle_time_completes_a_span_without_marker(tmp_path):
    root = write_span_root(tmp_path / "data")
    past = os.stat(root / "span-3" / "data.csv").st_mtime - 120
    os.utime(root / "span-3" / "data.csv", (past, past))
    (tmp_path / "overlay.yaml").write_text("continuous: {settle_seconds: 60}\n")
    env = _env(tmp_path, root, TFX_E2E_CONFIG=str(tmp_path / "overlay.yaml"))
    assert resolve_span(load_config(env=env)).span == 3


@pytest.mark.parametrize("extra, message", [
    ({"TFX_E2E_SPAN": "7"}, "span 7 is missing: no span-7/ or 1970-01-08/ folder (have: span-1, span-2, span-3)"),
    ({"TFX_E2E_SPAN": "3"}, "span 3 (span-3) is incomplete: no _SUCCESS marker"),
    ({"TFX_E2E_DATE": "2016-12-31"}, "span 17166 is missing"),
])
def test_a_missing_or_incomplete_span_is_named(tmp_path, extra, message):
    root = write_span_root(tmp_path / "data")
    with pytest.raises(SpanError) as error:
        resolve_span(load_config(env=_env(tmp_path, root, **extra)))
    assert message in str(error.value)


def _never_run():
    raise AssertionError("the orchestrator must not start")


@pytest.mark.parametrize("argv, env, status, message", [
    (["--span", "7"], {}, 1, "error: data: span 7 is missing: no span-7/"),
    (["--span", "3"], {}, 1, "error: data: span 3 (span-3) is incomplete: no _SUCCESS marker; nothing was run"),
    ([], {"TFX_E2E_SPAN": "9"}, 1, "error: data: span 9 is missing"),
    (["--date", "2016-03-31"], {}, 1, "error: data: span 16891 is missing"),
    (["--span", "x"], {}, 2, "error: configuration: TFX_E2E_SPAN: expected a span number, got 'x'"),
    (["--span", "1", "--date", "2016-03-31"], {}, 2, "not allowed with argument"),
])
def test_the_run_stops_before_anything_runs(tmp_path, monkeypatch, capsys, argv, env, status, message):
    root = write_span_root(tmp_path / "data")
    for key, value in {**_env(tmp_path, root), **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as done:
        harness.run(_never_run, default_profile="local", argv=argv)
    assert done.value.code == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no ML Metadata, no pushed model


def test_the_command_line_wins_over_the_environment(tmp_path, monkeypatch):
    assert harness.run_parameters(["--span", "4"]) == {"TFX_E2E_SPAN": "4"}
    assert harness.run_parameters(["--date", "2016-03-31"]) == {"TFX_E2E_DATE": "2016-03-31"}
    assert harness.run_parameters([]) == {}


# --- ExampleGen's input and the re-run shortcut (unit) ---

def test_example_gen_reads_one_span_and_never_the_marker(tmp_path):
    from pipeline import components

    root = write_span_root(tmp_path / "data")
    config = resolve_span(load_config(env=_env(tmp_path, root)))
    input_config, range_config = components.span_input(config)
    assert [(s.name, s.pattern) for s in input_config.splits] == [("single_split", "span-{SPAN}/*.csv")]
    assert (range_config.static_range.start_span_number, range_config.static_range.end_span_number) == (2, 2)
    # Daily spans: the date spec.
    daily = tmp_path / "daily"
    for name in ("2016-03-30", "2016-03-31"):
        (daily / name).mkdir(parents=True)
        (daily / name / "data.csv").write_text("a\n1\n")
        (daily / name / "_SUCCESS").write_text("")
    config = resolve_span(load_config(env=_env(tmp_path, daily)))
    input_config, range_config = components.span_input(config)
    assert input_config.splits[0].pattern == "{YYYY}-{MM}-{DD}/*.csv"
    assert range_config.static_range.start_span_number == 16891  # 2016-03-31
    # A flat root keeps CsvExampleGen's defaults.
    assert components.span_input(resolve_span(load_config(env=_env(tmp_path, SMALL_DATA)))) is None


def test_the_rerun_fingerprint_covers_the_span_read(tmp_path):
    root = write_span_root(tmp_path / "data")
    config = resolve_span(load_config(env=_env(tmp_path, root)))
    assert harness.spans_read_files(config) == [str(root / "span-2" / "_SUCCESS"), str(root / "span-2" / "data.csv")]
    before = harness.inputs_fingerprint(config)
    # A span the run does not read changes nothing; the span it reads does.
    (root / "span-1" / "data.csv").write_text("changed\n")
    assert harness.inputs_fingerprint(config) == before
    with open(root / "span-2" / "data.csv", "a") as f:
        f.write(open(SMALL_DATA / "data.csv").readlines()[1])
    changed = harness.inputs_fingerprint(config)
    assert changed != before
    # Another span is another run.
    assert harness.inputs_fingerprint(resolve_span(load_config(env=_env(tmp_path, root, TFX_E2E_SPAN="1")))) != changed
    # A flat root: its *.csv files, as before.
    flat = resolve_span(load_config(env=_env(tmp_path, SMALL_DATA)))
    assert harness.spans_read_files(flat) == [str(SMALL_DATA / "data.csv")]


def test_a_window_is_refused_on_managed_metadata_and_one_span_on_a_flat_root(tmp_path):
    """TFX 1.16's KFP v2 compiler takes no SpanRangeStrategy and a file ExampleGen reads one span: window_spans > 1
    with metadata: managed over CSV is a configuration error, not a window silently dropped (a BigQuery query
    spans the window itself: tests/test_runners.py). A flat root is one span: its DAG is today's."""
    from pipeline import components

    (tmp_path / "managed.yaml").write_text("continuous: {window_spans: 2}\ngcp: {project: p}\nmetadata: managed\nimage: i\n")
    with pytest.raises(ConfigError, match="a rolling window with metadata: managed needs example_gen: bigquery"):
        load_config(env=_env(tmp_path, SMALL_DATA, TFX_E2E_CONFIG=str(tmp_path / "managed.yaml")), check_data=False)
    (tmp_path / "overlay.yaml").write_text("continuous: {window_spans: 2}\n")
    overlay = str(tmp_path / "overlay.yaml")
    flat = resolve_span(load_config(env=_env(tmp_path, SMALL_DATA, TFX_E2E_CONFIG=overlay)))
    assert components.window_spans(flat) == 1 and components.window_range(flat) is None


def test_the_window_is_the_last_spans_up_to_the_one_read(tmp_path):
    from pipeline import components
    from pipeline.pipeline import create_pipeline

    root = write_span_root(tmp_path / "data")  # span-1, span-2 complete; span-3 not
    one = resolve_span(load_config(env=_env(tmp_path, root)))
    ids = [c.id for c in create_pipeline(one).components]
    assert "span_window_resolver" not in ids and "analyzer_cache_resolver" not in ids  # window 1: today's DAG
    (tmp_path / "overlay.yaml").write_text("continuous: {window_spans: 3}\n")
    config = resolve_span(load_config(env=_env(tmp_path, root, TFX_E2E_CONFIG=str(tmp_path / "overlay.yaml"))))
    window = components.window_range(config).static_range
    assert (window.start_span_number, window.end_span_number) == (1, 2)  # the incomplete span-3 is not in it
    assert harness.spans_read_files(config) == [str(root / name / f) for name in ("span-1", "span-2")
                                                for f in ("_SUCCESS", "data.csv")]
    pipeline = create_pipeline(config)
    nodes = {c.id: c for c in pipeline.components}
    assert nodes["Transform"].inputs["examples"].producer_component_id == "span_window_resolver"
    assert nodes["Transform"].inputs["analyzer_cache"].producer_component_id == "analyzer_cache_resolver"
    assert nodes["Evaluator"].inputs["examples"].producer_component_id == "ExampleGen"  # the newest span only
    # Transform only analyzes the window (no transformed copy, no statistics: either would read every span again);
    # Trainer reads the window's Examples and applies the transform graph itself.
    assert "transformed_examples" not in nodes["Transform"].outputs
    assert nodes["Transform"].exec_properties["disable_statistics"] == 1
    assert nodes["Trainer"].inputs["examples"].producer_component_id == "span_window_resolver"
    assert json.loads(nodes["Trainer"].exec_properties["custom_config"])["raw_examples"] == 1


def test_the_window_keeps_the_latest_version_of_each_span():
    from tfx.proto import range_config_pb2
    from tfx.types.standard_artifacts import Examples

    from pipeline.window import LatestVersionSpanRangeStrategy

    def examples(id_, span, version):
        artifact = Examples()
        artifact.id = id_
        artifact.set_int_custom_property("span", span)
        artifact.set_int_custom_property("version", version)
        return artifact

    strategy = LatestVersionSpanRangeStrategy(range_config_pb2.RangeConfig(
        static_range=range_config_pb2.StaticRange(start_span_number=2, end_span_number=3)))
    found = strategy._resolve({"examples": [examples(1, 1, 0), examples(2, 2, 0), examples(3, 2, 1),
                                            examples(4, 3, 0), examples(5, 2, 1)]})
    assert [a.id for a in found["examples"]] == [4, 5]


def test_the_gate_counts_examples():
    from pipeline.gate import check_example_counts

    assert check_example_counts({"train": 10, "eval": 5}, 3, 1) == ""
    assert check_example_counts({"train": 10, "eval": 5}, 3, 15) == ""
    assert check_example_counts({"eval": 0, "train": 0}, 3, 1).startswith(
        "Data gate: span 3 has 0 examples, fewer than continuous.min_examples 1 (train 0, eval 0); the run stops")
    assert "span 3 has 15 examples, fewer than continuous.min_examples 16 (train 10, eval 5)" in (
        check_example_counts({"train": 10, "eval": 5}, 3, 16))
    # Enough examples, but the hash split left eval empty: the Evaluator would have nothing to judge.
    assert check_example_counts({"train": 2, "eval": 0}, 4, 1).startswith(
        "Data gate: span 4: split eval has no examples (train 2, eval 0)")


# --- whole runs (e2e) ---

def _examples_span(config):
    from runners import summary

    store = summary.open_store(config)
    run = summary.latest_run(store, config)
    (examples,) = run["ExampleGen"].outputs["examples"]
    return run, examples


@pytest.mark.e2e
def test_a_run_reads_the_newest_complete_span(span_pipeline):
    assert span_pipeline.first_exit_code == 0, span_pipeline.first_output
    config = span_pipeline.config()
    run, examples = _examples_span(config)
    assert examples.custom_properties["span"].int_value == 2
    assert all(run[node].status == "ran" for node in run), {n: r.status for n, r in run.items()}
    # Transform and the Evaluator read the same span's examples (a window across spans is not built yet).
    assert [a.id for a in run["Transform"].inputs["examples"]] == [examples.id]
    assert [a.id for a in run["Evaluator"].inputs["examples"]] == [examples.id]
    statistics = run["StatisticsGen"].outputs["statistics"][0]
    from pipeline import gate
    from runners.summary import open_store, tfx_artifact
    counts = gate.read_example_counts(tfx_artifact(open_store(config), statistics))
    assert sum(counts.values()) == 3001 and counts["train"] > counts["eval"] > 0  # span-2's rows, not span-1's
    out = span_pipeline.first_output
    assert (f"Data: span 2 (span-2/, 3001 rows), for training and evaluation, split by hash into "
            f"train {counts['train']}/eval {counts['eval']}.") in out
    assert "Result: OK" in out
    assert run["Pusher"].outputs["pushed_model"][0].custom_properties["pushed"].int_value == 1


@pytest.mark.e2e
def test_an_older_span_by_parameter(span_pipeline, capsys):
    """--span 1: ExampleGen reads span-1's 300 rows, a new input, so everything downstream runs again on it."""
    config = span_pipeline.config()
    assert span_pipeline(argv=["--span", "1"]) == 0
    out = capsys.readouterr().out
    run, examples = _examples_span(config)
    assert examples.custom_properties["span"].int_value == 1
    for node in ("ExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"):
        assert run[node].status == "ran", node
    assert [a.id for a in run["Evaluator"].inputs["examples"]] == [examples.id]
    assert "Data: span 1 (span-1/, 300 rows)" in out
    assert "Result: OK" in out


@pytest.mark.parametrize("rows, min_examples, reason", [
    (0, 1, "span 2 has 0 examples, fewer than continuous.min_examples 1 (train 0, eval 0)"),
    (40, 100, "span 2 has 40 examples, fewer than continuous.min_examples 100 (train "),
])
@pytest.mark.e2e
def test_an_empty_or_small_span_stops_at_the_gate(tmp_path, capsys, rows, min_examples, reason):
    """A header-only span is no anomaly to TFDV (data_missing), and a span below continuous.min_examples is
    none either: the gate counts the examples and stops both."""
    root = tmp_path / "data"
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    for name, text in (("span-1", "".join(lines)), ("span-2", "".join(lines[:1 + rows]))):
        (root / name).mkdir(parents=True)
        (root / name / "data.csv").write_text(text)
        (root / name / "_SUCCESS").write_text("")
    run = PipelineRun(tmp_path, root, SMALL_OVERLAY + f"continuous: {{min_examples: {min_examples}}}\n")
    assert run() == 1
    out = capsys.readouterr().out
    assert f"Data: span 2 (span-2/, {rows} rows)" in out
    assert "Data gate: " + reason in out
    assert "the run stops before Transform (nothing is trained or pushed)." in out
    assert "Result: FAILED in DataGate" in out
    config = run.config()
    nodes, examples = _examples_span(config)
    assert examples.custom_properties["span"].int_value == 2
    assert nodes["ExampleValidator"].status == "ran"
    assert nodes["DataGate"].status == "FAILED"
    for downstream in ("Transform", "Tuner", "Trainer", "Evaluator", "Pusher"):
        assert downstream not in nodes, downstream
    assert not os.path.exists(config.serving_model_dir)


@pytest.mark.e2e
def test_a_drifted_span_stops_at_the_gate_naming_the_feature(tmp_path, capsys):
    """Span 2 has span 1's rows with every fare ten times higher: no schema anomaly (fares >= 0 stay valid), but the gate
    compares span 2's statistics with span 1's, which the previous_statistics_resolver finds in ML Metadata by
    lineage, and fare's Jensen-Shannon divergence is over the schema's threshold: the run stops, naming fare."""
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    fare = header.index("fare")

    def tenfold(line):
        cells = line.rstrip("\n").split(",")
        cells[fare] = f"{float(cells[fare]) * 10:.2f}"
        return ",".join(cells) + "\n"

    root = tmp_path / "data"
    _write_span(root, 1, lines[:1001])
    run = PipelineRun(tmp_path, root, SMALL_OVERLAY.replace("enabled: true", "enabled: false"))
    assert run() == 0
    assert "Data: no statistics of a previous span in ML Metadata (the first span): no drift check." in (
        capsys.readouterr().out)
    config = run.config()
    first, _ = _examples_span(config)
    span_1_statistics = first["StatisticsGen"].outputs["statistics"][0].id

    _write_span(root, 2, lines[:1] + [tenfold(line) for line in lines[1:1001]])
    assert run() == 1
    out = capsys.readouterr().out
    assert "Data: no anomalies against the schema" in out
    assert ("Data gate: drift from the previous span over the schema's thresholds in fare; the run stops before "
            "Transform") in out
    for split in ("train", "eval"):
        measured = re.search(split + r"\s+fare\s+COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH\s+.*\((0\.\d+) > 0\.3\)", out)
        assert measured and float(measured.group(1)) > 0.3, out
    assert "Result: FAILED in DataGate" in out
    nodes, examples = _examples_span(config)
    assert examples.custom_properties["span"].int_value == 2
    assert [a.id for a in nodes["previous_statistics_resolver"].outputs["statistics"]] == [span_1_statistics]
    assert nodes["DataGate"].status == "FAILED"
    assert "Transform" not in nodes and "Pusher" not in nodes


# --- the rolling window (e2e) ---

# drift: warn: the small slice's third 1,000 rows drift from the second in fare (Jensen-Shannon 0.32 > 0.3).
WINDOW_OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 150, eval_steps: 10, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
continuous: {window_spans: 2, drift: warn, warm_start_steps: 30}
"""


def _write_span(root, number, rows):
    folder = root / f"span-{number}"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text("".join(rows))
    (folder / "_SUCCESS").write_text("")


def _window(config):
    """The spans of the Examples the newest run's Transform consumed, the span of the Evaluator's Examples, and
    the run's nodes: read in ML Metadata."""
    from runners.summary import latest_run, open_store

    run = latest_run(open_store(config), config)
    trained = sorted(a.custom_properties["span"].int_value for a in run["Transform"].inputs["examples"])
    (evaluated,) = [a.custom_properties["span"].int_value for a in run["Evaluator"].inputs["examples"]]
    return trained, evaluated, run


def _warm_start(nodes):
    """The Trainer's base_model (a Model id, or None) in ML Metadata, and what run_fn recorded: steps, warm or not."""
    from modules.contract import TRAINING_RECORD

    base = [a.id for a in nodes["Trainer"].inputs.get("base_model", [])]
    (model_run,) = nodes["Trainer"].outputs["model_run"]
    record = json.loads(Path(model_run.uri, TRAINING_RECORD).read_text())
    return (base[0] if base else None), record["steps"], record["warm_start_from"] is not None


@pytest.mark.e2e
def test_a_rolling_window_of_two_spans(tmp_path, capsys):
    """The TFX penguin way, with window_spans 2: span 1 arrives -> trains on [1]; span 2 -> [1, 2]; span 3 ->
    [2, 3], the second Transform reading the first one's analyzer cache; the Evaluator always judges on the
    newest span's eval split. Checked in ML Metadata. Then a fresh store with all three spans: the older span
    of the window is ingested first (a partial run of ExampleGen), so the first run trains on [2, 3]; and an
    unchanged re-run pushes nothing."""
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    span_rows = {n: lines[:1] + lines[1 + 1000 * (n - 1):1 + 1000 * n] for n in (1, 2, 3)}
    root = tmp_path / "data"
    (tmp_path / "a").mkdir()
    run = PipelineRun(tmp_path / "a", root, WINDOW_OVERLAY)

    _write_span(root, 1, span_rows[1])
    assert run() == 0
    config = run.config()
    trained, evaluated, nodes = _window(config)
    assert (trained, evaluated) == ([1], 1)
    assert "Training: span 1 (1000 rows" in capsys.readouterr().out
    assert _warm_start(nodes) == (None, 150, False)  # no model yet: cold, trainer.train_steps
    models = [nodes["Trainer"].outputs["model"][0].id]

    _write_span(root, 2, span_rows[2])
    assert run() == 0
    trained, evaluated, nodes = _window(config)
    assert (trained, evaluated) == ([1, 2], 2)
    first_cache = nodes["Transform"].outputs["updated_analyzer_cache"][0].id
    assert "Training: spans 1, 2 (2000 rows" in capsys.readouterr().out
    # Warm start: from the model trained on span 1, continuous.warm_start_steps.
    assert _warm_start(nodes) == (models[0], 30, True)
    models.append(nodes["Trainer"].outputs["model"][0].id)

    _write_span(root, 3, span_rows[3])
    assert run() == 0
    trained, evaluated, nodes = _window(config)
    assert (trained, evaluated) == ([2, 3], 3)
    assert [a.id for a in nodes["Transform"].inputs["analyzer_cache"]] == [first_cache]
    assert _warm_start(nodes) == (models[1], 30, True)
    out = capsys.readouterr().out
    assert "Training: spans 2, 3 (2000 rows" in out and "evaluation: span 3, eval split (" in out
    assert "Data gate: drift from the previous span over the schema's thresholds in fare; continuous.drift: warn, so " \
           "the run goes on." in out

    # A fresh store over the same three spans: span 2 is backfilled, then the run trains on [2, 3].
    (tmp_path / "b").mkdir()
    fresh = PipelineRun(tmp_path / "b", root, WINDOW_OVERLAY)
    assert fresh() == 0
    out = capsys.readouterr().out
    assert "backfill: ML Metadata has no span 2 of the window; ExampleGen and the data gate ingest it (partial run)" in out
    trained, evaluated, nodes = _window(fresh.config())
    assert (trained, evaluated) == ([2, 3], 3)
    assert _warm_start(nodes) == (None, 150, False)  # a fresh store trains cold
    served = sorted(os.listdir(fresh.config().serving_model_dir))

    # Unchanged: the run stops before the orchestrator, and nothing new is pushed.
    fresh.env.pop("TFX_E2E_ALWAYS_RUN")
    assert fresh() == 0
    assert "Unchanged since the run that finished" in capsys.readouterr().out
    assert sorted(os.listdir(fresh.config().serving_model_dir)) == served


@pytest.mark.e2e
def test_a_backfilled_span_goes_through_the_gate(tmp_path, capsys):
    """A fresh store with a window of 2: span 1 is backfilled through ExampleGen and the data gate, not ExampleGen
    alone. Span 1 is empty (a header only), so the gate stops it and the run stops before training on it."""
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    root = tmp_path / "data"
    _write_span(root, 1, lines[:1])
    _write_span(root, 2, lines[:1001])
    run = PipelineRun(tmp_path, root, WINDOW_OVERLAY)
    assert run() == 1
    captured = capsys.readouterr()
    assert "backfill: ML Metadata has no span 1 of the window; ExampleGen and the data gate ingest it" in captured.out
    assert ("backfill: span 1 of the window (continuous.window_spans 2) failed the data gate:\nData gate: span 1 has "
            "0 examples, fewer than continuous.min_examples 1") in captured.err
    assert "The run stops: nothing is trained or pushed." in captured.err
    from runners.summary import open_store
    store = open_store(run.config())
    ran = {c.name.split(".", 1)[1] for c in store.get_contexts_by_type("node")}
    assert {"ExampleGen", "StatisticsGen", "ExampleValidator", "DataGate"} <= ran
    assert "Transform" not in ran and "Trainer" not in ran
    assert not os.path.exists(run.config().serving_model_dir)
    # Span 1's Examples are in ML Metadata, but the gate did not pass them: the next run checks span 1 again.
    assert run() == 1
    assert "backfill: span 1 of the window (continuous.window_spans 2) failed the data gate" in capsys.readouterr().err

"""End to end, like TFX's penguin e2e test: LocalDagRunner on the checked-in slice, ML Metadata
executions per component, a blessing, a pushed SavedModel that answers; then an unchanged re-run."""
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_DATA
from ml_metadata.proto import metadata_store_pb2

import reports
from pipeline.versions import served_versions
from registry import model_card
from runners import summary
from serving import examples

pytestmark = pytest.mark.e2e  # whole pipelines (make test-unit leaves them out)

COMPONENTS = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "previous_statistics_resolver",
              "DataGate", "Transform", "Tuner", "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher"]


def _executions_by_node(config):
    store = summary.open_store(config)
    prefix = f"{config.pipeline_name}."
    counts = {}
    for context in store.get_contexts_by_type("node"):
        if context.name.startswith(prefix):
            executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
            states = [e.last_known_state for e in executions]
            counts[context.name[len(prefix):]] = states
    return counts


def _served(config):
    return served_versions(config.serving_model_dir)


@pytest.fixture(scope="module")
def first_run(small_pipeline):
    assert small_pipeline.first_exit_code == 0
    config = small_pipeline.config()
    return config, _executions_by_node(config), _served(config)


def test_every_component_ran_once(first_run):
    config, executions, _ = first_run
    assert sorted(executions) == sorted(COMPONENTS)
    for node in COMPONENTS:
        assert executions[node] == [metadata_store_pb2.Execution.COMPLETE], node


def test_model_was_blessed_and_pushed_once(first_run):
    config, _, versions = first_run
    store = summary.open_store(config)
    run = summary.latest_run(store, config)
    blessing = run["Evaluator"].outputs["blessing"][0]
    assert blessing.custom_properties["blessed"].int_value == 1
    pushed = run["Pusher"].outputs["pushed_model"][0]
    assert pushed.custom_properties["pushed"].int_value == 1
    assert len(versions) == 1
    assert pushed.custom_properties["pushed_version"].string_value == str(versions[0])
    version_dir = os.path.join(config.serving_model_dir, str(versions[0]))
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isdir(os.path.join(version_dir, "variables"))
    # Nothing but complete integer versions in TF Serving's model_base_path.
    assert os.listdir(config.serving_model_dir) == [str(versions[0])]


def test_pushed_model_answers_tf_examples(first_run):
    config, _, versions = first_run
    model = tf.saved_model.load(os.path.join(config.serving_model_dir, str(versions[0])))
    schema = examples.load_schema(config.schema_path)
    rows = examples.read_csv_rows(str(SMALL_DATA / "data.csv"), limit=8)
    output = model.signatures["serving_default"](examples=tf.constant(examples.serialize(rows, schema)))
    probabilities = output["probabilities"].numpy()
    assert probabilities.shape == (8, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    # Cash tips are rarely recorded in this data: the same trip paid by card scores higher.
    cash = dict(rows[0], payment_type="Cash", fare="10.0")
    card = dict(rows[0], payment_type="Credit Card", fare="10.0")
    cash_p, card_p = model.signatures["serving_default"](
        examples=tf.constant(examples.serialize([cash, card], schema)))["probabilities"].numpy().ravel()
    assert cash_p < 0.2 and cash_p < card_p


def test_evaluation_reports_every_metric(first_run):
    config, _, _ = first_run
    store = summary.open_store(config)
    run = summary.latest_run(store, config)
    from pipeline import evaluation
    report = evaluation.explain_blessing(run["Evaluator"].outputs["evaluation"][0].uri, config.evaluator)
    for name in ("auc", "binary_accuracy", "precision", "recall", "calibration", "example_count"):
        assert name in report.metrics, name
    assert 0.6 <= report.metrics["auc"] <= 1.0
    assert report.checks[0].passed and "AUC" in report.checks[0].description


def test_unchanged_rerun_is_all_cached_and_pushes_nothing(first_run, small_pipeline):
    config, _, versions_before = first_run
    cards = os.path.dirname(model_card.card_dir(config, 0))
    cards_before = {n: os.path.getmtime(os.path.join(cards, n)) for n in os.listdir(cards)}
    assert str(max(versions_before)) in cards_before  # the first run wrote the card of the version it pushed
    assert small_pipeline() == 0
    executions = _executions_by_node(config)
    for node in COMPONENTS:
        if node.endswith("_resolver"):  # a resolver always resolves; it has no cache
            continue
        assert executions[node] == [metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED], node
    assert _served(config) == versions_before
    # Nothing pushed, nothing written: the same cards, untouched.
    assert {n: os.path.getmtime(os.path.join(cards, n)) for n in os.listdir(cards)} == cards_before


def test_changed_training_config_is_compared_with_the_blessed_baseline(first_run, small_pipeline, capsys):
    """A new model (more steps) is evaluated against the last blessed one and the reason says so."""
    config, _, versions_before = first_run
    overlay = small_pipeline.root / "overlay.yaml"
    original = overlay.read_text()
    # A drop of up to 1.0 AUC is tolerated here so the new model is blessed and pushed.
    overlay.write_text(original + "trainer: {train_steps: 200, eval_steps: 10, batch_size: 64}\n"
                       "evaluator: {auc_lower_bound: 0.6, auc_max_drop: 1.0}\n")
    try:
        assert small_pipeline() == 0
    finally:
        overlay.write_text(original)
    out = capsys.readouterr().out
    executions = _executions_by_node(config)
    assert executions["Transform"][-1] == metadata_store_pb2.Execution.CACHED
    assert executions["Trainer"][-1] == metadata_store_pb2.Execution.COMPLETE
    assert executions["Evaluator"][-1] == metadata_store_pb2.Execution.COMPLETE

    store = summary.open_store(config)
    run = summary.latest_run(store, config)
    baseline = run["Evaluator"].inputs["baseline_model"]
    candidate = run["Evaluator"].inputs["model"]
    assert len(baseline) == 1 and baseline[0].id != candidate[0].id
    from pipeline import evaluation
    report = evaluation.explain_blessing(run["Evaluator"].outputs["evaluation"][0].uri, config.evaluator)
    assert "auc" in report.baseline_metrics
    change = [c for c in report.checks if "change threshold" in c.description]
    assert change and change[0].passed
    assert "vs baseline" in out
    versions_after = _served(config)
    assert len(versions_after) == 2 and versions_after[0] == versions_before[0]
    assert versions_after[1] > versions_after[0]

    # Each run's reports in its own folder: the first run's evaluation.html still shows its own evaluation, the
    # pipeline's folder the newest run's.
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id))
    pages = {}
    for context in (runs[0], runs[-1]):
        folder = reports.run_report_dir(config.output_root, config.pipeline_name, context.name)
        assert sorted(os.listdir(folder)) == ["evaluation.html", "statistics.html"], context.name
        pages[context.name] = {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}
    first_uri = summary.latest_run(store, config, runs[0].name)["Evaluator"].outputs["evaluation"][0].uri
    newest_uri = run["Evaluator"].outputs["evaluation"][0].uri
    assert first_uri != newest_uri
    first, newest = pages[runs[0].name]["evaluation.html"], pages[runs[-1].name]["evaluation.html"]
    assert f"TFMA output: {first_uri}<" in first and f"TFMA output: {newest_uri}<" in newest
    top = reports.report_dir(config.output_root, config.pipeline_name)
    assert {name: open(os.path.join(top, name)).read() for name in pages[runs[-1].name]} == pages[runs[-1].name]

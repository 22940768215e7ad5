"""Warm start (continuous.warm_start, issue 12): which model a windowed run starts from (pipeline/warm_start.py),
and how run_fn takes its weights (modules/warm_start.py). The e2e check is in test_continuous.py's rolling window."""
import json

import numpy as np
import pytest
from conftest import write_span_root

from modules import features as F
from modules import warm_start as W


def test_vocabulary_rows_follow_their_strings():
    base = np.arange(8, dtype=np.float32).reshape(8, 1)  # vocabulary a, b, c; OOV rows 3, 4; unused 5-7
    new = np.full((8, 1), -1.0, dtype=np.float32)
    rows = W.remap_vocabulary_rows(base, ["a", "b", "c"], new, ["c", "d", "a", "b"], oov_buckets=2)
    # c, d (new: its initial row), a, b; the OOV buckets move from ids 3-4 to 4-5; 6-7 stay initial.
    assert rows[:, 0].tolist() == [2, -1, 0, 1, 3, 4, -1, -1]
    assert new[0, 0] == -1  # the new model's rows are not modified in place


def _store():
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.fake_database.SetInParent()
    return metadata_store.MetadataStore(connection)


def _lineage(store, trained_on: list[int]) -> int:
    """ExampleGen's Examples of the spans `trained_on` -> Transform -> transformed Examples -> Trainer -> a Model;
    returns the Model's id."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    types = {name: store.put_artifact_type(pb.ArtifactType(name=name)) for name in ("Examples", "Model")}
    step = store.put_execution_type(pb.ExecutionType(name="Step"))

    def artifact(kind, span=None):
        a = pb.Artifact(type_id=types[kind])
        if span is not None:
            a.custom_properties["span"].int_value = span
        return store.put_artifacts([a])[0]

    def execution(inputs, outputs):
        (x,) = store.put_executions([pb.Execution(type_id=step, last_known_state=pb.Execution.COMPLETE)])
        store.put_events([pb.Event(artifact_id=a, execution_id=x, type=pb.Event.INPUT) for a in inputs]
                         + [pb.Event(artifact_id=a, execution_id=x, type=pb.Event.OUTPUT) for a in outputs])

    raw = [artifact("Examples", span) for span in trained_on]
    transformed = [artifact("Examples") for _ in raw]
    execution(raw, transformed)  # Transform
    model = artifact("Model")
    execution(transformed, [model])  # Trainer
    return model


def test_the_base_model_is_the_newest_trained_before_the_runs_span():
    """Models trained on [1], [1, 2], [2, 3]: a run on span 3 starts from the [1, 2] one (the [2, 3] one is its own
    re-run's: it has seen span 3), a run on 4 from [2, 3], a run on span 1 from none (cold)."""
    from tfx.types.standard_artifacts import Model

    from pipeline.warm_start import ModelBeforeSpanStrategy, trained_spans

    store = _store()
    ids = [_lineage(store, spans) for spans in ([1], [1, 2], [2, 3])]
    assert [trained_spans(store, i) for i in ids] == [{1}, {1, 2}, {2, 3}]
    models = []
    for i in ids:
        model = Model()
        model.id = i
        models.append(model)
    picked = {span: [m.id for m in ModelBeforeSpanStrategy(span).resolve_artifacts(store, {"model": models})["model"]]
              for span in (1, 3, 4)}
    assert picked == {1: [], 3: [ids[1]], 4: [ids[2]]}


def test_a_windowed_dag_gives_the_trainer_a_base_model(tmp_path):
    """Window > 1 with warm_start (the default): the Trainer's base_model is the warm_start_model_resolver's model;
    window 1 (make run) or warm_start false: no resolver, no base_model."""
    from pipeline import components
    from pipeline.config import load_config, resolve_span
    from pipeline.pipeline import create_pipeline
    from pipeline.warm_start import WARM_START_RESOLVER

    root = write_span_root(tmp_path / "data")  # span-1, span-2 complete

    def nodes(overlay):
        (tmp_path / "overlay.yaml").write_text(overlay)
        config = resolve_span(load_config(env={"TFX_E2E_DATA_ROOT": str(root), "TFX_E2E_OUTPUT_ROOT": str(tmp_path),
                                               "TFX_E2E_CONFIG": str(tmp_path / "overlay.yaml")}))
        return config, {c.id: c for c in create_pipeline(config).components}

    config, dag = nodes("continuous: {window_spans: 2}\n")
    assert dag["Trainer"].inputs["base_model"].producer_component_id == WARM_START_RESOLVER
    assert dag[WARM_START_RESOLVER].exec_properties["source_uri"] == {"span": 2}
    assert components.trainer_custom_config(config, "f")["warm_start_steps"] == 100
    for overlay in ("", "continuous: {window_spans: 2, warm_start: false}\n"):
        _, dag = nodes(overlay)
        assert WARM_START_RESOLVER not in dag and "base_model" not in dag["Trainer"].inputs


def test_warm_start_steps_must_be_positive(tmp_path):
    from pipeline.config import ConfigError, load_config

    (tmp_path / "overlay.yaml").write_text("continuous: {warm_start_steps: 0}\n")
    with pytest.raises(ConfigError, match="continuous.warm_start_steps: must be at least 1, got 0"):
        load_config(env={"TFX_E2E_CONFIG": str(tmp_path / "overlay.yaml")}, check_data=False)


class _TransformOutput:
    def __init__(self, folder):
        self.folder = folder

    def vocabulary_file_by_name(self, name):
        return str(self.folder / name)


def _base_model(folder, model, hp_values, vocabularies):
    """What load_base_weights reads of an exported model: the variables as modules/model.py saves them (a root
    with `model_variables`), the vocabularies in assets/ and the hyperparameters."""
    import tensorflow as tf

    tf.train.Checkpoint(model_variables=[v.value for v in model.variables]).write(str(folder / "variables" / "variables"))
    (folder / "assets").mkdir()
    for key, tokens in vocabularies.items():
        (folder / "assets" / F.vocab_filename(key)).write_text("".join(f"{t}\n" for t in tokens))
    W.write_hyperparameters(str(folder), hp_values)
    return str(folder)


def test_run_fn_takes_the_base_models_weights_or_says_why_not(tmp_path):
    from modules import hparams as H
    from modules import model as M

    hp = H.search_space()
    base = M.build_keras_model(hp)
    payment = base.get_layer(f"{F.transformed_name('payment_type')}_embedding").embeddings
    payment.assign(np.arange(payment.shape[0] * payment.shape[1], dtype=np.float32).reshape(payment.shape))
    vocabularies = {"payment_type": ["Cash", "Credit Card"], "company": ["A"]}
    path = _base_model(tmp_path / "base", base, hp.values, vocabularies)
    new_vocab = tmp_path / "new"
    new_vocab.mkdir()
    for key, tokens in {"payment_type": ["Credit Card", "Cash", "Mobile"], "company": ["A"]}.items():
        (new_vocab / F.vocab_filename(key)).write_text("".join(f"{t}\n" for t in tokens))

    model = M.build_keras_model(hp)
    initial = np.array(model.get_layer(f"{F.transformed_name('payment_type')}_embedding").embeddings.numpy())
    assert W.load_base_weights(model, hp.values, path, _TransformOutput(new_vocab)) == ""
    rows = model.get_layer(f"{F.transformed_name('payment_type')}_embedding").embeddings.numpy()
    old = payment.numpy()
    np.testing.assert_array_equal(rows[0], old[1])  # Credit Card
    np.testing.assert_array_equal(rows[1], old[0])  # Cash
    np.testing.assert_array_equal(rows[2], initial[2])  # Mobile: new
    np.testing.assert_array_equal(rows[3:3 + F.OOV_BUCKETS], old[2:2 + F.OOV_BUCKETS])
    dense = [v for v in model.variables if "embedding" not in v.path]
    for mine, theirs in zip(dense, [v for v in base.variables if "embedding" not in v.path], strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    other = dict(hp.values, units=32)
    untouched = M.build_keras_model(hp)
    before = [np.array(v.numpy()) for v in untouched.variables]
    assert W.load_base_weights(untouched, other, path, _TransformOutput(new_vocab)).startswith(
        "the base model's hyperparameters differ")
    for value, variable in zip(before, untouched.variables, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())
    assert json.loads((tmp_path / "base" / W.HPARAMS_FILE).read_text()) == hp.values

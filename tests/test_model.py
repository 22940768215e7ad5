"""The model from default and from tuned hyperparameters, and the three exported signatures."""
import json
import math
import os

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_DATA

from modules import features as F
from modules import hparams as H
from modules import model as M
from pipeline.versions import served_versions
from runners import summary
from serving import examples


def _hidden_units(model):
    return [layer.units for layer in model.layers
            if isinstance(layer, keras.layers.Dense) and layer.name != M.OUTPUT_KEY]


def test_build_from_default_hyperparameters():
    hp = H.resolve(None)
    assert hp.values == {"learning_rate": 3e-3, "num_layers": 2, "units": 64, "embedding_dim": 4, "dropout": 0.3}
    model = M.build_keras_model(hp)
    assert _hidden_units(model) == [64, 64]
    assert model.output_shape == (None, 1)
    assert set(model.input) == set(F.dense_inputs()) | set(F.categorical_sizes())  # a dict of named inputs


def test_build_from_tuned_hyperparameters():
    tuned = H.search_space()
    tuned.values.update(num_layers=3, units=128, embedding_dim=8, learning_rate=1e-3, dropout=0.0)
    hp = H.resolve(tuned.get_config())  # the JSON the Tuner writes as best_hyperparameters
    model = M.build_keras_model(hp)
    assert _hidden_units(model) == [128, 128, 128]
    embedding = model.get_layer(f"{F.transformed_name('payment_type')}_embedding")
    assert embedding.output_dim == 8
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert math.isclose(float(model.optimizer.learning_rate.numpy()), 1e-3, rel_tol=1e-6)


@pytest.mark.e2e
def test_tuner_output_drives_the_trainer(small_pipeline):
    config = small_pipeline.config()
    store = summary.open_store(config)
    tuner_run = summary.latest_run(store, config)["Tuner"]
    uri = tuner_run.outputs["best_hyperparameters"][0].uri
    with open(os.path.join(uri, "best_hyperparameters.txt")) as f:
        best = json.load(f)
    hp = H.resolve(best)
    space = H.search_space()
    assert set(hp.values) == set(space.values)
    assert hp.values["units"] in (32, 64, 128) and 1 <= hp.values["num_layers"] <= 3
    assert hp.values == keras_tuner.HyperParameters.from_config(best).values


@pytest.fixture(scope="module")
def pushed_model(small_pipeline):
    config = small_pipeline.config()
    version = served_versions(config.serving_model_dir)[-1]
    return config, tf.saved_model.load(os.path.join(config.serving_model_dir, str(version)))


@pytest.mark.e2e
def test_signatures_are_exported(pushed_model):
    _, model = pushed_model
    assert set(model.signatures) == {M.SERVING_SIGNATURE, M.RAW_SIGNATURE, M.TRANSFORM_SIGNATURE}


@pytest.mark.e2e
def test_warmup_request_is_exported_and_answered(pushed_model):
    """TF Serving (and serving/) replay assets.extra/tf_serving_warmup_requests before a version serves."""
    from tensorflow_serving.apis import prediction_log_pb2

    config, model = pushed_model
    version = served_versions(config.serving_model_dir)[-1]
    path = os.path.join(config.serving_model_dir, str(version), M.WARMUP_FILE)
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 1
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == M.SERVING_SIGNATURE
    output = model.signatures[M.SERVING_SIGNATURE](examples=tf.make_ndarray(request.inputs["examples"]))
    assert output[M.OUTPUT_KEY].shape == (1, 1)


@pytest.mark.e2e
def test_raw_signature_matches_tf_example_signature(pushed_model):
    config, model = pushed_model
    schema = examples.load_schema(config.schema_path)
    rows = examples.read_csv_rows(str(SMALL_DATA / "data.csv"), limit=6)
    from_examples = model.signatures[M.SERVING_SIGNATURE](
        examples=tf.constant(examples.serialize(rows, schema)))[M.OUTPUT_KEY].numpy()

    raw = model.signatures[M.RAW_SIGNATURE]
    inputs = {}
    for name, spec in raw.structured_input_signature[1].items():
        if spec.dtype == tf.string:
            inputs[name] = tf.constant([row[name] for row in rows])
        else:  # JSON numbers; an empty CSV cell is NaN (missing)
            inputs[name] = tf.constant([float(row[name]) if row[name] else float("nan") for row in rows], tf.float64)
    from_raw = raw(**inputs)[M.OUTPUT_KEY].numpy()
    assert from_raw.shape == (6, 1)
    np.testing.assert_allclose(from_raw, from_examples, rtol=1e-5, atol=1e-6)
    assert np.all((from_raw >= 0) & (from_raw <= 1))


@pytest.mark.e2e
def test_transform_features_signature_gives_tfma_the_label(pushed_model):
    config, model = pushed_model
    schema = examples.load_schema(config.schema_path)
    rows = [dict(examples.read_csv_rows(str(SMALL_DATA / "data.csv"), limit=1)[0], fare="10.0", tips="2.5")]
    transformed = model.signatures[M.TRANSFORM_SIGNATURE](
        examples=tf.constant(examples.serialize(rows, schema, skip=())))
    assert transformed[F.LABEL_KEY].numpy().tolist() == [1]  # 2.5 > 20% of 10.0
    assert set(F.dense_inputs()) <= set(transformed)


@pytest.mark.e2e
def test_tf_serving_session_loader_runs_the_pushed_model(pushed_model):
    """TF Serving loads a SavedModel into a Session (variables restored through the saver_def), not with
    tf.saved_model.load. Saved from a Keras 3 model, the variables are missing from that graph and every
    request fails with "Could not find variable ..."; the export must give the same answers both ways."""
    config, model = pushed_model
    version = served_versions(config.serving_model_dir)[-1]
    path = os.path.join(config.serving_model_dir, str(version))
    serialized = examples.serialize(examples.read_csv_rows(str(SMALL_DATA / "data.csv"), limit=6),
                                    examples.load_schema(config.schema_path))
    expected = model.signatures[M.SERVING_SIGNATURE](examples=tf.constant(serialized))[M.OUTPUT_KEY].numpy()

    session = tf.compat.v1.Session(graph=tf.Graph())
    with session.graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    signature = meta_graph.signature_def[M.SERVING_SIGNATURE]
    (name,) = signature.inputs
    got = session.run(signature.outputs[M.OUTPUT_KEY].name,
                      {signature.inputs[name].name: np.array(serialized, dtype=object)})
    session.close()
    assert got.shape == (6, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Only the weights are saved (no optimizer slots): the Adam state would double the variables.
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    assert not [key for key in reader.get_variable_to_shape_map() if "optimizer" in key.lower()]

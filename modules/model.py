"""The Keras model and the signatures it is exported with.

Keras 3 (`keras`), not `tf.keras`: importing tf.Transform sets TF_USE_LEGACY_KERAS, after
which `tf.keras` may resolve to Keras 2 depending on import order, and KerasTuner only
accepts Keras 3 models.
"""
import keras
import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft

from modules import features as F

# The three exported signatures (what TF Serving clients, JSON clients and TFMA call), their output, the warm-up
# file and the keys a request leaves out: the contract with pipeline/ and serving/.
from modules.contract import (
    EXAMPLES_INPUT,
    OUTPUT_KEY,
    RAW_SIGNATURE,
    SERVING_DROPPED_KEYS,
    SERVING_SIGNATURE,
    TRANSFORM_SIGNATURE,
    WARMUP_FILE,
)


def build_keras_model(hp: keras_tuner.HyperParameters) -> keras.Model:
    """Embeddings for every categorical input, z-scores as they are, then a ReLU tower with dropout."""
    embedding_dim = hp.get("embedding_dim")
    inputs, encoded = {}, []
    for name in F.dense_inputs():
        inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.float32)
        encoded.append(inputs[name])
    for name, size in F.categorical_sizes().items():
        inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.int64)
        embedded = keras.layers.Embedding(size, embedding_dim, name=f"{name}_embedding")(inputs[name])
        encoded.append(keras.layers.Flatten()(embedded))
    x = keras.layers.Concatenate()(encoded)
    for _ in range(hp.get("num_layers")):
        x = keras.layers.Dense(hp.get("units"), activation="relu")(x)
        if hp.get("dropout"):
            x = keras.layers.Dropout(hp.get("dropout"))(x)
    output = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_KEY)(x)
    model = keras.Model(inputs, output)
    model.compile(
        optimizer=keras.optimizers.Adam(hp.get("learning_rate")),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="binary_accuracy")],
    )
    return model


def _model_inputs(transformed: dict) -> dict:
    return {name: tf.reshape(transformed[name], [-1, 1]) for name in F.dense_inputs() + list(F.categorical_sizes())}


def _raw_input_specs(raw_feature_spec: dict) -> list:
    """Signature inputs for JSON clients: numbers as float64 (NaN = missing), strings ('' = missing)."""
    return [
        tf.TensorSpec([None], tf.string if spec.dtype == tf.string else tf.float64, name=name)
        for name, spec in sorted(raw_feature_spec.items())
    ]


def _raw_feature(value, spec):
    """A JSON-signature input as the feature tf.io.parse_example would give (absent where missing)."""
    if spec.dtype == tf.string:
        present = tf.not_equal(value, "")
    else:
        present = tf.logical_not(tf.math.is_nan(value))
        value = tf.cast(value, spec.dtype)
    if isinstance(spec, tf.io.FixedLenFeature):
        return tf.reshape(value, [-1] + list(spec.shape))
    rows = tf.where(present)
    return tf.SparseTensor(
        indices=tf.concat([rows, tf.zeros_like(rows)], axis=1),
        values=tf.boolean_mask(value, present),
        dense_shape=tf.stack([tf.size(value, out_type=tf.int64), tf.constant(1, tf.int64)]),
    )


def export_saved_model(model: keras.Model, tf_transform_output: tft.TFTransformOutput, export_dir: str) -> None:
    """The serving SavedModel: the signatures below, the transform layer (its tables and assets), the model's weights.

    The root is a tf.Module holding the Keras variables' underlying tf.Variables, not the Keras model: saved from
    the model, Keras 3 variables are missing from the graph that TF Serving's session loader restores, and TF
    Serving then fails every request with "Could not find variable ..." (keras-team/keras#19274), although
    tf.saved_model.load serves the same files.
    """
    root = tf.Module()
    root.tft_layer = tf_transform_output.transform_features_layer()
    root.model_variables = [variable.value for variable in model.variables]
    signatures = export_signatures(model, root.tft_layer, tf_transform_output.raw_feature_spec())
    tf.saved_model.save(root, export_dir, signatures=signatures)


def export_signatures(model: keras.Model, tft_layer, raw_spec: dict) -> dict:
    """serving_default (serialized tf.Example), serving_raw (one tensor per raw feature), transform_features.

    Traced without AutoGraph: they have no Python control flow on tensors, and converting the transform layer for
    each of the three took half the export's time (about 4 s of 9), for the same graphs' outputs."""
    serving_spec = {k: v for k, v in raw_spec.items() if k not in SERVING_DROPPED_KEYS}

    def predict(raw_features):
        transformed = tft_layer(raw_features)
        return {OUTPUT_KEY: model(_model_inputs(transformed))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)], autograph=False)
    def serve_tf_examples(serialized):
        return predict(tf.io.parse_example(serialized, serving_spec))

    @tf.function(input_signature=_raw_input_specs(serving_spec), autograph=False)
    def serve_raw(*tensors):
        features = zip(sorted(serving_spec), tensors, strict=True)
        return predict({name: _raw_feature(value, serving_spec[name]) for name, value in features})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)], autograph=False)
    def transform_features(serialized):
        return tft_layer(tf.io.parse_example(serialized, raw_spec))

    return {
        SERVING_SIGNATURE: serve_tf_examples,
        RAW_SIGNATURE: serve_raw,
        TRANSFORM_SIGNATURE: transform_features,
    }


def write_warmup_requests(export_dir: str, tf_transform_output: tft.TFTransformOutput) -> str:
    """One serving_default request as a PredictionLog record, so the first real request after a swap is not slow.

    The example names every raw feature (zeros and empty strings: its values do not matter, its shapes do).
    """
    from tensorflow_serving.apis import prediction_log_pb2

    example = tf.train.Example()
    for name, spec in tf_transform_output.raw_feature_spec().items():
        if name in SERVING_DROPPED_KEYS:
            continue
        feature = example.features.feature[name]
        if spec.dtype == tf.string:
            feature.bytes_list.value.append(b"")
        elif spec.dtype == tf.int64:
            feature.int64_list.value.append(0)
        else:
            feature.float_list.value.append(0.0)
    record = prediction_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.signature_name = SERVING_SIGNATURE
    request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([example.SerializeToString()], dtype=tf.string))
    path = f"{export_dir}/{WARMUP_FILE}"
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(record.SerializeToString())
    return path

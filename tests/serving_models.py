"""Small SavedModels the serving tests build in seconds, shaped like the pipeline's: a taxi-like model whose
serving_default takes serialized tf.Examples and serving_raw takes one tensor per feature, both answering
`probabilities` [batch, 1]; saved as TF1 graphs with a variable, so TF Serving's Session loader restores it."""
import os

import numpy as np

from modules.contract import EXAMPLES_INPUT, OUTPUT_KEY, RAW_SIGNATURE, SERVING_SIGNATURE

FEATURES = {"fare": 0.08, "trip_start_hour": -0.05}  # weights
COMPANY, COMPANY_WEIGHT = "Flash Cab", 0.5


def taxi_probabilities(rows, bias: float = 0.0) -> np.ndarray:
    """What the model answers for raw rows ({feature: value}; missing or "" means 0 / "")."""
    def number(row, name):
        value = row.get(name, "")
        return float(value) if value not in ("", None) else 0.0
    logits = [sum(w * number(row, name) for name, w in FEATURES.items()) + bias
              + (COMPANY_WEIGHT if row.get("company") == COMPANY else 0.0) for row in rows]
    return (1 / (1 + np.exp(-np.array(logits, dtype=np.float64)))).astype(np.float32).reshape(-1, 1)


def taxi_examples(rows) -> list[bytes]:
    import tensorflow as tf

    def feature(name, value):
        if name == "company":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        if name == "trip_start_hour":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    return [tf.train.Example(features=tf.train.Features(feature={
        name: feature(name, value) for name, value in row.items() if value not in ("", None)})).SerializeToString()
        for row in rows]


CANARY_FAULT = "canary fault: a fare above"


def write_taxi_model(path: str, bias: float = 0.0, warmup: bool = True, work: int = 0,
                     fail_above_fare: float | None = None) -> None:
    """`work` adds that many 512x512 matrix products per row, adding nothing to the output: a model slow enough
    that concurrent requests meet in a batch. `fail_above_fare`: a bad model that answers INVALID_ARGUMENT naming
    CANARY_FAULT for any request with a fare above it (the rollout tests' bad canary)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        weights = tf.compat.v1.Variable([FEATURES["fare"], FEATURES["trip_start_hour"], COMPANY_WEIGHT, bias],
                                        dtype=tf.float64, name="weights")

        def probabilities(fare, hour, company):
            logit = (weights[0] * fare + weights[1] * tf.cast(hour, tf.float64)
                     + weights[2] * tf.cast(tf.equal(company, COMPANY), tf.float64) + weights[3])
            hidden = tf.tile(tf.reshape(fare, [-1, 1]), [1, 512])
            for _ in range(work):
                hidden = tf.tanh(tf.matmul(hidden, tf.fill([512, 512], tf.constant(1e-3, tf.float64))))
            if work:
                logit += 0.0 * tf.reduce_sum(hidden, axis=1)
            if fail_above_fare is not None:
                check = tf.debugging.Assert(tf.reduce_all(fare <= fail_above_fare), [CANARY_FAULT, fail_above_fare])
                with tf.control_dependencies([check]):
                    logit = tf.identity(logit)
            return tf.reshape(tf.cast(tf.sigmoid(logit), tf.float32), [-1, 1])

        examples = tf.compat.v1.placeholder(tf.string, [None], name=EXAMPLES_INPUT)
        parsed = tf.io.parse_example(examples, {
            "fare": tf.io.FixedLenFeature([], tf.float32, 0.0),
            "trip_start_hour": tf.io.FixedLenFeature([], tf.int64, 0),
            "company": tf.io.FixedLenFeature([], tf.string, ""),
        })
        raw = {"fare": tf.compat.v1.placeholder(tf.float64, [None], name="fare"),
               "trip_start_hour": tf.compat.v1.placeholder(tf.int64, [None], name="trip_start_hour"),
               "company": tf.compat.v1.placeholder(tf.string, [None], name="company")}
        session.run(tf.compat.v1.global_variables_initializer())
        predict = tf.compat.v1.saved_model.predict_signature_def
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            SERVING_SIGNATURE: predict({EXAMPLES_INPUT: examples}, {OUTPUT_KEY: probabilities(
                tf.cast(parsed["fare"], tf.float64), parsed["trip_start_hour"], parsed["company"])}),
            RAW_SIGNATURE: predict(raw, {OUTPUT_KEY: probabilities(raw["fare"], raw["trip_start_hour"],
                                                                        raw["company"])}),
        })
        builder.save()
    if warmup:
        record = prediction_log_pb2.PredictionLog()
        request = record.predict_log.request
        request.model_spec.signature_name = SERVING_SIGNATURE
        request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(
            np.array(taxi_examples([{"fare": 5.0, "company": COMPANY}]), dtype=object)))
        os.makedirs(os.path.join(path, "assets.extra"))
        with tf.io.TFRecordWriter(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) as writer:
            writer.write(record.SerializeToString())

"""tf.Transform preprocessing_fn for the taxi data (Transform component, by dotted path)."""
import tensorflow as tf
import tensorflow_transform as tft

from modules import features as F


def _dense(x, default, dtype=None):
    """A rank-1 tensor of `x` (cast to `dtype`) with missing values set to `default`, and a presence mask.

    Features that may be absent arrive as SparseTensors (VarLen in the schema);
    required ones arrive dense.
    """
    if not isinstance(x, tf.sparse.SparseTensor):
        x = tf.reshape(x, [-1])
        x = tf.cast(x, dtype) if dtype else x
        return x, tf.ones_like(x, dtype=tf.bool)
    values = tf.cast(x.values, dtype) if dtype else x.values
    sparse = tf.SparseTensor(x.indices, values, [x.dense_shape[0], 1])
    dense = tf.squeeze(tf.sparse.to_dense(sparse, default_value=default), axis=1)
    present = tf.squeeze(
        tf.sparse.to_dense(tf.SparseTensor(sparse.indices, tf.ones_like(values, tf.bool), sparse.dense_shape),
                           default_value=False),
        axis=1)
    return dense, present


def _present_values(x, dtype):
    return tf.cast(x.values if isinstance(x, tf.sparse.SparseTensor) else tf.reshape(x, [-1]), dtype)


def preprocessing_fn(inputs, custom_config=None):
    """Maps raw taxi features to model inputs and the big-tipper label.

    `custom_config` carries the pipeline's module fingerprint (for caching); unused here.
    """
    del custom_config
    outputs = {}

    for key in F.DENSE_FLOAT_FEATURES:
        # Negative amounts are invalid (the schema says so); clamp before the log.
        logged = tf.math.log1p(tf.maximum(_present_values(inputs[key], tf.float32), 0.0))
        # Impute with the training mean, so a missing value scales to 0.
        values, present = _dense(inputs[key], 0.0, tf.float32)
        values = tf.where(present, tf.math.log1p(tf.maximum(values, 0.0)), tft.mean(logged))
        outputs[F.transformed_name(key)] = tft.scale_to_z_score(values)

    fare, _ = _dense(inputs[F.FARE_KEY], 0.0, tf.float32)
    outputs[F.transformed_name(F.FARE_BUCKET_KEY)] = tft.bucketize(fare, F.FARE_BUCKET_COUNT, epsilon=0.001)

    for key in F.VOCAB_FEATURES:
        values, _ = _dense(inputs[key], F.MISSING_STRING)
        outputs[F.transformed_name(key)] = tft.compute_and_apply_vocabulary(
            values, top_k=F.VOCAB_SIZE, num_oov_buckets=F.OOV_BUCKETS, vocab_filename=F.vocab_filename(key))

    for key in F.BUCKET_FEATURES:
        # Quantile boundaries from present values only; a missing coordinate gets bucket BUCKET_COUNT.
        boundaries = tft.quantiles(_present_values(inputs[key], tf.float32), num_buckets=F.BUCKET_COUNT, epsilon=0.01)
        values, present = _dense(inputs[key], 0.0, tf.float32)
        buckets = tft.apply_buckets(values, boundaries)
        outputs[F.transformed_name(key)] = tf.where(present, buckets, tf.constant(F.BUCKET_COUNT, tf.int64))

    for key, max_id in F.CATEGORICAL_FEATURES.items():
        values, present = _dense(inputs[key], -1, tf.int64)
        valid = present & (values >= 0) & (values <= max_id)
        outputs[F.transformed_name(key)] = tf.where(valid, values, tf.constant(max_id + 1, tf.int64))

    tips, _ = _dense(inputs[F.TIPS_KEY], 0.0, tf.float32)
    # A missing fare or tip counts as no big tip.
    outputs[F.LABEL_KEY] = tf.cast(tips > F.BIG_TIP_FRACTION * fare, tf.int64)
    return outputs

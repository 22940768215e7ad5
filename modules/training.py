"""Trainer's run_fn (by dotted path): resolve hyperparameters, fit, export. The parts live in model.py."""
import json
import math

import keras
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
from tfx_bsl.tfxio import dataset_options

from modules import contract
from modules import features as F
from modules import hparams as H
from modules import model as M
from modules import warm_start as W

# Keras prints one line per epoch; train_steps are split into this many epochs so long training shows progress.
EPOCHS = 5


def dataset(file_pattern, data_accessor: DataAccessor, tf_transform_output: tft.TFTransformOutput,
            batch_size: int, raw: bool = False) -> tf.data.Dataset:
    """Transformed (features, label) batches, repeated (steps are counted by the caller). `raw`: the files are
    ExampleGen's, parsed by the raw schema and transformed here by the transform graph (a rolling window, where
    Transform does not write a transformed copy of every span again each run)."""
    if not raw:
        return data_accessor.tf_dataset_factory(
            file_pattern,
            dataset_options.TensorFlowDatasetOptions(batch_size=batch_size, label_key=F.LABEL_KEY),
            tf_transform_output.transformed_metadata.schema,
        ).repeat()
    transform_layer = tf_transform_output.transform_features_layer()

    # Not converted by AutoGraph (no Python control flow on tensors here): converting the transform layer's Keras
    # call took about 3 s per dataset, identical output.
    @tf.autograph.experimental.do_not_convert
    def transform(raw_features):
        features = transform_layer(raw_features)
        return features, features.pop(F.LABEL_KEY)

    return data_accessor.tf_dataset_factory(
        file_pattern,
        dataset_options.TensorFlowDatasetOptions(batch_size=batch_size),
        tf_transform_output.raw_metadata.schema,
    ).map(transform, num_parallel_calls=tf.data.AUTOTUNE).repeat()


def count_examples(file_patterns: list[str]) -> int:
    """The records in the files the Trainer reads (its train split), counted without parsing them: one streaming
    pass, so the steps follow what Transform wrote whatever the data source."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    compressed = [f for f in files if f.endswith(".gz")]
    count = 0
    for group, compression in ((compressed, "GZIP"), ([f for f in files if not f.endswith(".gz")], "")):
        if group:
            records = tf.data.TFRecordDataset(group, compression_type=compression, num_parallel_reads=len(group))
            count += int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    return count


def epoch_steps(num_examples: int, batch_size: int, epochs: int, max_steps: int) -> int:
    """Steps for `epochs` passes over `num_examples` in batches of `batch_size` (a last, partial batch is a step),
    at most `max_steps`, at least 1."""
    if num_examples < 1:
        raise ValueError(f"the train split has no examples: nothing to train on ({epochs} epoch(s) asked)")
    return max(1, min(max_steps, epochs * math.ceil(num_examples / batch_size)))


def write_training_record(model_run_dir: str, warm_from: str | None, cold_reason: str, steps: int) -> None:
    tf.io.gfile.makedirs(model_run_dir)
    with tf.io.gfile.GFile(f"{model_run_dir}/{contract.TRAINING_RECORD}", "w") as f:
        f.write(json.dumps({"warm_start_from": warm_from, "cold_reason": cold_reason, "steps": steps}))


class MissingCustomConfig(KeyError):
    """A custom_config key the pipeline must pass (modules/contract.py) is absent."""

    def __str__(self) -> str:  # KeyError's own would print the message as a quoted repr
        return str(self.args[0])


def custom_config(fn_args: FnArgs, keys: tuple[str, ...]) -> dict:
    """The custom_config values for `keys`; every one is required (its value comes from pipeline/config.yaml)."""
    given = fn_args.custom_config or {}
    missing = [key for key in keys if key not in given]
    if missing:
        raise MissingCustomConfig(
            f"custom_config: missing key(s) {', '.join(missing)} (pipeline/components.py passes them from "
            f"pipeline/config.yaml; got {', '.join(sorted(given)) or 'none'})")
    return {key: given[key] for key in keys}


def run_fn(fn_args: FnArgs) -> None:
    """custom_config: batch_size, epochs, max_train_steps, warm_start_steps, raw_examples (modules/contract.py
    TRAINER_CONFIG_KEYS, required). epochs 0: TFX's train_args steps; else steps from the train split's example count, capped by
    max_train_steps. With a base_model whose weights fit (modules/warm_start.py): warm_start_steps from its weights."""
    settings = custom_config(fn_args, contract.TRAINER_CONFIG_KEYS)
    batch_size = int(settings[contract.BATCH_SIZE_KEY])
    train_steps = fn_args.train_steps
    if settings[contract.EPOCHS_KEY]:
        examples = count_examples(fn_args.train_files)
        train_steps = epoch_steps(examples, batch_size, int(settings[contract.EPOCHS_KEY]),
                                  int(settings[contract.MAX_TRAIN_STEPS_KEY]))
        logging.info("Training %d steps: %d epoch(s) of %d train examples in batches of %d (at most %d steps)",
                     train_steps, settings[contract.EPOCHS_KEY], examples, batch_size,
                     settings[contract.MAX_TRAIN_STEPS_KEY])
    hp = H.resolve(fn_args.hyperparameters)
    logging.info("Training with hyperparameters %s", hp.values)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    raw = bool(settings[contract.RAW_EXAMPLES_KEY])
    train = dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size, raw)
    evaluation = dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size, raw)

    model = M.build_keras_model(hp)
    # Continuous training: a base_model (the model trained before this run's span) is fine-tuned, fewer steps.
    cold = W.load_base_weights(model, hp.values, fn_args.base_model, tf_transform_output) if fn_args.base_model \
        else "no base model"
    if not cold:
        train_steps = int(settings[contract.WARM_START_STEPS_KEY])
    logging.info("Training %d steps, %s", train_steps, f"cold: {cold}" if cold else f"warm from {fn_args.base_model}")
    write_training_record(fn_args.model_run_dir, fn_args.base_model if not cold else None, cold, train_steps)
    # A warm start's few steps in one epoch: each epoch's validation (eval_steps) and callbacks cost about as much
    # as 100 steps, so five epochs of 20 steps took as long as the cold run's 500 steps.
    epochs = min(EPOCHS, train_steps) if cold else 1
    model.fit(
        train,
        epochs=epochs,
        steps_per_epoch=max(1, train_steps // epochs),
        validation_data=evaluation,
        validation_steps=fn_args.eval_steps,
        callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")],
        verbose=2,
    )
    M.export_saved_model(model, tf_transform_output, fn_args.serving_model_dir)
    M.write_warmup_requests(fn_args.serving_model_dir, tf_transform_output)
    W.write_hyperparameters(fn_args.serving_model_dir, hp.values)

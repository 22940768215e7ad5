"""Trainer's run_fn (by dotted path): resolve hyperparameters, fit, export. The parts live in model.py."""
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

# Keras prints one line per epoch; train_steps are split into this many epochs so long training shows progress.
EPOCHS = 5


def dataset(file_pattern, data_accessor: DataAccessor, tf_transform_output: tft.TFTransformOutput,
            batch_size: int) -> tf.data.Dataset:
    """Transformed (features, label) batches, repeated (steps are counted by the caller)."""
    return data_accessor.tf_dataset_factory(
        file_pattern,
        dataset_options.TensorFlowDatasetOptions(batch_size=batch_size, label_key=F.LABEL_KEY),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


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
    """custom_config: batch_size (modules/contract.py TRAINER_CONFIG_KEYS, required)."""
    batch_size = int(custom_config(fn_args, contract.TRAINER_CONFIG_KEYS)[contract.BATCH_SIZE_KEY])
    hp = H.resolve(fn_args.hyperparameters)
    logging.info("Training with hyperparameters %s", hp.values)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evaluation = dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)

    model = M.build_keras_model(hp)
    epochs = min(EPOCHS, fn_args.train_steps)
    model.fit(
        train,
        epochs=epochs,
        steps_per_epoch=max(1, fn_args.train_steps // epochs),
        validation_data=evaluation,
        validation_steps=fn_args.eval_steps,
        callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")],
        verbose=2,
    )
    M.export_saved_model(model, tf_transform_output, fn_args.serving_model_dir)
    M.write_warmup_requests(fn_args.serving_model_dir, tf_transform_output)

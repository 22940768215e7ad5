"""Tuner's tuner_fn (by dotted path): Keras Tuner random search over hparams.search_space()."""
import keras_tuner
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner.component import TunerFnResult

from modules import contract
from modules import hparams as H
from modules import model as M
from modules import training as T


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
    """custom_config: max_trials (the search budget), seed, batch_size, raw_examples (modules/contract.py
    TUNER_CONFIG_KEYS, all required); steps come from train_args/eval_args."""
    config = T.custom_config(fn_args, contract.TUNER_CONFIG_KEYS)
    tuner = keras_tuner.RandomSearch(
        M.build_keras_model,
        hyperparameters=H.search_space(),
        objective=keras_tuner.Objective("val_auc", direction="max"),
        max_trials=int(config[contract.MAX_TRIALS_KEY]),
        seed=int(config[contract.SEED_KEY]),
        directory=fn_args.working_dir,
        project_name="taxi_tuning",
    )
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    batch_size = int(config[contract.BATCH_SIZE_KEY])
    raw = bool(config[contract.RAW_EXAMPLES_KEY])
    return TunerFnResult(
        tuner=tuner,
        fit_kwargs={
            "x": T.dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size, raw),
            "validation_data": T.dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size, raw),
            "steps_per_epoch": fn_args.train_steps,
            "validation_steps": fn_args.eval_steps,
            "verbose": 2,
        },
    )

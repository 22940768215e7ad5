"""tuner_fn returns a TunerFnResult whose tuner really searches, on the slice's transformed examples; tuner_fn and
run_fn take their settings from custom_config only, and the pipeline passes every key they read."""
import json

import keras_tuner
import pytest
from tfx.components.trainer import fn_args_utils
from tfx.components.tuner.component import TunerFnResult
from tfx.proto import trainer_pb2
from tfx.utils import proto_utils

from modules import contract
from modules import hparams as H
from modules.training import run_fn
from modules.tuning import tuner_fn
from runners import summary


@pytest.mark.e2e
def test_tuner_fn_searches_the_space(small_pipeline, tmp_path):
    config = small_pipeline.config()
    store = summary.open_store(config)
    transform = summary.latest_run(store, config)["Transform"]
    input_dict = {key: [summary.tfx_artifact(store, transform.outputs[output][0])]
                  for key, output in (("examples", "transformed_examples"), ("transform_graph", "transform_graph"))}
    exec_properties = {
        "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=5)),
        "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=2)),
        "custom_config": json.dumps({"max_trials": 2, "seed": 7, "batch_size": 32, "raw_examples": 0}),
    }
    fn_args = fn_args_utils.get_common_fn_args(input_dict, exec_properties, working_dir=str(tmp_path))

    result = tuner_fn(fn_args)
    assert isinstance(result, TunerFnResult)
    assert isinstance(result.tuner, keras_tuner.RandomSearch)
    assert result.tuner.oracle.objective.name == "val_auc"
    assert result.tuner.oracle.max_trials == 2
    assert result.fit_kwargs["steps_per_epoch"] == 5 and result.fit_kwargs["validation_steps"] == 2

    result.tuner.search(**result.fit_kwargs)
    trials = result.tuner.oracle.get_best_trials(2)
    assert len(trials) == 2
    assert all(0.0 <= t.score <= 1.0 for t in trials)
    best = result.tuner.get_best_hyperparameters()[0].values
    assert set(best) == set(H.search_space().values)


@pytest.mark.e2e
def test_raw_examples_transformed_in_the_input_pipeline_match_transforms_output(small_pipeline):
    """A rolling window's Trainer reads ExampleGen's Examples and applies the transform graph itself
    (raw_examples); one pass over the eval split gives the same labels and transformed values as Transform's output."""
    import numpy as np
    import tensorflow_transform as tft
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils

    from modules import features as F
    from modules.training import count_examples, dataset

    config = small_pipeline.config()
    store = summary.open_store(config)
    run = summary.latest_run(store, config)
    transform_output = tft.TFTransformOutput(run["Transform"].outputs["transform_graph"][0].uri)
    raw_files = [f"{run['ExampleGen'].outputs['examples'][0].uri}/Split-eval/*"]
    transformed_files = [f"{run['Transform'].outputs['transformed_examples'][0].uri}/Split-eval/*"]
    rows = count_examples(raw_files)
    assert rows == count_examples(transformed_files) > 0
    accessor = DataAccessor(tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
        [summary.tfx_artifact(store, run["ExampleGen"].outputs["examples"][0])], []), record_batch_factory=None,
        data_view_decode_fn=None)

    def one_pass(files, raw):  # a batch of every row: one whole (shuffled) pass, so sums do not depend on order
        features, label = next(iter(dataset(files, accessor, transform_output, rows, raw)))
        return {k: float(np.sum(v)) for k, v in features.items()}, float(np.sum(label))

    raw_sums, raw_label = one_pass(raw_files, True)
    transformed_sums, transformed_label = one_pass(transformed_files, False)
    assert raw_label == transformed_label > 0
    assert set(raw_sums) == set(transformed_sums) and F.LABEL_KEY not in raw_sums
    for key, value in transformed_sums.items():
        assert raw_sums[key] == pytest.approx(value, rel=1e-5), key


def test_custom_config_keys_are_required(tmp_path):
    """No fallback values in modules/: a missing key is an error that names it (a KeyError: TFX reloads
    modules.training when a pipeline in this process runs the Trainer, so its MissingCustomConfig class changes)."""
    with pytest.raises(KeyError, match=r"missing key\(s\) seed, batch_size, raw_examples \(.*got max_trials"):
        tuner_fn(fn_args_utils.FnArgs(custom_config={"max_trials": 2}, working_dir=str(tmp_path)))
    with pytest.raises(KeyError, match=r"missing key\(s\) batch_size, epochs, max_train_steps, warm_start_steps, "
                                        r"raw_examples \(.*got none"):
        run_fn(fn_args_utils.FnArgs(custom_config=None))


def test_pipeline_passes_every_key_from_the_configuration(tmp_path):
    from pipeline.config import load_config
    from pipeline.pipeline import create_pipeline

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("tuner: {max_trials: 5, seed: 3}\ntrainer: {batch_size: 16, epochs: 3, max_train_steps: 900}\n"
                       "continuous: {warm_start_steps: 40}\n")
    config = load_config(env={"TFX_E2E_CONFIG": str(overlay), "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")})
    nodes = {c.id: c for c in create_pipeline(config).components}
    tuner = json.loads(nodes["Tuner"].exec_properties["custom_config"])
    trainer = json.loads(nodes["Trainer"].exec_properties["custom_config"])
    assert {key: tuner[key] for key in contract.TUNER_CONFIG_KEYS} == {"max_trials": 5, "seed": 3, "batch_size": 16,
                                                                       "raw_examples": 0}
    assert {key: trainer[key] for key in contract.TRAINER_CONFIG_KEYS} == {"batch_size": 16, "epochs": 3,
                                                                           "max_train_steps": 900,
                                                                           "warm_start_steps": 40,
                                                                           "raw_examples": 0}
    # Epochs: no fixed num_steps for TFX; run_fn computes them from the train split's count.
    assert "num_steps" not in json.loads(nodes["Trainer"].exec_properties["train_args"])
    fingerprints = {json.loads(nodes[n].exec_properties["custom_config"])[contract.MODULE_FINGERPRINT_KEY]
                    for n in ("Transform", "Tuner", "Trainer")}
    assert len(fingerprints) == 1

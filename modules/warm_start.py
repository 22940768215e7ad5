"""Warm start (continuous.warm_start): run_fn's new model takes the weights of the Trainer's base_model, the model
trained before this run's span (pipeline/warm_start.py resolves it), and is fine-tuned on the window.

The base model is read from its serving SavedModel (what the Trainer exports, modules/model.py): its variables in
order (`model_variables`), the vocabularies of its transform layer (assets/), and the hyperparameters it was built
with (HPARAMS_FILE). It is not taken when the hyperparameters or the variables' shapes differ: the model then
trains cold, with the full steps. The vocabularies are recomputed over every window, ranked by frequency, so a
string's id can move between runs: the embedding rows of the vocabulary features are moved to the new ids.
"""
import json
import re

import numpy as np

from modules import features as F

# Beside the warm-up requests; TF Serving reads only its own files there.
HPARAMS_FILE = "assets.extra/hyperparameters.json"
_VARIABLE = re.compile(r"^model_variables/(\d+)/\.ATTRIBUTES/VARIABLE_VALUE$")


def write_hyperparameters(export_dir: str, values: dict) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(f"{export_dir}/assets.extra")
    with tf.io.gfile.GFile(f"{export_dir}/{HPARAMS_FILE}", "w") as f:
        f.write(json.dumps(values, sort_keys=True))


def remap_vocabulary_rows(base_rows: np.ndarray, base_vocab: list[str], new_rows: np.ndarray,
                          new_vocab: list[str], oov_buckets: int) -> np.ndarray:
    """The base model's embedding rows at the new vocabulary's ids: a string in both keeps its row, the OOV buckets
    (ids len(vocab) .. len(vocab) + oov_buckets - 1, so they move with the vocabulary's size) keep theirs; a new
    string and an unused id keep the new model's initial row."""
    rows = new_rows.copy()
    base_ids = {token: i for i, token in enumerate(base_vocab)}
    for i, token in enumerate(new_vocab):
        if token in base_ids:
            rows[i] = base_rows[base_ids[token]]
    for k in range(oov_buckets):
        rows[len(new_vocab) + k] = base_rows[len(base_vocab) + k]
    return rows


def _read_vocabulary(path: str) -> list[str]:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n").decode("utf-8") for line in f]


def load_base_weights(model, hp_values: dict, base_model: str, tf_transform_output) -> str:
    """Sets `model`'s weights to those of the SavedModel at `base_model`. Returns "" when it did, else why not."""
    import tensorflow as tf

    hparams = f"{base_model}/{HPARAMS_FILE}"
    if not tf.io.gfile.exists(hparams):
        return f"the base model has no {HPARAMS_FILE}"
    with tf.io.gfile.GFile(hparams) as f:
        base_hp = json.load(f)
    if base_hp != json.loads(json.dumps(hp_values)):
        return f"the base model's hyperparameters differ ({base_hp} vs {hp_values})"
    reader = tf.train.load_checkpoint(f"{base_model}/variables/variables")
    indexed = {int(m.group(1)): key for key in reader.get_variable_to_shape_map() if (m := _VARIABLE.match(key))}
    variables = model.variables
    if sorted(indexed) != list(range(len(variables))):
        return f"the base model has {len(indexed)} variables, this model {len(variables)}"
    values = [reader.get_tensor(indexed[i]) for i in range(len(variables))]
    for variable, value in zip(variables, values, strict=True):
        if tuple(variable.shape) != value.shape:
            return f"variable {variable.path}: shape {value.shape} in the base model, {tuple(variable.shape)} here"
    for key in F.VOCAB_FEATURES:
        layer = model.get_layer(f"{F.transformed_name(key)}_embedding")
        (i,) = [i for i, v in enumerate(variables) if v.path == layer.embeddings.path]
        base_vocab = f"{base_model}/assets/{F.vocab_filename(key)}"
        if not tf.io.gfile.exists(base_vocab):
            return f"the base model has no vocabulary {F.vocab_filename(key)}"
        values[i] = remap_vocabulary_rows(
            values[i], _read_vocabulary(base_vocab), np.asarray(variables[i].numpy()),
            _read_vocabulary(tf_transform_output.vocabulary_file_by_name(F.vocab_filename(key))), F.OOV_BUCKETS)
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return ""

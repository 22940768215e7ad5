"""The model's hyperparameters: the search space and its defaults, in one place.

tuner_fn searches this space; run_fn trains with the Tuner's best values when
the pipeline has a Tuner, else with the defaults declared here.
"""

import keras_tuner


def search_space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [3e-3, 1e-3], default=3e-3)
    hp.Int("num_layers", 1, 3, default=2)
    hp.Choice("units", [32, 64, 128], default=64)
    hp.Choice("embedding_dim", [4, 8], default=4)
    hp.Choice("dropout", [0.0, 0.3], default=0.3)
    return hp


def resolve(tuned: dict | None) -> keras_tuner.HyperParameters:
    """The search space's defaults, overridden by the Tuner's best values (the Tuner's `best_hyperparameters` JSON)."""
    hp = search_space()
    if tuned:
        best = keras_tuner.HyperParameters.from_config(tuned)
        for name, value in best.values.items():
            if name in hp.values:
                hp.values[name] = value
    return hp

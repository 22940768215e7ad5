"""Resolves the baseline for the Evaluator: the latest blessed model other than the candidate.

TFX's LatestBlessedModelStrategy returns the latest blessed model, which after one
blessed run is the candidate itself: an unchanged re-run then compares the cached
model with itself, so Evaluator and Pusher re-run and TFX's taxi example pushes a
duplicate version. Leaving the candidate out keeps the Evaluator's inputs identical
on an unchanged re-run (cache hit) and still compares a new model with the last
blessed one.
"""

from tfx import types
from tfx.dsl.components.common import resolver

MODEL, BLESSING, CANDIDATE = "model", "model_blessing", "candidate"
# Custom properties the Evaluator writes on a ModelBlessing.
_BLESSED, _MODEL_ID = "blessed", "current_model_id"


class LatestBlessedBaselineStrategy(resolver.ResolverStrategy):
    """Inputs: model (all Models), model_blessing (all ModelBlessings), candidate (this run's Trainer output)."""

    def resolve_artifacts(self, store, input_dict: dict[str, list[types.Artifact]]
                          ) -> dict[str, list[types.Artifact]] | None:
        candidate_ids = {a.id for a in input_dict.get(CANDIDATE, [])}
        blessings = {b.get_int_custom_property(_MODEL_ID): b
                     for b in input_dict.get(BLESSING, []) if b.get_int_custom_property(_BLESSED) == 1}
        result = {MODEL: [], BLESSING: [], CANDIDATE: input_dict.get(CANDIDATE, [])}
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            if model.id in blessings and model.id not in candidate_ids:
                result[MODEL], result[BLESSING] = [model], [blessings[model.id]]
                break
        return result

"""Resolves the baseline for the Evaluator: the latest blessed model other than the candidate.

TFX's LatestBlessedModelStrategy returns the latest blessed model, which after one
blessed run is the candidate itself: an unchanged re-run then compares the cached
model with itself, so Evaluator and Pusher re-run and TFX's taxi example pushes a
duplicate version. Leaving the candidate out keeps the Evaluator's inputs identical
on an unchanged re-run (cache hit) and still compares a new model with the last
blessed one.

A model whose pushed version a canary rollout rejected (serving/rollout.py records
it in the rollout record beside the versions) is never the baseline either: it was
blessed offline but failed in serving.
"""
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver

from serving.registry import rejected_versions

MODEL, BLESSING, CANDIDATE = "model", "model_blessing", "candidate"
# Custom properties the Evaluator writes on a ModelBlessing.
_BLESSED, _MODEL_ID = "blessed", "current_model_id"
# Custom property TFX's Pusher writes on a PushedModel.
_PUSHED_VERSION = "pushed_version"


def pushed_versions(store, model_id: int) -> set[int]:
    """The serving versions the model was pushed as: the pushed_version of every output of the executions (the
    Pushers) that took it as an input."""
    events = store.get_events_by_artifact_ids([model_id])
    executions = sorted({e.execution_id for e in events if e.type == metadata_store_pb2.Event.INPUT})
    outputs = [e.artifact_id for e in store.get_events_by_execution_ids(executions)
               if e.type == metadata_store_pb2.Event.OUTPUT]
    return {int(a.custom_properties[_PUSHED_VERSION].string_value) for a in store.get_artifacts_by_id(outputs)
            if a.custom_properties[_PUSHED_VERSION].string_value.isdigit()}


class LatestBlessedBaselineStrategy(resolver.ResolverStrategy):
    """Inputs: model (all Models), model_blessing (all ModelBlessings), candidate (this run's Trainer output).
    serving_model_dir: where the Pusher pushes (its rollout record names the rejected versions); "" = none."""

    def __init__(self, serving_model_dir: str = ""):
        self._serving_model_dir = serving_model_dir

    def resolve_artifacts(self, store, input_dict: dict[str, list[types.Artifact]]
                          ) -> dict[str, list[types.Artifact]] | None:
        candidate_ids = {a.id for a in input_dict.get(CANDIDATE, [])}
        rejected = rejected_versions(self._serving_model_dir) if self._serving_model_dir else set()
        blessings = {b.get_int_custom_property(_MODEL_ID): b
                     for b in input_dict.get(BLESSING, []) if b.get_int_custom_property(_BLESSED) == 1}
        result = {MODEL: [], BLESSING: [], CANDIDATE: input_dict.get(CANDIDATE, [])}
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            if model.id in blessings and model.id not in candidate_ids and not (
                    rejected and rejected & pushed_versions(store, model.id)):
                result[MODEL], result[BLESSING] = [model], [blessings[model.id]]
                break
        return result

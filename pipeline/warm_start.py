"""Warm start for a windowed run (continuous.warm_start): the Trainer's `base_model` is the newest model trained
before the run's span, and run_fn (modules/training.py) starts from its weights and trains warm_start_steps.

Why not TFX's LatestArtifactStrategy over Model, as TFX's templates warm-start: after a run on span S, its own model
is the latest, so a re-run of S would start from a model that has already seen S, and the Trainer's inputs would
change on every re-run (no cache hit). The model trained before the run's span is the same on every re-run of it.
The span a model was trained on is found by lineage: Model <- Trainer <- transformed Examples <- Transform <-
ExampleGen's Examples, whose `span` custom property ExampleGen records.
"""
from tfx.dsl.components.common import resolver

from pipeline.components import window_range
from pipeline.config import Config

WARM_START_RESOLVER, MODEL = "warm_start_model_resolver", "model"
# How far back from a Model the lineage walk looks for Examples with a span (Trainer, Transform, ExampleGen's output).
_MAX_HOPS = 4


def trained_spans(store, model_id: int) -> set[int]:
    """The spans of the ExampleGen Examples upstream of a model: from the model to the executions that output it,
    their inputs, and so on back, stopping at artifacts that carry a `span` (ExampleGen's output)."""
    from ml_metadata.proto import metadata_store_pb2

    spans: set[int] = set()
    frontier, seen = {model_id}, {model_id}
    for _ in range(_MAX_HOPS):
        producers = {e.execution_id for e in store.get_events_by_artifact_ids(list(frontier))
                     if e.type == metadata_store_pb2.Event.OUTPUT}
        if not producers:
            break
        inputs = {e.artifact_id for e in store.get_events_by_execution_ids(list(producers))
                  if e.type == metadata_store_pb2.Event.INPUT} - seen
        seen |= inputs
        frontier = set()
        for artifact in store.get_artifacts_by_id(list(inputs)):
            if "span" in artifact.custom_properties:
                spans.add(artifact.custom_properties["span"].int_value)
            else:
                frontier.add(artifact.id)
        if not frontier:
            break
    return spans


class ModelBeforeSpanStrategy(resolver.ResolverStrategy):
    """Input `model` (every Model); config `span`: the span the run reads. Output: the newest model every span of
    whose training data is older than `span` (none on a fresh store: the Trainer trains cold)."""

    def __init__(self, span: int):
        self._span = span

    def resolve_artifacts(self, store, input_dict):
        for model in sorted(input_dict.get(MODEL, []), key=lambda a: a.id, reverse=True):
            spans = trained_spans(store, model.id)
            if spans and max(spans) < self._span:
                return {MODEL: [model]}
        return {MODEL: []}


def warm_start_resolver(config: Config):
    """'warm_start_model_resolver' (output 'model'), or None when the run trains cold (continuous.warm_start off,
    or no window). With TFX's own ML Metadata, ModelBeforeSpanStrategy for the span the run reads (the window's last);
    with managed metadata (Vertex, whose compiler takes only LatestArtifactStrategy and LatestBlessedModelStrategy)
    TFX's LatestArtifactStrategy: the previous run's model when each run reads the next span."""
    if not config.continuous.warm_start or config.continuous.window_spans <= 1:
        return None
    from tfx.types import Channel
    from tfx.types.standard_artifacts import Model

    models = Channel(type=Model)
    if config.metadata == "managed":
        from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy

        node = resolver.Resolver(strategy_class=LatestArtifactStrategy, model=models)
    else:
        window = window_range(config)
        if window is None:  # a flat data root: one span, no window
            return None
        node = resolver.Resolver(strategy_class=ModelBeforeSpanStrategy,
                                 config={"span": window.static_range.end_span_number}, model=models)
    return node.with_id(WARM_START_RESOLVER)


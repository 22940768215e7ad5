"""The rolling window's resolver strategies: TFX's SpanRangeStrategy, one artifact per span; the analyzer cache.

SpanRangeStrategy returns every Examples artifact whose `span` is in range, so a span ingested twice (its files
re-published, or a different split) would be trained on twice. This keeps the latest version of each span
(highest `version` custom property, then the newest artifact), newest span first as SpanRangeStrategy orders them,
and only Examples the data gate passed: a span the gate stopped (an anomaly, too few examples, drift) has Examples
in ML Metadata but never enters a window.
"""
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies.span_range_strategy import SpanRangeStrategy


def custom_int(artifact: types.Artifact, name: str) -> int:
    """An int custom property of an artifact (ExampleGen records span and version there), 0 when absent."""
    return artifact.get_int_custom_property(name) if artifact.has_custom_property(name) else 0


GATE = "DataGate"
_PASSED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def gated(store, artifact_ids) -> set[int]:
    """Those of `artifact_ids` that a DataGate execution took as input and passed (it completed, or was cached)."""
    events = [e for e in store.get_events_by_artifact_ids(list(artifact_ids))
              if e.type == metadata_store_pb2.Event.INPUT]
    executions = {x.id: x for x in store.get_executions_by_id(list({e.execution_id for e in events}))}
    names = {t.id: t.name for t in store.get_execution_types_by_id(list({x.type_id for x in executions.values()}))}
    return {e.artifact_id for e in events
            if (x := executions.get(e.execution_id)) is not None and names.get(x.type_id, "").endswith(GATE)
            and x.last_known_state in _PASSED}


class LatestVersionSpanRangeStrategy(SpanRangeStrategy):

    def resolve_artifacts(self, store, input_dict):
        passed = gated(store, [a.id for artifacts in input_dict.values() for a in artifacts])
        return super().resolve_artifacts(
            store, {key: [a for a in artifacts if a.id in passed] for key, artifacts in input_dict.items()})

    def _resolve(self, input_dict):
        result = {}
        for key, artifacts in super()._resolve(input_dict).items():
            latest = {}
            for artifact in artifacts:
                span = custom_int(artifact, "span")
                best = latest.get(span)
                if best is None or (custom_int(artifact, "version"), artifact.id) > (custom_int(best, "version"), best.id):
                    latest[span] = artifact
            result[key] = [latest[span] for span in sorted(latest, reverse=True)]
        return result


class LatestCacheStrategy(resolver.ResolverStrategy):
    """Transform's analyzer cache: the newest TransformCache, or none yet (TFX's LatestArtifactStrategy returns
    None for an empty channel, which logs an input resolution error on every first run)."""

    def resolve_artifacts(self, store, input_dict):
        return {key: sorted(artifacts, key=lambda a: a.id)[-1:] for key, artifacts in input_dict.items()}

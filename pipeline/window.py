"""The rolling window's resolver strategies: TFX's SpanRangeStrategy, one artifact per span; the analyzer cache.

SpanRangeStrategy returns every Examples artifact whose `span` is in range, so a span ingested twice (its files
re-published, or a different split) would be trained on twice. This keeps the latest version of each span
(highest `version` custom property, then the newest artifact), newest span first as SpanRangeStrategy orders them.
"""
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.input_resolution.strategies.span_range_strategy import SpanRangeStrategy


def _key(artifact: types.Artifact, name: str) -> int:
    return artifact.get_int_custom_property(name) if artifact.has_custom_property(name) else 0


class LatestVersionSpanRangeStrategy(SpanRangeStrategy):

    def _resolve(self, input_dict):
        result = {}
        for key, artifacts in super()._resolve(input_dict).items():
            latest = {}
            for artifact in artifacts:
                span = _key(artifact, "span")
                best = latest.get(span)
                if best is None or (_key(artifact, "version"), artifact.id) > (_key(best, "version"), best.id):
                    latest[span] = artifact
            result[key] = [latest[span] for span in sorted(latest, reverse=True)]
        return result


class LatestCacheStrategy(resolver.ResolverStrategy):
    """Transform's analyzer cache: the newest TransformCache, or none yet (TFX's LatestArtifactStrategy returns
    None for an empty channel, which logs an input resolution error on every first run)."""

    def resolve_artifacts(self, store, input_dict):
        return {key: sorted(artifacts, key=lambda a: a.id)[-1:] for key, artifacts in input_dict.items()}

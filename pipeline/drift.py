"""Drift between spans: the newest span's statistics against the previous span's, with the schema's drift
comparators (L-infinity for categorical features, Jensen-Shannon divergence for numeric ones).

ExampleValidator compares statistics with the schema only (TFX passes it no previous statistics), so the schema's
drift_comparator thresholds never fire there. Here the 'previous_statistics_resolver' finds the statistics of
the previous span in ML Metadata, and the data gate runs TFDV's validate_statistics with them as
previous_statistics, keeping the drift anomalies: over threshold, the gate stops the run (continuous.drift: stop)
or reports them and lets it go on (warn).
"""
from tfx import types
from tfx.dsl.components.common import resolver

from pipeline.window import custom_int

PREVIOUS_STATISTICS_RESOLVER = "previous_statistics_resolver"
# TFDV's anomaly kinds for a drift comparator over its threshold.
DRIFT_KINDS = ("COMPARATOR_L_INFTY_HIGH", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH")


def _producers(store, artifact_ids) -> dict[int, int]:
    """artifact id -> the newest execution that output it (a cached execution outputs the artifact again)."""
    from ml_metadata.proto import metadata_store_pb2

    producers: dict[int, int] = {}
    for event in store.get_events_by_artifact_ids(list(artifact_ids)):
        if event.type == metadata_store_pb2.Event.OUTPUT:
            producers[event.artifact_id] = max(producers.get(event.artifact_id, 0), event.execution_id)
    return producers


class PreviousSpanStatisticsStrategy(resolver.ResolverStrategy):
    """From ExampleGen's Examples and StatisticsGen's statistics: the Examples this run's ExampleGen output (its
    newest execution, cached or not) and the statistics of the newest span before that one (the latest
    statistics of that span), or none (the first span, or the previous span never ran). The span of a statistics
    artifact is the span of the Examples its StatisticsGen execution read (lineage; StatisticsGen's own `span`
    property stays 0 because ExampleGen records the span as a custom property)."""

    def resolve_artifacts(self, store, input_dict):
        from ml_metadata.proto import metadata_store_pb2

        examples, statistics = input_dict["examples"], input_dict["statistics"]
        if not examples:
            return {"examples": [], "statistics": []}
        made_by = _producers(store, [a.id for a in examples])
        current = max(examples, key=lambda a: made_by.get(a.id, 0))
        span = custom_int(current, "span")
        by_id = {a.id: a for a in examples}
        stats_by = _producers(store, [s.id for s in statistics]) if statistics else {}
        read = {e.execution_id: e.artifact_id
                for e in store.get_events_by_execution_ids(list(set(stats_by.values())))
                if e.type == metadata_store_pb2.Event.INPUT and e.artifact_id in by_id}
        best = None
        for stats in statistics:
            source = by_id.get(read.get(stats_by.get(stats.id)))
            if source is not None and custom_int(source, "span") < span:
                key = (custom_int(source, "span"), stats.id)
                best = max(best, (key, stats), key=lambda b: b[0]) if best else (key, stats)
        return {"examples": [current], "statistics": [best[1]] if best else []}


def previous_statistics_resolver(config, example_gen, statistics_gen):
    """'previous_statistics_resolver' (output 'statistics'): the previous span's statistics. With TFX's own ML
    Metadata, PreviousSpanStatisticsStrategy; with managed metadata (Vertex, whose compiler takes only
    LatestArtifactStrategy and LatestBlessedModelStrategy), the newest statistics before this run's
    StatisticsGen, which is the previous run's span when each run reads the next span."""
    from tfx.types import Channel
    from tfx.types.standard_artifacts import Examples, ExampleStatistics

    statistics = Channel(type=ExampleStatistics, producer_component_id=statistics_gen.id, output_key="statistics")
    if config.metadata == "managed":
        from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy

        node = resolver.Resolver(strategy_class=LatestArtifactStrategy, statistics=statistics)
        statistics_gen.add_upstream_node(node)
    else:
        node = resolver.Resolver(
            strategy_class=PreviousSpanStatisticsStrategy, statistics=statistics,
            examples=Channel(type=Examples, producer_component_id=example_gen.id, output_key="examples"))
        node.add_upstream_node(example_gen)
    return node.with_id(PREVIOUS_STATISTICS_RESOLVER)


def drift_anomalies(statistics: types.Artifact, previous: types.Artifact, schema: types.Artifact):
    """The drift comparators over threshold, per split both statistics have: [pipeline.gate.Anomaly]."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.types import artifact_utils
    from tfx.utils import io_utils

    from pipeline.gate import Anomaly, read_split_statistics

    schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
    found = []
    current_splits = artifact_utils.decode_split_names(statistics.split_names)
    for split in sorted(set(current_splits) & set(artifact_utils.decode_split_names(previous.split_names))):
        result = tfdv.validate_statistics(read_split_statistics(statistics, split), schema_proto,
                                          previous_statistics=read_split_statistics(previous, split))
        measured = {".".join(d.path.step): d.drift_measurements for d in result.drift_skew_info}
        for feature, info in sorted(result.anomaly_info.items()):
            for reason in info.reason:
                kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
                if kind in DRIFT_KINDS:
                    values = ", ".join(f"{m.value:.3f} > {m.threshold:g}" for m in measured.get(feature, []))
                    found.append(Anomaly(split, feature, kind, f"{reason.short_description} ({values})"))
    return found

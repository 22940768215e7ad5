"""What a served version is compared with, found in ML Metadata by lineage: the pipeline run whose Pusher pushed
the version (its pushed_model artifact's pushed_version), and in that run
  - StatisticsGen's statistics of the train split: what the version was trained on (skew);
  - the Evaluator's calibration plot of the candidate on the eval split, overall slice: the histogram of the scores
    the model gave the held-out examples, computed by TFMA in the run that blessed it (the score reference).
A version pushed again by a later run (an identical model) keeps the run that first pushed it.
"""
import dataclasses
import os

from tensorflow_metadata.proto.v0 import statistics_pb2

from monitoring.stats import SCORE_FEATURE

SCORE_BUCKETS = 10  # TFDV's default number of histogram buckets


@dataclasses.dataclass
class VersionReference:
    version: int
    run: str                                   # the pipeline run's name in ML Metadata
    training: statistics_pb2.DatasetFeatureStatisticsList | None
    training_uri: str
    scores: statistics_pb2.DatasetFeatureStatisticsList | None
    evaluation_uri: str


def _prop(artifact, key: str):
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    return value.int_value if value.HasField("int_value") else value.string_value


def _run_outputs(store, run_context, node_prefix: str) -> dict[tuple[str, str], list]:
    """(node id, output key) -> artifacts, for every execution of the run."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants

    node_names = {c.id: c.name[len(node_prefix):] for c in store.get_contexts_by_type(constants.NODE_CONTEXT_TYPE_NAME)
                  if c.name.startswith(node_prefix)}
    outputs: dict[tuple[str, str], list] = {}
    for execution in store.get_executions_by_context(run_context.id):
        nodes = [node_names[c.id] for c in store.get_contexts_by_execution(execution.id) if c.id in node_names]
        if not nodes:
            continue
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == metadata_store_pb2.Event.OUTPUT]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        for event in events:
            outputs.setdefault((nodes[0], event.path.steps[0].key), []).append(artifacts[event.artifact_id])
    return outputs


def find(store, pipeline_name: str, version: int) -> tuple[str, str, str] | None:
    """(run name, training statistics uri, evaluation uri) of the run that pushed `version`, or None."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants

    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if _prop(a, "pushed") == 1 and str(_prop(a, "pushed_version")) == str(version)]
    if not pushed:
        return None
    # The first push of the version, not a later run that found it already served.
    pushed.sort(key=lambda a: (_prop(a, "already_served") == 1, a.id))
    for artifact in pushed:
        executions = [e.execution_id for e in store.get_events_by_artifact_ids([artifact.id])
                      if e.type == metadata_store_pb2.Event.OUTPUT]
        for execution_id in executions:
            runs = [c for c in store.get_contexts_by_execution(execution_id)
                    if c.type_id == store.get_context_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME).id]
            for run in runs:
                outputs = _run_outputs(store, run, f"{pipeline_name}.")
                statistics = outputs.get(("StatisticsGen", "statistics"), [])
                evaluation = outputs.get(("Evaluator", "evaluation"), [])
                if statistics:
                    return run.name, statistics[0].uri, evaluation[0].uri if evaluation else ""
    return None


def training_statistics(uri: str) -> statistics_pb2.DatasetFeatureStatisticsList | None:
    import tensorflow as tf
    import tensorflow_data_validation as tfdv

    path = os.path.join(uri, "Split-train", "FeatureStats.pb")
    return tfdv.load_stats_binary(path) if tf.io.gfile.exists(path) else None


def evaluation_scores(uri: str) -> statistics_pb2.DatasetFeatureStatisticsList | None:
    """The Evaluator's score histogram (the candidate's calibration plot, overall slice: TFMA's fine buckets of
    its predictions) as TFDV statistics of a numeric feature `score` with a STANDARD histogram laid out as TFDV lays
    out a serving window's: SCORE_BUCKETS equal-width buckets from the lowest to the highest score."""
    import tensorflow_model_analysis as tfma

    if not uri:
        return None
    fine = []  # (low, high, count), TFMA's open-ended first and last buckets clamped into [0, 1]
    for plots in tfma.load_plots(uri):
        if plots.slice_key.single_slice_keys:
            continue
        for entry in plots.plot_keys_and_values:
            if entry.key.model_name not in ("", "candidate") or not entry.value.HasField("calibration_histogram_buckets"):
                continue
            for bucket in entry.value.calibration_histogram_buckets.buckets:
                if bucket.num_weighted_examples.value > 0:
                    low = min(max(bucket.lower_threshold_inclusive, 0.0), 1.0)
                    high = min(max(bucket.upper_threshold_exclusive, low), 1.0)
                    fine.append((low, high, bucket.num_weighted_examples.value))
    if not fine:
        return None
    low, high = min(f[0] for f in fine), max(f[1] for f in fine)
    width = (high - low) / SCORE_BUCKETS or 1.0
    counts = [0.0] * SCORE_BUCKETS
    for start, _, count in fine:
        counts[min(int((start - low) / width), SCORE_BUCKETS - 1)] += count
    total = sum(counts)
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add(num_examples=int(round(total)))
    feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.FLOAT)
    feature.path.step.append(SCORE_FEATURE)
    numeric = feature.num_stats
    common = numeric.common_stats
    common.num_non_missing, common.min_num_values, common.max_num_values = int(round(total)), 1, 1
    common.avg_num_values, common.tot_num_values = 1.0, int(round(total))
    numeric.min, numeric.max = low, high
    histogram = numeric.histograms.add(type=statistics_pb2.Histogram.STANDARD, num_nan=0)
    for i, count in enumerate(counts):
        histogram.buckets.add(low_value=low + i * width, high_value=low + (i + 1) * width, sample_count=count)
    return stats


def load(store, pipeline_name: str, version: int) -> VersionReference | None:
    found = find(store, pipeline_name, version)
    if found is None:
        return None
    run, statistics_uri, evaluation_uri = found
    return VersionReference(version, run, training_statistics(statistics_uri), statistics_uri,
                            evaluation_scores(evaluation_uri), evaluation_uri)

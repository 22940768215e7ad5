"""The comparisons, all by TFDV's validate_statistics with the curated schema's comparators (Jensen-Shannon
divergence for numeric features, L-infinity distance for categorical ones):

  skew     a window's serving statistics of one version against that version's training statistics
  drift    a window's serving statistics against the previous window's (schema environment SERVING)
  anomaly  the schema's other checks on a window's serving data (environment SERVING: the label's absence is no
           anomaly), with the share of the window's requests they concern
  score    a window's scores against the Evaluator's on the eval split (a one-feature schema with a JS comparator)

Numeric features are compared on common buckets (`aligned`): TFDV measures Jensen-Shannon divergence on each side's
STANDARD histogram, 10 equal-width buckets from that side's minimum to its maximum, spreading a bucket evenly when
the other side's buckets differ. One outlier (a 700-dollar fare) makes the training side's first bucket [0, 70)
hold 99.9 % of the fares, spread evenly against a window's [0, 10), [10, 20) ...: 0.35-0.5 between random samples
of the same data. Both sides are given instead the same buckets, the reference's deciles (from its QUANTILES
histogram) plus one below and one above, filled from each side's quantiles; TFDV then compares like with like.
"""
import dataclasses
import math

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from monitoring.stats import SCORE_FEATURE

SERVING = "SERVING"
MEASURE_NAMES = {
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: "l_infinity",
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: "jensen_shannon_divergence",
    anomalies_pb2.DriftSkewInfo.Measurement.NORMALIZED_ABSOLUTE_DIFFERENCE: "normalized_absolute_difference",
}

PRESENCE_KINDS = ("FEATURE_TYPE_LOW_FRACTION_PRESENT", "FEATURE_TYPE_LOW_NUMBER_PRESENT", "FEATURE_TYPE_NOT_PRESENT",
                  "SCHEMA_MISSING_COLUMN")
RANGE_KINDS = ("INT_TYPE_SMALL_INT", "INT_TYPE_BIG_INT", "FLOAT_TYPE_SMALL_FLOAT", "FLOAT_TYPE_BIG_FLOAT")


@dataclasses.dataclass
class Finding:
    check: str                 # skew | drift | score | anomaly
    feature: str
    alert: bool
    measure: str = ""          # jensen_shannon_divergence | l_infinity (comparators)
    value: float | None = None
    threshold: float | None = None
    kind: str = ""             # TFDV's anomaly type (anomaly)
    description: str = ""
    share: float | None = None  # anomaly: the share of the window's requests concerned (None: not measurable)


DECILES = 10  # equal-depth buckets of the reference: their counts are large at any window size


def _cdf_points(histogram) -> list[tuple[float, float, float]]:
    """A QUANTILES histogram's buckets (low, high, count), non-empty ones."""
    return [(b.low_value, b.high_value, b.sample_count) for b in histogram.buckets if b.sample_count > 0]


def _quantile(buckets, p: float) -> float:
    total = sum(c for _, _, c in buckets)
    target, seen = p * total, 0.0
    for low, high, count in buckets:
        if seen + count >= target:
            return low + (high - low) * ((target - seen) / count)
        seen += count
    return buckets[-1][1]


def _at_most(buckets, x: float, integer: bool, strictly: bool = False) -> float:
    """The count of values <= x (< x when strictly). TFDV's quantile buckets hold the values in (low, high], the
    first [low, high]; a bucket's count is spread evenly over it: over its width, or for an integer feature over
    the integers it holds; a zero-width bucket is a point."""
    total = 0.0
    for i, (low, high, count) in enumerate(buckets):
        if high <= low:
            total += count if (low < x if strictly else low <= x) else 0.0
        elif integer:
            first, last = (math.ceil(low) if i == 0 else math.floor(low) + 1), math.floor(high)
            top = math.ceil(x) - 1 if strictly else math.floor(x)
            if last >= first:
                total += count * min(max(top - first + 1, 0), last - first + 1) / (last - first + 1)
        else:
            total += count * min(max((x - low) / (high - low), 0.0), 1.0)
    return total


def _quantiles_histogram(feature):
    return next((h for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.QUANTILES), None)


def _common_buckets(reference, current) -> tuple[list, list] | None:
    """The STANDARD histograms of both sides on the reference's deciles (with a bucket below and one above them
    for values outside), or None when a side has no quantiles or the reference no spread."""
    ref_q, cur_q = _quantiles_histogram(reference), _quantiles_histogram(current)
    if ref_q is None or cur_q is None:
        return None
    ref, cur = _cdf_points(ref_q), _cdf_points(cur_q)
    if not ref or not cur:
        return None
    edges = sorted({_quantile(ref, i / DECILES) for i in range(DECILES + 1)})
    if len(edges) < 2:
        return None
    integer = reference.type == statistics_pb2.FeatureNameStatistics.INT
    lowest, highest = min(edges[0], cur[0][0]), max(edges[-1], cur[-1][1])
    sides = []
    for buckets in (ref, cur):
        total = sum(c for _, _, c in buckets)
        below = _at_most(buckets, edges[0], integer, strictly=True)
        cumulative = [_at_most(buckets, e, integer) for e in edges[1:]]
        counts = [cumulative[0] - below] + [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]
        side = [(lo, hi, max(0.0, c)) for lo, hi, c in zip(edges, edges[1:], counts, strict=False)]
        if lowest < edges[0]:
            side.insert(0, (lowest, edges[0], below))
        if highest > edges[-1]:
            side.append((edges[-1], highest, max(0.0, total - cumulative[-1])))
        sides.append(side)
    return sides[0], sides[1]


def aligned(reference: statistics_pb2.DatasetFeatureStatisticsList,
            current: statistics_pb2.DatasetFeatureStatisticsList) -> tuple:
    """Copies of both statistics whose numeric features' STANDARD histograms are replaced by histograms on the
    same buckets (_common_buckets); everything else is unchanged."""
    ref_copy, cur_copy = type(reference)(), type(current)()
    ref_copy.CopyFrom(reference)
    cur_copy.CopyFrom(current)
    current_features = {tuple(f.path.step) or (f.name,): f for f in cur_copy.datasets[0].features}
    for ref_feature in ref_copy.datasets[0].features:
        cur_feature = current_features.get(tuple(ref_feature.path.step) or (ref_feature.name,))
        if cur_feature is None or not ref_feature.HasField("num_stats") or not cur_feature.HasField("num_stats"):
            continue
        common = _common_buckets(ref_feature, cur_feature)
        if common is None:
            continue
        for feature, buckets in zip((ref_feature, cur_feature), common, strict=True):
            kept = [h for h in feature.num_stats.histograms if h.type != statistics_pb2.Histogram.STANDARD]
            del feature.num_stats.histograms[:]
            feature.num_stats.histograms.extend(kept)
            standard = feature.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
            for low, high, count in buckets:
                standard.buckets.add(low_value=low, high_value=high, sample_count=count)
    return ref_copy, cur_copy


def _categorical(feature: schema_pb2.Feature) -> bool:
    return feature.type == schema_pb2.BYTES or (feature.HasField("int_domain") and feature.int_domain.is_categorical)


def monitoring_schema(schema: schema_pb2.Schema, comparators: dict[str, float]) -> schema_pb2.Schema:
    """The curated schema with monitoring.comparators added as skew and drift comparators where it has none."""
    result = schema_pb2.Schema()
    result.CopyFrom(schema)
    names = {f.name for f in result.feature}
    unknown = sorted(set(comparators) - names)
    if unknown:
        from pipeline.config import ConfigError
        raise ConfigError(f"monitoring.comparators: {', '.join(unknown)} not in the schema")
    for feature in result.feature:
        if feature.name not in comparators:
            continue
        for field in ("skew_comparator", "drift_comparator"):
            if not feature.HasField(field):
                comparator = getattr(feature, field)
                if _categorical(feature):
                    comparator.infinity_norm.threshold = comparators[feature.name]
                else:
                    comparator.jensen_shannon_divergence.threshold = comparators[feature.name]
    return result


def _measurements(infos) -> dict[str, list]:
    return {".".join(info.path.step): info for info in infos}


def effective_examples(a, b) -> float:
    """Two samples of n1 and n2 examples are as noisy, compared, as one of n1*n2/(n1+n2) against the truth."""
    n1, n2 = a.datasets[0].num_examples, b.datasets[0].num_examples
    return n1 * n2 / (n1 + n2) if n1 and n2 else 0.0


def min_examples(measure: int, threshold: float) -> int:
    """The (effective) examples a comparison needs before its threshold stands clear of sampling noise:
      L-infinity: a share's standard error is at most 0.5/sqrt(n); three of them within the threshold;
      Jensen-Shannon (on at most DECILES + 2 buckets): sampling alone gives about (k-1)/(8 n ln 2); a quarter of the
      threshold at most."""
    if threshold <= 0:
        return 0
    if measure == anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY:
        return math.ceil((3 * 0.5 / threshold) ** 2)
    if measure == anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE:
        return math.ceil(4 * (DECILES + 1) / (8 * threshold * math.log(2)))
    return 0


def _comparator_findings(check: str, result, measured: str, examples: float) -> list[Finding]:
    """Every comparator's measurement: an alert when TFDV reported it over its threshold and the comparison had
    the examples its threshold needs (min_examples; else it is measured, described, not an alert)."""
    over = {feature for feature, info in result.anomaly_info.items()
            if any(anomalies_pb2.AnomalyInfo.Type.Name(r.type).startswith("COMPARATOR_") for r in info.reason)}
    findings = []
    for feature, info in sorted(_measurements(result.drift_skew_info).items()):
        for m in getattr(info, measured):
            needed = min_examples(m.type, m.threshold)
            enough = examples >= needed
            findings.append(Finding(
                check, feature, enough and feature in over and m.value > m.threshold,
                MEASURE_NAMES.get(m.type, str(m.type)), m.value, m.threshold,
                description="" if enough else f"not judged: {examples:.0f} effective examples, the threshold needs "
                                              f"{needed} to stand clear of sampling noise"))
    return findings


def _feature_stats(stats: statistics_pb2.DatasetFeatureStatisticsList, name: str):
    for feature in stats.datasets[0].features:
        if ".".join(feature.path.step) == name or feature.name == name:
            return feature
    return None


def anomaly_share(stats: statistics_pb2.DatasetFeatureStatisticsList, schema: schema_pb2.Schema, name: str,
                  kind: str) -> float | None:
    """The share of a window's examples an anomaly concerns, from TFDV's statistics of the window: missing values
    (presence), values outside the string domain (top values), outside the numeric domain (≈, the histogram's
    buckets outside it, values spread evenly within a bucket); None where the statistics cannot say."""
    total = stats.datasets[0].num_examples
    feature = _feature_stats(stats, name)
    spec = next((f for f in schema.feature if f.name == name), None)
    if not total or feature is None or spec is None:
        return None
    common = feature.string_stats.common_stats if feature.HasField("string_stats") else feature.num_stats.common_stats
    if kind in PRESENCE_KINDS:
        return common.num_missing / total
    if kind == "ENUM_TYPE_UNEXPECTED_STRING_VALUES" and feature.HasField("string_stats"):
        domain = {v for d in schema.string_domain if d.name == spec.domain for v in d.value}
        domain |= set(spec.string_domain.value)
        counts = [(b.label, b.sample_count) for b in feature.string_stats.rank_histogram.buckets] or \
            [(v.value, v.frequency) for v in feature.string_stats.top_values]
        return sum(count for value, count in counts if value not in domain) / total
    if kind in RANGE_KINDS and feature.HasField("num_stats") and (spec.HasField("int_domain") or
                                                                 spec.HasField("float_domain")):
        domain = spec.int_domain if spec.HasField("int_domain") else spec.float_domain
        low = domain.min if domain.HasField("min") else float("-inf")
        high = domain.max if domain.HasField("max") else float("inf")
        standard = [h for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD]
        if not standard:
            return None
        outside = 0.0
        for b in standard[0].buckets:
            width = b.high_value - b.low_value
            if width <= 0:
                outside += b.sample_count if (b.low_value < low or b.high_value > high) else 0
                continue
            below = max(0.0, min(b.high_value, low) - b.low_value) / width
            above = max(0.0, b.high_value - max(b.low_value, high)) / width
            outside += b.sample_count * min(1.0, below + above)
        return min(1.0, outside / total)
    return None


def drift_and_anomalies(current, previous, schema: schema_pb2.Schema, max_share: float) -> list[Finding]:
    """The window against the schema (environment SERVING) and, when there is one, against the previous window."""
    import tensorflow_data_validation as tfdv

    window = current
    if previous is not None:
        previous, current = aligned(previous, current)
    result = tfdv.validate_statistics(current, schema, environment=SERVING, previous_statistics=previous)
    findings = (_comparator_findings("drift", result, "drift_measurements", effective_examples(current, previous))
                if previous is not None else [])
    for feature, info in sorted(result.anomaly_info.items()):
        for reason in info.reason:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            if kind.startswith("COMPARATOR_"):
                continue
            share = anomaly_share(window, schema, feature, kind)
            findings.append(Finding("anomaly", feature, share is None or share > max_share, kind=kind,
                                    description=reason.description or reason.short_description, share=share))
    return findings


def skew(training, serving, schema: schema_pb2.Schema) -> list[Finding]:
    """Serving statistics against the training statistics of the version that served them (TFDV's skew check
    takes the training statistics as `statistics`; only its comparators are kept here)."""
    import tensorflow_data_validation as tfdv

    training, serving = aligned(training, serving)
    result = tfdv.validate_statistics(training, schema, serving_statistics=serving)
    return _comparator_findings("skew", result, "skew_measurements", effective_examples(training, serving))


def score_schema(threshold: float) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    feature = schema.feature.add(name=SCORE_FEATURE, type=schema_pb2.FLOAT)
    feature.skew_comparator.jensen_shannon_divergence.threshold = threshold
    return schema


def scores(reference, serving, threshold: float) -> list[Finding]:
    """The window's score distribution against the reference's (Jensen-Shannon divergence)."""
    import tensorflow_data_validation as tfdv

    result = tfdv.validate_statistics(reference, score_schema(threshold), serving_statistics=serving)
    return _comparator_findings("score", result, "skew_measurements", effective_examples(reference, serving))

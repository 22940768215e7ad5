"""TFDV statistics read for the statistics report and model cards: a row per feature across datasets (training,
evaluation, serving) with TFDV's counts, and the anomalies ExampleValidator found for it."""
import glob
import os
from typing import NamedTuple

from tensorflow_metadata.proto.v0 import statistics_pb2

from reports.results import natural_key

# StatisticsGen's split -> the dataset name a report shows.
SPLIT_DATASETS = {"train": "training", "eval": "evaluation"}
NOT_SERVING_STATISTICS = (".json", ".html", ".prom")


class Dataset(NamedTuple):
    label: str      # training, evaluation, serving
    source: str     # where the statistics were read
    statistics: statistics_pb2.DatasetFeatureStatistics


class FeatureSide(NamedTuple):
    """One feature in one dataset, in TFDV's numbers."""
    dataset: str
    statistics: statistics_pb2.FeatureNameStatistics
    count: int             # examples with a value
    missing: int           # examples without one: TFDV's num_missing, and those where the feature is there but empty
    missing_share: float   # missing / (missing + count); NaN when the dataset has no example
    summary: str           # numeric: mean, std dev, min, max; categorical: unique values and the most frequent one


class FeatureRow(NamedTuple):
    name: str
    kind: str                    # numeric or categorical
    sides: list[FeatureSide]     # in the datasets' order; a dataset without the feature is left out
    anomalies: list              # pipeline.gate.Anomaly: what ExampleValidator (the data gate) found for it


def feature_name(feature: statistics_pb2.FeatureNameStatistics) -> str:
    return ".".join(feature.path.step) if feature.HasField("path") else feature.name


def _common(feature: statistics_pb2.FeatureNameStatistics):
    which = feature.WhichOneof("stats")
    return getattr(feature, which).common_stats if which in ("num_stats", "string_stats", "bytes_stats",
                                                             "struct_stats") else None


def _number(value: float) -> str:
    """4 significant digits; whole above a million (a census tract, 17031081000, not 1.703e+10)."""
    return f"{value:.0f}" if abs(value) >= 1e6 else f"{value:.4g}"


def _side(dataset: str, feature: statistics_pb2.FeatureNameStatistics) -> FeatureSide:
    common = _common(feature)
    present, absent = (int(common.num_non_missing), int(common.num_missing)) if common is not None else (0, 0)
    # An empty CSV cell reaches TFDV as the feature with no value: present (num_non_missing) but without a value.
    # With at most one value per example, the examples with a value are the values (tot_num_values).
    count = int(common.tot_num_values) if common is not None and common.max_num_values <= 1 else present
    missing = absent + present - count
    if feature.HasField("num_stats"):
        s = feature.num_stats
        summary = f"mean {_number(s.mean)}, std dev {_number(s.std_dev)}, min {_number(s.min)}, max {_number(s.max)}"
    elif feature.HasField("string_stats"):
        s = feature.string_stats
        top = s.top_values[0] if s.top_values else None
        summary = f"{s.unique} unique" + (f"; most frequent {top.value!r} ({top.frequency:.0f})" if top else "")
    else:
        summary = ""
    share = missing / (missing + count) if missing + count else float("nan")
    return FeatureSide(dataset, feature, count, missing, share, summary)


def feature_rows(datasets: list[Dataset], anomalies: list = ()) -> list[FeatureRow]:
    """Every feature of any dataset, by name (numbers in names in numeric order), with its anomalies."""
    by_name: dict[str, list[FeatureSide]] = {}
    for dataset in datasets:
        for feature in dataset.statistics.features:
            by_name.setdefault(feature_name(feature), []).append(_side(dataset.label, feature))
    rows = []
    for name in sorted(by_name, key=natural_key):
        sides = by_name[name]
        kind = "numeric" if sides[0].statistics.HasField("num_stats") else "categorical"
        rows.append(FeatureRow(name, kind, sides, [a for a in anomalies if a.feature == name]))
    return rows


def read_split_statistics(statistics_uri: str) -> list[Dataset]:
    """StatisticsGen's output folder: its train and eval splits as training and evaluation (those present)."""
    import tensorflow_data_validation as tfdv

    found = []
    for split, label in SPLIT_DATASETS.items():
        path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
        if os.path.exists(path):
            found.append(Dataset(label, path, tfdv.load_stats_binary(path).datasets[0]))
    return found


def newest_serving_statistics(monitoring_dir: str) -> Dataset | None:
    """The newest monitoring window's serving statistics under `monitoring_dir` (<output_root>/monitoring/<model>/):
    its window-<start>... statistics file (a TFDV DatasetFeatureStatisticsList; windows sort by their UTC start), or
    None when make monitor has written none."""
    import tensorflow_data_validation as tfdv

    paths = sorted(p for p in glob.glob(os.path.join(glob.escape(monitoring_dir), "window-*"))
                   if os.path.isfile(p) and not p.endswith(NOT_SERVING_STATISTICS))
    if not paths:
        return None
    # A binary proto (.pb, as StatisticsGen writes) or what tfdv.load_statistics reads (TFRecord, text).
    statistics = tfdv.load_stats_binary(paths[-1]) if paths[-1].endswith(".pb") else tfdv.load_statistics(paths[-1])
    return Dataset("serving", paths[-1], statistics.datasets[0]) if statistics.datasets else None

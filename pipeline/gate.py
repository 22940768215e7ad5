"""The data gate: stops the run when ExampleValidator found anomalies, when the span has too few examples, when
ExampleGen wrote another number of examples than its CSV input holds rows, or when it drifted from the previous span
over the schema's drift thresholds (pipeline/drift.py; continuous.drift).

ExampleValidator records anomalies but lets the pipeline go on (tfx-addons#153);
this component fails instead, so nothing downstream (Transform, Trainer, Pusher) runs.
An empty span (a header-only CSV) is no anomaly to TFDV (it sets data_missing), so the gate also counts the
examples in StatisticsGen's output: fewer than continuous.min_examples, or an empty split, stops the run.
Rows in, examples out: ExampleGen's driver counts the CSV rows of the files it reads (pipeline/example_gen_driver.py)
and the gate compares them with the examples in StatisticsGen's output, so no row is lost silently (TFX reads files
line by line: a file with bare CR line endings is one header line and no examples).
"""
import os
import re
from typing import NamedTuple

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, Examples, ExampleStatistics, Schema
from tfx.utils import io_utils

# Where ExampleValidator writes each split's Anomalies proto, and StatisticsGen each split's statistics.
SCHEMA_DIFF_FILE = "SchemaDiff.pb"
STATS_FILE = "FeatureStats.pb"


class Anomaly(NamedTuple):
    split: str
    feature: str
    kind: str
    description: str


class DataGateError(RuntimeError):
    """The data broke the schema, the span has too few examples, or it drifted; carries every problem."""

    def __init__(self, anomalies: list[Anomaly], too_few: str = "", drift: list[Anomaly] = ()):
        self.anomalies = anomalies
        self.too_few = too_few
        self.drift = list(drift)
        super().__init__("\n".join(m for m in (too_few, format_anomalies(anomalies) if anomalies else "",
                                               format_drift(self.drift, stops=True) if drift else "") if m))


def gate_error_of(error: BaseException) -> "DataGateError | None":
    """The DataGateError behind an orchestrator's error (Beam and TFX wrap the error that matters), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DataGateError):
            return error
        error = error.__cause__ or error.__context__
    return None


def read_split_statistics(artifact: types.Artifact, split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    path = os.path.join(artifact_utils.get_split_uri([artifact], split), STATS_FILE)
    proto = statistics_pb2.DatasetFeatureStatisticsList()
    proto.ParseFromString(io_utils.read_bytes_file(path))
    return proto


def read_example_counts(artifact: types.Artifact) -> dict[str, int]:
    """split -> number of examples, from StatisticsGen's output."""
    return {split: sum(dataset.num_examples for dataset in read_split_statistics(artifact, split).datasets)
            for split in artifact_utils.decode_split_names(artifact.split_names)}


def ordered(counts: dict[str, int]) -> list[tuple[str, int]]:
    """train first, then the other splits by name."""
    return sorted(counts.items(), key=lambda c: (c[0] != "train", c[0]))


def span_of(examples: types.Artifact) -> int:
    """The span ExampleGen read. Its driver records it as a custom property of the Examples artifact (the
    `span` property StatisticsGen copies stays 0)."""
    return examples.get_int_custom_property("span") if examples.has_custom_property("span") else examples.span


def input_rows(examples: types.Artifact) -> int | None:
    """The CSV rows in the files ExampleGen read, as its driver counted them into the artifact's input fingerprint
    (csv_rows:<n>); None where no such count was taken (BigQuery, Vertex / KFP v2's own driver, a file that is no
    CSV the parser reads)."""
    fingerprint = examples.get_string_custom_property("input_fingerprint") if examples.has_custom_property(
        "input_fingerprint") else ""
    match = re.search(r"\bcsv_rows:(\d+)", fingerprint)
    return int(match.group(1)) if match else None


def check_example_counts(counts: dict[str, int], span: int, min_examples: int, rows_in: int | None = None) -> str:
    """The gate's count check: "" when the span has enough examples, no split is empty and (when `rows_in`, the
    input's CSV rows, is known) ExampleGen wrote one example per row, else the reason."""
    total = sum(counts.values())
    empty = sorted(split for split, n in counts.items() if n == 0)
    per_split = ", ".join(f"{split} {n}" for split, n in ordered(counts))
    if rows_in is not None and rows_in != total:
        return (f"Data gate: span {span}: its CSV files hold {rows_in} rows, but ExampleGen wrote {total} examples "
                f"({per_split}); rows were lost or merged on the way (ExampleGen splits each file at LF only: with bare "
                "CR line endings a file is one header line); the run stops before Transform (nothing is trained or "
                "pushed).")
    if total >= min_examples and not empty:
        return ""
    why = (f" has {total} examples, fewer than continuous.min_examples {min_examples}" if total < min_examples
           else f": split {', '.join(empty)} has no examples")
    return (f"Data gate: span {span}{why} ({per_split}); "
            "the run stops before Transform (nothing is trained or pushed).")


def anomalies_of(proto: anomalies_pb2.Anomalies, split: str) -> list[Anomaly]:
    """One split's Anomalies proto (TFDV's validate_statistics) as rows."""
    found = []
    infos = sorted(proto.anomaly_info.items())
    if proto.HasField("dataset_anomaly_info"):
        infos.append(("(dataset)", proto.dataset_anomaly_info))
    for feature, info in infos:
        for reason in info.reason:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            found.append(Anomaly(split, feature, kind, reason.description or reason.short_description))
    return found


def read_anomalies(artifact: types.Artifact) -> list[Anomaly]:
    found = []
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), SCHEMA_DIFF_FILE)
        proto = anomalies_pb2.Anomalies()
        proto.ParseFromString(io_utils.read_bytes_file(path))
        found += anomalies_of(proto, split)
    return found


BOM = "\ufeff"


def _table(anomalies: list[Anomaly]) -> list[str]:
    # A byte-order mark is invisible: shown as the escape it is.
    rows = [("split", "feature", "kind", "description")] + [
        (a.split, a.feature.replace(BOM, "\\ufeff"), a.kind, a.description) for a in anomalies]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]


def format_anomalies(anomalies: list[Anomaly]) -> str:
    bom = sorted({a.feature for a in anomalies if a.feature.startswith(BOM)})
    # CsvExampleGen takes the header line as it is: a UTF-8 byte-order mark becomes part of the first column's name.
    hint = [f"  The first column {bom[0][1:]!r} arrives as '\\ufeff{bom[0][1:]}': the CSV file starts with a UTF-8 "
            "byte-order mark (BOM), which ExampleGen reads as part of the header; save it as UTF-8 without a BOM."
            ] if bom else []
    return "\n".join([f"Data gate: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} against the "
                      "schema; the run stops before Transform (nothing is trained or pushed)."]
                     + _table(anomalies) + hint)


def format_drift(drift: list[Anomaly], stops: bool) -> str:
    features = sorted({a.feature for a in drift})
    then = ("the run stops before Transform (nothing is trained or pushed; continuous.drift: warn lets it go on)"
            if stops else "continuous.drift: warn, so the run goes on")
    return "\n".join([f"Data gate: drift from the previous span over the schema's thresholds in "
                      f"{', '.join(features)}; {then}."] + _table(drift))


@component
def DataGate(anomalies: InputArtifact[ExampleAnomalies], statistics: InputArtifact[ExampleStatistics],
             examples: InputArtifact[Examples], schema: InputArtifact[Schema], min_examples: Parameter[int],
             drift: Parameter[str], previous_statistics: InputArtifact[ExampleStatistics] = None) -> None:
    """Fails the run if ExampleValidator reported any anomaly in any split, the span has fewer than `min_examples`
    examples or an empty split, or (`drift` "stop") a drift comparator of the schema is over its threshold
    against `previous_statistics` (the previous span's; none for the first span)."""
    from pipeline.drift import drift_anomalies

    found = read_anomalies(anomalies)
    too_few = check_example_counts(read_example_counts(statistics), span_of(examples), min_examples,
                                   input_rows(examples))
    # A span already stopped for its size is not compared (an empty span has no distribution to compare).
    drifted = drift_anomalies(statistics, previous_statistics, schema) if (
        previous_statistics is not None and drift != "off" and not too_few) else []
    if drifted and drift == "warn":
        print(format_drift(drifted, stops=False))
        drifted = []
    if found or too_few or drifted:
        raise DataGateError(found, too_few, drifted)

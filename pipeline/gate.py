"""The data gate: stops the run when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the pipeline go on (tfx-addons#153);
this component fails instead, so nothing downstream (Transform, Trainer, Pusher) runs.
"""
import os
from typing import NamedTuple

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies
from tfx.utils import io_utils

# Where ExampleValidator writes each split's Anomalies proto.
SCHEMA_DIFF_FILE = "SchemaDiff.pb"


class Anomaly(NamedTuple):
    split: str
    feature: str
    kind: str
    description: str


class DataGateError(RuntimeError):
    """The data broke the schema; carries every anomaly."""

    def __init__(self, anomalies: list[Anomaly]):
        self.anomalies = anomalies
        super().__init__(format_anomalies(anomalies))


def read_anomalies(artifact: types.Artifact) -> list[Anomaly]:
    found = []
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), SCHEMA_DIFF_FILE)
        proto = anomalies_pb2.Anomalies()
        proto.ParseFromString(io_utils.read_bytes_file(path))
        infos = sorted(proto.anomaly_info.items())
        if proto.HasField("dataset_anomaly_info"):
            infos.append(("(dataset)", proto.dataset_anomaly_info))
        for feature, info in infos:
            for reason in info.reason:
                kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
                found.append(Anomaly(split, feature, kind, reason.description or reason.short_description))
    return found


def format_anomalies(anomalies: list[Anomaly]) -> str:
    rows = [("split", "feature", "kind", "description")] + [tuple(a) for a in anomalies]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"Data gate: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} against the schema; "
             "the run stops before Transform (nothing is trained or pushed)."]
    lines += ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    return "\n".join(lines)


@component
def DataGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    """Fails the run if ExampleValidator reported any anomaly in any split."""
    found = read_anomalies(anomalies)
    if found:
        raise DataGateError(found)

"""Raw feature rows (dicts of CSV/JSON values) to serialized tf.Examples, typed by the schema.

What TF Serving's serving_default signature takes; shared by clients and tests.
"""
import csv
from collections.abc import Iterable

from tensorflow.core.example import example_pb2
from tensorflow_metadata.proto.v0 import schema_pb2

from modules.contract import SERVING_DROPPED_KEYS


def load_schema(path: str) -> schema_pb2.Schema:
    from google.protobuf import text_format

    with open(path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def to_example(row: dict[str, object], schema: schema_pb2.Schema, skip=SERVING_DROPPED_KEYS) -> example_pb2.Example:
    """Empty or missing values become absent features; a value of the wrong type raises ValueError."""
    example = example_pb2.Example()
    for feature in schema.feature:
        if feature.name in skip:
            continue
        value = row.get(feature.name)
        if value is None or value == "":
            continue
        target = example.features.feature[feature.name]
        try:
            if feature.type == schema_pb2.FLOAT:
                target.float_list.value.append(float(value))
            elif feature.type == schema_pb2.INT:
                target.int64_list.value.append(int(float(value)) if isinstance(value, str) else int(value))
            else:
                target.bytes_list.value.append(str(value).encode())
        except (TypeError, ValueError):
            raise ValueError(f"feature '{feature.name}': cannot read {value!r} as "
                             f"{schema_pb2.FeatureType.Name(feature.type)}") from None
    return example


def read_csv_rows(path: str, limit: int = 0) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[:limit] if limit else rows


def serialize(rows: Iterable[dict[str, object]], schema: schema_pb2.Schema, skip=SERVING_DROPPED_KEYS) -> list[bytes]:
    return [to_example(row, schema, skip).SerializeToString() for row in rows]

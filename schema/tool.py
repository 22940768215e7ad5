"""Refreshes schema/schema.pbtxt: TFDV infers a schema from the data, then the curation below is applied.

    python -m schema.tool [--data-root DIR] [--out schema/schema.pbtxt]      (make schema)

The inferred part (types, presence, value sets) follows the data; the curated part
(ranges, domains tolerance, environments, drift/skew comparators) is the team's
judgement and lives here so a refresh never loses it. Review `git diff schema/` after.
"""
import argparse
import glob
import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from modules import contract

# Valid values a person would vouch for, not the min/max of one sample (None: unbounded).
RANGES = {
    "fare": (0, None),
    "tips": (0, None),
    "trip_miles": (0, None),
    "trip_seconds": (0, None),
    # Chicago and its airports, with a margin.
    "pickup_latitude": (41.6, 42.1),
    "dropoff_latitude": (41.6, 42.1),
    "pickup_longitude": (-88.0, -87.5),
    "dropoff_longitude": (-88.0, -87.5),
    "trip_start_hour": (0, 23),
    "trip_start_day": (1, 7),
    "trip_start_month": (1, 12),
    "pickup_community_area": (1, 77),
    "dropoff_community_area": (1, 77),
    "trip_start_timestamp": (0, None),
}
# Missing in nearly every row of the sample: may be absent from a whole file.
MOSTLY_MISSING = ("pickup_census_tract",)
# payment_type is a closed set: a new value is an anomaly. Taxi companies come and go,
# so up to 5% of rows may name a company the schema does not list yet.
COMPANY_MIN_DOMAIN_MASS = 0.95
# L-infinity distance for categorical features, Jensen-Shannon divergence for numeric ones; the data gate compares
# each span with the previous one (pipeline/drift.py). Above the sampling noise of a quarterly span (~940 rows: two
# random halves of one span differ by up to 0.17 in trip_miles, 0.10 in company) and the quarter-to-quarter change
# of 2013-2015 (trip_miles up to 0.42, fare 0.11); the 2016 spans' shifts (trip_miles 0.75-0.81, fare 0.37-0.43,
# company 0.16) are over them (docs/continuous-training.md#drift-between-spans).
DRIFT_THRESHOLDS = {"payment_type": 0.1, "company": 0.12, "fare": 0.3, "trip_miles": 0.5}
SKEW_THRESHOLDS = {"payment_type": 0.05, "company": 0.05}
TRAINING, SERVING = "TRAINING", "SERVING"


def _feature(schema, name):
    return tfdv.get_feature(schema, name)


def curate(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    for feature in schema.feature:
        # CsvExampleGen writes an empty value list for an empty CSV cell, so an optional
        # feature has 0 or 1 values (TFDV's CSV inference sees an absent feature instead).
        if feature.presence.min_fraction < 1.0 and feature.HasField("value_count"):
            feature.value_count.min = 0
    for name in MOSTLY_MISSING:
        _feature(schema, name).presence.min_count = 0
    for name, (low, high) in RANGES.items():
        feature = _feature(schema, name)
        domain = feature.float_domain if feature.type == schema_pb2.FLOAT else feature.int_domain
        domain.Clear()
        domain.min = low
        if high is not None:
            domain.max = high
    _feature(schema, "company").distribution_constraints.min_domain_mass = COMPANY_MIN_DOMAIN_MASS
    for name, threshold in DRIFT_THRESHOLDS.items():
        feature = _feature(schema, name)
        if feature.type == schema_pb2.BYTES:
            feature.drift_comparator.infinity_norm.threshold = threshold
        else:
            feature.drift_comparator.jensen_shannon_divergence.threshold = threshold
    for name, threshold in SKEW_THRESHOLDS.items():
        _feature(schema, name).skew_comparator.infinity_norm.threshold = threshold
    del schema.default_environment[:]
    schema.default_environment.extend([TRAINING, SERVING])
    for name in contract.SERVING_DROPPED_KEYS:  # a serving request leaves these out
        _feature(schema, name).not_in_environment.append(SERVING)
    return schema


def infer(data_root: str) -> schema_pb2.Schema:
    files = sorted(glob.glob(os.path.join(data_root, "*.csv")))
    if not files:
        raise SystemExit(f"error: no *.csv files in {data_root}")
    stats = tfdv.generate_statistics_from_csv(os.path.join(data_root, "*.csv"))
    return tfdv.infer_schema(stats, infer_feature_shape=True)


def main(argv=None) -> None:
    from pipeline.config import load_config

    config = load_config(check_data=False)  # the defaults only: --data-root may name another directory
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=config.data_root)
    parser.add_argument("--out", default=config.schema_path)
    args = parser.parse_args(argv)
    schema = curate(infer(args.data_root))
    tfdv.write_schema_text(schema, args.out)
    print(f"wrote {args.out} ({len(schema.feature)} features) from {args.data_root}; review with `git diff {args.out}`")


if __name__ == "__main__":
    main()

"""preprocessing_fn with tf.Transform's own test utilities (tft_unit), asserting transformed values."""
import math

import numpy as np
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
from tensorflow_transform import beam as tft_beam
from tensorflow_transform.beam import tft_unit
from tensorflow_transform.tf_metadata import schema_utils

from modules import features as F
from modules.preprocessing import preprocessing_fn
from pipeline.config import REPO_ROOT


def _feature_spec():
    schema = tfdv.load_schema_text(str(REPO_ROOT / "schema" / "schema.pbtxt"))
    return schema_utils.schema_as_feature_spec(schema).feature_spec


def _row(fare, tips, payment, company, seconds, hour, latitude, area):
    """A raw example as the schema parses it: required features as [v], optional ones as [] when missing."""
    return {
        "fare": [fare], "tips": [tips], "payment_type": [payment], "trip_miles": [1.5],
        "trip_start_hour": [hour], "trip_start_day": [3], "trip_start_month": [7], "trip_start_timestamp": [1400000000],
        "company": [company] if company else [], "trip_seconds": [seconds] if seconds is not None else [],
        "pickup_latitude": [latitude] if latitude else [], "pickup_longitude": [-87.6],
        "dropoff_latitude": [41.9], "dropoff_longitude": [-87.6],
        "pickup_community_area": [area] if area else [], "dropoff_community_area": [8],
        "pickup_census_tract": [], "dropoff_census_tract": [17031081500],
    }


ROWS = [
    _row(10.0, 3.0, "Cash", "A", 600, 3, 41.9, 8),
    _row(20.0, 0.0, "Cash", "A", None, 23, 41.8, 32),
    _row(5.0, 1.0, "Cash", "A", 300, 30, None, None),
    _row(7.25, 2.0, "Credit Card", "B", 420, 0, 41.95, 77),
    _row(0.0, 0.0, "Credit Card", "B", 60, 12, 41.97, 99),
    _row(12.0, 0.5, "Dispute", None, 900, 8, 41.7, 1),
]

CHECKED = ["fare_xf", "trip_seconds_xf", "payment_type_xf", "company_xf", "trip_start_hour_xf",
           "pickup_community_area_xf", F.LABEL_KEY]


def _z(values):
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / values.std()


class PreprocessingTest(tft_unit.TransformTestCase):
    # tf.test.TestCase's deprecated test_session() is a context manager, not a test; hide it from pytest.
    test_session = None

    def test_transformed_values(self):
        fares = _z([math.log1p(r["fare"][0]) for r in ROWS])
        present_seconds = [math.log1p(r["trip_seconds"][0]) for r in ROWS if r["trip_seconds"]]
        mean_seconds = np.mean(present_seconds)
        seconds = _z([math.log1p(r["trip_seconds"][0]) if r["trip_seconds"] else mean_seconds for r in ROWS])
        expected = []
        for i, row in enumerate(ROWS):
            expected.append({
                "fare_xf": fares[i],
                "trip_seconds_xf": seconds[i],  # missing: the mean, so 0 after scaling
                # Vocabularies by frequency: Cash(3) Credit Card(2) Dispute(1); A(3) B(2) __missing__(1).
                "payment_type_xf": {"Cash": 0, "Credit Card": 1, "Dispute": 2}[row["payment_type"][0]],
                "company_xf": {"A": 0, "B": 1}.get(row["company"][0] if row["company"] else None, 2),
                # Hour 30 is out of range and missing areas or area 99 get the extra id max + 1.
                "trip_start_hour_xf": row["trip_start_hour"][0] if row["trip_start_hour"][0] <= 23 else 24,
                "pickup_community_area_xf": row["pickup_community_area"][0]
                if row["pickup_community_area"] and row["pickup_community_area"][0] <= 77 else 78,
                # Big tipper: tips > 20% of the fare (10 -> 3.0 yes; 5 -> 1.0 is exactly 20%: no).
                F.LABEL_KEY: int(row["tips"][0] > 0.2 * row["fare"][0]),
            })
        self.assertEqual([e[F.LABEL_KEY] for e in expected], [1, 0, 0, 1, 0, 0])
        self.assertAlmostEqual(expected[1]["trip_seconds_xf"], 0.0, places=6)

        def checked_fn(inputs):
            outputs = preprocessing_fn(inputs)
            return {key: outputs[key] for key in CHECKED}

        self.assertAnalyzeAndTransformResults(
            ROWS, tft.DatasetMetadata.from_feature_spec(_feature_spec()), checked_fn, expected,
            expected_vocab_file_contents={
                F.vocab_filename("payment_type"): [b"Cash", b"Credit Card", b"Dispute"],
                F.vocab_filename("company"): [b"A", b"B", F.MISSING_STRING.encode()],
            })

    def test_coordinates_bucketize_by_quantile_and_missing_gets_its_own_bucket(self):
        rows = [_row(10.0, 1.0, "Cash", "A", 60, 1, None if i % 10 == 0 else 41.6 + i * 0.004, 8)
                for i in range(100)]

        def buckets_fn(inputs):
            outputs = preprocessing_fn(inputs)
            return {"pickup_latitude_xf": outputs["pickup_latitude_xf"], "fare_bucket_xf": outputs["fare_bucket_xf"]}

        with tft_beam.Context(temp_dir=self.get_temp_dir()):
            (transformed, _), _ = ((rows, tft.DatasetMetadata.from_feature_spec(_feature_spec()))
                                   | tft_beam.AnalyzeAndTransformDataset(buckets_fn))
        buckets = [t["pickup_latitude_xf"] for t in transformed]
        missing = [b for i, b in enumerate(buckets) if i % 10 == 0]
        present = [b for i, b in enumerate(buckets) if i % 10]
        self.assertEqual(set(missing), {F.BUCKET_COUNT})
        self.assertEqual(present, sorted(present))  # latitude grows with i
        self.assertEqual(set(present), set(range(F.BUCKET_COUNT)))
        # Equal fares share one fare bucket.
        self.assertEqual(len({t["fare_bucket_xf"] for t in transformed}), 1)


if __name__ == "__main__":
    tf.test.main()

"""The taxi features: raw names, how each is encoded, and the label.

Shared by preprocessing_fn, the model and the serving signatures, so a feature
is renamed or re-encoded in exactly one place.
"""
from modules import contract

# Heavy-tailed amounts (fares up to $700, trips up to 1,700 miles): log1p, then z-score.
# Missing values are imputed with the training mean of log1p(x).
DENSE_FLOAT_FEATURES = ("fare", "trip_miles", "trip_seconds")
# Whether a tip exceeds 20% hinges on the exact fare (fixed tip amounts, meter steps):
# the fare is also bucketized finely by quantiles and embedded.
FARE_BUCKET_KEY = "fare_bucket"
FARE_BUCKET_COUNT = 50

# Strings mapped through a vocabulary; unseen values land in OOV buckets.
VOCAB_FEATURES = ("payment_type", "company")
VOCAB_SIZE = 1000
OOV_BUCKETS = 10
MISSING_STRING = "__missing__"

# Coordinates bucketized by quantiles; a missing coordinate gets its own bucket.
BUCKET_FEATURES = ("pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude")
BUCKET_COUNT = 10

# Small integer categories: feature -> largest valid value. A value is its own id;
# a missing or out-of-range value gets the id max + 1, so each has max + 2 ids.
CATEGORICAL_FEATURES = {
    "trip_start_hour": 23,
    "trip_start_day": 7,
    "trip_start_month": 12,
    "pickup_community_area": 77,
    "dropoff_community_area": 77,
}

FARE_KEY = "fare"
TIPS_KEY = contract.TIPS_KEY
# Label: the passenger tipped more than 20% of the fare ("big tipper").
LABEL_KEY = contract.LABEL_KEY
BIG_TIP_FRACTION = 0.2

# Validated by the schema but not model inputs: trip_start_timestamp, and the census tracts
# (11-digit ids, the pickup tract missing in nearly every row) that only let the model memorise.


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def vocab_filename(key: str) -> str:
    return f"vocab_{key}"


def categorical_sizes() -> dict:
    """Transformed categorical feature -> number of ids the model must embed."""
    sizes = {transformed_name(k): max_id + 2 for k, max_id in CATEGORICAL_FEATURES.items()}
    sizes.update({transformed_name(k): VOCAB_SIZE + OOV_BUCKETS for k in VOCAB_FEATURES})
    sizes.update({transformed_name(k): BUCKET_COUNT + 1 for k in BUCKET_FEATURES})
    sizes[transformed_name(FARE_BUCKET_KEY)] = FARE_BUCKET_COUNT
    return sizes


def dense_inputs() -> list:
    return [transformed_name(k) for k in DENSE_FLOAT_FEATURES]

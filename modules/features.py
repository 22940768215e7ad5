"""The taxi features: raw names, how each is encoded, and the label.

Shared by preprocessing_fn, the model and the serving signatures, so a feature
is renamed or re-encoded in exactly one place.
"""

# Floats scaled to z-scores (missing values imputed with the training mean).
DENSE_FLOAT_FEATURES = ("fare", "trip_miles", "trip_seconds")

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

# Census tracts are 11-digit ids: a vocabulary, not an embedding table indexed by value.
TRACT_FEATURES = ("pickup_census_tract", "dropoff_census_tract")
TRACT_VOCAB_SIZE = 500

FARE_KEY = "fare"
TIPS_KEY = "tips"
# Label: the passenger tipped more than 20% of the fare ("big tipper").
LABEL_KEY = "big_tipper"
BIG_TIP_FRACTION = 0.2

# Raw columns that are read but not used as model inputs.
UNUSED_RAW_FEATURES = ("trip_start_timestamp",)


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def vocab_filename(key: str) -> str:
    return f"vocab_{key}"


def categorical_sizes() -> dict:
    """Transformed categorical feature -> number of ids the model must embed."""
    sizes = {transformed_name(k): max_id + 2 for k, max_id in CATEGORICAL_FEATURES.items()}
    sizes.update({transformed_name(k): VOCAB_SIZE + OOV_BUCKETS for k in VOCAB_FEATURES})
    sizes.update({transformed_name(k): TRACT_VOCAB_SIZE + OOV_BUCKETS for k in TRACT_FEATURES})
    sizes.update({transformed_name(k): BUCKET_COUNT + 1 for k in BUCKET_FEATURES})
    return sizes


def dense_inputs() -> list:
    return [transformed_name(k) for k in DENSE_FLOAT_FEATURES]

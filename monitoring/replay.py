"""Rows of raw features (CSV) as a request log: PredictionLog records as the model server logs them, scored by a
pushed SavedModel, spread evenly over a period. For the tests, the benchmark and trying `make monitor` without
live traffic:

    python -m monitoring.replay ROWS.csv OUT.tfrecord --model-dir <output_root>/serving/<model>/<version> \\
        [--start EPOCH] [--minutes M] [--per-request N] [--repeat K]
"""
import argparse
import time
from collections.abc import Iterator

import numpy as np

from modules.contract import EXAMPLES_INPUT, OUTPUT_KEY, SERVING_SIGNATURE

SCORE_BATCH = 1024


def score(model_dir: str, examples: list[bytes]) -> np.ndarray:
    """P(big tipper) per example from the SavedModel's serving_default signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    parts = [signature(**{EXAMPLES_INPUT: tf.constant(examples[i:i + SCORE_BATCH])})[OUTPUT_KEY].numpy()[:, -1]
             for i in range(0, len(examples), SCORE_BATCH)]
    return np.concatenate(parts) if parts else np.zeros(0)


def predict_logs(model: str, version: int, examples: list[bytes], scores, start: float, seconds: float,
                 per_request: int = 1) -> Iterator:
    """serving_default predict logs of `per_request` examples each, timestamped evenly over [start, start+seconds)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = range(0, len(examples), per_request)
    step = seconds / max(len(requests), 1)
    for n, i in enumerate(requests):
        record = prediction_log_pb2.PredictionLog()
        record.log_metadata.model_spec.name = model
        record.log_metadata.model_spec.version.value = version
        record.log_metadata.timestamp_secs = int(start + n * step)
        log = record.predict_log
        log.request.model_spec.CopyFrom(record.log_metadata.model_spec)
        log.request.model_spec.signature_name = SERVING_SIGNATURE
        log.request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(examples[i:i + per_request], tf.string))
        values = np.asarray(scores[i:i + per_request], dtype=np.float32).reshape(-1, 1)
        log.response.outputs[OUTPUT_KEY].CopyFrom(tf.make_tensor_proto(values))
        yield record


def write(path: str, records) -> int:
    import tensorflow as tf

    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record.SerializeToString())
            count += 1
    return count


def main(argv=None) -> int:
    from pipeline.config import load_config
    from serving.examples import load_schema, read_csv_rows, serialize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows")
    parser.add_argument("out")
    parser.add_argument("--model-dir", required=True, help="a pushed version's directory (its name is the version)")
    parser.add_argument("--start", type=float, default=None, help="epoch seconds of the first request (default: "
                        "now less --minutes)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="replay the rows this many times")
    args = parser.parse_args(argv)
    config = load_config(check_data=False)
    examples = serialize(read_csv_rows(args.rows), load_schema(config.schema_path))
    scores = score(args.model_dir, examples)
    version = int(args.model_dir.rstrip("/").rsplit("/", 1)[-1])
    start = args.start if args.start is not None else time.time() - args.minutes * 60
    count = write(args.out, predict_logs(config.model_name, version, examples * args.repeat,
                                         np.tile(scores, args.repeat), start, args.minutes * 60, args.per_request))
    print(f"{count} requests ({len(examples) * args.repeat} examples, version {version}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

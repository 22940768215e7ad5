"""What the Evaluator's baseline costs: TFMA alone (in-process DirectRunner) on `--rows` eval examples with the
pipeline's EvalConfig (pipeline/evaluation.py), for the candidate alone, for the candidate with a baseline (the same
model twice, as an incremental run judges the blessed model beside the new one), and with a preprocessing signature
that returns the label only instead of `transform_features`' every transformed feature.

    python bench/evaluator_models.py output/serving/chicago_taxi/<version> \\
        'output/pipelines/chicago-taxi/ExampleGen/examples/1/Split-eval/*.gz' --rows 50000

Measured figures are in docs/benchmarks.md (notes on the rolling window).
"""
import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402
import tensorflow_model_analysis as tfma  # noqa: E402

from modules import contract  # noqa: E402
from pipeline import evaluation  # noqa: E402
from pipeline.config import load_config  # noqa: E402

LABEL_ONLY = "labels_only"


def _examples(pattern: str, rows: int, path: str) -> str:
    """`rows` serialized examples, the eval split's repeated as often as needed, in one TFRecord file."""
    records = [r.numpy() for f in sorted(glob.glob(pattern)) for r in tf.data.TFRecordDataset(f, "GZIP")]
    if not records:
        sys.exit(f"no examples match {pattern}")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(rows):
            writer.write(records[i % len(records)])
    return path


def _label_only_model(model_dir: str, path: str) -> str:
    """The model with one more signature: transform_features' label and nothing else."""
    model = tf.saved_model.load(model_dir)
    transform = model.signatures[contract.TRANSFORM_SIGNATURE]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.EXAMPLES_INPUT)])
    def labels(serialized):
        return {contract.LABEL_KEY: transform(examples=serialized)[contract.LABEL_KEY]}

    tf.saved_model.save(model, path, signatures={**model.signatures, LABEL_ONLY: labels})
    return path


def _seconds(model_dir: str, data: str, out: str, baseline: bool, preprocessing: str) -> float:
    config = evaluation.eval_config(load_config(profile="local").evaluator)
    candidate = config.model_specs[0]
    candidate.name = "candidate"
    candidate.preprocessing_function_names[:] = [preprocessing]
    if baseline:
        base = config.model_specs.add()
        base.CopyFrom(candidate)
        base.name, base.is_baseline = "baseline", True
        models = [tfma.default_eval_shared_model(model_dir, eval_config=config, model_name=n)
                  for n in ("candidate", "baseline")]
    else:  # no baseline to change against: the AUC's value threshold only
        for metric in config.metrics_specs[0].metrics:
            for threshold in metric.per_slice_thresholds:
                threshold.threshold.ClearField("change_threshold")
        models = tfma.default_eval_shared_model(model_dir, eval_config=config)
    started = time.monotonic()
    tfma.run_model_analysis(eval_shared_model=models, eval_config=config, data_location=data, output_path=out)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a pushed version (or the Trainer's Format-Serving folder)")
    parser.add_argument("examples", help="a glob of the eval split's gzipped TFRecord files")
    parser.add_argument("--rows", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-evaluator-") as work:
        data = _examples(args.examples, args.rows, os.path.join(work, "eval.tfrecord"))
        label_only = _label_only_model(args.model_dir, os.path.join(work, "label_only"))
        for name, model, baseline, preprocessing in (
                ("candidate alone", args.model_dir, False, contract.TRANSFORM_SIGNATURE),
                ("candidate and baseline", args.model_dir, True, contract.TRANSFORM_SIGNATURE),
                ("candidate alone, label-only preprocessing", label_only, False, LABEL_ONLY)):
            seconds = _seconds(model, data, os.path.join(work, name.replace(" ", "-")), baseline, preprocessing)
            print(f"{name}: {seconds:.1f} s on {args.rows:,} rows", flush=True)


if __name__ == "__main__":
    main()

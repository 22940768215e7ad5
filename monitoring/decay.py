"""make decay: the served model's metrics on the labelled data of the period it served, kept over time.

    python -m monitoring.decay --span N [--version V] [--data-root DIR]

When the labels of a served period arrive as a new span, TFMA evaluates the version that served it on the span,
as the pipeline's Evaluator evaluates a candidate: tfma.run_model_analysis with the Evaluator's model spec (the
serving_default signature on raw tf.Examples, the label made from the raw tips by the model's transform_features
signature) and its value threshold, AUC >= evaluator.auc_lower_bound, overall slice. The version: --version, else
the one that served most logged requests on a daily span's date (the request log), else the rollout record's
`stable`, else the newest pushed version.

Writes under <output_root>/monitoring/<model>/: decay.jsonl (one line per span and version, a re-run replacing its
line: span, version, auc, binary_accuracy, example_count, threshold, alert, time), decay.html (the history charted)
and TFMA's output in decay/span-<N>-version-<V>/. Exit status: 0 at or above the threshold, 3 below it (with
monitoring.on_alert: retrain, a pipeline run with reason monitoring_alert), 1 an error (a span missing or
incomplete, no such version), 2 a configuration error.
"""
import argparse
import collections
import datetime
import html
import json
import os
import sys
import tempfile
import time

from pipeline.config import Config, load_config_or_exit
from pipeline.files import write_atomic

HISTORY = "decay.jsonl"
PAGE = "decay.html"
METRICS = ("auc", "binary_accuracy", "example_count")


class DecayError(Exception):
    """Cannot evaluate: the message names what is missing."""


def find_span(data_root: str, number: int):
    from pipeline import spans

    found = next((s for s in spans.discover(data_root) if s.number == number), None)
    if found is None:
        raise DecayError(f"span {number}: not in {data_root}")
    if not found.complete:
        raise DecayError(f"span {number} ({found.path}) is not complete: {found.why_incomplete}")
    return found


def _logged_versions(location: str, start: float, end: float) -> collections.Counter:
    """Versions of the logged requests in [start, end) (a record without a time takes its file's)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    from monitoring import logs

    counts = collections.Counter()
    for path in logs.list_files(location):
        file_time = tf.io.gfile.stat(path).mtime_nsec / 1e9
        try:
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                record = prediction_log_pb2.PredictionLog()
                try:
                    record.ParseFromString(raw)
                except DecodeError:  # not a PredictionLog: make monitor reports such files
                    continue
                if start <= (record.log_metadata.timestamp_secs or file_time) < end:
                    counts[logs.version_of(record)] += 1
        except tf.errors.OpError:
            continue  # damaged: what was read counts
    return counts


def served_version(config: Config, span, version: int | None) -> tuple[int, str]:
    """(version, how it was chosen)."""
    from monitoring.monitor import log_location
    from serving import registry

    if version is not None:
        return version, "--version"
    if span.date is not None:
        start = datetime.datetime.combine(span.date, datetime.time(), datetime.timezone.utc).timestamp()
        counts = _logged_versions(log_location(config), start, start + 86400)
        counts.pop(0, None)
        if counts:
            ((top, n),) = counts.most_common(1)
            return top, f"request log: {n} of {sum(counts.values())} requests on {span.date}"
    try:
        record = registry.read_record(config.serving_model_dir)
    except ValueError as e:
        raise DecayError(str(e)) from None
    if record is not None and record.stable is not None:
        return record.stable, "rollout record: stable"
    pushed = [int(v) for v in os.listdir(config.serving_model_dir) if v.isdigit()] \
        if os.path.isdir(config.serving_model_dir) else []
    if not pushed:
        raise DecayError(f"no pushed version in {config.serving_model_dir}")
    return max(pushed), "newest pushed version"


def eval_config(config: Config):
    """The Evaluator's model spec and AUC value threshold (pipeline/evaluation.py), overall slice only."""
    import tensorflow_model_analysis as tfma

    from pipeline.evaluation import THRESHOLD_METRIC
    from pipeline.evaluation import eval_config as evaluator_config

    model_spec = evaluator_config(config.evaluator).model_specs[0]
    threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": config.evaluator.auc_lower_bound}))
    return tfma.EvalConfig(
        model_specs=[model_spec],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", config=json.dumps({"name": THRESHOLD_METRIC}), threshold=threshold),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
        ])])


def evaluate(config: Config, model_dir: str, csv_files: list[str], output: str) -> tuple[dict, bool]:
    """({auc, binary_accuracy, example_count}, TFMA's validation_ok) of the model on the CSV rows."""
    import tensorflow as tf
    import tensorflow_model_analysis as tfma

    from serving.examples import load_schema, read_csv_rows, to_example

    schema = load_schema(config.schema_path)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "examples.tfrecord")
        with tf.io.TFRecordWriter(data) as writer:
            for path in csv_files:
                for row in read_csv_rows(path):
                    writer.write(to_example(row, schema, skip=()).SerializeToString())  # the tips too: the label
        evaluation = eval_config(config)
        tfma.run_model_analysis(tfma.default_eval_shared_model(model_dir, eval_config=evaluation),
                                eval_config=evaluation, data_location=data, file_format="tfrecords",
                                output_path=output)
    metrics = {}
    for per_slice in tfma.load_metrics(output):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if entry.key.name in METRICS and entry.value.HasField("double_value"):
                metrics[entry.key.name] = entry.value.double_value.value
    return metrics, tfma.load_validation_result(output).validation_ok


def read_history(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def record(path: str, entry: dict) -> list[dict]:
    """The history with `entry`, replacing an earlier evaluation of the same span and version; span order."""
    history = [e for e in read_history(path) if (e["span"], e["version"]) != (entry["span"], entry["version"])]
    history = sorted([*history, entry], key=lambda e: (e["span"], e["version"]))
    write_atomic(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in history))
    return history


def chart(history: list[dict]) -> str:
    """AUC and accuracy per span, the threshold dashed, each point labelled with its version (inline SVG)."""
    from reports.charts import figure, to_svg

    fig = figure(7.0, 3.2)
    ax = fig.add_subplot()
    spans = [e["span"] for e in history]
    ax.plot(spans, [e["auc"] for e in history], marker="o", label="AUC")
    ax.plot(spans, [e["binary_accuracy"] for e in history], marker="s", label="binary accuracy")
    ax.axhline(history[-1]["threshold"], color="#b00", linestyle="--", label="evaluator.auc_lower_bound")
    for e in history:
        ax.annotate(str(e["version"]), (e["span"], e["auc"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)
    ax.set_xlabel("span (each AUC point labelled with the version evaluated)")
    ax.set_xticks(sorted(set(spans)))
    ax.set_ylim(0, 1.12)
    ax.legend(loc="lower left", fontsize=8)
    return to_svg(fig)


def write_page(path: str, model: str, history: list[dict]) -> str:
    alert = ' class="alert"'
    rows = "".join(
        f"<tr{alert if e['alert'] else ''}><td>{e['span']}</td><td>{e['version']}</td>"
        f"<td>{e['auc']:.4f}</td><td>{e['binary_accuracy']:.4f}</td><td>{e['example_count']}</td>"
        f"<td>{e['threshold']:g}</td><td>{'ALERT' if e['alert'] else 'OK'}</td><td>{html.escape(e['time'])}</td>"
        f"<td>{html.escape(e['version_source'])}</td></tr>" for e in history)
    from monitoring.report import STYLE

    page = f"""<!doctype html><meta charset="utf-8"><title>Model decay {html.escape(model)}</title>{STYLE}
<h1>{html.escape(model)}: the served versions on labelled spans</h1>
<p>TFMA's metrics of the version that served each span's period, on that span's labelled rows; under the
Evaluator's value threshold is an alert.</p>{chart(history)}
<table><tr><th>span</th><th>version</th><th>AUC</th><th>binary accuracy</th><th>examples</th><th>threshold</th>
<th>status</th><th>evaluated</th><th>version from</th></tr>{rows}</table>"""
    return write_atomic(path, page)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--span", type=int, required=True, help="the labelled span of the served period")
    parser.add_argument("--version", type=int, help="the version to evaluate (default: the one that served it)")
    parser.add_argument("--data-root", help="where the span is (default: data_root)")
    args = parser.parse_args(argv)
    config = load_config_or_exit(check_data=False)
    from monitoring.monitor import ALERT_EXIT, report_directory, retrain

    started = time.monotonic()
    try:
        span = find_span(args.data_root or config.data_root, args.span)
        version, source = served_version(config, span, args.version)
        model_dir = os.path.join(config.serving_model_dir, str(version))
        if not os.path.isdir(model_dir):
            raise DecayError(f"version {version} ({source}): no pushed model at {model_dir}")
        from pipeline.spans import data_files

        files = data_files(span.path)
        if not files:
            raise DecayError(f"span {args.span}: no data files in {span.path}")
    except (DecayError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    directory = report_directory(config)
    output = os.path.join(directory, "decay", f"span-{args.span}-version-{version}")
    print(f"span {args.span} ({span.path}): version {version} ({source})", flush=True)
    metrics, ok = evaluate(config, model_dir, files, output)
    if "auc" not in metrics:
        print(f"error: TFMA computed no AUC on span {args.span} (its output: {output})", file=sys.stderr)
        return 1
    threshold = config.evaluator.auc_lower_bound
    entry = {"span": args.span, "version": version, "version_source": source, "auc": metrics["auc"],
             "binary_accuracy": metrics.get("binary_accuracy", float("nan")),
             "example_count": int(metrics.get("example_count", 0)), "threshold": threshold, "alert": not ok,
             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "evaluation": output}
    history = record(os.path.join(directory, HISTORY), entry)
    page = write_page(os.path.join(directory, PAGE), config.model_name, history)
    print(f"  auc {entry['auc']:.4f}  binary_accuracy {entry['binary_accuracy']:.4f}  examples "
          f"{entry['example_count']}  ({time.monotonic() - started:.1f} s)")
    print(f"history: {os.path.join(directory, HISTORY)} ({len(history)} evaluation(s)); report: {page}")
    if ok:
        print(f"Result: OK (AUC {entry['auc']:.4f} >= {threshold:g})")
        return 0
    print(f"Result: ALERT: version {version}'s AUC {entry['auc']:.4f} on span {args.span} is below "
          f"evaluator.auc_lower_bound {threshold:g}")
    if config.monitoring.on_alert == "retrain":
        print(f"retraining run exited {retrain()}")
    return ALERT_EXIT


if __name__ == "__main__":
    sys.exit(main())

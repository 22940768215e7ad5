"""TFMA's output (the Evaluator's `evaluation` folder) read for reports and model cards: metrics per slice in
natural order, the overall slice's plots, the decision threshold's confusion matrix and the EvalConfig's thresholds."""
import json
import re
from typing import NamedTuple

from pipeline.evaluation import CONFUSION_MATRIX_METRIC, DECISION_THRESHOLD, slice_name


class SliceResult(NamedTuple):
    name: str                 # 'trip_start_hour = 2', 'all examples'
    column: str               # the slicing column ('' for all examples)
    metrics: dict             # candidate model: metric name -> value (double values only)
    baseline_metrics: dict    # the baseline model's, when the Evaluator had one
    confusion: object         # TFMA's confusion matrix at DECISION_THRESHOLD (ConfusionMatrixAtThresholds), or None


class MetricBound(NamedTuple):
    """A threshold of the EvalConfig: metric `metric` (>= lower, <= upper) on the overall slice or all slices;
    `change` True for a change threshold (against the baseline)."""
    metric: str
    lower: float | None
    upper: float | None
    change: bool


class EvaluationResult(NamedTuple):
    uri: str
    slices: list[SliceResult]  # the overall slice first, then by column, values in natural order (hour 2 before 10)
    plots: object              # the overall slice's PlotData: .confusion_matrix_at_thresholds, .calibration_histogram_buckets
    bounds: list[MetricBound]
    decision_threshold: float

    @property
    def overall(self) -> SliceResult:
        return self.slices[0]


def natural_key(text: str) -> tuple:
    """Sort key putting numbers in text in numeric order ('hour 2' before 'hour 10', '-3' before '1.5')."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", text)
    return tuple((1, float(p), p) if i % 2 else (0, 0.0, p) for i, p in enumerate(parts))


def slice_sort_key(slice_key) -> tuple:
    """The overall slice first, then by column names, each value numerically when numeric, else as text."""
    key = []
    for single in slice_key.single_slice_keys:
        value = getattr(single, single.WhichOneof("kind"))
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        key.append((single.column, (0, value, "") if isinstance(value, (int, float)) else (1, 0, value)))
    return (len(key), tuple(key))


def _metric_name(metric_config) -> str:
    """The metric's output name: its config's `name`, else TFMA's default (the class name in snake case)."""
    configured = json.loads(metric_config.config or "{}").get("name")
    return configured or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", metric_config.class_name).lower()


def bounds_of(eval_config) -> list[MetricBound]:
    """Every metric threshold in `eval_config` (a tfma.EvalConfig), value and change thresholds, global or per slice."""
    found = []
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            thresholds = ([metric.threshold] if metric.HasField("threshold") else []) + [
                t.threshold for t in metric.per_slice_thresholds]
            for threshold in thresholds:
                for kind in ("value_threshold", "change_threshold"):
                    if not threshold.HasField(kind):
                        continue
                    bound = getattr(threshold, kind)
                    if kind == "value_threshold":
                        lower = bound.lower_bound.value if bound.HasField("lower_bound") else None
                        upper = bound.upper_bound.value if bound.HasField("upper_bound") else None
                    else:
                        lower = bound.absolute.value if bound.HasField("absolute") else None
                        upper = None
                    found.append(MetricBound(_metric_name(metric), lower, upper, kind == "change_threshold"))
    return found


def _read_slice(per_slice) -> SliceResult:
    metrics, baseline, confusion = {}, {}, None
    for entry in per_slice.metric_keys_and_values:
        key, value = entry.key, entry.value
        if key.is_diff:
            continue
        if key.name == CONFUSION_MATRIX_METRIC and value.HasField("confusion_matrix_at_thresholds") \
                and key.model_name != "baseline":
            confusion = next((m for m in value.confusion_matrix_at_thresholds.matrices
                              if abs(m.threshold - DECISION_THRESHOLD) < 1e-9), None)
        elif value.HasField("double_value"):
            (baseline if key.model_name == "baseline" else metrics)[key.name] = value.double_value.value
    columns = [k.column for k in per_slice.slice_key.single_slice_keys]
    return SliceResult(slice_name(per_slice.slice_key), ", ".join(columns), metrics, baseline, confusion)


def evaluation_from(uri: str, metrics: list, plots: list, eval_config) -> EvaluationResult:
    """An EvaluationResult from TFMA's MetricsForSlice and PlotsForSlice protos and its EvalConfig."""
    slices = [_read_slice(m) for m in sorted(metrics, key=lambda m: slice_sort_key(m.slice_key))]
    if not slices or slices[0].column:
        raise ValueError(f"{uri}: TFMA's metrics have no overall slice (the EvalConfig needs a SlicingSpec())")
    overall_plots = None
    for per_slice in plots:
        if not per_slice.slice_key.single_slice_keys:
            for entry in per_slice.plot_keys_and_values:
                if entry.key.model_name != "baseline":
                    overall_plots = entry.value
    return EvaluationResult(uri, slices, overall_plots, bounds_of(eval_config), DECISION_THRESHOLD)


def load_evaluation(uri: str) -> EvaluationResult:
    """Reads the Evaluator's output folder `uri` (tfma.load_metrics, tfma.load_plots and the EvalConfig it ran with)."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.writers import eval_config_writer

    return evaluation_from(uri, list(tfma.load_metrics(uri)), list(tfma.load_plots(uri)),
                           eval_config_writer.load_eval_run(uri)[0])

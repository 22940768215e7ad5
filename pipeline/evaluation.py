"""The TFMA EvalConfig (metrics, slices, thresholds) and a readable reason for each blessing decision."""
import json
from typing import NamedTuple

import tensorflow_model_analysis as tfma

from modules import contract
from pipeline.config import EvaluatorConfig

THRESHOLD_METRIC = "auc"
# The score above which a trip is predicted a big tip: TFMA's default for BinaryAccuracy, Precision and Recall; the
# reports show the confusion matrix at it (ConfusionMatrixAtThresholds, named CONFUSION_MATRIX_METRIC in the output).
DECISION_THRESHOLD = 0.5
CONFUSION_MATRIX_METRIC = "confusion_matrix_at_thresholds"


def eval_config(config: EvaluatorConfig) -> tfma.EvalConfig:
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.auc_lower_bound}),
        # Ignored on the first run, when no baseline has been blessed yet.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.auc_max_drop}),
    )
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=contract.SERVING_SIGNATURE,
            label_key=contract.LABEL_KEY,
            preprocessing_function_names=[contract.TRANSFORM_SIGNATURE],
        )],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[key]) for key in config.slices],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # Gate on the overall slice: single-class slices (e.g. cash payments, which are
            # never big tips) have no meaningful AUC and would veto every model.
            tfma.MetricConfig(class_name="AUC", config=json.dumps({"name": THRESHOLD_METRIC}),
                              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                  slicing_specs=[tfma.SlicingSpec()], threshold=auc_threshold)]),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
            tfma.MetricConfig(class_name="Precision"),
            tfma.MetricConfig(class_name="Recall"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="CalibrationPlot"),
            tfma.MetricConfig(class_name="ConfusionMatrixPlot"),  # the ROC and precision-recall curves
            tfma.MetricConfig(class_name="ConfusionMatrixAtThresholds",
                              config=json.dumps({"name": CONFUSION_MATRIX_METRIC, "thresholds": [DECISION_THRESHOLD]})),
        ])],
    )


class Check(NamedTuple):
    """One threshold test on the overall slice, stated with its numbers."""
    description: str
    passed: bool


class BlessingReport(NamedTuple):
    metrics: dict           # candidate, overall slice: metric name -> value
    baseline_metrics: dict  # the baseline model's, when there was one
    checks: list[Check]
    failures: list[str]     # TFMA's failed thresholds, any slice


def slice_name(slice_key) -> str:
    """'payment_type = Cash', or 'all examples' for the overall slice."""
    parts = []
    for key in slice_key.single_slice_keys:
        value = getattr(key, key.WhichOneof("kind"))
        parts.append(f"{key.column} = {value.decode() if isinstance(value, bytes) else value}")
    return ", ".join(parts) or "all examples"


def _describe_failure(slice_key, failure) -> str:
    threshold = failure.metric_threshold
    kind = "change vs baseline" if threshold.HasField("change_threshold") else "value"
    bound = str(threshold.change_threshold if threshold.HasField("change_threshold") else threshold.value_threshold)
    name = failure.metric_key.name + (" (diff vs baseline)" if failure.metric_key.is_diff else "")
    return (f"{name} = {failure.metric_value.double_value.value:.4f} on {slice_name(slice_key)}: "
            f"{kind} threshold {' '.join(bound.split())}" + (f" ({failure.message})" if failure.message else ""))


def explain_blessing(evaluation_uri: str, config: EvaluatorConfig) -> BlessingReport:
    """Reads the Evaluator's output and states each threshold next to its value."""
    metrics, baseline_metrics, diffs = {}, {}, {}
    for per_slice in tfma.load_metrics(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if not entry.value.HasField("double_value"):
                continue
            key, value = entry.key, entry.value.double_value.value
            target = diffs if key.is_diff else baseline_metrics if key.model_name == "baseline" else metrics
            target[key.name] = value
    validation = tfma.load_validation_result(evaluation_uri)
    failures = [_describe_failure(per_slice.slice_key, f)
                for per_slice in validation.metric_validations_per_slice for f in per_slice.failures]

    checks = []
    auc = metrics.get(THRESHOLD_METRIC)
    if auc is not None:
        checks.append(Check(f"AUC {auc:.4f} >= {config.auc_lower_bound} (value threshold)",
                            auc >= config.auc_lower_bound))
    if THRESHOLD_METRIC in diffs:
        diff, base = diffs[THRESHOLD_METRIC], baseline_metrics.get(THRESHOLD_METRIC, float("nan"))
        checks.append(Check(f"AUC change {diff:+.4f} vs baseline {base:.4f} >= {-config.auc_max_drop:+.4f} "
                            "(change threshold)", diff >= -config.auc_max_drop))
    else:
        checks.append(Check("no blessed baseline yet, so the change threshold does not apply", True))
    return BlessingReport(metrics, baseline_metrics, checks, failures)

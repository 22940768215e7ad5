"""The TFMA EvalConfig (metrics, slices, thresholds) and a readable reason for each blessing decision."""
import os
from typing import List, NamedTuple, Optional

import tensorflow_model_analysis as tfma

from modules import features as F
from modules import model as M
from pipeline.config import EvaluatorConfig

THRESHOLD_METRIC = "auc"


def eval_config(config: EvaluatorConfig) -> tfma.EvalConfig:
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.auc_lower_bound}),
        # Ignored on the first run, when no baseline has been blessed yet.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.auc_max_drop}),
    )
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=M.SERVING_SIGNATURE,
            label_key=F.LABEL_KEY,
            preprocessing_function_names=[M.TRANSFORM_SIGNATURE],
        )],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[key]) for key in config.slices],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # Gate on the overall slice: single-class slices (e.g. cash payments, which are
            # never big tips) have no meaningful AUC and would veto every model.
            tfma.MetricConfig(class_name="AUC", config='{"name": "%s"}' % THRESHOLD_METRIC,
                              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                  slicing_specs=[tfma.SlicingSpec()], threshold=auc_threshold)]),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
            tfma.MetricConfig(class_name="Precision"),
            tfma.MetricConfig(class_name="Recall"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="CalibrationPlot"),
            tfma.MetricConfig(class_name="ConfusionMatrixPlot"),
        ])],
    )


class Check(NamedTuple):
    """One threshold test on the overall slice: what was compared and whether it passed."""
    description: str
    passed: bool


class BlessingReport(NamedTuple):
    blessed: bool
    metrics: dict            # overall slice: metric name -> value
    baseline_metrics: dict   # overall slice of the baseline model, if there was one
    checks: List[Check]
    failures: List[str]      # TFMA's own messages for failed thresholds, any slice


def _describe_failure(slice_key, failure) -> str:
    where = ", ".join(f"{k.column}={getattr(k, k.WhichOneof('kind'))!r}" for k in slice_key.single_slice_keys) or "overall"
    threshold = failure.metric_threshold
    bound = (f"change vs baseline {threshold.change_threshold}" if threshold.HasField("change_threshold")
             else f"value {threshold.value_threshold}").replace("\n", " ").strip()
    value = failure.metric_value.double_value.value
    name = failure.metric_key.name + (" (diff vs baseline)" if failure.metric_key.is_diff else "")
    return f"{name} = {value:.4f} on {where}: threshold {bound}" + (f" ({failure.message})" if failure.message else "")


def explain_blessing(evaluation_uri: str, blessed: bool, config: EvaluatorConfig) -> BlessingReport:
    """Reads the Evaluator's output and states each threshold with its value."""
    validation = tfma.load_validation_result(evaluation_uri)
    failures = [_describe_failure(per_slice.slice_key, f)
                for per_slice in validation.metric_validations_per_slice for f in per_slice.failures]
    results = tfma.load_eval_result(evaluation_uri)
    metrics = {}
    for slice_key, by_output in results.slicing_metrics:
        if slice_key == ():
            for name, value in by_output.get("", {}).get("", {}).items():
                metrics[name] = value.get("doubleValue") if isinstance(value, dict) else value
    baseline_metrics = {}
    auc = metrics.get(THRESHOLD_METRIC)
    checks = []
    if auc is not None:
        checks.append(Check(f"AUC {auc:.4f} >= lower bound {config.auc_lower_bound}", auc >= config.auc_lower_bound))
    diff = metrics.get(f"{THRESHOLD_METRIC}_diff")
    if diff is not None:
        checks.append(Check(f"AUC change vs baseline {diff:+.4f} >= {-config.auc_max_drop:+.4f}",
                            diff >= -config.auc_max_drop))
    else:
        checks.append(Check("no blessed baseline yet: change threshold not applied", True))
    return BlessingReport(blessed, metrics, baseline_metrics, checks, failures)

"""The Evaluator's cost: which TFMA combiners the EvalConfig makes, and the Beam arguments the Evaluator runs with."""
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_plots_and_validations_evaluator as mpv
from tensorflow_model_analysis.metrics import metric_specs

from pipeline import evaluation
from pipeline.config import load_config


def _combiners(has_baseline: bool) -> list[tuple[str, str]]:
    config = tfma.utils.update_eval_config_with_defaults(
        evaluation.eval_config(load_config("local").evaluator), has_baseline=has_baseline, rubber_stamp=True)
    computations = mpv._filter_and_separate_computations(
        metric_specs.to_computations(config.metrics_specs, eval_config=config)).non_derived_computations
    return sorted((c.keys[0].model_name, c.keys[0].name.split(":")[0]) for c in computations)


def test_every_metric_and_plot_shares_four_combiners_per_model():
    """TFMA runs each combiner once per example per slice, in Python: AUC and both plots read one calibration
    histogram, and BinaryAccuracy, Precision, Recall and the confusion matrix at 0.5 one confusion matrix. A metric
    at another threshold or bucket count would add a combiner, and about a fifth of the Evaluator's time with it."""
    per_model = ["_binary_confusion_matrices", "_calibration_histogram", "_weighted_labels_predictions_examples",
                 "example_count"]
    assert _combiners(has_baseline=False) == [("", name) for name in per_model]
    assert _combiners(has_baseline=True) == sorted((model, name) for model in ("baseline", "candidate")
                                                   for name in per_model)


def test_the_evaluators_own_beam_arguments_come_after_the_pipelines(tmp_path):
    from pipeline.pipeline import create_pipeline

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("evaluator: {beam_pipeline_args: [--direct_running_mode=multi_processing, "
                       "--direct_num_workers=0]}\n")
    config = load_config("beam", env={"TFX_E2E_CONFIG": str(overlay), "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")})
    components = {c.id: c for c in create_pipeline(config).components}
    assert components["Evaluator"].executor_spec.beam_pipeline_args == [
        "--direct_running_mode=multi_processing", "--direct_num_workers=2",  # the beam profile's, for every component
        "--direct_running_mode=multi_processing", "--direct_num_workers=0"]  # the Evaluator's: Beam takes the last
    assert components["Transform"].executor_spec.beam_pipeline_args == config.beam_args
    assert load_config("local").evaluator.beam_pipeline_args == []

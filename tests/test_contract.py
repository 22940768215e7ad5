"""modules/contract.py: what modules/, pipeline/ and serving/ agree on, importable without TensorFlow."""
import subprocess
import sys

from modules import contract


def test_contract_imports_nothing_heavy():
    code = ("import sys, modules.contract; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tfx', 'keras', 'pipeline'}); "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_model_and_evaluation_use_the_contract():
    from modules import features as F
    from modules import model as M
    from pipeline import evaluation
    from pipeline.config import EvaluatorConfig

    assert (M.SERVING_SIGNATURE, M.RAW_SIGNATURE, M.TRANSFORM_SIGNATURE, M.OUTPUT_KEY, M.WARMUP_FILE) == (
        "serving_default", "serving_raw", "transform_features", "probabilities",
        "assets.extra/tf_serving_warmup_requests")
    assert (F.LABEL_KEY, F.TIPS_KEY) == (contract.LABEL_KEY, contract.TIPS_KEY)
    assert contract.SERVING_DROPPED_KEYS == ("tips",)
    (spec,) = evaluation.eval_config(EvaluatorConfig(0.5, 0.1, [])).model_specs
    assert (spec.signature_name, spec.label_key, list(spec.preprocessing_function_names)) == (
        contract.SERVING_SIGNATURE, contract.LABEL_KEY, [contract.TRANSFORM_SIGNATURE])

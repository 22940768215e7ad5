"""The Airflow DAG file (runners/airflow_runner.py) with a bad configuration: importing it raises the configuration's
error, so that Airflow's DagBag lists it among the import errors with the message. A SystemExit would escape the
DagBag's `except Exception` and end the parse with no import error recorded."""
import importlib.util
import shutil

import pytest

from pipeline.config import REPO_ROOT, ConfigError

DAG_FILE = REPO_ROOT / "runners" / "airflow_runner.py"
MESSAGE = "unknown key 'serving.batchingg'"


@pytest.fixture
def bad_config(tmp_path, monkeypatch):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("serving: {batchingg: {enabled: false}}\n")
    for name in ("TFX_E2E_PROFILE", "TFX_E2E_DATA_ROOT", "TFX_E2E_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TFX_E2E_CONFIG", str(overlay))


def test_importing_the_dag_file_raises_the_configuration_error(bad_config):
    spec = importlib.util.spec_from_file_location("tfx_e2e_dag_bad_config", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ConfigError, match=MESSAGE) as raised:
        spec.loader.exec_module(module)
    assert "did you mean 'serving.batching'" in str(raised.value)


def test_dagbag_records_the_configuration_error(bad_config, tmp_path, monkeypatch):
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / "tfx_e2e_dag.py")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.models import DagBag

    bag = DagBag(str(dags), include_examples=False)
    assert bag.dags == {}
    assert list(bag.import_errors) == [str(dags / "tfx_e2e_dag.py")]
    assert MESSAGE in bag.import_errors[str(dags / "tfx_e2e_dag.py")]

"""Airflow 2 (from the lock) runs the DAG file runners/airflow_runner.py: DagBag imports it with no
errors, and `airflow dags test` runs the whole pipeline on the slice to a pushed model; the scheduler runs it
with its metadata database on PostgreSQL."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_DATA

from pipeline import pusher
from pipeline.config import REPO_ROOT

# One tier per test (pytest.ini): these also run the pipeline, but what they need beyond Python is the point:
# Airflow's metadata database (SQLite, and PostgreSQL for the scheduler) and Airflow's CLI.
pytestmark = pytest.mark.services

COMPONENTS = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "DataGate", "Transform",
              "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher"]
OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 100, eval_steps: 10, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
airflow: {schedule: "@daily", start_date: "2026-11-01", catchup: false, retries: 2}
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    shutil.copy(REPO_ROOT / "runners" / "airflow_runner.py", home / "dags" / "tfx_e2e_dag.py")
    (home / "overlay.yaml").write_text(OVERLAY)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", TFX_E2E_CONFIG=str(home / "overlay.yaml"),
               TFX_E2E_DATA_ROOT=str(SMALL_DATA), TFX_E2E_OUTPUT_ROOT=str(home / "out"), TF_CPP_MIN_LOG_LEVEL="2")
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    env["AIRFLOW_BIN"] = airflow
    return env


def test_dagbag_imports_the_dag(airflow_env, monkeypatch):
    for key, value in airflow_env.items():
        monkeypatch.setenv(key, value)
    from airflow.models import DagBag

    bag = DagBag(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"], include_examples=False)
    assert bag.import_errors == {}
    dag = bag.dags["chicago-taxi"]
    assert [t.task_id for t in dag.topological_sort()] == COMPONENTS
    assert dag.catchup is False
    assert str(dag.start_date.date()) == "2026-11-01"
    assert dag.timetable.summary in ("@daily", "0 0 * * *")  # Airflow shows the cron form
    assert {t.retries for t in dag.tasks} == {2}
    # Nothing after the gate runs unless the gate succeeded.
    assert dag.get_task("Transform").upstream_task_ids >= {"DataGate"}


def test_airflow_dags_test_runs_the_pipeline(airflow_env):
    result = subprocess.run([airflow_env["AIRFLOW_BIN"], "dags", "test", "chicago-taxi", "2026-11-20"],
                            env=airflow_env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "state=success" in log
    for task in COMPONENTS:
        assert f"Marking task as SUCCESS. dag_id=chicago-taxi, task_id={task}," in log, task
    serving = Path(airflow_env["TFX_E2E_OUTPUT_ROOT"]) / "serving" / "chicago_taxi"
    versions = pusher.served_versions(str(serving))
    assert len(versions) == 1
    assert (serving / str(versions[0]) / "saved_model.pb").exists()


PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"


def _postgres(sql: str, db: str = "postgres"):
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def test_scheduler_on_postgresql_runs_the_dag_by_itself(tmp_path):
    """As Composer runs it: metadata database on PostgreSQL, LocalExecutor, a real `airflow scheduler`
    that starts the scheduled run on its own; every task succeeds and a model is pushed."""
    import signal
    import time

    db = f"tfx_e2e_airflow_{os.getpid()}_{int(time.time())}"
    _postgres(f"CREATE DATABASE {db}")
    home = tmp_path
    (home / "dags").mkdir()
    shutil.copy(REPO_ROOT / "runners" / "airflow_runner.py", home / "dags" / "tfx_e2e_dag.py")
    (home / "overlay.yaml").write_text(OVERLAY.replace('schedule: "@daily"', 'schedule: "@once"'))
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__EXECUTOR="LocalExecutor",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=PG_URL.format(db=db),
               AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False", AIRFLOW__CORE__PARALLELISM="2",
               AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
               TFX_E2E_CONFIG=str(home / "overlay.yaml"), TFX_E2E_DATA_ROOT=str(SMALL_DATA),
               TFX_E2E_OUTPUT_ROOT=str(home / "out"), TF_CPP_MIN_LOG_LEVEL="2")
    airflow = str(Path(sys.executable).parent / "airflow")
    scheduler = None
    try:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        with open(home / "scheduler.log", "w") as log:
            scheduler = subprocess.Popen([airflow, "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            deadline, state = time.monotonic() + 900, None
            while time.monotonic() < deadline and state not in ("success", "failed"):
                time.sleep(5)
                rows = _postgres("SELECT state FROM dag_run WHERE dag_id = 'chicago-taxi'", db)
                state = rows[0][0] if rows else None
        tasks = dict(_postgres("SELECT task_id, state FROM task_instance WHERE dag_id = 'chicago-taxi'", db))
        assert state == "success", (tasks, (home / "scheduler.log").read_text()[-3000:])
        assert tasks == {task: "success" for task in COMPONENTS}
        run_type = _postgres("SELECT run_type FROM dag_run WHERE dag_id = 'chicago-taxi'", db)[0][0]
        assert run_type == "scheduled"  # started by the scheduler, not by us
        assert len(pusher.served_versions(str(home / "out" / "serving" / "chicago_taxi"))) == 1
    finally:
        if scheduler is not None:
            os.killpg(scheduler.pid, signal.SIGTERM)
            try:
                scheduler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(scheduler.pid, signal.SIGKILL)
        _postgres(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        _postgres(f"DROP DATABASE IF EXISTS {db}")
    assert not _postgres(f"SELECT 1 FROM pg_database WHERE datname = '{db}'")

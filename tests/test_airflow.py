"""Airflow 2 (from the lock) runs the DAG file runners/airflow_runner.py: DagBag imports both DAGs (scheduled and
new-span) with no errors, `airflow dags test` runs the whole pipeline on the slice to a pushed model, the new-span
DAG runs it on the span that landed with a rolling window of 2 decided when it runs; the scheduler runs it with its
metadata database on PostgreSQL. Every run records why it ran and its spans in ML Metadata (runners/why.py)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_DATA, write_span_root

from pipeline.config import REPO_ROOT
from pipeline.versions import served_versions

# One tier per test (pytest.ini): these also run the pipeline, but what they need beyond Python is the point:
# Airflow's metadata database (SQLite, and PostgreSQL for the scheduler) and Airflow's CLI.
pytestmark = pytest.mark.services

COMPONENTS = ["resolve_span", "ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator",
              "previous_statistics_resolver", "DataGate", "Transform",
              "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher"]
# The DAG's tasks: the components, then the run's reports whatever their outcome (runners/airflow_runner.py).
TASKS = [*COMPONENTS, "Reports"]
BACKFILL_NODES = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "previous_statistics_resolver",
                  "DataGate"]
OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 100, eval_steps: 10, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
airflow: {schedule: "@daily", start_date: "2026-11-01", catchup: false}
continuous: {retries: {attempts: 3, initial_delay_seconds: 1, max_delay_seconds: 4, task_timeout_seconds: 1800}}
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


def _dagbag(env, monkeypatch, **overrides):
    for key, value in {**env, **overrides}.items():
        monkeypatch.setenv(key, value)
    from airflow.models import DagBag

    bag = DagBag(env["AIRFLOW__CORE__DAGS_FOLDER"], include_examples=False)
    assert bag.import_errors == {}
    return bag


def test_dagbag_imports_both_dags(airflow_env, monkeypatch):
    import datetime

    bag = _dagbag(airflow_env, monkeypatch)
    assert set(bag.dags) == {"chicago-taxi", "chicago-taxi-new-span"}
    dag = bag.dags["chicago-taxi"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "resolve_span" and order[-1] == "Reports" and set(order) == set(TASKS)
    assert order.index("ExampleGen") < order.index("Transform") < order.index("Trainer") < order.index("Pusher")
    assert dag.catchup is False
    assert str(dag.start_date.date()) == "2026-11-01"
    assert dag.timetable.summary in ("@daily", "0 0 * * *")  # Airflow shows the cron form
    # Retries, backoff and the timeout per task from continuous.retries (3 attempts = 2 retries).
    reports = dag.get_task("Reports")  # after every other task, whatever their outcome; no retry
    assert (reports.upstream_task_ids, reports.trigger_rule, reports.retries) == ({"Pusher"}, "all_done", 0)
    for task in dag.tasks:
        if task is reports:
            continue
        assert (task.retries, task.retry_delay, task.retry_exponential_backoff, task.max_retry_delay,
                task.execution_timeout) == (2, datetime.timedelta(seconds=1), True, datetime.timedelta(seconds=4),
                                            datetime.timedelta(seconds=1800)), task.task_id
    # Nothing after the gate runs unless the gate succeeded; nothing runs before the span is resolved.
    assert dag.get_task("Transform").upstream_task_ids >= {"DataGate"}
    assert dag.get_task("ImportSchemaGen").upstream_task_ids == {"resolve_span"}

    new_span = bag.dags["chicago-taxi-new-span"]
    assert new_span.timetable.summary == "@continuous" and new_span.max_active_runs == 1
    sensor = new_span.get_task("wait_for_span")
    assert sensor.mode == "reschedule" and sensor.retries == 0
    assert {t.task_id for t in new_span.tasks} == {"wait_for_span", *TASKS[1:]}
    assert all(t.retries == 2 for t in new_span.tasks if t.task_id not in ("wait_for_span", "Reports"))


def test_the_span_is_not_fixed_when_airflow_parses_the_dag(airflow_env, monkeypatch, tmp_path):
    """On span folders, ExampleGen's range is rendered from the first task when it runs; parsing needs no complete
    span and a TFX_E2E_SPAN for a span that has not landed yet is no import error."""
    root = tmp_path / "data"
    (root / "span-1").mkdir(parents=True)
    (root / "span-1" / "data.csv").write_text((SMALL_DATA / "data.csv").read_text())  # no _SUCCESS yet
    bag = _dagbag(airflow_env, monkeypatch, TFX_E2E_DATA_ROOT=str(root), TFX_E2E_SPAN="7")
    for dag_id, first in (("chicago-taxi", "resolve_span"), ("chicago-taxi-new-span", "wait_for_span")):
        range_config = bag.dags[dag_id].get_task("ExampleGen").op_kwargs["exec_properties"]["range_config"]
        assert f'ti.xcom_pull(task_ids="{first}")' in range_config
        assert "7" not in range_config and "1" not in range_config


def test_run_reason_from_the_dag_run():
    """conf's reason wins; a DAG run triggered by hand is manual on the scheduled DAG; the new-span DAG's is new_span."""
    from types import SimpleNamespace

    from airflow.utils.types import DagRunType

    from runners.airflow_runner import run_reason

    scheduled = SimpleNamespace(conf={}, run_type=DagRunType.SCHEDULED)
    manual = SimpleNamespace(conf=None, run_type=DagRunType.MANUAL)
    assert run_reason(scheduled, "schedule") == "schedule"
    assert run_reason(manual, "schedule") == "manual"
    assert run_reason(SimpleNamespace(conf={"reason": "monitoring_alert"}, run_type=DagRunType.MANUAL),
                      "schedule") == "monitoring_alert"
    assert run_reason(manual, "new_span", manual=False) == "new_span"
    assert run_reason(SimpleNamespace(conf={"reason": "event"}, run_type=DagRunType.SCHEDULED), "new_span",
                      manual=False) == "event"
    with pytest.raises(ValueError, match="conf reason: expected one of manual, schedule, new_span"):
        run_reason(SimpleNamespace(conf={"reason": "because"}, run_type=DagRunType.MANUAL), "schedule")


def _run_context(env, run_id: str):
    """The `run` context TFX's Airflow launcher files the DAG run's executions under: its custom properties and the
    component ids of the executions in it."""
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(_metadata_connection(env))
    context = store.get_context_by_type_and_name("run", f"chicago-taxi.{run_id}")
    assert context is not None, [c.name for c in store.get_contexts_by_type("run")]
    properties = {k: v.string_value for k, v in context.custom_properties.items() if k.startswith("tfx_e2e_")}
    components = {e.properties["component_id"].string_value for e in store.get_executions_by_context(context.id)}
    return properties, components


def test_airflow_dags_test_runs_the_pipeline(airflow_env):
    result = subprocess.run([airflow_env["AIRFLOW_BIN"], "dags", "test", "chicago-taxi", "2026-11-20"],
                            env=airflow_env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "state=success" in log
    for task in COMPONENTS:
        assert f"Marking task as SUCCESS. dag_id=chicago-taxi, task_id={task}," in log, task
    assert "span 0: the run reads it" in log  # a flat data root is span 0
    serving = Path(airflow_env["TFX_E2E_OUTPUT_ROOT"]) / "serving" / "chicago_taxi"
    versions = served_versions(str(serving))
    assert len(versions) == 1
    assert (serving / str(versions[0]) / "saved_model.pb").exists()
    # Why it ran, in ML Metadata: `dags test` makes a manual DAG run, on the context every task's execution is in.
    assert "Why: manual (the flat data root, one span)" in log
    properties, components = _run_context(airflow_env, "manual__2026-11-20T00:00:00+00:00")
    assert {k: properties[k] for k in ("tfx_e2e_reason", "tfx_e2e_spans")} == {"tfx_e2e_reason": "manual",
                                                                              "tfx_e2e_spans": "0"}
    assert components >= set(COMPONENTS[1:])  # every component ran under it
    # The registry reads the Airflow launcher's store as it reads the local runner's (its executions carry their
    # component as a property, under `component_run` contexts): the model card has the data the model saw.
    from pipeline.config import load_config
    from registry import graph as g
    from registry import models
    from registry.model_card import collect

    config = load_config(env=dict(airflow_env, TFX_E2E_PROFILE="airflow"))
    graph = models.open_graph(config)
    (push,) = g.pushes(graph).values()
    facts = collect(config, graph, push)
    trained, evaluated = facts["record"]["data"]["trained_on"], facts["record"]["data"]["evaluated_on"]
    assert [(d["span"], d["csv_rows"], d["input_base"]) for d in trained] == [(0, 3001, str(SMALL_DATA))]
    assert evaluated["artifact_id"] == trained[0]["artifact_id"]
    assert (facts["training_data"]["split"], facts["evaluation_data"]["split"]) == ("train", "eval")
    assert facts["training_data"]["examples"] + facts["evaluation_data"]["examples"] == 3001  # every CSV row

    # The Reports task: the run's summary in its log, its reports where the console looks for the run's, its card.
    assert "Marking task as SUCCESS. dag_id=chicago-taxi, task_id=Reports," in log
    assert "Run summary: pipeline 'chicago-taxi', profile 'airflow', run chicago-taxi.manual__2026-11-20" in log
    assert f"Pushed version {versions[0]}: " in log and "Result: OK" in log
    from console import data as console_data
    from registry.model_card import card_path

    run_name = "chicago-taxi.manual__2026-11-20T00:00:00+00:00"
    assert [run.name for run in console_data.runs(graph)] == [run_name]
    folder = f"reports/chicago-taxi/runs/{run_name}"
    assert console_data.report_files(config, "chicago-taxi", run_name) == [f"{folder}/evaluation.html",
                                                                             f"{folder}/statistics.html"]
    out = Path(airflow_env["TFX_E2E_OUTPUT_ROOT"])
    assert 'id="decision">BLESSED<' in (out / folder / "evaluation.html").read_text()
    assert (out / "reports" / "chicago-taxi" / "statistics.html").samefile(out / folder / "statistics.html")
    assert f"Model card: {card_path(config, versions[0])}" in log and Path(card_path(config, versions[0])).is_file()


def test_the_reports_task_fails_the_dag_run_when_a_task_failed(airflow_env, tmp_path):
    """A data root of a header-only CSV: the data gate stops the run. Reports still runs (trigger rule all_done):
    the summary names the gate's failure, the statistics report is written, and the task fails, naming the failed
    tasks, so the DAG run fails (Airflow judges a DAG run by its last task)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_text((SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)[0])
    env = dict(airflow_env, TFX_E2E_DATA_ROOT=str(data), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"))
    result = subprocess.run([env["AIRFLOW_BIN"], "dags", "test", "chicago-taxi", "2026-11-22"],
                            env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert "state=failed" in log, log[-4000:]
    assert "Marking task as FAILED. dag_id=chicago-taxi, task_id=DataGate," in log
    assert "Marking task as FAILED. dag_id=chicago-taxi, task_id=Reports," in log
    assert "the DAG run failed (failed task(s): DataGate); the reports of what ran are written" in log
    assert "  DataGate                         FAILED" in log
    assert "  Transform                        not run" in log and "Result: FAILED in DataGate" in log
    assert "Data gate: span 0 has 0 examples" in log
    run = tmp_path / "out" / "reports" / "chicago-taxi" / "runs" / "chicago-taxi.manual__2026-11-22T00:00:00+00:00"
    assert sorted(p.name for p in run.iterdir()) == ["statistics.html"]  # no evaluation: nothing was trained
    assert not (tmp_path / "out" / "serving").exists()



def test_make_prune_removes_an_older_dag_runs_artifacts_and_reports(airflow_env, tmp_path):
    """Two DAG runs on different data into one output root, then `make prune` (python -m pipeline.retention) with
    retention.keep_runs 1: the first run's statistics and anomalies (no version's lineage, not the newest of their
    type, not the window's) are marked DELETED and their folders removed, and so is its report folder; the second
    run's stay. Retention reads the Airflow launcher's `run` contexts as it reads the local runner's."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    rows = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    second = tmp_path / "data-2"
    second.mkdir()
    (second / "data.csv").write_text("".join(rows[:-300]))  # other data: no cache hit, new statistics
    overlay = tmp_path / "keep1.yaml"
    overlay.write_text(OVERLAY + "retention: {keep_runs: 1}\n")
    env = dict(airflow_env, TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"), TFX_E2E_CONFIG=str(overlay))
    for day, data in (("2026-11-23", SMALL_DATA), ("2026-11-24", second)):
        result = subprocess.run([env["AIRFLOW_BIN"], "dags", "test", "chicago-taxi", day],
                                env=dict(env, TFX_E2E_DATA_ROOT=str(data)), capture_output=True, text=True,
                                timeout=900)
        assert "Marking task as SUCCESS. dag_id=chicago-taxi, task_id=Reports," in result.stdout + result.stderr, \
            (result.stdout + result.stderr)[-4000:]
    runs = tmp_path / "out" / "reports" / "chicago-taxi" / "runs"
    first, latest = (runs / f"chicago-taxi.manual__{day}T00:00:00+00:00" for day in ("2026-11-23", "2026-11-24"))
    assert first.is_dir() and latest.is_dir()

    store = metadata_store.MetadataStore(_metadata_connection(env))

    types = {t.id: t.name for t in store.get_artifact_types()}

    def outputs(run_name: str) -> dict[str, metadata_store_pb2.Artifact]:
        context = store.get_context_by_type_and_name("run", f"chicago-taxi.{run_name}")
        return {types[a.type_id]: a for a in store.get_artifacts_by_context(context.id)
                if types[a.type_id] in ("ExampleStatistics", "ExampleAnomalies")}

    older, newer = outputs("manual__2026-11-23T00:00:00+00:00"), outputs("manual__2026-11-24T00:00:00+00:00")
    assert set(older) == set(newer) == {"ExampleStatistics", "ExampleAnomalies"}
    assert all(Path(a.uri).is_dir() for a in (*older.values(), *newer.values()))

    result = subprocess.run([sys.executable, "-m", "pipeline.retention"], env=dict(env, TFX_E2E_PROFILE="airflow"),
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Retention: removed the report folders of 1 pipeline run(s) older than the newest 1 (of 2)" in result.stdout
    assert not first.exists() and (latest / "statistics.html").is_file()
    deleted = {a.id: a.state for a in store.get_artifacts_by_id([a.id for a in (*older.values(), *newer.values())])}
    assert [deleted[a.id] for a in older.values()] == [metadata_store_pb2.Artifact.DELETED] * 2
    assert [deleted[a.id] for a in newer.values()] == [metadata_store_pb2.Artifact.LIVE] * 2
    assert not any(Path(a.uri).exists() for a in older.values())
    assert all(Path(a.uri).is_dir() for a in newer.values())


def _metadata_connection(env):
    from tfx.orchestration import metadata

    from pipeline.config import load_config

    return metadata.sqlite_metadata_connection_config(load_config(env=dict(env, TFX_E2E_PROFILE="airflow")).metadata_path)


def _examples_spans(connection) -> list[int]:
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(connection)
    # ExampleGen's Examples carry the span (Transform's transformed_examples are Examples without one).
    return [a.custom_properties["span"].int_value for a in store.get_artifacts_by_type("Examples")
            if "span" in a.custom_properties]


def _transform_input_spans(connection) -> list[list[int]]:
    """For each Transform execution in ML Metadata, the spans of the Examples it consumed."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.MetadataStore(connection)
    consumed = []
    for execution in store.get_executions():
        if execution.properties["component_id"].string_value != "Transform":
            continue
        events = [e for e in store.get_events_by_execution_ids([execution.id])
                  if e.type == metadata_store_pb2.Event.INPUT and e.path.steps[0].key == "examples"]
        consumed.append(sorted(a.custom_properties["span"].int_value
                               for a in store.get_artifacts_by_id([e.artifact_id for e in events])))
    return consumed


def test_new_span_dag_trains_a_run_time_window_on_the_span_that_landed(airflow_env, monkeypatch, tmp_path):
    """span-1 and span-2 complete, span-3 without _SUCCESS, continuous.window_spans 2: the sensor hands span 2 (the
    newest complete, as nothing has run) to the run, which backfills span 1 (ExampleGen and the data gate, under its
    own run context) and trains on the window [1, 2] decided then (when Airflow parsed the file, span 3 stood in for
    the newest: window [2, 3]), records why it ran, and pushes; afterwards span 3 is next only once its marker lands."""
    from runners.airflow_runner import next_span, spans_in_metadata

    root = write_span_root(tmp_path / "data")
    overlay = tmp_path / "window.yaml"
    overlay.write_text(OVERLAY.replace("continuous: {", "continuous: {window_spans: 2, "))
    env = dict(airflow_env, TFX_E2E_DATA_ROOT=str(root), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"),
               TFX_E2E_CONFIG=str(overlay))
    # At parse time the resolver's static range is the parse-time window, which is not the run's.
    parsed = _dagbag(env, monkeypatch).dags["chicago-taxi-new-span"].get_task("span_window_resolver")
    static = parsed.op_kwargs["exec_properties"]["source_uri"]["range_config"].static_range
    assert (static.start_span_number, static.end_span_number) == (2, 3)
    warm = _dagbag(env, monkeypatch).dags["chicago-taxi-new-span"].get_task("warm_start_model_resolver")
    assert warm.op_kwargs["exec_properties"]["source_uri"] == {"span": 3}  # likewise rebuilt for the run's span

    result = subprocess.run([env["AIRFLOW_BIN"], "dags", "test", "chicago-taxi-new-span", "2026-11-21"],
                            env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "new span: 2 (data root" in log
    assert "backfill: ML Metadata has no span 1 of the window" in log
    assert "window: spans 1 to 2 (the run reads span 2)" in log
    assert "warm start: the newest model trained before span 2, if any" in log
    assert "Marking task as SUCCESS. dag_id=chicago-taxi-new-span, task_id=Pusher," in log
    connection = _metadata_connection(env)
    assert sorted(_examples_spans(connection)) == [1, 2]  # ML Metadata: ExampleGen read span 1 (backfill) and 2
    assert _transform_input_spans(connection) == [[1, 2]]  # Transform consumed the window decided at run time
    assert len(served_versions(str(tmp_path / "out" / "serving" / "chicago_taxi"))) == 1
    # Why it ran: new_span (also for a `dags test`), with the window's spans, on the DAG run's context.
    assert "Why: new span (spans 1, 2)" in log
    properties, components = _run_context(env, "manual__2026-11-21T00:00:00+00:00")
    assert {k: properties[k] for k in ("tfx_e2e_reason", "tfx_e2e_spans")} == {"tfx_e2e_reason": "new_span",
                                                                              "tfx_e2e_spans": "1,2"}
    assert {"ExampleGen", "span_window_resolver", "Transform", "Pusher"} <= components
    # The backfill ran span 1 through ExampleGen and the data gate, under its own run context.
    _, backfilled = _run_context(env, "manual__2026-11-21T00:00:00+00:00.backfill-span-1")
    assert backfilled == set(BACKFILL_NODES)

    done = spans_in_metadata(connection)
    assert done == {1, 2}
    assert next_span(str(root), 0, done) is None  # span 3 has no marker yet
    (root / "span-3" / "_SUCCESS").write_text("")
    assert next_span(str(root), 0, done) == 3


def test_a_backfilled_span_the_gate_stops_fails_the_window_task(airflow_env, monkeypatch, tmp_path):
    """A header-only span 1 in the window of span 2: the span_window_resolver task (its callable, as Airflow calls
    it, without a whole DAG run) backfills span 1 through the data gate, which stops it; the task fails with
    AirflowFailException (no retry, so nothing downstream runs) naming the span and the gate's reason."""
    from types import SimpleNamespace

    from airflow.exceptions import AirflowFailException
    from ml_metadata.metadata_store import metadata_store

    root = write_span_root(tmp_path / "data")
    (root / "span-1" / "data.csv").write_text((SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)[0])
    overlay = tmp_path / "window.yaml"
    overlay.write_text(OVERLAY.replace("continuous: {", "continuous: {window_spans: 2, "))
    env = dict(airflow_env, TFX_E2E_DATA_ROOT=str(root), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "out"),
               TFX_E2E_CONFIG=str(overlay))
    task = _dagbag(env, monkeypatch).dags["chicago-taxi-new-span"].get_task("span_window_resolver")
    with pytest.raises(AirflowFailException, match=r"backfill: span 1 of the window \(continuous.window_spans 2\) "
                                                   r"failed the data gate:\nData gate: span 1 has 0 examples"):
        task.python_callable(exec_properties={}, ti=SimpleNamespace(xcom_pull=lambda task_ids: 2),
                             dag_run=SimpleNamespace(run_id="manual__gate"))
    _, backfilled = _run_context(env, "manual__gate.backfill-span-1")
    assert backfilled == set(BACKFILL_NODES)  # the gate ran (and failed) on span 1
    ran = {e.properties["component_id"].string_value
           for e in metadata_store.MetadataStore(_metadata_connection(env)).get_executions()}
    assert not ran & {"span_window_resolver", "Transform"}  # the window was never resolved, nothing trained


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
        assert tasks == {task: "success" for task in TASKS}
        run_type, run_id = _postgres("SELECT run_type, run_id FROM dag_run WHERE dag_id = 'chicago-taxi'", db)[0]
        assert run_type == "scheduled"  # started by the scheduler, not by us
        assert len(served_versions(str(home / "out" / "serving" / "chicago_taxi"))) == 1
        properties, components = _run_context(env, run_id)  # why it ran, in ML Metadata
        assert {k: properties[k] for k in ("tfx_e2e_reason", "tfx_e2e_spans")} == {"tfx_e2e_reason": "schedule",
                                                                                  "tfx_e2e_spans": "0"}
        assert components >= set(COMPONENTS[1:])  # every component ran under it
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

"""The pipeline as Airflow 2 / Cloud Composer DAGs (profile `airflow`): put this file in the DAGs folder (with the
project installed in Airflow's environment). It defines two DAGs over the same pipeline, ML Metadata and
pushed models:

- `<pipeline>` (chicago-taxi): on the clock; schedule, start date and catchup from the configuration's
  `airflow` section. Its first task, `resolve_span`, picks the span when the run starts (not when Airflow
  parses this file): the DAG run's conf `{"span": N}` or `{"date": "YYYY-MM-DD"}`, else TFX_E2E_SPAN /
  TFX_E2E_DATE, else the newest complete span; a missing or incomplete span fails it, before anything runs.
- `<pipeline>-new-span` (chicago-taxi-new-span): runs when a new span lands. `@continuous` with one active
  run: its first task, `wait_for_span`, a sensor in reschedule mode, polls the data root for the next
  complete span (its `_SUCCESS` marker) that ML Metadata has no Examples of, and hands that span to the run.

Both take retries, exponential backoff and a timeout per task from `continuous.retries`. The span reaches
ExampleGen as its range config (one span), rendered from the first task's XCom when ExampleGen runs.

    AIRFLOW_HOME=... airflow dags test chicago-taxi
    AIRFLOW_HOME=... airflow dags test chicago-taxi-new-span
"""
import dataclasses
import datetime

from runners.harness import load_or_exit

RESOLVE_TASK, SENSOR_TASK = "resolve_span", "wait_for_span"
NEW_SPAN_SUFFIX = "-new-span"
SENSOR_POKE_SECONDS = 60
SENSOR_TIMEOUT_SECONDS = 24 * 3600


def retry_args(retries) -> dict:
    """Airflow's per-task retry settings from continuous.retries (the one place for every orchestrator)."""
    args = {
        "retries": retries.attempts - 1,
        "retry_delay": datetime.timedelta(seconds=retries.initial_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": datetime.timedelta(seconds=retries.max_delay_seconds),
    }
    if retries.task_timeout_seconds > 0:
        args["execution_timeout"] = datetime.timedelta(seconds=retries.task_timeout_seconds)
    return args


def _parse_config():
    """The configuration at parse time. The span is not fixed here: any span folder with files stands in for
    the DAG's shape (the real span is rendered into ExampleGen when it runs)."""
    config = load_or_exit(default_profile="airflow")
    continuous = dataclasses.replace(config.continuous, settle_seconds=1e-9)
    return config, dataclasses.replace(config, span=None, continuous=continuous)


def _span_range_template(source_task: str) -> str:
    span = "{{ ti.xcom_pull(task_ids=\"" + source_task + "\") }}"
    return '{ "static_range": { "start_span_number": ' + span + ', "end_span_number": ' + span + " } }"


def resolve_span(dag_run=None, **_) -> int:
    """The span a scheduled or triggered run reads, resolved when it runs (a missing span fails the task)."""
    import os

    from pipeline.config import load_config
    from pipeline.config import resolve_span as resolve

    conf = (dag_run.conf or {}) if dag_run is not None else {}
    env = dict(os.environ)
    if "span" in conf or "date" in conf:
        env.pop("TFX_E2E_SPAN", None), env.pop("TFX_E2E_DATE", None)
        env["TFX_E2E_SPAN" if "span" in conf else "TFX_E2E_DATE"] = str(conf.get("span", conf.get("date")))
    env.setdefault("TFX_E2E_PROFILE", "airflow")
    config = resolve(load_config(env=env))
    print(f"span {config.span}: the run reads it")
    return config.span


def spans_in_metadata(connection_config) -> set[int]:
    """Spans ML Metadata has Examples of (ExampleGen ran on them)."""
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(connection_config)
    try:
        examples = store.get_artifacts_by_type("Examples")
    except Exception:  # no Examples type yet: nothing has run
        return set()
    return {a.custom_properties["span"].int_value for a in examples if "span" in a.custom_properties}


def next_span(data_root: str, settle_seconds: float, done: set[int]) -> int | None:
    """The span the new-span DAG runs next: the oldest complete span newer than every span already run, or the
    newest complete span when none has run; None when there is none (a flat data root has no new spans)."""
    from pipeline import spans

    complete = [s for s in spans.discover(data_root, settle_seconds) if s.complete and s.name]
    if not complete:
        return None
    if not done:
        return complete[-1].number
    newer = [s.number for s in complete if s.number > max(done)]
    return newer[0] if newer else None


def _wait_for_span(config, connection_config):
    from airflow.sensors.base import PokeReturnValue

    def poke(**_):
        span = next_span(config.data_root, config.continuous.settle_seconds, spans_in_metadata(connection_config))
        print(f"new span: {span if span is not None else 'none yet'} (data root {config.data_root})")
        if span is None:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=span)

    return poke


def _build(config, parse_config, dag_id: str, dag_config: dict, first_task):
    """One DAG of the pipeline: `first_task(dag)` runs first and returns the span; ExampleGen reads that span."""
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from pipeline.pipeline import create_pipeline

    tfx_pipeline = create_pipeline(parse_config)
    dag = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(tfx_pipeline)
    dag.dag_id = dag_id
    first = first_task(dag, tfx_pipeline)
    example_gen = dag.get_task("ExampleGen")
    properties = example_gen.op_kwargs["exec_properties"]
    if properties.get("range_config") and "static_range" in properties["range_config"]:
        properties["range_config"] = _span_range_template(first.task_id)
    for task in dag.tasks:  # nothing runs before the span is known (ImportSchemaGen has no upstream either)
        if task is not first and not task.upstream_task_ids:
            task.set_upstream(first)
    return dag


def _dags():
    from airflow.operators.python import PythonOperator
    from airflow.sensors.python import PythonSensor

    config, parse_config = _parse_config()
    default_args = retry_args(config.continuous.retries)
    start_date = datetime.datetime.fromisoformat(config.airflow.start_date)
    scheduled = _build(config, parse_config, config.pipeline_name, {
        "schedule": config.airflow.schedule or None, "start_date": start_date, "catchup": config.airflow.catchup,
        "default_args": default_args,
    }, lambda dag, _: PythonOperator(task_id=RESOLVE_TASK, python_callable=resolve_span, dag=dag))

    def sensor(dag, tfx_pipeline):
        return PythonSensor(
            task_id=SENSOR_TASK, dag=dag, mode="reschedule", poke_interval=SENSOR_POKE_SECONDS,
            timeout=SENSOR_TIMEOUT_SECONDS, retries=0,  # a timeout ends the run; @continuous starts the next
            python_callable=_wait_for_span(config, tfx_pipeline.metadata_connection_config))

    new_span = _build(config, parse_config, config.pipeline_name + NEW_SPAN_SUFFIX, {
        "schedule": "@continuous", "max_active_runs": 1, "start_date": start_date, "catchup": False,
        "default_args": default_args,
    }, sensor)
    return scheduled, new_span


# Airflow collects module-level DAG objects.
DAG, NEW_SPAN_DAG = _dags()

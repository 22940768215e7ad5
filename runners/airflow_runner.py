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

Both end with a `Reports` task that runs whatever the others' outcome: the run's summary in its log, its statistics
and evaluation reports under <output_root>/reports/ (where the console finds them) and the model cards of what it
pushed; it fails when another task failed, so the DAG run's state is the pipeline's.

Both take retries, exponential backoff and a timeout per task from `continuous.retries`. The span reaches
ExampleGen as its range config (one span), rendered from the first task's XCom when ExampleGen runs.

Why a run ran (runners/why.py): the first task records it, with the spans the run reads, on the run's context in ML
Metadata (TFX's Airflow integration files every task's execution under the `run` context `<pipeline>.<run id>`):
`new_span` for the new-span DAG, `schedule` for the scheduled DAG (`manual` when its DAG run was triggered by hand),
unless the DAG run's conf carries `{"reason": ...}`.

A rolling window (continuous.window_spans > 1) follows the span too: the `span_window_resolver` task builds its
window (pipeline.components.window_resolvers, the window_spans complete spans ending at the run's span) when it
runs, from the first task's XCom. TFX renders a Resolver's config nowhere (its exec_properties are rebuilt from the
node, so op_kwargs templates never reach it), so the task launches a Resolver built for the run's span. Spans of
the window ML Metadata has no Examples of are ingested first, by ExampleGen and the data gate under their own run
id (`<run id>.backfill-span-<N>`), as runners/backfill.py does for the local runner; a span the gate stops fails
the task, without retries, so nothing is trained.

    AIRFLOW_HOME=... airflow dags test chicago-taxi
    AIRFLOW_HOME=... airflow dags test chicago-taxi-new-span
"""
import dataclasses
import datetime
import os

from pipeline.config import load_config

RESOLVE_TASK, SENSOR_TASK, REPORTS_TASK = "resolve_span", "wait_for_span", "Reports"
# Task states after which a DAG run fails (Airflow's TaskInstanceState values).
FAILED_STATES = ("failed", "upstream_failed")
EXAMPLE_GEN = "ExampleGen"
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
    the DAG's shape (the real span is rendered into ExampleGen when it runs). A bad configuration raises its
    ConfigError, which Airflow lists among the DAG import errors with the message; sys.exit (SystemExit is no
    Exception) would get past the DagBag's handler and kill the parsing process, with no import error recorded."""
    config = load_config(os.environ.get("TFX_E2E_PROFILE") or "airflow")
    continuous = dataclasses.replace(config.continuous, settle_seconds=1e-9)
    return config, dataclasses.replace(config, span=None, continuous=continuous)


def _span_range_template(source_task: str) -> str:
    span = "{{ ti.xcom_pull(task_ids=\"" + source_task + "\") }}"
    return '{ "static_range": { "start_span_number": ' + span + ', "end_span_number": ' + span + " } }"


def run_reason(dag_run, default: str, manual: bool = True) -> str:
    """Why a DAG run runs: its conf's "reason" if given (one of runners.why.REASONS, else the task fails), else
    (`manual`) `manual` for a DAG run triggered by hand (the UI, `airflow dags trigger`, `dags test`: run_type
    manual), else `default`."""
    from runners import why

    conf = (dag_run.conf or {}) if dag_run is not None else {}
    if "reason" in conf:
        if conf["reason"] not in why.REASONS:
            raise ValueError(f"conf reason: expected one of {', '.join(why.REASONS)}, got {conf['reason']!r}")
        return conf["reason"]
    if manual and dag_run is not None and dag_run.run_type == "manual":  # DagRunType.MANUAL, a str enum
        return "manual"
    return default


def record_why(config, run_id: str, reason: str) -> str:
    """Records `reason` and the spans the run reads (config.span and its window) on the run's context in ML Metadata,
    the `run` context `<pipeline>.<run_id>` TFX's Airflow launcher files each task's execution under (created here
    as TFX creates it, when the first component has not run yet); returns the Why line, which it prints."""
    from tfx.orchestration import data_types, metadata

    from pipeline.metadata import connection_config
    from runners import why

    line = why.why_line(config, reason)
    print(line)
    if config.metadata == "managed":
        return line
    info = data_types.PipelineInfo(config.pipeline_name, config.pipeline_root, run_id=run_id)
    with metadata.Metadata(connection_config(config)) as handle:
        _, run_context = handle.register_pipeline_contexts_if_not_exists(info)
        why.write(handle.store, run_context, config, reason)
    print(f"recorded in ML Metadata: context {info.pipeline_run_context_name}: {why.REASON_PROPERTY}={reason}")
    return line


def resolve_span(dag_run=None, **_) -> int:
    """The span a scheduled or triggered run reads, resolved when it runs (a missing span fails the task); records
    why the run runs and the spans it reads in ML Metadata."""
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
    reason = run_reason(dag_run, "schedule")
    print(f"span {config.span}: the run reads it")
    if dag_run is not None:
        record_why(config, dag_run.run_id, reason)
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


def ingested_spans(connection_config, pipeline_name: str) -> set[int]:
    """The spans of the live Examples ExampleGen wrote in this pipeline's context that the data gate passed: what
    the window's resolver finds (a span the gate stopped is ingested, and checked, again)."""
    from tfx.orchestration import data_types, metadata

    from pipeline.window import gated

    with metadata.Metadata(connection_config) as handle:
        context = handle.get_pipeline_context(data_types.PipelineInfo(pipeline_name, "", run_id=None))
        if context is None:
            return set()
        examples = handle.get_qualified_artifacts([context], "Examples", EXAMPLE_GEN, "examples")
        passed = gated(handle.store, [a.id for a in examples])
    return {a.get_int_custom_property("span") for a in examples if a.has_custom_property("span") and a.id in passed}


def backfill(config, launch_args: dict, run_id: str) -> list[int]:
    """Ingests the window's older spans ML Metadata has no Examples of, oldest first, as runners/backfill.py does:
    the nodes of the pipeline built for that span from ExampleGen and ImportSchemaGen up to DataGate, in
    topological order, launched as TFX's Airflow task launches them (`launch_args`: the ExampleGen task's) under
    the run id `<run_id>.backfill-span-<N>` (its own run context: each node's inputs resolve to that span's
    artifacts, and this run's StatisticsGen and gate see only its span). A span the gate stops raises
    AirflowFailException (no retry: the retry would find the span's Examples and skip its gate). Returns the
    spans ingested."""
    from tfx.orchestration import data_types, metadata

    from pipeline import spans
    from pipeline.components import window_spans
    from pipeline.gate import gate_error_of
    from pipeline.pipeline import create_pipeline
    from registry.graph import airflow_backfill_run_id
    from runners.backfill import BACKFILL_TO

    window = window_spans(config)
    if window <= 1:
        return []
    older = [s.number for s in spans.select(spans.discover(config.data_root, config.continuous.settle_seconds),
                                            config.span, window)[:-1]]
    have = ingested_spans(launch_args["metadata_connection_config"], config.pipeline_name)
    missing = [n for n in older if n not in have]
    for number in missing:
        backfill_run_id = airflow_backfill_run_id(run_id, number)
        print(f"backfill: ML Metadata has no span {number} of the window; ExampleGen and the data gate ingest it "
              f"(run id {backfill_run_id})")
        info = data_types.PipelineInfo(config.pipeline_name, launch_args["pipeline_info"].pipeline_root,
                                       run_id=backfill_run_id)
        nodes = create_pipeline(dataclasses.replace(config, span=number)).components  # topologically sorted
        wanted = set(BACKFILL_TO)  # DataGate and every node upstream of it
        for node in reversed(nodes):
            if node.id in wanted:
                wanted.update(upstream.id for upstream in node.upstream_nodes)
        try:
            for node in (n for n in nodes if n.id in wanted):
                launch_args["component_launcher_class"].create(
                    component=node, pipeline_info=info, driver_args=launch_args["driver_args"],
                    metadata_connection=metadata.Metadata(launch_args["metadata_connection_config"]),
                    beam_pipeline_args=launch_args["beam_pipeline_args"],
                    additional_pipeline_args=launch_args["additional_pipeline_args"],
                    component_config=launch_args["component_config"]).launch()
        except Exception as e:
            gate = gate_error_of(e)
            if gate is None:
                raise
            from airflow.exceptions import AirflowFailException

            raise AirflowFailException(f"backfill: span {number} of the window (continuous.window_spans "
                                       f"{config.continuous.window_spans}) failed the data gate:\n{gate}") from e
    return missing


def _run_time_window(dag, config, first_task_id: str) -> None:
    """Makes the span_window_resolver task resolve the window of the run's span (the first task's XCom), not the
    window of the span that was newest when Airflow parsed the file: it backfills the window's missing spans, then
    launches a Resolver built for that span (pipeline.components.window_resolvers) with TFX's Airflow launcher."""
    from pipeline.components import SPAN_WINDOW_RESOLVER, window_resolvers

    if SPAN_WINDOW_RESOLVER not in dag.task_dict:
        return
    task = dag.get_task(SPAN_WINDOW_RESOLVER)
    launch = task.python_callable  # functools.partial(_airflow_component_launcher, component=..., ...)
    example_gen_args = dag.get_task(EXAMPLE_GEN).python_callable.keywords
    example_gen_node = example_gen_args["component"]

    def launch_window(exec_properties, **context):
        span = int(context["ti"].xcom_pull(task_ids=first_task_id))
        run_config = dataclasses.replace(config, span=span)
        backfill(run_config, example_gen_args, context["dag_run"].run_id)
        span_window, _ = window_resolvers(run_config, example_gen_node)
        window = span_window.exec_properties["source_uri"]["range_config"].static_range
        print(f"window: spans {window.start_span_number} to {window.end_span_number} (the run reads span {span})")
        return launch.func(**{**launch.keywords, "component": span_window},
                           exec_properties=span_window.exec_properties, **context)

    task.python_callable = launch_window


def _run_time_warm_start(dag, config, first_task_id: str) -> None:
    """The same for the warm_start_model_resolver task: a Resolver built for the run's span (the newest model
    trained before it, pipeline/warm_start.py), not for the span that was newest when Airflow parsed the file."""
    from pipeline.warm_start import WARM_START_RESOLVER, warm_start_resolver

    if WARM_START_RESOLVER not in dag.task_dict:
        return
    task = dag.get_task(WARM_START_RESOLVER)
    launch = task.python_callable

    def launch_warm_start(exec_properties, **context):
        span = int(context["ti"].xcom_pull(task_ids=first_task_id))
        node = warm_start_resolver(dataclasses.replace(config, span=span))
        print(f"warm start: the newest model trained before span {span}, if any")
        return launch.func(**{**launch.keywords, "component": node}, exec_properties=node.exec_properties, **context)

    task.python_callable = launch_warm_start


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

    def poke(dag_run=None, **_):
        span = next_span(config.data_root, config.continuous.settle_seconds, spans_in_metadata(connection_config))
        print(f"new span: {span if span is not None else 'none yet'} (data root {config.data_root})")
        if span is None:
            return PokeReturnValue(is_done=False)
        if dag_run is not None:
            record_why(dataclasses.replace(config, span=span), dag_run.run_id, run_reason(dag_run, "new_span", manual=False))
        return PokeReturnValue(is_done=True, xcom_value=span)

    return poke


def write_reports(config, tfx_pipeline):
    """The callable of the `Reports` task, the DAG's last, which runs whatever the other tasks' outcome: the run's
    summary in its log (read back from ML Metadata as the local runner prints it), its statistics and evaluation
    reports in <output_root>/reports/<pipeline>/runs/<pipeline>.<DAG run id>/ (the console's name of the run) and
    the pipeline's folder, and the model cards of the versions it pushed. It fails when another task failed, so
    that the DAG run fails as it would without it (Airflow judges a DAG run by its last tasks)."""

    def report(dag_run=None, **_):
        from airflow.exceptions import AirflowFailException

        from pipeline import metadata
        from registry.model_card import write_after_run
        from runners.summary import print_summary

        run_name = f"{config.pipeline_name}.{dag_run.run_id}"
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.task_id != REPORTS_TASK}
        failed = sorted(task for task, state in states.items() if state == "failed")
        error = RuntimeError(f"failed task(s): {', '.join(failed)}") if failed else None
        if not metadata.exists(config):  # the run failed before anything was filed (its span refused)
            print(f"No ML Metadata store yet ({config.metadata_path}): no summary or reports.")
        elif print_summary(config, tfx_pipeline, dag_run.start_date.timestamp(), error, run_name,
                           failed_nodes=failed).ok:
            write_after_run(config, run_name)
        if any(state in FAILED_STATES for state in states.values()):
            raise AirflowFailException(f"the DAG run failed ({error or 'tasks upstream_failed'}); the reports of "
                                       "what ran are written")

    return report


def _build(config, parse_config, dag_id: str, dag_config: dict, first_task):
    """One DAG of the pipeline: `first_task(dag)` runs first and returns the span; ExampleGen reads that span."""
    from airflow.operators.python import PythonOperator
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from pipeline.pipeline import create_pipeline

    tfx_pipeline = create_pipeline(parse_config)
    dag = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(tfx_pipeline)
    dag.dag_id = dag_id
    first = first_task(dag, tfx_pipeline)
    _run_time_window(dag, config, first.task_id)
    _run_time_warm_start(dag, config, first.task_id)
    example_gen = dag.get_task(EXAMPLE_GEN)
    properties = example_gen.op_kwargs["exec_properties"]
    if properties.get("range_config") and "static_range" in properties["range_config"]:
        properties["range_config"] = _span_range_template(first.task_id)
    for task in dag.tasks:  # nothing runs before the span is known (ImportSchemaGen has no upstream either)
        if task is not first and not task.upstream_task_ids:
            task.set_upstream(first)
    last = [task for task in dag.tasks if not task.downstream_task_ids]
    PythonOperator(task_id=REPORTS_TASK, python_callable=write_reports(config, tfx_pipeline), dag=dag,
                   trigger_rule="all_done", retries=0).set_upstream(last)
    return dag


def _dags():
    config, parse_config = _parse_config()

    from airflow.operators.python import PythonOperator
    from airflow.sensors.python import PythonSensor

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

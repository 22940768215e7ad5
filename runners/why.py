"""Why a run ran and which spans it used, recorded in ML Metadata as custom properties of the run's context
(the `pipeline_run` context LocalDagRunner creates for each run; on Airflow, the `run` context
`<pipeline>.<Airflow run id>` TFX's Airflow integration files every task's execution under) and shown in the run
summary (on Airflow, in the first task's log).

    tfx_e2e_reason   manual | schedule | new_span | event | monitoring_alert
    tfx_e2e_spans    the spans the run read, comma-separated ("3"; "0" for a flat data root)
"""
import time

from pipeline.config import Config

REASONS = {
    "manual": "manual",
    "schedule": "schedule",
    "new_span": "new span",
    "event": "event",
    "monitoring_alert": "monitoring alert",
}
DEFAULT_REASON = "manual"
REASON_PROPERTY = "tfx_e2e_reason"
SPANS_PROPERTY = "tfx_e2e_spans"


def spans_of(config: Config) -> list[int]:
    """The spans a run reads: the span it was given and, with a rolling window, the window's older spans."""
    if config.span is None:
        return []
    try:
        from pipeline.components import window_spans
        window = window_spans(config)
    except ImportError:  # no rolling window
        window = 1
    if window <= 1:
        return [config.span]
    from pipeline import spans
    return [s.number for s in spans.select(spans.discover(config.data_root, config.continuous.settle_seconds),
                                           config.span, window)]


def why_line(config: Config, reason: str) -> str:
    """`Why: new span (span 3)`."""
    spans = spans_of(config)
    if not spans:
        where = "the data as it is"
    elif spans == [0]:
        where = "the flat data root, one span"
    else:
        where = ("span " if len(spans) == 1 else "spans ") + ", ".join(map(str, spans))
    return f"Why: {REASONS.get(reason, reason)} ({where})"


def record(config: Config, run_id: str, reason: str) -> bool:
    """Writes the reason and the spans into the `pipeline_run` context of the run `run_id`; False when there is
    none (the orchestrator never started)."""
    from tfx.dsl.compiler import constants

    from pipeline import metadata

    if not metadata.exists(config):
        return False
    store = metadata.open_store(config)
    context = store.get_context_by_type_and_name(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, run_id)
    if context is None:
        return False
    write(store, context, config, reason)
    return True


def write(store, context, config: Config, reason: str) -> None:
    """Writes the reason and the spans the run reads (config.span, and the window's older spans) into `context`."""
    context.custom_properties[REASON_PROPERTY].string_value = reason
    context.custom_properties[SPANS_PROPERTY].string_value = ",".join(map(str, spans_of(config)))
    context.custom_properties["tfx_e2e_recorded"].string_value = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                               time.gmtime())
    store.put_contexts([context])

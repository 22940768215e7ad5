"""The span as a run parameter where TFX's own ML Metadata is not used (Vertex AI / KFP 2, metadata: managed).

There the span cannot be decided when the pipeline is compiled: the compiled pipeline declares a runtime
parameter `span` (what runners/vertex_trigger.py submits, and what a person enters in the Vertex console), and a
small first task, 'SpanRange' (pipeline/span_range.py), turns it into ExampleGen's range config, the way TFX's
own KFP v2 tests feed a run-time range config to ExampleGen (`<task>.outputs[...].future()[0].value`, a dynamic
execution property).

- CSV span folders under a gs:// data root (continuous.span_folders: span | date): the run reads span-<N>/ or
  <YYYY-MM-DD>/; span -1 (the default) reads the newest span folder, as ExampleGen resolves it.
- BigQuery (a vertex.bigquery_query with TFX's @span_begin_timestamp / @span_end_timestamp / @span_yyyymmdd_utc
  placeholders): span = days since 1970-01-01; -1 = yesterday (UTC), the day a daily schedule trains on. The
  rolling window is the query's: @window_begin_timestamp stands for the start of the window_spans days that end
  with the span, so a run trains on days [span - window_spans + 1, span]. TFX 1.16's KFP v2 compiler accepts no
  SpanRangeStrategy, and a file ExampleGen's static range must be one span, so this is the window Vertex runs.
"""
import datetime
import json

from pipeline.config import Config

PARAMETER = "span"          # the compiled pipeline's runtime parameter
NEWEST = -1                 # its default: the newest span folder (CSV) or yesterday (BigQuery)
REASON_PARAMETER = "reason"  # why the run ran (runners/why.py's reasons); Vertex keeps a run's parameters in its
DEFAULT_REASON = "schedule"  # ML Metadata; a run without parameters is a schedule's (submit passes manual)
WINDOW_BEGIN = "@window_begin_timestamp"
DAY_SECONDS = 86400


def _uses_span_placeholders(query: str) -> bool:
    return "@span_" in query or WINDOW_BEGIN in query


def takes_span(config: Config) -> bool:
    """Whether the compiled pipeline declares the `span` parameter: managed metadata, reading span folders on
    Cloud Storage or a BigQuery query written with span placeholders."""
    if config.metadata != "managed":
        return False
    if config.example_gen == "bigquery":
        return _uses_span_placeholders(config.vertex.bigquery_query)
    return config.continuous.span_folders in ("span", "date")


def window_query(config: Config) -> str:
    """vertex.bigquery_query with @window_begin_timestamp written in TFX's placeholder arithmetic: the start of
    the first day of the window (ExampleGen replaces @span_begin_timestamp with the span's first second)."""
    begin = f"(@span_begin_timestamp - {DAY_SECONDS * (config.continuous.window_spans - 1)})"
    return config.vertex.bigquery_query.replace(WINDOW_BEGIN, begin)


def range_config_json(span: int, bigquery: bool, today: datetime.date | None = None) -> str:
    """ExampleGen's range config (JSON) for the span a run was given; "" for the newest span folder."""
    if span < 0:
        if not bigquery:
            return ""  # ExampleGen's driver reads the newest span when there is no range config
        yesterday = (today or datetime.datetime.now(datetime.timezone.utc).date()) - datetime.timedelta(days=1)
        span = (yesterday - datetime.date(1970, 1, 1)).days
    return json.dumps({"static_range": {"start_span_number": span, "end_span_number": span}})

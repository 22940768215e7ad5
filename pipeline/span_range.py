"""'SpanRange': the first task of a pipeline that takes the run parameter `span` (pipeline/span_parameter.py); it
writes ExampleGen's range config when the run starts."""
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import String

from pipeline.config import Config
from pipeline.span_parameter import DEFAULT_REASON, NEWEST, PARAMETER, REASON_PARAMETER, range_config_json

TASK_ID = "SpanRange"


@component
def SpanRange(span: Parameter[int], bigquery: Parameter[bool], reason: Parameter[str],
              range_config: OutputArtifact[String]) -> None:
    """The range config ExampleGen reads, from the run's `span` parameter; logs why the run ran."""
    range_config.value = range_config_json(span, bigquery)
    print(f"Why: {reason} (span {span if span >= 0 else 'newest'}); range config "
          f"{range_config.value or '(the newest span folder)'}")


def span_range(config: Config):
    """The 'SpanRange' task, fed by the runtime parameters `span` (default -1: the newest) and `reason`."""
    from tfx.orchestration import data_types

    return SpanRange(span=data_types.RuntimeParameter(name=PARAMETER, ptype=int, default=NEWEST),
                     bigquery=config.example_gen == "bigquery",
                     reason=data_types.RuntimeParameter(name=REASON_PARAMETER, ptype=str, default=DEFAULT_REASON),
                     ).with_id(TASK_ID)

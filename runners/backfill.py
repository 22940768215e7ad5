"""Ingests the older spans a rolling window needs but ML Metadata has not seen (issue 12).

A fresh ML Metadata store holds no spans: the first run with continuous.window_spans = N would otherwise train on
the one span its ExampleGen reads. Before such a run, each missing span of the window, oldest first, goes through
ExampleGen and the data gate (StatisticsGen, ExampleValidator, the drift check against the span before it,
DataGate) as a TFX partial run (LocalDagRunner.run(pipeline, run_options=RunOptions(from_nodes=[ExampleGen,
ImportSchemaGen], to_nodes=[DataGate]))) of the same pipeline built for that span, so its Examples land in the
pipeline's context with their `span` custom property, where the window's SpanRangeStrategy resolver finds them.
A span the gate stops stops the run: nothing is trained on it.
"""
import dataclasses

from pipeline import spans
from pipeline.config import Config

EXAMPLE_GEN = "ExampleGen"
BACKFILL_FROM, BACKFILL_TO = [EXAMPLE_GEN, "ImportSchemaGen"], ["DataGate"]


class BackfillError(RuntimeError):
    """A span of the window could not be ingested (the data gate stopped it, or a component failed)."""


def ingested_spans(config: Config) -> set[int]:
    """The spans ExampleGen has written Examples for in this pipeline's ML Metadata and the data gate passed (a span
    the gate stopped is ingested again, and checked again); empty without a store."""
    from pipeline import metadata

    if not metadata.exists(config):
        return set()
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants

    from pipeline.window import gated

    store = metadata.open_store(config, readonly=True)
    context = store.get_context_by_type_and_name(constants.NODE_CONTEXT_TYPE_NAME,
                                                 f"{config.pipeline_name}.{EXAMPLE_GEN}")
    if context is None:
        return set()
    examples = [a for a in store.get_artifacts_by_context(context.id)
                if a.state == metadata_store_pb2.Artifact.LIVE and "span" in a.custom_properties]
    passed = gated(store, [a.id for a in examples])
    return {a.custom_properties["span"].int_value for a in examples if a.id in passed}


def missing_spans(config: Config) -> list[int]:
    """The window's spans, older than the one this run reads, that ML Metadata has not ingested."""
    from pipeline.components import window_spans

    window = window_spans(config)
    if window <= 1:
        return []
    found = spans.discover(config.data_root, config.continuous.settle_seconds)
    older = [s.number for s in spans.select(found, config.span, window)[:-1]]
    have = ingested_spans(config)
    return [n for n in older if n not in have]


def backfill(config: Config, log=print) -> list[int]:
    """Runs ExampleGen and the data gate (a partial run) for each missing span of the window; returns those spans.
    Raises BackfillError, naming the span and the gate's reasons, when one fails."""
    missing = missing_spans(config)
    if not missing:
        return []
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.pipeline import RunOptions

    from pipeline.gate import gate_error_of
    from pipeline.pipeline import create_pipeline

    for number in missing:
        log(f"backfill: ML Metadata has no span {number} of the window; ExampleGen and the data gate ingest it "
            "(partial run)")
        try:
            LocalDagRunner().run(create_pipeline(dataclasses.replace(config, span=number)),
                                 run_options=RunOptions(from_nodes=BACKFILL_FROM, to_nodes=BACKFILL_TO))
        except Exception as e:
            gate = gate_error_of(e)
            raise BackfillError(f"backfill: span {number} of the window (continuous.window_spans "
                                f"{config.continuous.window_spans}) failed"
                                + (f" the data gate:\n{gate}" if gate else f": {type(e).__name__}: {e}")) from e
    return missing


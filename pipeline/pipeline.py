"""create_pipeline(config): the only place that knows the DAG."""
from pathlib import Path

# Not tfx.v1: it imports the Vertex AI SDK, 10 s of start-up on a 2-core machine.
from tfx.components import Evaluator, ExampleValidator, Pusher, StatisticsGen, Transform
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.components.base.base_beam_component import BaseBeamComponent
from tfx.orchestration import pipeline
from tfx.proto import pusher_pb2

import modules
from modules import contract
from pipeline import baseline, components, drift, evaluation, span_parameter, span_range, warm_start
from pipeline.config import Config
from pipeline.fingerprint import files_digest
from pipeline.gate import DataGate
from pipeline.metadata import connection_config
from pipeline.pusher import AtomicPushExecutor

# Module functions by dotted path into the installed package (no module_file upload);
# tuner_fn and run_fn are named in pipeline/components.py.
PREPROCESSING_FN = "modules.preprocessing.preprocessing_fn"



def module_fingerprint() -> str:
    """SHA-256 of modules/*.py. Passed in custom_config: with a dotted path instead of a
    module_file, TFX's cache would otherwise not notice a change to the training code."""
    return files_digest(Path(modules.__file__).parent.glob("*.py"))


def _spread_over_worker_pools(config: Config, nodes: list) -> None:
    """An EXTERNAL environment names one worker pool per Beam job, so with several pools each Beam-based component
    gets the next one (its own --environment_config, after the pipeline's): the jobs of one run use every pool."""
    pools = config.portable.worker_pools if config.portable.runner else []
    beam_nodes = [node for node in nodes if isinstance(node, BaseBeamComponent)]
    for i, node in enumerate(beam_nodes if len(pools) > 1 else []):
        node.with_beam_pipeline_args([f"--environment_config={pools[i % len(pools)]}"])


def create_pipeline(config: Config) -> pipeline.Pipeline:
    fingerprint = module_fingerprint()

    # Vertex / KFP: the span is the run's `span` parameter, turned into ExampleGen's range config when it runs.
    range_task = span_range.span_range(config) if span_parameter.takes_span(config) else None
    example_gen = components.example_gen(config, range_task)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = ImportSchemaGen(schema_file=config.schema_path)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # Drift between spans: the previous span's statistics, compared in the gate with the schema's drift comparators.
    previous_statistics = (drift.previous_statistics_resolver(config, example_gen, statistics_gen)
                           if config.continuous.drift != "off" else None)
    data_gate = DataGate(anomalies=example_validator.outputs["anomalies"],
                         statistics=statistics_gen.outputs["statistics"],
                         examples=example_gen.outputs["examples"],
                         schema=schema_gen.outputs["schema"],
                         min_examples=config.continuous.min_examples,
                         drift=config.continuous.drift,
                         previous_statistics=previous_statistics.outputs["statistics"] if previous_statistics else None,
                         ).with_id("DataGate")

    window = components.window_resolvers(config, example_gen)
    if window:
        # The rolling window (TFX's penguin pattern): Transform reads the last window_spans spans' Examples from
        # ML Metadata and reuses its analyzer cache, so a run with one new span analyzes only that span. It writes
        # neither a transformed copy of the window nor its statistics (either would read every span again): Tuner
        # and Trainer read the window's Examples and apply the transform graph in their input pipeline.
        span_window, analyzer_cache = window
        span_window.add_upstream_node(data_gate)
        transform = Transform(
            examples=span_window.outputs["examples"],
            schema=schema_gen.outputs["schema"],
            analyzer_cache=analyzer_cache.outputs["cache"],
            materialize=False,
            disable_statistics=True,
            preprocessing_fn=PREPROCESSING_FN,
            custom_config={contract.MODULE_FINGERPRINT_KEY: fingerprint})
        training_examples = span_window.outputs["examples"]
    else:
        transform = Transform(
            examples=example_gen.outputs["examples"],
            schema=schema_gen.outputs["schema"],
            preprocessing_fn=PREPROCESSING_FN,
            custom_config={contract.MODULE_FINGERPRINT_KEY: fingerprint})
        training_examples = transform.outputs["transformed_examples"]
    transform.add_upstream_node(data_gate)

    training_inputs = dict(
        examples=training_examples,
        transform_graph=transform.outputs["transform_graph"],
    )
    tuner = None
    if config.tuner.enabled:
        tuner = components.tuner(config, fingerprint, **training_inputs)
    # Continuous training: a windowed run starts from the model trained before its span (TFX's base_model).
    base_model = warm_start.warm_start_resolver(config)
    trainer = components.trainer(
        config, fingerprint,
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        base_model=base_model.outputs[warm_start.MODEL] if base_model else None,
        **training_inputs)

    model_resolver = components.baseline_resolver(config, candidate=trainer.outputs["model"])
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],  # the newest span's eval split, also with a window
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs[baseline.MODEL],
        schema=schema_gen.outputs["schema"],
        example_splits=["eval"],
        eval_config=evaluation.eval_config(config.evaluator),
    ).with_beam_pipeline_args(config.evaluator.beam_pipeline_args)
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.serving_model_dir)),
        custom_executor_spec=executor_spec.ExecutorClassSpec(AtomicPushExecutor))

    nodes = [*([range_task] if range_task else []), example_gen, statistics_gen, schema_gen, example_validator,
             *([previous_statistics] if previous_statistics else []), data_gate, *window, transform,
             *([tuner] if tuner else []), *([base_model] if base_model else []), trainer, model_resolver, evaluator, pusher]
    _spread_over_worker_pools(config, nodes)
    return pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=nodes,
        enable_cache=config.enable_cache,
        metadata_connection_config=connection_config(config) if config.metadata != "managed" else None,
        beam_pipeline_args=config.beam_args,
    )

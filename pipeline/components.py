"""Component factories: TFX's own or its Google Cloud implementation, chosen by configuration,
always with the same component id (so ML Metadata, the summary and the tests see one DAG)."""
from typing import Any

from tfx.proto import example_gen_pb2, range_config_pb2, trainer_pb2

from modules import contract
from pipeline import spans
from pipeline.config import Config, is_uri


def _split_output(config: Config) -> example_gen_pb2.Output:
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=config.split.train),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=config.split.eval),
    ]))


def _span_pattern(folder: str) -> example_gen_pb2.Input:
    """One split: the span folder's spans.SPAN_FILES."""
    return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split",
                                                                     pattern=f"{folder}/{spans.SPAN_FILES}")])


def span_input(config: Config) -> tuple[example_gen_pb2.Input, range_config_pb2.RangeConfig] | None:
    """For a data root of span folders: CsvExampleGen's input (one split, the span's *.csv files, so the _SUCCESS
    marker is never read) and a static range of the one span the run reads (config.span; if unset, the newest
    complete span now). None for a flat root or a data root not on this machine (read as it is)."""
    if config.example_gen != "csv" or is_uri(config.data_root):
        return None
    found = spans.discover(config.data_root, config.continuous.settle_seconds)
    if not found or not found[0].name:
        return None
    (span,) = spans.select(found, config.span, 1)[-1:]
    return (_span_pattern("{YYYY}-{MM}-{DD}" if span.date else "span-{SPAN}"),
            range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
                start_span_number=span.number, end_span_number=span.number)))


def example_gen(config: Config, span_range=None):
    """CsvExampleGen on data_root (on one span of it when it holds span folders), or BigQueryExampleGen on
    vertex.bigquery_query; id 'ExampleGen'. With `span_range` (the 'SpanRange' task of a managed-metadata
    pipeline, pipeline/span_parameter.py) the span is the run's `span` parameter, read when the run starts."""
    range_config = span_range.outputs["range_config"].future()[0].value if span_range else None
    if config.example_gen == "bigquery":
        from tfx.extensions.google_cloud_big_query.example_gen.component import BigQueryExampleGen

        from pipeline.span_parameter import window_query

        component = BigQueryExampleGen(query=window_query(config) if span_range else config.vertex.bigquery_query,
                                       range_config=range_config, output_config=_split_output(config))
    else:
        from tfx.components import CsvExampleGen

        span_args = span_input(config)
        if span_range is not None:
            folder = "{YYYY}-{MM}-{DD}" if config.continuous.span_folders == "date" else "span-{SPAN}"
            component = CsvExampleGen(input_base=config.data_root, input_config=_span_pattern(folder),
                                      range_config=range_config, output_config=_split_output(config))
        elif span_args is None:
            component = CsvExampleGen(input_base=config.data_root, output_config=_split_output(config))
        else:
            input_config, static_range = span_args
            component = CsvExampleGen(input_base=config.data_root, input_config=input_config,
                                      range_config=static_range, output_config=_split_output(config))
        from pipeline.example_gen_driver import CsvContentDriver

        # TFX's FileBasedDriver with a content fingerprint: a same-size edit that keeps the mtime is a new input.
        component.driver_class = CsvContentDriver
    return component.with_id("ExampleGen")


SPAN_WINDOW_RESOLVER, ANALYZER_CACHE_RESOLVER = "span_window_resolver", "analyzer_cache_resolver"


def window_spans(config: Config) -> int:
    """How many spans Transform, Tuner and Trainer train on: continuous.window_spans for a data root of span
    folders under TFX's own ML Metadata, else 1 (a flat root is one span; a managed-metadata profile is refused
    a window by the configuration)."""
    if config.continuous.window_spans <= 1 or config.metadata == "managed" or span_input(config) is None:
        return 1
    return config.continuous.window_spans


def window_range(config: Config) -> range_config_pb2.RangeConfig | None:
    """The spans of the rolling window as a static range: the last window_spans complete spans on disk, up to the
    span the run reads. Not TFX's RollingRange: that counts span numbers (daily spans are days, with gaps) and
    ends at the newest span in ML Metadata, not at the span the run reads (--span N on an older span)."""
    n = window_spans(config)
    if n <= 1:
        return None
    window = spans.select(spans.discover(config.data_root, config.continuous.settle_seconds), config.span, n)
    return range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
        start_span_number=window[0].number, end_span_number=window[-1].number))


def raw_examples(config: Config) -> int:
    """1 where Tuner and Trainer read the window's ExampleGen output and transform it themselves: with a rolling
    window Transform only analyzes (the analyzer cache skips the spans it has seen) and writes no transformed copy,
    since the new span's analysis changes every span's transformed values. 0: they read Transform's output."""
    return int(window_spans(config) > 1)


def window_resolvers(config: Config, example_gen) -> tuple:
    """() for a window of 1 (Transform reads ExampleGen's output, today's DAG). Else two Resolvers, TFX's
    penguin pattern: 'span_window_resolver' (SpanRangeStrategy over ExampleGen's Examples in ML Metadata, keeping
    the latest version of each span of the window; output 'examples') and 'analyzer_cache_resolver'
    (the newest of Transform's own updated_analyzer_cache, if any; output 'cache')."""
    range_config = window_range(config)
    if range_config is None:
        return ()
    from tfx.dsl.components.common import resolver
    from tfx.types import Channel
    from tfx.types.standard_artifacts import Examples, TransformCache

    from pipeline.window import LatestCacheStrategy, LatestVersionSpanRangeStrategy

    span_window = resolver.Resolver(
        strategy_class=LatestVersionSpanRangeStrategy,
        config={"range_config": range_config},
        examples=Channel(type=Examples, producer_component_id=example_gen.id, output_key="examples"),
    ).with_id(SPAN_WINDOW_RESOLVER)
    analyzer_cache = resolver.Resolver(
        strategy_class=LatestCacheStrategy,
        cache=Channel(type=TransformCache, producer_component_id="Transform", output_key="updated_analyzer_cache"),
    ).with_id(ANALYZER_CACHE_RESOLVER)
    return span_window, analyzer_cache


def _worker_pool_specs(config: Config) -> list:
    machine = {"machine_type": config.vertex.machine_type}
    if config.vertex.accelerator_type and config.vertex.accelerator_count:
        machine.update(accelerator_type=config.vertex.accelerator_type,
                       accelerator_count=config.vertex.accelerator_count)
    return [{"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": config.image}}]


def _vertex_job(config: Config) -> dict[str, Any]:
    job: dict[str, Any] = {"project": config.gcp.project, "worker_pool_specs": _worker_pool_specs(config)}
    if config.gcp.service_account:
        job["service_account"] = config.gcp.service_account
    return job


def _on_vertex(config: Config, custom_config: dict[str, Any], **job_keys) -> dict[str, Any]:
    """custom_config that makes the google_cloud_ai_platform executors run a Vertex AI custom job."""
    from tfx.extensions.google_cloud_ai_platform import constants as vertex

    return {**custom_config, vertex.ENABLE_VERTEX_KEY: True, vertex.VERTEX_REGION_KEY: config.gcp.region,
            **job_keys}


def tuner_custom_config(config: Config, module_fingerprint: str) -> dict[str, Any]:
    """Every key tuner_fn requires (modules/contract.py TUNER_CONFIG_KEYS), from the configuration, and the
    fingerprint of modules/ (TFX's cache key for code named by dotted path)."""
    return {contract.MAX_TRIALS_KEY: config.tuner.max_trials, contract.SEED_KEY: config.tuner.seed,
            contract.BATCH_SIZE_KEY: config.trainer.batch_size, contract.RAW_EXAMPLES_KEY: raw_examples(config),
            contract.MODULE_FINGERPRINT_KEY: module_fingerprint}


def trainer_custom_config(config: Config, module_fingerprint: str) -> dict[str, Any]:
    """Every key run_fn requires (modules/contract.py TRAINER_CONFIG_KEYS), from the configuration, and the
    fingerprint of modules/."""
    return {contract.BATCH_SIZE_KEY: config.trainer.batch_size, contract.EPOCHS_KEY: config.trainer.epochs,
            contract.MAX_TRAIN_STEPS_KEY: config.trainer.max_train_steps,
            contract.WARM_START_STEPS_KEY: config.continuous.warm_start_steps,
            contract.RAW_EXAMPLES_KEY: raw_examples(config), contract.MODULE_FINGERPRINT_KEY: module_fingerprint}


def tuner(config: Config, module_fingerprint: str, **inputs):
    """Keras Tuner search here, or as a Vertex AI custom job; id 'Tuner'."""
    custom_config = tuner_custom_config(config, module_fingerprint)
    args = dict(
        tuner_fn="modules.tuning.tuner_fn",
        train_args=trainer_pb2.TrainArgs(num_steps=config.tuner.train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=config.tuner.eval_steps),
        **inputs)
    if config.training == "vertex":
        from tfx.extensions.google_cloud_ai_platform.tuner import executor as vertex_tuner
        from tfx.extensions.google_cloud_ai_platform.tuner.component import Tuner

        custom_config = _on_vertex(config, custom_config, **{
            vertex_tuner.TUNING_ARGS_KEY: {"project": config.gcp.project,
                                           "job_spec": {"worker_pool_specs": _worker_pool_specs(config)}},
            vertex_tuner.REMOTE_TRIALS_WORKING_DIR_KEY: f"{config.pipeline_root}/tuner_trials",
        })
        return Tuner(custom_config=custom_config, **args).with_id("Tuner")
    from tfx.components import Tuner

    return Tuner(custom_config=custom_config, **args).with_id("Tuner")


def trainer(config: Config, module_fingerprint: str, hyperparameters: Any | None, **inputs):
    """run_fn here, or as a Vertex AI custom job (GPU when configured); id 'Trainer'."""
    custom_config = trainer_custom_config(config, module_fingerprint)
    args = dict(
        run_fn="modules.training.run_fn",
        hyperparameters=hyperparameters,
        # With trainer.epochs, no num_steps: run_fn counts the train split and computes them.
        train_args=trainer_pb2.TrainArgs(num_steps=None if config.trainer.epochs else config.trainer.train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=config.trainer.eval_steps),
        **inputs)
    if config.training == "vertex":
        from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer
        from tfx.extensions.google_cloud_ai_platform.trainer.component import Trainer

        custom_config = _on_vertex(config, custom_config, **{vertex_trainer.TRAINING_ARGS_KEY: _vertex_job(config)})
        return Trainer(custom_config=custom_config, **args).with_id("Trainer")
    from tfx.components import Trainer

    return Trainer(custom_config=custom_config, **args).with_id("Trainer")


def baseline_resolver(config: Config, candidate):
    """The Evaluator's baseline, id 'latest_blessed_model_resolver'. Where TFX orchestrates with its own
    ML Metadata, the latest blessed model other than the candidate (pipeline/baseline.py); the KFP v2
    compiler only translates TFX's LatestBlessedModelStrategy into Vertex ML Metadata queries, so a
    managed-metadata profile uses that one (Vertex's own step cache decides re-runs there)."""
    from tfx.dsl.components.common import resolver
    from tfx.types import Channel
    from tfx.types.standard_artifacts import Model, ModelBlessing

    from pipeline import baseline

    channels = dict(model=Channel(type=Model), model_blessing=Channel(type=ModelBlessing))
    if config.metadata == "managed":
        from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

        node = resolver.Resolver(strategy_class=LatestBlessedModelStrategy, **channels)
    else:
        # Local pushes only: the rollout record of rejected versions lives beside them (serving/registry.py).
        rejected_from = "" if is_uri(config.serving_model_dir) else config.serving_model_dir
        node = resolver.Resolver(strategy_class=baseline.LatestBlessedBaselineStrategy, candidate=candidate,
                                 config={"serving_model_dir": rejected_from}, **channels)
    return node.with_id("latest_blessed_model_resolver")

"""The one typed configuration: pipeline/config.yaml (defaults + a profile), a user overlay, env overrides.

Nothing is read at import time; call load_config(). Every error names the key and the problem.
"""
import contextlib
import dataclasses
import datetime
import difflib
import glob
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = Path(__file__).resolve().parent / "config.yaml"
# Where the Dockerfile puts the repository in the project's image: paths under it are read by
# components running in that image (Vertex AI, Dataflow), not on the machine that compiles.
IMAGE_ROOT = "/pipeline/"

ENV_PREFIX = "TFX_E2E_"
ENV_PROFILE = "TFX_E2E_PROFILE"
ENV_CONFIG = "TFX_E2E_CONFIG"
ENV_ALWAYS_RUN = "TFX_E2E_ALWAYS_RUN"  # 1: run the orchestrator even when nothing changed
ENV_PATHS = {"TFX_E2E_DATA_ROOT": "data_root", "TFX_E2E_OUTPUT_ROOT": "output_root"}
ENV_IMAGE = "TFX_E2E_IMAGE"  # Cloud Build sets it to the image it just pushed
# The span a run reads (a run parameter, not a config.yaml key): a span number, or the date of a daily span.
ENV_SPAN = "TFX_E2E_SPAN"
ENV_DATE = "TFX_E2E_DATE"
ENV_RUN_REASON = "TFX_E2E_RUN_REASON"  # why a run runs (runners/why.py): manual, schedule, new_span, event, ...
ENV_RUN_LOCK_FD = "TFX_E2E_RUN_LOCK_FD"  # the run lock, inherited from the watcher that started the run
# The ML Metadata server's password (metadata: mysql): from the environment only, never in a file.
ENV_METADATA_PASSWORD = "TFX_E2E_METADATA_PASSWORD"
DEFAULT_PROFILE = "local"


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass(frozen=True)
class SplitConfig:
    train: int
    eval: int


@dataclass(frozen=True)
class TunerConfig:
    enabled: bool
    max_trials: int
    seed: int             # Keras Tuner's random search (which trials it tries)
    train_steps: int
    eval_steps: int


@dataclass(frozen=True)
class TrainerConfig:
    train_steps: int      # the fixed steps when epochs is 0
    eval_steps: int
    batch_size: int
    epochs: int           # > 0: this many passes over the train split (steps from its example count); 0: train_steps
    max_train_steps: int  # the cap on the steps epochs give


@dataclass(frozen=True)
class EvaluatorConfig:
    auc_lower_bound: float
    auc_max_drop: float
    slices: list[str]
    # The Evaluator's own Beam arguments, after the pipeline's (Beam takes the last of a repeated flag), e.g. a
    # DirectRunner process per core for a large eval split: TFMA computes its metrics example by example in Python.
    beam_pipeline_args: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class RetriesConfig:
    """Retries of a failed component, for every orchestrator (Airflow tasks, KFP/Vertex tasks): one place."""
    attempts: int                 # tries per task, the first included (1 = no retry)
    initial_delay_seconds: float  # wait before the first retry; doubled for each next one
    max_delay_seconds: float      # the wait never exceeds this
    task_timeout_seconds: float   # a task running longer fails (and is retried); 0 = no timeout


@dataclass(frozen=True)
class ContinuousConfig:
    """Data in spans (pipeline/spans.py): which spans are complete and which a run may read."""
    window_spans: int     # spans a run trains on: the last N complete spans up to the one it reads
    settle_seconds: float  # a span folder without _SUCCESS is complete when unchanged this long; 0 = marker only
    min_examples: int     # the data gate stops a span with fewer examples (train + eval)
    drift: str            # drift from the previous span over the schema's thresholds: stop | warn | off
    poll_seconds: float   # make watch: how often the watcher looks for new complete spans
    max_attempts: int     # make watch: runs of one span that may fail before the watcher skips it
    span_folders: str     # a gs:// data_root: "" (flat), span (span-<N>/) or date (<YYYY-MM-DD>/); local: discovered
    warm_start: bool      # a windowed run's Trainer starts from the newest model trained before its span
    warm_start_steps: int  # the steps a warm-started Trainer trains (instead of trainer.train_steps / epochs)
    retries: RetriesConfig


@dataclass(frozen=True)
class MetadataServerConfig:
    """ML Metadata in a database on a MySQL or MariaDB server (metadata: mysql), shared by every run, worker and
    machine. The password is not a key: it comes from $TFX_E2E_METADATA_PASSWORD (pipeline/metadata.py)."""
    host: str
    port: int             # 0 = the server's default, 3306
    database: str         # created when missing
    user: str


@dataclass(frozen=True)
class GcpConfig:
    project: str
    region: str
    service_account: str


@dataclass(frozen=True)
class DataflowConfig:
    """Runs Transform, StatisticsGen, Evaluator... on Dataflow when enabled (the `dataflow` profile)."""
    enabled: bool
    temp_location: str
    staging_location: str
    machine_type: str
    max_num_workers: int


@dataclass(frozen=True)
class PortableConfig:
    """Beam's portability framework for the Beam-based components (profiles portable, flink, spark): a job service
    runs each Beam job, SDK worker pools run its code (environment EXTERNAL) (docs/orchestrators.md#portable)."""
    runner: str           # "" (off) | portable (Beam's job service) | flink | spark (their job servers)
    services: str         # portable: start (runners/portable_runner.py starts and stops them on loopback) | external
    job_endpoint: str     # portable: the job service, host:port
    worker_pools: list[str]  # host:port of SDK worker pools (EXTERNAL); Beam jobs take them in turn, one each
    flink_master: str     # flink: the JobManager's REST address, host:port
    flink_version: str    # flink: the job server's Flink version (Beam 2.59 publishes 1.15-1.18)
    spark_master_url: str  # spark: spark://host:port
    job_server_jar: str   # flink, spark: the Beam job server jar, a file the operator supplies (never downloaded)


@dataclass(frozen=True)
class VertexConfig:
    bigquery_query: str
    machine_type: str
    accelerator_type: str
    accelerator_count: int
    schedule_cron: str


@dataclass(frozen=True)
class AirflowConfig:
    schedule: str
    start_date: str
    catchup: bool


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters (--enable_batching --batching_parameters_file)."""
    enabled: bool
    max_batch_size: int
    batch_timeout_micros: int
    max_enqueued_batches: int
    max_enqueued_bytes: int  # the queue's bound in bytes as well as in batches
    num_batch_threads: int


@dataclass(frozen=True)
class RequestLogConfig:
    """TF Serving's LoggingConfig: a sample of requests as PredictionLog records."""
    sampling_rate: float
    path: str             # a directory; "" = <output_root>/request_logs/<model_name>


@dataclass(frozen=True)
class ServingLimitsConfig:
    """What one client, or many, may hold of the local server."""
    body_timeout_seconds: float     # reading a request body; slower clients get 408
    idle_timeout_seconds: float     # an idle keep-alive connection is closed
    max_connections: int            # REST connections; more are closed at once
    max_concurrent_requests: int    # REST requests with a body and gRPC calls in flight; more get RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class NetworkPeerConfig:
    """Pods a NetworkPolicy lets in: those with `labels` ({} = every pod) in `namespace` ("" = the server's own)."""
    namespace: str
    labels: dict[str, str]


@dataclass(frozen=True)
class KubernetesConfig:
    """The TF Serving Deployment's pods (serving/deploy/k8s/): per track, min_replicas to max_replicas GPUs."""
    min_replicas: int              # the HorizontalPodAutoscaler's floor; a PodDisruptionBudget keeps all but one up
    max_replicas: int
    target_requests_per_second: float  # per pod: the autoscaler's target (Prometheus adapter metric, docs/serving.md)
    cpu_request: str               # Kubernetes quantities, beside the GPU
    cpu_limit: str
    memory_request: str
    memory_limit: str
    run_as_user: int               # the non-root uid (and gid) TF Serving runs as
    grpc_clients: list[NetworkPeerConfig]  # who may reach gRPC (its ModelService can reload the model config)
    rest_clients: list[NetworkPeerConfig]  # who may reach REST (predictions, model status, Prometheus metrics)


@dataclass(frozen=True)
class ServingConfig:
    host: str
    rest_port: int
    grpc_port: int
    max_request_bytes: int
    limits: ServingLimitsConfig
    poll_seconds: float   # TF Serving's --file_system_poll_wait_seconds (and the model config file's)
    model_config_file: str  # a ModelServerConfig text file (--model_config_file); "" = built from the keys below
    version_policy: str   # latest | all | specific
    latest_versions: int
    versions: list[int]
    labels: dict[str, int]  # version labels, e.g. {stable: 1700000000, canary: 1700000100}
    batching: BatchingConfig
    request_log: RequestLogConfig
    tf_serving_image: str  # production: TF Serving's GPU image (serving/deploy/)
    tf_serving_image_digest: str  # sha256:<64 hex> pins tf_serving_image (image@digest); "" = the tag only
    gpus: int
    kubernetes: KubernetesConfig


@dataclass(frozen=True)
class RolloutConfig:
    """How a newly pushed version reaches traffic (serving/rollout.py, docs/rollout.md)."""
    strategy: str                  # immediate (serves at once) | canary (steps, analysed, promoted or rolled back) |
                                   # ab (a fixed split for ab_seconds, promoted by a command)
    steps: list[int]               # the canary's share (percent) of requests naming no version or label, per step
    step_seconds: float            # how long each step runs before its analysis
    min_requests: int              # each arm serves at least this many requests in a step
    max_error_rate: float          # canary error rate <= max(this, stable's rate + error_rate_margin)
    error_rate_margin: float
    p99_budget_ms: float           # canary p99 latency <= this and <= stable's p99 x p99_factor
    p99_factor: float
    max_failed_analyses: int       # this many failed analyses in a row roll the canary (ab: guardrail, arm B) back
    available_timeout_seconds: float  # a canary not AVAILABLE (loaded, warmed up) by then is rolled back
    grace_seconds: float           # the previous stable stays loaded this long after a promotion
    max_score_js: float            # canary's scores against stable's (Jensen-Shannon, request log) <= this
    max_anomaly_share_margin: float  # canary's share of examples with a schema anomaly <= stable's + this
    ab_percent: int                # ab: the new version's (arm B's) percent of requests naming no version or label
    ab_seconds: float              # ab: how long the split holds


@dataclass(frozen=True)
class MonitoringConfig:
    """make monitor: the request log's statistics per time window against training, the previous window and the
    model's evaluation (monitoring/)."""
    logs: str                   # PredictionLog files: a directory (or gs://); "" = the server's request log folder
    window_minutes: int         # statistics per window of this length (and per model version)
    min_requests: int           # a window with fewer requests is summarized but not compared (sampling noise)
    batch_size: int             # examples per Arrow RecordBatch fed to TFDV (memory per open window and version)
    comparators: dict[str, float]  # extra skew/drift thresholds where the schema has no comparator (JS / L-inf)
    score_threshold: float      # Jensen-Shannon divergence of the scores against the Evaluator's, per window
    max_anomaly_share: float    # schema anomalies in more than this share of a window's requests alert
    on_alert: str               # none | retrain (a pipeline run with reason monitoring_alert)


@dataclass(frozen=True)
class RetentionConfig:
    """What a successful run and `make prune` remove (pipeline/retention.py); 0 keeps everything."""
    keep_versions: int    # pushed versions kept; stable, canary and the version serving always stay
    keep_runs: int        # pipeline runs whose artifacts are kept; what a kept version or the next run needs stays


@dataclass(frozen=True)
class ModelCardConfig:
    """The model card written for every pushed version (registry/model_card.py): the hand-written parts and how a
    slice is found markedly worse than overall."""
    owners: list[str]
    license: str                # an SPDX identifier or a license's name
    users: list[str]            # who the model is for
    intended_use: str
    out_of_scope: list[str]     # uses the model is not for
    limitations: list[str]      # known limits, beside the worse slices the card finds itself
    ethical_considerations: list[str]
    worse_slice_margin: float   # a slice whose AUC is below overall by more than this is listed as markedly worse
    min_slice_examples: int     # slices with fewer evaluation examples are not judged (too noisy)


@dataclass(frozen=True)
class ConsoleConfig:
    """make console: the read-only web page over ML Metadata, the registry, serving and monitoring (console/)."""
    host: str                   # 127.0.0.1: it shows paths and metrics to whoever reaches it, with no login
    port: int


@dataclass(frozen=True)
class Config:
    profile: str
    pipeline_name: str
    model_name: str
    data_root: str
    output_root: str
    schema_path: str
    image: str            # the project's image (Dockerfile): KFP/Vertex containers, Dataflow workers
    enable_cache: bool
    split: SplitConfig
    beam_pipeline_args: list[str]
    tuner: TunerConfig
    trainer: TrainerConfig
    evaluator: EvaluatorConfig
    metadata: str         # sqlite (runs on this machine or Airflow) | mysql (a server) | managed (Vertex / KFP's)
    metadata_server: MetadataServerConfig
    example_gen: str      # csv | bigquery
    training: str         # local | vertex (Trainer and Tuner as Vertex AI custom jobs)
    gcp: GcpConfig
    dataflow: DataflowConfig
    portable: PortableConfig
    vertex: VertexConfig
    airflow: AirflowConfig
    serving: ServingConfig
    rollout: RolloutConfig
    continuous: ContinuousConfig
    monitoring: MonitoringConfig
    retention: RetentionConfig
    model_card: ModelCardConfig
    console: ConsoleConfig
    # The span this run reads: from --span/--date (TFX_E2E_SPAN/TFX_E2E_DATE); None = the newest complete span,
    # which runners.harness.run resolves before the pipeline is built (resolve_span). 0 = a flat data root.
    span: int | None = None

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_root, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        # SQLite needs a local file: with a gs:// output root (Dataflow) it stays in the checkout's output/.
        root = str(REPO_ROOT / "output") if is_uri(self.output_root) else self.output_root
        return os.path.join(root, "metadata", self.pipeline_name, "metadata.db")

    @property
    def beam_args(self) -> list[str]:
        """beam_pipeline_args, plus DataflowRunner's when the dataflow settings are enabled."""
        args = list(self.beam_pipeline_args)
        if self.dataflow.enabled:
            args += [
                "--runner=DataflowRunner",
                f"--project={self.gcp.project}",
                f"--region={self.gcp.region}",
                f"--temp_location={self.dataflow.temp_location}",
                f"--staging_location={self.dataflow.staging_location}",
                f"--machine_type={self.dataflow.machine_type}",
                f"--max_num_workers={self.dataflow.max_num_workers}",
                "--experiments=use_runner_v2",
                # The workers import modules/ and pipeline/ (dotted paths), which only the project's image has.
                f"--sdk_container_image={self.image}",
            ]
            if self.gcp.service_account:
                args.append(f"--service_account_email={self.gcp.service_account}")
        return args + portable_args(self.portable, self.image)

    @property
    def serving_model_dir(self) -> str:
        """TF Serving's model_base_path: <output_root>/serving/<model_name>/<version>/."""
        return os.path.join(self.output_root, "serving", self.model_name)


# Beam 2.59's FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS (tests/test_portable_config.py checks the two agree).
FLINK_VERSIONS = ("1.15", "1.16", "1.17", "1.18")
_ADDRESS = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9a-fA-F:]+\]:[0-9]{1,5}")


def portable_args(portable: PortableConfig, image: str) -> list[str]:
    """The Beam arguments of the portable, flink or spark runner; worker pools as environment EXTERNAL (the first
    pool here; pipeline/pipeline.py gives each Beam-based component its pool in turn), else the project's image
    (DOCKER)."""
    if not portable.runner:
        return []
    if portable.runner == "portable":
        args = ["--runner=PortableRunner", f"--job_endpoint={portable.job_endpoint}"]
    elif portable.runner == "flink":
        args = ["--runner=FlinkRunner", f"--flink_master={portable.flink_master}",
                f"--flink_version={portable.flink_version}", f"--flink_job_server_jar={portable.job_server_jar}"]
    else:
        args = ["--runner=SparkRunner", f"--spark_master_url={portable.spark_master_url}",
                f"--spark_job_server_jar={portable.job_server_jar}"]
    if portable.worker_pools:
        return args + ["--environment_type=EXTERNAL", f"--environment_config={portable.worker_pools[0]}"]
    return args + ["--environment_type=DOCKER", f"--environment_config={image}"]


def is_uri(path: str) -> bool:
    return "://" in path


def _merge(base: Mapping, overlay: Mapping) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls, values, path: str, source: str):
    """Builds dataclass `cls` from a dict, checking unknown/missing keys and every type."""
    prefix = f"{path}." if path else ""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {path or 'config'}: expected a mapping, got {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(fields))})"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in fields:
        if name not in values:
            raise ConfigError(f"{source}: missing key '{prefix}{name}'")
        kwargs[name] = _check(hints[name], values[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _check(tp, value, key: str, source: str):
    if isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp):  # `int | None`
        if value is None:
            return None
        (tp,) = [t for t in typing.get_args(tp) if t is not type(None)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if typing.get_origin(tp) is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_check(key_type, k, f"{key} key", source): _check(value_type, v, f"{key}.{k}", source)
                for k, v in value.items()}
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check(item_type, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return float(value) if tp is float else value


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what}: file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what}: {path} must hold a mapping of settings")
    return dict(data)


def _validate(config: Config) -> None:
    if config.split.train < 1 or config.split.eval < 1:
        raise ConfigError(f"split: train and eval need at least one hash bucket each, got {config.split}")
    for section, keys in (("tuner", ("max_trials", "train_steps", "eval_steps")),
                          ("trainer", ("train_steps", "eval_steps", "batch_size"))):
        for key in keys:
            if getattr(getattr(config, section), key) < 1:
                raise ConfigError(f"{section}.{key}: must be at least 1, got {getattr(getattr(config, section), key)}")
    if config.trainer.epochs < 0:
        raise ConfigError(f"trainer.epochs: must be >= 0 (0: trainer.train_steps fixed steps), got {config.trainer.epochs}")
    if config.trainer.max_train_steps < 1:
        raise ConfigError(f"trainer.max_train_steps: must be at least 1, got {config.trainer.max_train_steps}")
    if not 0.0 <= config.evaluator.auc_lower_bound <= 1.0:
        raise ConfigError(f"evaluator.auc_lower_bound: must be within [0, 1], got {config.evaluator.auc_lower_bound}")
    if config.evaluator.auc_max_drop < 0:
        raise ConfigError(f"evaluator.auc_max_drop: must be >= 0, got {config.evaluator.auc_max_drop}")
    if config.metadata == "postgresql":
        # Measured (docs/configuration.md): ML Metadata 1.16 connects and creates its tables, but writes a string
        # holding a backslash as 'E'...'', which PostgreSQL rejects; TFX's JSON properties hold escaped quotes.
        raise ConfigError("metadata: postgresql is not supported: ML Metadata 1.16 cannot store a string that holds "
                          "a backslash on PostgreSQL (a syntax error; the Evaluator's eval_config has one), so a run "
                          "fails at the Evaluator; use mysql (MySQL or MariaDB)")
    if config.metadata not in ("sqlite", "mysql", "managed"):
        raise ConfigError(f"metadata: must be 'sqlite', 'mysql' or 'managed', got {config.metadata!r}")
    if config.metadata == "mysql":
        server = config.metadata_server
        for key in ("host", "database", "user"):
            if not getattr(server, key):
                raise ConfigError(f"metadata_server.{key}: required by metadata: {config.metadata}")
        if not 0 <= server.port <= 65535:
            raise ConfigError(f"metadata_server.port: must be a port number (0: the server's default), got {server.port}")
    if config.example_gen not in ("csv", "bigquery"):
        raise ConfigError(f"example_gen: must be 'csv' or 'bigquery', got {config.example_gen!r}")
    if config.training not in ("local", "vertex"):
        raise ConfigError(f"training: must be 'local' or 'vertex', got {config.training!r}")
    needs_gcp = [why for why, on in (("dataflow.enabled", config.dataflow.enabled),
                                     ("training: vertex", config.training == "vertex"),
                                     ("example_gen: bigquery", config.example_gen == "bigquery")) if on]
    for key in ("project", "region"):
        if needs_gcp and not getattr(config.gcp, key):
            raise ConfigError(f"gcp.{key}: required by {needs_gcp[0]} (set it in a TFX_E2E_CONFIG overlay)")
    if config.dataflow.enabled:
        for key in ("temp_location", "staging_location"):
            if not getattr(config.dataflow, key).startswith("gs://"):
                raise ConfigError(f"dataflow.{key}: must be a gs:// path, got {getattr(config.dataflow, key)!r}")
    needs_image = [why for why, on in (("dataflow.enabled", config.dataflow.enabled),
                                       ("training: vertex", config.training == "vertex"),
                                       ("metadata: managed", config.metadata == "managed")) if on]
    if needs_image and not config.image:
        raise ConfigError(f"image: required by {needs_image[0]}: the project's image (Dockerfile) that Cloud Build "
                          f"pushes (set it in a TFX_E2E_CONFIG overlay or {ENV_IMAGE})")
    if config.training == "vertex":
        if not config.output_root.startswith("gs://"):
            raise ConfigError(f"output_root: must be a gs:// path for Vertex AI, got {config.output_root!r} "
                              "(set TFX_E2E_OUTPUT_ROOT)")
    _validate_serving(config.serving)
    _validate_rollout(config.rollout)
    _validate_continuous(config)
    _validate_monitoring(config.monitoring)
    _validate_portable(config)
    for key in ("keep_versions", "keep_runs"):
        if getattr(config.retention, key) < 0:
            raise ConfigError(f"retention.{key}: must be >= 0 (0 keeps all), got {getattr(config.retention, key)}")
    if not 1 <= config.console.port <= 65535:
        raise ConfigError(f"console.port: must be a port number within [1, 65535], got {config.console.port}")
    if not 0.0 <= config.model_card.worse_slice_margin <= 1.0:
        raise ConfigError(f"model_card.worse_slice_margin: must be within [0, 1], got {config.model_card.worse_slice_margin}")
    if config.model_card.min_slice_examples < 1:
        raise ConfigError(f"model_card.min_slice_examples: must be at least 1, got {config.model_card.min_slice_examples}")
    if config.example_gen == "bigquery" and not config.vertex.bigquery_query:
        raise ConfigError("vertex.bigquery_query: required by example_gen: bigquery")


def _validate_continuous(config: Config) -> None:
    continuous = config.continuous
    if continuous.window_spans < 1:
        raise ConfigError(f"continuous.window_spans: must be at least 1, got {continuous.window_spans}")
    if continuous.drift not in ("stop", "warn", "off"):
        raise ConfigError(f"continuous.drift: must be 'stop', 'warn' or 'off', got {continuous.drift!r}")
    if continuous.span_folders not in ("", "span", "date"):
        raise ConfigError(f"continuous.span_folders: must be '', 'span' or 'date', got {continuous.span_folders!r}")
    if continuous.window_spans > 1 and config.metadata == "managed" and not (
            config.example_gen == "bigquery" and "@window_begin_timestamp" in config.vertex.bigquery_query):
        # Refused rather than ignored: TFX 1.16's KFP v2 compiler cannot compile SpanRangeStrategy and a file
        # ExampleGen reads one span; a BigQuery query spans the window itself (pipeline/span_parameter.py).
        raise ConfigError(f"continuous.window_spans: a rolling window with metadata: managed needs example_gen: "
                          f"bigquery and a vertex.bigquery_query that starts the window at @window_begin_timestamp "
                          f"(the Vertex compiler cannot resolve a window of span folders), got {continuous.window_spans}")
    if continuous.settle_seconds < 0:
        raise ConfigError(f"continuous.settle_seconds: must be >= 0, got {continuous.settle_seconds}")
    if continuous.min_examples < 0:
        raise ConfigError(f"continuous.min_examples: must be >= 0, got {continuous.min_examples}")
    if continuous.poll_seconds <= 0:
        raise ConfigError(f"continuous.poll_seconds: must be > 0, got {continuous.poll_seconds}")
    if continuous.max_attempts < 1:
        raise ConfigError(f"continuous.max_attempts: must be at least 1, got {continuous.max_attempts}")
    if continuous.warm_start_steps < 1:
        raise ConfigError(f"continuous.warm_start_steps: must be at least 1, got {continuous.warm_start_steps}")
    retries = continuous.retries
    if retries.attempts < 1:
        raise ConfigError(f"continuous.retries.attempts: must be at least 1 (the first try), got {retries.attempts}")
    for name in ("initial_delay_seconds", "max_delay_seconds", "task_timeout_seconds"):
        if getattr(retries, name) < 0:
            raise ConfigError(f"continuous.retries.{name}: must be >= 0, got {getattr(retries, name)}")
    if config.span is not None and config.span < 0:
        raise ConfigError(f"{ENV_SPAN}: a span number is >= 0, got {config.span}")


def _validate_portable(config: Config) -> None:
    portable = config.portable
    if portable.runner not in ("", "portable", "flink", "spark"):
        raise ConfigError(f"portable.runner: must be '', 'portable', 'flink' or 'spark', got {portable.runner!r}")
    if not portable.runner:
        return
    if config.dataflow.enabled:
        raise ConfigError(f"portable.runner: {portable.runner} and dataflow.enabled both choose the Beam runner: "
                          "use one of the profiles")
    if portable.services not in ("start", "external"):
        raise ConfigError(f"portable.services: must be 'start' or 'external', got {portable.services!r}")
    for i, pool in enumerate(portable.worker_pools):
        if not _ADDRESS.fullmatch(pool):
            raise ConfigError(f"portable.worker_pools[{i}]: a worker pool's host:port, got {pool!r}")
    if portable.runner == "portable":
        if not _ADDRESS.fullmatch(portable.job_endpoint):
            raise ConfigError(f"portable.job_endpoint: the job service's host:port, got {portable.job_endpoint!r}")
        if not portable.worker_pools:
            raise ConfigError("portable.worker_pools: the portable runner needs at least one worker pool (host:port)")
        if portable.services == "start" and any(
                a.rsplit(":", 1)[0] not in ("localhost", "127.0.0.1")
                for a in [portable.job_endpoint, *portable.worker_pools]):
            raise ConfigError("portable.services: start runs the job service and worker pools on this machine's "
                              "loopback (localhost or 127.0.0.1 addresses); for services elsewhere set external")
        return
    # flink, spark: Beam's job server for them is a jar that Beam would fetch from Maven; the operator supplies it.
    if portable.runner == "flink":
        if not _ADDRESS.fullmatch(re.sub(r"^https?://", "", portable.flink_master)):
            raise ConfigError(f"portable.flink_master: the Flink JobManager's REST address host:port (e.g. "
                              f"flink-jobmanager:8081), got {portable.flink_master!r}")
        if portable.flink_version not in FLINK_VERSIONS:
            raise ConfigError(f"portable.flink_version: Beam 2.59's Flink job servers are for Flink "
                              f"{', '.join(FLINK_VERSIONS)}, got {portable.flink_version!r}")
    elif not re.fullmatch(r"spark://[A-Za-z0-9.-]+:[0-9]{1,5}", portable.spark_master_url):
        raise ConfigError(f"portable.spark_master_url: spark://host:port, got {portable.spark_master_url!r}")
    jar = portable.job_server_jar
    name = f"beam-runners-{portable.runner}-" + (f"{portable.flink_version}-" if portable.runner == "flink" else "3-")
    if not jar:
        raise ConfigError(f"portable.job_server_jar: required by the {portable.runner} runner: the path of Beam's "
                          f"job server jar ({name}job-server-2.59.0.jar), which this project does not download")
    if not is_uri(jar) and not (jar.endswith(".jar") and os.path.isfile(jar)):
        raise ConfigError(f"portable.job_server_jar: not a .jar file: {jar}")
    if not portable.worker_pools and not config.image:
        raise ConfigError(f"portable.worker_pools: the {portable.runner} runner's SDK workers need worker pools "
                          "(environment EXTERNAL) or the project's image (DOCKER, the image key); neither is set")


def _validate_monitoring(monitoring: MonitoringConfig) -> None:
    for key in ("window_minutes", "batch_size"):
        if getattr(monitoring, key) < 1:
            raise ConfigError(f"monitoring.{key}: must be at least 1, got {getattr(monitoring, key)}")
    if monitoring.min_requests < 0:
        raise ConfigError(f"monitoring.min_requests: must be >= 0, got {monitoring.min_requests}")
    for key in ("score_threshold", "max_anomaly_share"):
        if not 0.0 <= getattr(monitoring, key) <= 1.0:
            raise ConfigError(f"monitoring.{key}: must be within [0, 1], got {getattr(monitoring, key)}")
    for feature, threshold in monitoring.comparators.items():
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"monitoring.comparators.{feature}: a threshold within (0, 1], got {threshold}")
    if monitoring.on_alert not in ("none", "retrain"):
        raise ConfigError(f"monitoring.on_alert: must be 'none' or 'retrain', got {monitoring.on_alert!r}")


def _span_from_env(env: Mapping[str, str]) -> int | None:
    """The span a run reads, from TFX_E2E_SPAN (a number) or TFX_E2E_DATE (YYYY-MM-DD, a daily span)."""
    span, date = env.get(ENV_SPAN, ""), env.get(ENV_DATE, "")
    if span and date:
        raise ConfigError(f"{ENV_SPAN} and {ENV_DATE}: give one of them (the span a run reads), not both")
    if span:
        try:
            return int(span)
        except ValueError:
            raise ConfigError(f"{ENV_SPAN}: expected a span number, got {span!r}") from None
    if date:
        from pipeline.spans import span_of_date
        try:
            return span_of_date(datetime.date.fromisoformat(date))
        except ValueError:
            raise ConfigError(f"{ENV_DATE}: expected a date YYYY-MM-DD, got {date!r}") from None
    return None


def resolve_span(config: Config) -> Config:
    """`config` with `span` set to the span this run reads: the wanted one, else the newest complete span
    (0 for a flat data root). Raises pipeline.spans.SpanError, naming the span, when the wanted span is missing
    or incomplete or no span is complete. Data not on this machine (gs://, BigQuery) is left as it is."""
    if config.example_gen != "csv" or is_uri(config.data_root):
        return config
    from pipeline.spans import discover, select

    spans = discover(config.data_root, config.continuous.settle_seconds)
    return dataclasses.replace(config, span=select(spans, config.span, 1)[-1].number)


def _check_data(config: Config) -> None:
    """The pipeline's inputs exist: the schema file and data_root's CSV files or span folders (when they are on
    this machine)."""
    in_image = config.schema_path.startswith(IMAGE_ROOT)
    if not is_uri(config.schema_path) and not in_image and not os.path.isfile(config.schema_path):
        raise ConfigError(f"schema_path: file not found: {config.schema_path}")
    if config.example_gen == "csv" and not is_uri(config.data_root):
        if not os.path.isdir(config.data_root):
            raise ConfigError(f"data_root: directory not found: {config.data_root}")
        from pipeline.spans import SpanError, discover
        try:
            spans = discover(config.data_root, config.continuous.settle_seconds)
        except SpanError as e:
            raise ConfigError(str(e)) from None
        if spans and spans[0].name:  # span folders: which one a run reads is checked when it starts
            return
        csvs = sorted(glob.glob(os.path.join(config.data_root, "*.csv")))
        if not csvs:
            raise ConfigError(f"data_root: no *.csv files in {config.data_root}")
        empty = [p for p in csvs if os.path.getsize(p) == 0]
        if empty:
            raise ConfigError(f"data_root: empty CSV file(s): {', '.join(empty)}")


def _validate_serving(serving: ServingConfig) -> None:
    for key in ("rest_port", "grpc_port"):
        if not 0 <= getattr(serving, key) <= 65535:
            raise ConfigError(f"serving.{key}: must be a port number, got {getattr(serving, key)}")
    if serving.rest_port and serving.rest_port == serving.grpc_port:
        raise ConfigError(f"serving.rest_port and serving.grpc_port: must differ, both are {serving.rest_port}")
    if serving.version_policy not in ("latest", "all", "specific"):
        raise ConfigError(f"serving.version_policy: must be latest, all or specific, got {serving.version_policy!r}")
    if serving.version_policy == "specific" and not serving.versions:
        raise ConfigError("serving.versions: version_policy specific needs at least one version")
    for label, version in serving.labels.items():
        if serving.version_policy == "specific" and version not in serving.versions:
            raise ConfigError(f"serving.labels.{label}: version {version} is not in serving.versions {serving.versions}")
    for key in ("max_request_bytes", "latest_versions"):
        if getattr(serving, key) < 1:
            raise ConfigError(f"serving.{key}: must be at least 1, got {getattr(serving, key)}")
    if serving.poll_seconds <= 0:
        raise ConfigError(f"serving.poll_seconds: must be > 0, got {serving.poll_seconds}")
    for key, value in dataclasses.asdict(serving.limits).items():
        if value <= 0:
            raise ConfigError(f"serving.limits.{key}: must be > 0, got {value}")
    batching = serving.batching
    for key in ("max_batch_size", "num_batch_threads", "max_enqueued_batches", "max_enqueued_bytes"):
        if getattr(batching, key) < 1:
            raise ConfigError(f"serving.batching.{key}: must be at least 1, got {getattr(batching, key)}")
    if batching.batch_timeout_micros < 0:
        raise ConfigError(f"serving.batching.batch_timeout_micros: must be >= 0, got {batching.batch_timeout_micros}")
    if not 0.0 <= serving.request_log.sampling_rate <= 1.0:
        raise ConfigError(f"serving.request_log.sampling_rate: must be within [0, 1], got {serving.request_log.sampling_rate}")
    if serving.tf_serving_image_digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", serving.tf_serving_image_digest):
        raise ConfigError(f"serving.tf_serving_image_digest: sha256:<64 hex digits> or \"\", got "
                          f"{serving.tf_serving_image_digest!r}")
    _validate_kubernetes(serving.kubernetes)


# Kubernetes quantities (resource.Quantity): a decimal number with an optional SI or binary suffix.
_QUANTITY_SCALE = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(value: str, key: str) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", value)
    if not match:
        raise ConfigError(f"serving.kubernetes.{key}: a Kubernetes quantity (e.g. 2, 500m, 8Gi), got {value!r}")
    return float(match.group(1)) * _QUANTITY_SCALE[match.group(2) or ""]


def _validate_kubernetes(kubernetes: KubernetesConfig) -> None:
    key = "serving.kubernetes"
    if kubernetes.min_replicas < 1 or kubernetes.max_replicas < kubernetes.min_replicas:
        raise ConfigError(f"{key}.min_replicas, max_replicas: need 1 <= min_replicas <= max_replicas, got "
                          f"{kubernetes.min_replicas} and {kubernetes.max_replicas}")
    if kubernetes.target_requests_per_second <= 0:
        raise ConfigError(f"{key}.target_requests_per_second: must be > 0, got {kubernetes.target_requests_per_second}")
    for resource in ("cpu", "memory"):
        request, limit = (getattr(kubernetes, f"{resource}_{kind}") for kind in ("request", "limit"))
        if _quantity(request, f"{resource}_request") > _quantity(limit, f"{resource}_limit"):
            raise ConfigError(f"{key}.{resource}_request: {request} is more than {resource}_limit {limit}")
    if kubernetes.run_as_user < 1:
        raise ConfigError(f"{key}.run_as_user: a non-root uid (>= 1), got {kubernetes.run_as_user}")


def _validate_rollout(rollout: RolloutConfig) -> None:
    if rollout.strategy not in ("immediate", "canary", "ab"):
        raise ConfigError(f"rollout.strategy: must be immediate, canary or ab, got {rollout.strategy!r}")
    steps = rollout.steps
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise ConfigError(f"rollout.steps: increasing percentages within (0, 100] ending at 100, got {steps}")
    for key in ("step_seconds", "p99_budget_ms", "p99_factor", "available_timeout_seconds", "ab_seconds"):
        if getattr(rollout, key) <= 0:
            raise ConfigError(f"rollout.{key}: must be > 0, got {getattr(rollout, key)}")
    for key in ("min_requests", "max_failed_analyses"):
        if getattr(rollout, key) < 1:
            raise ConfigError(f"rollout.{key}: must be at least 1, got {getattr(rollout, key)}")
    for key in ("max_error_rate", "error_rate_margin", "max_score_js", "max_anomaly_share_margin"):
        if not 0.0 <= getattr(rollout, key) <= 1.0:
            raise ConfigError(f"rollout.{key}: must be within [0, 1], got {getattr(rollout, key)}")
    if rollout.grace_seconds < 0:
        raise ConfigError(f"rollout.grace_seconds: must be >= 0, got {rollout.grace_seconds}")
    if not 0 < rollout.ab_percent < 100:
        raise ConfigError(f"rollout.ab_percent: arm B's percent, within (0, 100), got {rollout.ab_percent}")


def _absolute(path: str, base: Path) -> str:
    return path if is_uri(path) else str((base / path).resolve())


def load_config(profile: str | None = None, env: Mapping[str, str] | None = None, *,
                check_data: bool = True) -> Config:
    """Loads the configuration for `profile` (default: $TFX_E2E_PROFILE, else 'local').

    check_data=False leaves out the checks that the pipeline's inputs exist (data_root, schema_path), for what
    runs without them (the model server, on a host that has only the pushed models); every key is still
    typed and validated.
    """
    env = os.environ if env is None else env
    known = {ENV_PROFILE, ENV_CONFIG, ENV_ALWAYS_RUN, ENV_IMAGE, ENV_SPAN, ENV_DATE, ENV_RUN_REASON, ENV_RUN_LOCK_FD,
             ENV_METADATA_PASSWORD, *ENV_PATHS}
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        known = ", ".join(sorted(known))
        raise ConfigError(f"environment: unknown variable(s) {', '.join(unknown)} (known: {known})")

    document = _read_yaml(CONFIG_FILE, "config")
    profiles = document.get("profiles") or {}
    profile = profile or env.get(ENV_PROFILE) or DEFAULT_PROFILE
    # Profiles compose left to right: `vertex,dataflow` is Vertex AI Pipelines with Beam on Dataflow.
    values = document.get("defaults") or {}
    for name in profile.split(","):
        if name not in profiles:
            raise ConfigError(f"{ENV_PROFILE}: unknown profile '{name}' (known: {', '.join(sorted(profiles))})")
        values = _merge(values, profiles[name] or {})
    for key in ("data_root", "output_root", "schema_path"):
        if isinstance(values.get(key), str):
            values[key] = _absolute(values[key], REPO_ROOT)
    source = f"{CONFIG_FILE.name} (profile '{profile}')"

    if env.get(ENV_CONFIG):
        overlay_path = Path(env[ENV_CONFIG])
        overlay = _read_yaml(overlay_path, ENV_CONFIG)
        for key in ("data_root", "output_root", "schema_path"):
            if isinstance(overlay.get(key), str):
                overlay[key] = _absolute(overlay[key], overlay_path.resolve().parent)
        values = _merge(values, overlay)
        source += f" + {overlay_path}"
    for variable, key in ENV_PATHS.items():
        if env.get(variable):
            values[key] = _absolute(env[variable], Path.cwd())
            source += f" + {variable}"
    if env.get(ENV_IMAGE):
        values["image"] = env[ENV_IMAGE]
        source += f" + {ENV_IMAGE}"

    if "span" in values:
        raise ConfigError(f"{source}: 'span' is not a configuration key: the span a run reads is a run parameter "
                          f"(--span N / --date YYYY-MM-DD, or {ENV_SPAN} / {ENV_DATE})")
    config = _build(Config, {**values, "profile": profile, "span": _span_from_env(env)}, "", source)
    _validate(config)
    if check_data:
        _check_data(config)
    return config


@contextlib.contextmanager
def exit_on_config_error(prefix: str = "error: configuration: ", also: tuple[type[Exception], ...] = ()):
    """Around a command's setup: a ConfigError (or one of `also`) is one line on stderr and exit status 2, never a
    traceback."""
    try:
        yield
    except (ConfigError, *also) as e:
        print(f"{prefix}{e}", file=sys.stderr)
        sys.exit(2)


def load_config_or_exit(profile: str | None = None, env: Mapping[str, str] | None = None, *,
                        check_data: bool = True) -> Config:
    """load_config() for a command: exit 2 with the error on stderr."""
    with exit_on_config_error():
        return load_config(profile, env, check_data=check_data)

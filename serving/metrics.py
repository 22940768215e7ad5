"""Prometheus metrics at TF Serving's path, under TF Serving's metric names, rendered by prometheus_client.

Names, labels and buckets are TF Serving's:
  :tensorflow:serving:request_count{model_name, model_version, API, entrypoint, status}      counter
  :tensorflow:serving:request_latency{model_name, model_version, API, entrypoint, status}    histogram (microseconds)
  :tensorflow:serving:batching_session:processed_batch_size{model_name}                    histogram (rows)
  :tensorflow:core:servable_load_events{model_name, model_version, event}                  counter
  :tensorflow:serving:available_versions{model_name}                                        gauge
  :tensorflow:serving:request_log_dropped{model_name}                                       counter (ours, in TF Serving's style)
  tfx_e2e_monitoring_*{model, ...}                                                          gauges of make monitor's
      newest window per served model, read at each scrape from <monitoring_dir>/<model>/monitoring.prom (the
      textfile it writes for node_exporter): the same names either way; an unreadable file leaves them out

prometheus_client formats the exposition and escapes every label value, so a model name taken from a URL cannot
inject lines. Request metrics are keyed by models the server knows: any other name (a 404, a random URL) is counted
under the single label value UNKNOWN_MODEL, as is a version the model never had, so clients cannot grow the series.

TF Serving's counters carry no `_total` suffix. prometheus_client's text format appends `_total` to a counter's
HELP/TYPE name, so the collector yields counters with samples under the exact name and `render` strips the suffix
from those two comment lines again (they hold only our fixed metric names; escaped label values never hold a
newline, so no sample line can start with `#`).
"""
import logging
import os
import re
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("serving.metrics")

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# Not a valid model name ([A-Za-z0-9_.-]+), so it can never collide with a real model's series.
UNKNOWN_MODEL = "<unknown>"

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
LOAD_EVENTS = ":tensorflow:core:servable_load_events"
AVAILABLE_VERSIONS = ":tensorflow:serving:available_versions"
REQUEST_LOG_DROPPED = ":tensorflow:serving:request_log_dropped"
COUNTERS = (REQUEST_COUNT, LOAD_EVENTS, REQUEST_LOG_DROPPED)
MONITORING_PREFIX = "tfx_e2e_monitoring_"
MONITORING_FILE = "monitoring.prom"
MONITORING_MAX_BYTES = 1 << 20  # a textfile of one window's gauges is a few KiB

# Microseconds, as TF Serving's request_latency histogram.
LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000)
REQUEST_LABELS = ("model_name", "model_version", "API", "entrypoint", "status")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_EVENT_LABELS = ("model_name", "model_version", "event")

# "# HELP <counter>_total ..." / "# TYPE <counter>_total counter" -> the name TF Serving exposes.
_COUNTER_COMMENT = re.compile(
    rb"^(# (?:HELP|TYPE) )(" + b"|".join(re.escape(name.encode()) for name in COUNTERS) + rb")_total(?= |$)", re.M)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, n_bounds: int):
        self.counts = [0] * (n_bounds + 1)
        self.sum = 0.0


class Metrics:
    """Thread-safe: observe and batch are called from the event loop and the batch threads.

    known_models() is evaluated at every observe (and batch / request_log_dropped): a name it does not return is
    recorded as UNKNOWN_MODEL. available_versions() is evaluated at every render (the gauge) and, for a known
    model, at observe: a version label is kept if the model has it now or had it at an earlier observe, "" is
    kept (not resolved), anything else becomes UNKNOWN_MODEL.
    """

    def __init__(self, known_models: Callable[[], Iterable[str]], available_versions: Callable[[], dict[str, list[int]]],
                 monitoring_dir: str | None = None):
        self._known_models = known_models
        self._available_versions = available_versions
        self._monitoring_dir = monitoring_dir
        self._monitoring_problems: dict[str, tuple] = {}  # path -> (mtime, size) of the file last reported unreadable
        self._lock = threading.Lock()
        self._request_count: dict[tuple, int] = defaultdict(int)
        self._latency: dict[tuple, _Histogram] = {}
        self._batches: dict[str, _Histogram] = {}
        self._load_events: dict[tuple, int] = defaultdict(int)
        self._log_dropped: dict[str, int] = defaultdict(int)
        self._seen_versions: set[tuple[str, str]] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- recording -------------------------------------------------------------------------------------------

    def _model_label(self, model: str) -> str:
        return model if model in self._known_models() else UNKNOWN_MODEL

    def _version_label(self, model: str, version: str) -> str:
        if model == UNKNOWN_MODEL:
            return UNKNOWN_MODEL
        if version == "" or (model, version) in self._seen_versions:
            return version
        if version in {str(v) for v in self._available_versions().get(model, ())}:
            with self._lock:
                self._seen_versions.add((model, version))
            return version
        return UNKNOWN_MODEL

    # observe and batch run once per request: _model_label inlined, and bisect_left finds the first bucket whose
    # upper bound is >= the value (the last, +Inf, above them all).
    def observe(self, model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        model = model if model in self._known_models() else UNKNOWN_MODEL
        key = (model, self._version_label(model, str(version)), api, entrypoint, status)
        micros = seconds * 1e6
        index = bisect_left(LATENCY_BUCKETS_US, micros)
        with self._lock:
            self._request_count[key] += 1
            histogram = self._latency.get(key)
            if histogram is None:
                histogram = self._latency[key] = _Histogram(len(LATENCY_BUCKETS_US))
            histogram.counts[index] += 1
            histogram.sum += micros

    def batch(self, model: str, rows: int) -> None:
        model = model if model in self._known_models() else UNKNOWN_MODEL
        index = bisect_left(BATCH_SIZE_BUCKETS, rows)
        with self._lock:
            histogram = self._batches.get(model)
            if histogram is None:
                histogram = self._batches[model] = _Histogram(len(BATCH_SIZE_BUCKETS))
            histogram.counts[index] += 1
            histogram.sum += rows

    def model_event(self, model: str, version: int, event: str) -> None:
        """A servable load event; model names come from the model config (validated), not from clients."""
        with self._lock:
            self._load_events[(model, str(version), event)] += 1

    def request_log_dropped(self, model: str, count: int = 1) -> None:
        model = self._model_label(model)
        with self._lock:
            self._log_dropped[model] += count

    # --- exposition ------------------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        body = generate_latest(self.registry)
        return _COUNTER_COMMENT.sub(rb"\1\2", body), CONTENT_TYPE_LATEST

    def _families(self):
        with self._lock:
            request_count = dict(self._request_count)
            latency = {key: (list(h.counts), h.sum) for key, h in self._latency.items()}
            batches = {key: (list(h.counts), h.sum) for key, h in self._batches.items()}
            load_events = dict(self._load_events)
            log_dropped = dict(self._log_dropped)

        yield _counter(REQUEST_COUNT, "The total number of requests.", REQUEST_LABELS, request_count)
        yield _histogram(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                         REQUEST_LABELS, LATENCY_BUCKETS_US, latency)
        yield _histogram(BATCH_SIZE, "Tracks the batch size distribution on processing.", ("model_name",),
                         BATCH_SIZE_BUCKETS, {(model,): value for model, value in batches.items()})
        yield _counter(LOAD_EVENTS, "The number of servable load events.", LOAD_EVENT_LABELS, load_events)
        yield _counter(REQUEST_LOG_DROPPED, "The number of sampled requests the request logger dropped "
                       "(queue full, write error or invalid model name).", ("model_name",),
                       {(model,): value for model, value in log_dropped.items()})

        available = GaugeMetricFamily(AVAILABLE_VERSIONS, "The number of versions of a model available to serve.",
                                      labels=("model_name",))
        try:
            versions = self._available_versions()
        except Exception:  # a scrape answers with the other metrics rather than failing
            log.exception("metrics: available_versions() failed")
            versions = {}
        for model, model_versions in sorted(versions.items()):
            available.add_metric((model,), len(model_versions))
        yield available
        yield from self._monitoring_families()

    def _monitoring_families(self) -> Iterable[Metric]:
        """make monitor's gauges of every known model, one family per name across models (a name twice in an
        exposition is invalid). Only tfx_e2e_monitoring_* gauges labelled with the file's own model are taken."""
        if not self._monitoring_dir:
            return
        families: dict[str, Metric] = {}
        for model in sorted(self._known_models()):
            path = os.path.join(self._monitoring_dir, model, MONITORING_FILE)
            try:
                stat = os.stat(path)
            except OSError:
                continue  # not monitored (yet)
            try:
                if stat.st_size > MONITORING_MAX_BYTES:
                    raise ValueError(f"{stat.st_size} bytes, over {MONITORING_MAX_BYTES}")
                with open(path, encoding="utf-8") as f:
                    parsed = [family for family in text_string_to_metric_families(f.read())
                              if family.name.startswith(MONITORING_PREFIX) and family.type == "gauge"]
                samples = [(family, sample) for family in parsed for sample in family.samples
                           if sample.labels.get("model") == model]
            except Exception as error:  # a malformed file never fails the scrape: reported once per version of it
                if self._monitoring_problems.get(path) != (stat.st_mtime_ns, stat.st_size):
                    self._monitoring_problems[path] = (stat.st_mtime_ns, stat.st_size)
                    log.error("metrics: monitoring gauges of %s left out: %s is unreadable: %s", model, path, error)
                continue
            for family, sample in samples:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, "gauge")
                merged.add_sample(family.name, sample.labels, sample.value)
        yield from families.values()


class _Collector:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self):
        yield from self._metrics._families()


def _counter(name: str, documentation: str, labels: tuple, values: dict) -> Metric:
    # Samples under the exact name (no `_total`), as TF Serving exposes them.
    family = Metric(name, documentation, "counter")
    for key, value in sorted(values.items()):
        family.add_sample(name, dict(zip(labels, key, strict=True)), value)
    return family


def _histogram(name: str, documentation: str, labels: tuple, bounds: tuple, values: dict) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, (counts, total) in sorted(values.items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*bounds, "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((str(bound), cumulative))
        family.add_metric(list(key), buckets, total)
    return family

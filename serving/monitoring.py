"""Prometheus metrics at TF Serving's path, and sampled request logging in TF Serving's PredictionLog format.

Metric names follow TF Serving's (`:tensorflow:serving:request_count`, `...:request_latency`), with the
labels a dashboard slices by: model_name, model_version, API (predict, classify, regress, metadata,
status), entrypoint (REST, GRPC) and status (OK or the error code).
"""
import logging
import os
import queue
import random
import threading
import time
from collections import defaultdict

log = logging.getLogger("serving.monitoring")

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# Microseconds, as TF Serving's request_latency histogram.
LATENCY_BUCKETS_US = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000)
LABELS = ("model_name", "model_version", "API", "entrypoint", "status")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._count = defaultdict(int)
        self._buckets = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS_US) + 1))
        self._sum = defaultdict(float)
        self._model_events = defaultdict(int)
        self._batches = defaultdict(lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1))
        self._batch_rows = defaultdict(int)

    def batch(self, model: str, rows: int) -> None:
        index = next((i for i, bound in enumerate(BATCH_SIZE_BUCKETS) if rows <= bound), len(BATCH_SIZE_BUCKETS))
        with self._lock:
            self._batches[model][index] += 1
            self._batch_rows[model] += rows

    def observe(self, model: str, version: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        key = (model, version, api, entrypoint, status)
        micros = seconds * 1e6
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS_US) if micros <= bound), len(LATENCY_BUCKETS_US))
        with self._lock:
            self._count[key] += 1
            self._buckets[key][index] += 1
            self._sum[key] += micros

    def model_event(self, model: str, version: int, event: str) -> None:
        with self._lock:
            self._model_events[(model, str(version), event)] += 1

    def render(self, available: dict[str, list[int]]) -> str:
        def labels(key, names=LABELS):
            return ",".join(f'{n}="{v}"' for n, v in zip(names, key, strict=True))

        with self._lock:
            lines = ["# TYPE :tensorflow:serving:request_count counter"]
            lines += [f":tensorflow:serving:request_count{{{labels(k)}}} {v}" for k, v in sorted(self._count.items())]
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for key, buckets in sorted(self._buckets.items()):
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS_US, "+Inf"), buckets, strict=True):
                    cumulative += count
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels(key)},le="{bound}"}} {cumulative}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels(key)}}} {self._sum[key]:.1f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels(key)}}} {cumulative}")
            lines.append("# TYPE :tensorflow:serving:batching_session:processed_batch_size histogram")
            for model, buckets in sorted(self._batches.items()):
                cumulative = 0
                for bound, count in zip((*BATCH_SIZE_BUCKETS, "+Inf"), buckets, strict=True):
                    cumulative += count
                    lines.append(f':tensorflow:serving:batching_session:processed_batch_size_bucket{{model_name="{model}",'
                                 f'le="{bound}"}} {cumulative}')
                lines.append(f':tensorflow:serving:batching_session:processed_batch_size_sum{{model_name="{model}"}} '
                             f'{self._batch_rows[model]}')
                lines.append(f':tensorflow:serving:batching_session:processed_batch_size_count{{model_name="{model}"}} '
                             f'{cumulative}')
            lines.append("# TYPE :tensorflow:core:servable_load_events counter")
            lines += [f':tensorflow:core:servable_load_events{{model_name="{m}",model_version="{v}",event="{e}"}} {c}'
                      for (m, v, e), c in sorted(self._model_events.items())]
        lines.append("# TYPE :tensorflow:serving:available_versions gauge")
        lines += [f':tensorflow:serving:available_versions{{model_name="{m}"}} {len(v)}' for m, v in sorted(available.items())]
        return "\n".join(lines) + "\n"


class RequestLogger:
    """Writes a sample of requests with their responses as PredictionLog records (TFRecord files).

    A background thread writes, so a request only pays for the sampling decision and building the protos.
    One file per model and server start: <directory>/<model>/prediction_log-<start time>.tfrecord.
    """

    def __init__(self, directory: str, sampling_rate: float):
        self.directory = directory
        self.sampling_rate = sampling_rate
        self._queue: queue.Queue = queue.Queue(maxsize=10000)
        self._writers = {}
        self._started = time.strftime("%Y%m%d-%H%M%S")
        self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self.written = 0
        self.dropped = 0
        if sampling_rate > 0:
            self._thread.start()

    def sampled(self) -> bool:
        return self.sampling_rate > 0 and random.random() < self.sampling_rate

    def log(self, model: str, prediction_log) -> None:
        try:
            self._queue.put_nowait((model, prediction_log))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        import tensorflow as tf

        while True:
            item = self._queue.get()
            if item is None:
                break
            model, record = item
            if model not in self._writers:
                os.makedirs(os.path.join(self.directory, model), exist_ok=True)
                path = os.path.join(self.directory, model, f"prediction_log-{self._started}.tfrecord")
                self._writers[model] = tf.io.TFRecordWriter(path)
                log.info("request log: %s (sampling rate %s)", path, self.sampling_rate)
            self._writers[model].write(record.SerializeToString())
            self._writers[model].flush()
            self.written += 1

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
        for writer in self._writers.values():
            writer.close()

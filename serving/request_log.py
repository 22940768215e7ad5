"""Sampled request logging in TF Serving's format: tensorflow.serving.PredictionLog records in TFRecord files.

A request pays for the sampling decision, building the protos and serializing them; a background thread writes.
Bounded in memory (bytes queued, including the record being written) and on disk (files rotate by size, at most
max_files per model, the oldest deleted). A record that cannot be written (queue full, disk full or any other
write error, a model name that is not a safe folder name, the logger closed) is dropped, counted in `dropped`,
reported through on_dropped(model, n) (the `request_log_dropped` metric) and logged once per kind of problem,
then at most once every LOG_EVERY_S seconds with the number dropped since. The writer thread keeps running.

Files: <directory>/<model>/prediction_log-<start>-<seq>.tfrecord, readable by tf.data.TFRecordDataset.
"""
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("serving.request_log")

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# TFRecord framing per record: length (8) + masked crc of the length (4) + data + masked crc of the data (4).
RECORD_OVERHEAD = 16
LOG_EVERY_S = 300.0
CLOSE_JOIN_S = 600.0


def valid_model_name(model: str) -> bool:
    return bool(MODEL_NAME.fullmatch(model)) and model not in (".", "..")


class _RateLimitedLog:
    """Logs the first occurrence of a problem, then at most once every LOG_EVERY_S with the count since."""

    def __init__(self, level: int, message: str, clock: Callable[[], float] = time.monotonic):
        self._level, self._message, self._clock = level, message, clock
        self._last = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, *args, exc_info=None) -> None:
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < LOG_EVERY_S:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        log.log(self._level, self._message + suffix, *args, exc_info=exc_info)


class _File:
    __slots__ = ("writer", "path", "size")

    def __init__(self, writer, path: str):
        self.writer, self.path, self.size = writer, path, 0


class RequestLogger:
    def __init__(self, directory: str, sampling_rate: float, *, max_queue_bytes: int = 64 << 20,
                 max_file_bytes: int = 64 << 20, max_files: int = 10,
                 on_dropped: Callable[[str, int], None] = lambda model, n: None):
        if max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {max_files}")
        self.directory = directory
        self.sampling_rate = sampling_rate
        self.max_queue_bytes = max_queue_bytes
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._on_dropped = on_dropped
        self._started = time.strftime("%Y%m%d-%H%M%S")
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0  # queued records plus the one being written
        self._closing = False
        self._thread: threading.Thread | None = None
        self._files: dict[str, _File] = {}
        self._seq: dict[str, int] = {}
        self.written = 0
        self.dropped = 0
        self._log_queue_full = _RateLimitedLog(logging.WARNING, "request log: queue full (%d bytes), dropping records")
        self._log_bad_name = _RateLimitedLog(logging.ERROR, "request log: refusing model name %r (not a safe folder name)")
        self._log_closed = _RateLimitedLog(logging.WARNING, "request log: closed, dropping records")
        self._log_write_error = _RateLimitedLog(logging.ERROR, "request log: cannot write for model %s, dropping records")
        self._log_prune_error = _RateLimitedLog(logging.ERROR, "request log: cannot delete old files in %s")

    def sampled(self) -> bool:
        return self.sampling_rate > 0 and random.random() < self.sampling_rate

    def log(self, model: str, record) -> None:
        """Queues a PredictionLog for writing; drops it (counted, reported) when over the memory bound."""
        if not valid_model_name(model):
            self._log_bad_name(model)
            self._drop(model)
            return
        data = record.SerializeToString()
        with self._cond:
            if self._closing:
                problem = self._log_closed
            elif self._queued_bytes + len(data) > self.max_queue_bytes:
                problem = self._log_queue_full
            else:
                problem = None
                self._queue.append((model, data))
                self._queued_bytes += len(data)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
                    self._thread.start()
                self._cond.notify()
        if problem is self._log_queue_full:
            problem(self.max_queue_bytes)
            self._drop(model)
        elif problem is not None:
            problem()
            self._drop(model)

    def close(self) -> None:
        """Waits for the writer to write every queued record, then closes the files."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout=CLOSE_JOIN_S)
        if thread.is_alive():
            with self._cond:
                left = len(self._queue)
            log.error("request log: writer still busy after %.0f s at close; %d records still queued", CLOSE_JOIN_S, left)

    # --- writer thread ---------------------------------------------------------------------------------------

    def _drop(self, model: str, count: int = 1) -> None:
        with self._cond:
            self.dropped += count
        try:
            self._on_dropped(model, count)
        except Exception:
            log.exception("request log: on_dropped callback failed")

    def _write_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    model, data = self._queue.popleft()
                try:
                    self._write(model, data)
                except Exception as error:  # disk full, read-only, permissions: drop this record, keep running
                    self._log_write_error(model, exc_info=error)
                    self._discard(model)
                    self._drop(model)
                else:
                    with self._cond:
                        self.written += 1
                finally:
                    with self._cond:
                        self._queued_bytes -= len(data)
        finally:
            for model in list(self._files):
                self._discard(model)

    def _open_writer(self, path: str):
        import tensorflow as tf

        return tf.io.TFRecordWriter(path)

    def _write(self, model: str, data: bytes) -> None:
        framed = len(data) + RECORD_OVERHEAD
        current = self._files.get(model)
        if current is not None and current.size > 0 and current.size + framed > self.max_file_bytes:
            self._discard(model)  # rotate: closing flushes it
            current = None
        if current is None:
            current = self._open(model)
        current.writer.write(data)
        current.writer.flush()
        current.size += framed

    def _open(self, model: str) -> "_File":
        folder = os.path.join(self.directory, model)
        os.makedirs(folder, exist_ok=True)
        seq = self._seq.get(model, 0)
        while True:
            path = os.path.join(folder, f"prediction_log-{self._started}-{seq:06d}.tfrecord")
            seq += 1
            if not os.path.exists(path):
                break
        self._seq[model] = seq
        current = _File(self._open_writer(path), path)
        self._files[model] = current
        if seq == 1:
            log.info("request log: %s (sampling rate %s)", path, self.sampling_rate)
        self._prune(folder, keep=path)
        return current

    def _prune(self, folder: str, keep: str) -> None:
        """Deletes the oldest files so that at most max_files remain (the one being written included).

        A failure here is logged and does not drop the record: the next rotation tries again."""
        try:
            names = sorted(name for name in os.listdir(folder)
                           if name.startswith("prediction_log-") and name.endswith(".tfrecord"))
            excess = len(names) - self.max_files
            for name in names:
                path = os.path.join(folder, name)
                if excess <= 0:
                    break
                if path == keep:
                    continue
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                excess -= 1
        except OSError as error:
            self._log_prune_error(folder, exc_info=error)

    def _discard(self, model: str) -> None:
        current = self._files.pop(model, None)
        if current is None:
            return
        try:
            current.writer.close()
        except Exception as error:
            self._log_write_error(model, exc_info=error)

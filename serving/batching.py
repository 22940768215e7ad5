"""Server-side batching of concurrent requests, with TF Serving's BatchingParameters.

Requests for the same servable and signature queue together; a batch thread takes up to max_batch_size
examples at once, concatenated along the batch dimension, and each request gets its own rows back.
A batch starts as soon as a batch thread is free: under light load a request never waits, and under
load the requests that arrive while the threads are busy form the next batch. With batch_timeout_micros
above zero, a free thread waits that long for a batch to fill (TF Serving's timeout) before it starts.
When max_enqueued_batches batches (or max_enqueued_bytes of inputs) are already waiting, a request is
refused with UNAVAILABLE, as TF Serving does. When a batch fails as a whole (a bad request, or a TensorFlow
error such as ResourceExhausted), its requests run again one by one, so only the ones that cause it fail.

An idle server (nothing running or queued, and requests arriving, on average and this time, further apart
than two batch run times) runs a request right away on the event loop: handing it to a thread costs more
than the wait it could save, and at that request rate no other request would have joined its batch. The
average matters under load: a loaded server's loop sometimes falls behind, and a single long gap after
such a stall must not send requests one by one past the batch.
"""
import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from pipeline.config import BatchingConfig
from serving.errors import ServingError


def _nbytes(inputs: dict[str, np.ndarray]) -> int:
    total = 0
    for a in inputs.values():  # a loop and map(len): no generator frames, per request
        total += sum(map(len, a.flat)) if a.dtype.kind == "O" else a.nbytes
    return total


class Batcher:
    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], executor: Executor,
                 parameters: BatchingConfig, on_batch: Callable[[int], None] = lambda rows: None):
        self._run = run
        self._executor = executor
        self._max_batch_size = parameters.max_batch_size
        self._timeout = parameters.batch_timeout_micros / 1e6
        self._max_waiting = parameters.max_enqueued_batches * parameters.max_batch_size
        self._max_waiting_bytes = parameters.max_enqueued_bytes
        self._threads = parameters.num_batch_threads
        self._pending: deque[tuple[dict[str, np.ndarray], int, asyncio.Future]] = deque()
        self._pending_rows = 0
        self._pending_bytes = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._on_batch = on_batch
        self._last_arrival = 0.0
        self._mean_gap = 1.0  # moving average of the time between requests (seconds)
        self._run_seconds = 0.001  # moving average of a batch's run time

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        if len(inputs) > 1 and any(len(v) != rows for v in inputs.values()):
            raise ServingError.invalid("inputs have different batch sizes (dimension 0)")
        if rows > self._max_batch_size:
            raise ServingError.invalid(f"Task size {rows} is larger than maximum batch size {self._max_batch_size}")
        size = _nbytes(inputs)
        if self._pending_rows + rows > self._max_waiting or self._pending_bytes + size > self._max_waiting_bytes:
            raise ServingError.unavailable("The batch scheduling queue to which this task was submitted is full")
        now = time.perf_counter()
        gap, self._last_arrival = now - self._last_arrival, now
        self._mean_gap = 0.8 * self._mean_gap + 0.2 * min(gap, 1.0)
        idle = not self._running and not self._pending and min(gap, self._mean_gap) > 2 * self._run_seconds
        if idle:
            self._on_batch(rows)
            outputs = self._run(inputs)
            self._record_run_time(time.perf_counter() - now)
            return outputs
        future = asyncio.get_running_loop().create_future()
        self._pending.append((inputs, rows, future, size))
        self._pending_rows += rows
        self._pending_bytes += size
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._pending or self._running >= self._threads:
            return
        if self._timeout and self._pending_rows < self._max_batch_size:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout)
            return
        self._start_batch()

    def _on_timeout(self) -> None:
        self._timer = None
        if self._pending and self._running < self._threads:
            self._start_batch()

    def _start_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, rows = [], 0
        while self._pending and rows + self._pending[0][1] <= self._max_batch_size:
            inputs, size, future, nbytes = self._pending.popleft()
            batch.append((inputs, size, future))
            rows += size
            self._pending_bytes -= nbytes
        self._pending_rows -= rows
        self._running += 1
        self._on_batch(rows)
        task = asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, batch)
        task.add_done_callback(lambda done: self._finish(batch, done))

    def _record_run_time(self, seconds: float) -> None:
        self._run_seconds = 0.9 * self._run_seconds + 0.1 * seconds

    def _run_batch(self, batch) -> list:
        """Each request's outputs, or the error that request alone causes."""
        started = time.perf_counter()
        try:
            return self._run_each_or_together(batch)
        finally:
            self._record_run_time(time.perf_counter() - started)

    def _run_each_or_together(self, batch) -> list:
        if len(batch) > 1:
            try:
                names = list(batch[0][0])
                merged = {name: np.concatenate([inputs[name] for inputs, _, _ in batch]) for name in names}
                outputs = self._run(merged)
            except Exception:  # noqa: BLE001 - a bad request, shapes that do not concatenate, a TensorFlow error:
                pass  # run each alone so only the requests that cause it fail
            else:
                results, start = [], 0
                for _, rows, _ in batch:
                    results.append({name: value[start:start + rows] for name, value in outputs.items()})
                    start += rows
                return results
        results = []
        for inputs, _, _ in batch:
            try:
                results.append(self._run(inputs))
            except Exception as e:  # noqa: BLE001 - handed to that request's caller
                results.append(e)
        return results

    def _finish(self, batch, done: asyncio.Future) -> None:
        self._running -= 1
        error = done.exception()
        for i, (_, _, future) in enumerate(batch):
            if future.cancelled():
                continue
            result = error if error is not None else done.result()[i]
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._schedule()

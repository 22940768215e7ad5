"""make bench-serving: the local model server's latency and throughput against the in-process limit (not a test).

One run measures, with single-example requests (one serialized tf.Example from the bundled CSV each,
rotating over --rows different rows):
  in-process  the newest pushed SavedModel called in this process, through tf.saved_model.load's serving_default
              signature (the naive reference) and as serving.server runs it (TF Serving's loader, a Session
              callable; also after 1 ms idle, as a request at concurrency 1 finds it): single-example latency and
              calls/s, and examples/s at batch 512 -- the limits no server here can beat;
  server      `python -m serving.server` as a subprocess on free ports, first with batching on, then with
              batching off (a TFX_E2E_CONFIG overlay), one after the other; against each, gRPC (grpc.aio with
              TF Serving's stubs) and REST (aiohttp) clients at concurrency 1, 16, 32, 64: C coroutines in
              one event loop, each sending requests back to back for --seconds after --warmup seconds;
  naive       after them, the naive reference for scale, re-measured here: a naive grpc.aio Predict handler
              calling the same SavedModel inline on the event loop (no executor, no batching; naive_server below,
              this file re-run with --naive-server), measured with the same gRPC client, concurrency levels
              and durations (gRPC only: it has no REST API);
  floor       last, an empty grpc.aio Predict handler that answers a fixed response without running any model
              (this file with --naive-server ... --empty), at concurrency 1 and 32: what the gRPC round trip
              alone costs this client on this machine, the least any Python gRPC server here can answer in.
Each server's predictions are first checked against the in-process ones (the benchmark stops if they
differ). The client runs in this process on the same machine as the server, as in the naive reference
measurement: on a small machine the two share the cores, which the CPU columns show. The results go to
stdout and replace the `## Serving: make bench-serving` section of docs/benchmarks.md.

    make bench-serving                                  # about 5 minutes
    python bench/bench_serving.py --seconds 1 --no-doc  # a smoke run
"""
import argparse
import asyncio
import base64
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import orjson
import portpicker
import psutil
import yaml
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from modules import contract
from pipeline.config import ConfigError, load_config
from serving import examples
from serving.metrics import PROMETHEUS_PATH
from serving.tensors import to_numpy, to_proto

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "taxi" / "data.csv"
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "## Serving: `make bench-serving`"
PYTHON = sys.executable
BATCH = 512                 # the in-process throughput reference's batch size
CHECK_ROWS = 32             # rows whose server predictions must equal the in-process ones
REQUEST_TIMEOUT = 10.0      # seconds; a slower request counts as failed
SERVER_START_TIMEOUT = 300  # importing TensorFlow and loading the model take a while on a busy machine

# The server before its rebuild along TF Serving's layers, run from a git worktree in the same run (--baseline).
BASELINE_REF = "2dd49ee"
FLOOR_CONCURRENCY = (1, 32)  # the floor is measured at one client and at 32

REFERENCE_LABELS = {
    "signature": "`tf.saved_model.load(...).signatures[\"serving_default\"]` (the in-process reference)",
    "session": "TF Serving's loader, a Session callable (how serving.server runs the model)",
    "session_idle": "the Session callable after 1 ms idle (what a request at concurrency 1 finds)",
}


class BenchError(RuntimeError):
    """Stops the benchmark with a message (the servers are killed on the way out)."""


@dataclass
class Cell:
    api: str                # "gRPC" | "REST"
    batching: bool
    concurrency: int
    completed: int          # successful requests that finished inside the measured window
    seconds: float          # the measured window
    p50_ms: float
    p99_ms: float
    failures: int           # non-OK answers and exceptions, warm-up included
    first_error: str
    client_cpu: float       # % of one core, this process, over the measured window
    server_cpu: float       # % of one core, the server process
    rows_per_batch: float | None  # the server's mean batch size over the window (None: no batches, batching off)
    kind: str = "ours"      # the server measured: "ours" (serving.server), "naive" or "floor" (the references)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


# --- inputs -------------------------------------------------------------------------------------------------------

def newest_model(base_path: str) -> tuple[int, str]:
    """The newest complete version under the model's base path, as the server would pick it."""
    versions = []
    if os.path.isdir(base_path):
        versions = [int(n) for n in os.listdir(base_path)
                    if n.isdigit() and os.path.isfile(os.path.join(base_path, n, "saved_model.pb"))]
    if not versions:
        sys.exit(f"bench-serving: no pushed model under {base_path}: run `make run` first")
    return max(versions), os.path.join(base_path, str(max(versions)))


def grpc_requests(model_name: str, serialized: list[bytes]) -> list[predict_pb2.PredictRequest]:
    requests = []
    for one in serialized:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.inputs[contract.EXAMPLES_INPUT].CopyFrom(to_proto(np.array([one], dtype=object), types_pb2.DT_STRING))
        requests.append(request)
    return requests


def rest_bodies(serialized: list[bytes]) -> list[bytes]:
    return [orjson.dumps({"instances": [{"b64": base64.b64encode(one).decode()}]}) for one in serialized]


# --- the in-process reference -------------------------------------------------------------------------------------

def _time_calls(call, serialized: list[bytes], calls: int, batches: int, idle_s: float = 0.0) -> dict:
    """Single-example latencies (each call after idle_s of sleep when given) and batch-512 throughput."""
    for one in serialized[:100]:  # the first calls initialise the runtime state
        call([one])
    latencies = np.empty(calls)
    started = time.perf_counter()
    for i in range(calls):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        call([serialized[i % len(serialized)]])
        latencies[i] = time.perf_counter() - t0
    single_wall = time.perf_counter() - started
    result = {"calls": calls, "p50_ms": np.percentile(latencies, 50) * 1e3,
              "p99_ms": np.percentile(latencies, 99) * 1e3, "calls_per_s": calls / single_wall}
    if batches:
        big = [[serialized[(b * BATCH + j) % len(serialized)] for j in range(BATCH)] for b in range(batches)]
        call(big[0])
        started = time.perf_counter()
        for batch in big:
            call(batch)
        result.update(batches=batches, examples_per_s=batches * BATCH / (time.perf_counter() - started))
    return result


def in_process(model_path: str, serialized: list[bytes], calls: int, batches: int):
    """The in-process references, and the expected outputs of the first CHECK_ROWS rows (from the signature).

    signature: tf.saved_model.load's signatures["serving_default"], tf.constant on the input and .numpy() on the
    outputs (the in-process reference); session: the same SavedModel as serving.server runs it (TF
    Serving's loader, a Session callable); session_idle: that call after 1 ms idle, as a request at concurrency 1
    finds it (the client's round trip leaves the server idle between requests)."""
    import tensorflow as tf

    from serving.loader import load_servable

    predict = tf.saved_model.load(model_path).signatures[contract.SERVING_SIGNATURE]

    def call(batch):
        return {name: value.numpy() for name, value in predict(examples=tf.constant(batch)).items()}

    servable = load_servable("bench", 0, model_path)
    signature = servable.signature(contract.SERVING_SIGNATURE)

    def session_call(batch):
        return servable.run(signature, {contract.EXAMPLES_INPUT: np.array(batch, dtype=object)})

    references = {
        "signature": _time_calls(call, serialized, calls, batches),
        "session": _time_calls(session_call, serialized, calls, batches),
        "session_idle": _time_calls(session_call, serialized, calls, 0, idle_s=0.001),
    }
    expected = [call([one]) for one in serialized[:CHECK_ROWS]]
    return references, expected, tf.__version__


# --- the server ---------------------------------------------------------------------------------------------------

def overlay_env(work: Path, batching: bool) -> dict[str, str]:
    """The environment for a server with batching forced on or off: the user's TFX_E2E_CONFIG overlay (if any)
    plus `serving: {batching: {enabled: ...}}`, written to a new overlay file (the server takes one)."""
    overlay = {}
    user = os.environ.get("TFX_E2E_CONFIG")
    if user:
        overlay = yaml.safe_load(Path(user).read_text()) or {}
        # The new file lives elsewhere: resolve the user's relative paths as the configuration loader would.
        for key in ("data_root", "output_root", "schema_path"):
            value = overlay.get(key)
            if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
                overlay[key] = str((Path(user).resolve().parent / value).resolve())
    serving = overlay["serving"] = dict(overlay.get("serving") or {})
    serving["batching"] = {**(serving.get("batching") or {}), "enabled": batching}
    path = work / f"batching-{'on' if batching else 'off'}.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return dict(os.environ, TFX_E2E_CONFIG=str(path), TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


class Server:
    """`python -m serving.server` on free loopback ports; its output goes to a log file shown on failure."""

    kind = "ours"
    label = "serving.server"

    def __init__(self, model_name: str, base_path: str, env: dict[str, str], log_path: Path):
        self.model_name, self.base_path, self.env, self.log_path = model_name, base_path, env, log_path
        self.cwd = REPO
        self.process: subprocess.Popen | None = None
        self.rest_port = self.grpc_port = 0

    def command(self) -> list[str]:
        # No model flags: the configuration's model, batching (the overlay) and metrics, as `make serve` runs.
        return [PYTHON, "-m", "serving.server", "--host", "127.0.0.1", "--rest_port", str(self.rest_port),
                "--grpc_port", str(self.grpc_port)]

    def start(self) -> None:
        self.grpc_port = portpicker.pick_unused_port()
        if self.kind in ("ours", "baseline"):
            self.rest_port = portpicker.pick_unused_port()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        # Both servers print a line starting with "serving " once their ports listen and the model is loaded.
        while not any(line.startswith("serving ") for line in self.log_path.read_text().splitlines()):
            if self.process.poll() is not None:
                raise BenchError(f"the server exited ({self.process.returncode}) before serving:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the server did not start serving in {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> int | None:
        """SIGTERM, as a process manager stops it; the exit code (0 = graceful), None if it had to be killed."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:]


class BaselineServer(Server):
    """serving.server as it was at BASELINE_REF, from a git worktree (its own code and config.yaml), same model,
    same overlay (batching on)."""

    kind = "baseline"
    label = f"serving.server at {BASELINE_REF} (before the layered rebuild)"

    def __init__(self, model_name: str, base_path: str, env: dict[str, str], log_path: Path, worktree: Path):
        super().__init__(model_name, base_path, env, log_path)
        self.cwd = worktree

    def command(self) -> list[str]:  # that server's flags
        return [PYTHON, "-m", "serving.server", "--host", "127.0.0.1", "--rest_port", str(self.rest_port),
                "--grpc_port", str(self.grpc_port), "--model_name", self.model_name, "--model_base_path",
                self.base_path]


class NaiveServer(Server):
    """The naive reference (naive_server, this file with --naive-server) on a free loopback gRPC port;
    no REST API (rest_port stays 0) and no metrics."""

    kind = "naive"
    label = "naive asyncio handler (naive reference)"

    def __init__(self, model_name: str, model_path: str, log_path: Path):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        super().__init__(model_name, model_path, env, log_path)

    def command(self) -> list[str]:
        return [PYTHON, str(Path(__file__).resolve()), "--naive-server", str(self.grpc_port), self.model_name,
                self.base_path]


class FloorServer(NaiveServer):
    """The gRPC floor: the naive server's grpc.aio Predict handler with the model call left out (a fixed response)."""

    kind = "floor"
    label = "empty grpc.aio handler (the gRPC floor)"

    def command(self) -> list[str]:
        return super().command() + ["--empty"]


# --- the naive reference server (a subprocess) -------------------------------------------------------------

def naive_server(port: int, model_name: str, model_path: str, empty: bool = False) -> None:
    """The naive reference, for scale: grpc.aio with a Predict handler that calls the SavedModel inline on the
    event loop (no executor, no batching, no checks, no metrics); serves until SIGTERM, then exits 0. With
    empty=True the handler answers probability 0 without loading or calling the model (the gRPC floor).

        python bench/bench_serving.py --naive-server PORT MODEL_NAME MODEL_PATH [--empty]  # MODEL_PATH: <base>/<v>
    """
    version = int(os.path.basename(os.path.normpath(model_path)))
    if empty:
        def probabilities(serialized):
            return np.zeros((len(serialized), 1), np.float32)
    else:
        import tensorflow as tf

        signature = tf.saved_model.load(model_path).signatures[contract.SERVING_SIGNATURE]

        def probabilities(serialized):
            return signature(examples=tf.constant(serialized, dtype=tf.string))[contract.OUTPUT_KEY].numpy()

    class NaivePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            outputs = probabilities(to_numpy(request.inputs[contract.EXAMPLES_INPUT]))  # inline: blocks the event loop
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model_name
            response.model_spec.version.value = version
            response.outputs[contract.OUTPUT_KEY].CopyFrom(to_proto(outputs, types_pb2.DT_FLOAT))
            return response

    async def serve() -> None:
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(NaivePredictionService(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"serving {model_name} version {version} "
              f"({'empty handler, the gRPC floor' if empty else 'naive asyncio handler, the naive reference'}): "
              f"gRPC 127.0.0.1:{port}", flush=True)
        await stop.wait()
        await server.stop(grace=1)

    asyncio.run(serve())


# --- clients ------------------------------------------------------------------------------------------------------

async def batch_totals(server: Server) -> tuple[float, float]:
    """The server's (rows, batches) so far, from its Prometheus batch-size histogram; (0, 0) for the reference
    servers, which have no metrics (their rows/batch shows as —)."""
    totals = {"sum": 0.0, "count": 0.0}
    if server.kind not in ("ours", "baseline"):
        return totals["sum"], totals["count"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.rest_port}{PROMETHEUS_PATH}") as response:
            text = await response.text()
    for line in text.splitlines():
        for key in totals:
            if line.startswith(f":tensorflow:serving:batching_session:processed_batch_size_{key}{{"):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals["sum"], totals["count"]


async def drive(send, count: int, concurrency: int, warmup: float, seconds: float, server: Server):
    """`concurrency` coroutines, each sending request after request (rotating over the `count` prebuilt ones)
    for warmup + seconds. Latencies and throughput count the requests that finish inside the measured
    window; failures count the whole run."""
    server_process = psutil.Process(server.process.pid)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    failures, errors = 0, []

    async def worker(k: int) -> None:
        nonlocal failures
        i = k * count // concurrency  # the coroutines start at different rows
        while (t0 := time.perf_counter()) < stop_at:
            try:
                await send(i % count)
            except Exception as e:  # noqa: BLE001 - every error is a failed request
                failures += 1
                if not errors:
                    errors.append(f"{type(e).__name__}: {str(e)[:300]}")
            else:
                t1 = time.perf_counter()
                if measure_from <= t1 <= stop_at:
                    latencies.append(t1 - t0)
            i += 1

    async def sampler():
        """CPU time of this process (the client) and of the server, and the server's batches, over the window."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        t0, client0, server0 = time.perf_counter(), time.process_time(), sum(server_process.cpu_times()[:2])
        rows0, batches0 = await batch_totals(server)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        wall = time.perf_counter() - t0
        client_cpu = (time.process_time() - client0) / wall * 100
        server_cpu = (sum(server_process.cpu_times()[:2]) - server0) / wall * 100
        rows, batches = await batch_totals(server)
        return client_cpu, server_cpu, (rows - rows0) / (batches - batches0) if batches > batches0 else None

    *_, (client_cpu, server_cpu, rows_per_batch) = await asyncio.gather(*(worker(k) for k in range(concurrency)),
                                                                        sampler())
    latencies_ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return dict(completed=len(latencies), seconds=seconds, p50_ms=float(np.percentile(latencies_ms, 50)),
                p99_ms=float(np.percentile(latencies_ms, 99)), failures=failures,
                first_error=errors[0] if errors else "", client_cpu=client_cpu, server_cpu=server_cpu,
                rows_per_batch=rows_per_batch)


def grpc_channel(server: Server) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")


def rest_session(server: Server, concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(f"http://127.0.0.1:{server.rest_port}",
                                 connector=aiohttp.TCPConnector(limit=max(100, concurrency)),
                                 timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                                 headers={"Content-Type": "application/json"})


async def rest_predict(session: aiohttp.ClientSession, path: str, body: bytes) -> dict:
    async with session.post(path, data=body) as response:
        payload = await response.read()
        if response.status != 200:
            raise BenchError(f"HTTP {response.status}: {payload[:300]!r}")
    return orjson.loads(payload)  # parsed, as a real client would (the gRPC stub parses its response too)


async def grpc_cell(server: Server, requests, concurrency, warmup, seconds):
    # One channel (one HTTP/2 connection) shared by all the coroutines.
    async with grpc_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def send(i):
            await stub.Predict(requests[i], timeout=REQUEST_TIMEOUT)

        return await drive(send, len(requests), concurrency, warmup, seconds, server)


async def rest_cell(server: Server, bodies, concurrency, warmup, seconds):
    # One session; its connection pool allows at least `concurrency` keep-alive connections.
    async with rest_session(server, concurrency) as session:
        path = f"/v1/models/{server.model_name}:predict"

        async def send(i):
            await rest_predict(session, path, bodies[i])

        return await drive(send, len(bodies), concurrency, warmup, seconds, server)


async def check_predictions(server: Server, requests, bodies, expected) -> None:
    """The first CHECK_ROWS rows, sent all at once (so that batching merges them) over gRPC and REST (gRPC only
    for the naive server): each answer must equal the in-process prediction for its own row."""
    names = list(expected[0])
    async with grpc_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        responses = await asyncio.gather(*(stub.Predict(requests[i], timeout=REQUEST_TIMEOUT)
                                           for i in range(CHECK_ROWS)))
    grpc_outputs = [{name: to_numpy(r.outputs[name]) for name in names} for r in responses]
    checks = [("gRPC", grpc_outputs)]
    if server.kind not in ("ours", "baseline"):
        return compare(checks, expected, names)
    async with rest_session(server, CHECK_ROWS) as session:
        path = f"/v1/models/{server.model_name}:predict"
        payloads = await asyncio.gather(*(rest_predict(session, path, bodies[i]) for i in range(CHECK_ROWS)))
    # Row format: one output gives its rows directly; several give a list of {name: value} objects.
    rest_outputs = [{names[0]: np.asarray(p["predictions"])} if len(names) == 1 else
                    {name: np.asarray([row[name] for row in p["predictions"]]) for name in names} for p in payloads]
    compare(checks + [("REST", rest_outputs)], expected, names)


def compare(checks, expected, names) -> None:
    for api, outputs in checks:
        for row, (got, want) in enumerate(zip(outputs, expected, strict=True)):
            for name in names:
                if got[name].size != want[name].size or \
                        not np.allclose(got[name].reshape(want[name].shape), want[name], atol=1e-5):
                    raise BenchError(f"{api} prediction for row {row}, output '{name}': {got[name].tolist()} != "
                                     f"in-process {want[name].tolist()}")


def run_servers(servers: list[tuple[Server, bool]], requests, bodies, expected, args, concurrencies: list[int],
                rounds: int = 1):
    """Starts the servers (each with its batching setting), checks their predictions (not the floor's: it runs no
    model), measures every (concurrency, API) cell on each in turn, stops them with SIGTERM. Servers measured
    together alternate cell by cell, so that drift on a shared machine hits them alike; only the measured one is
    busy; with `rounds` > 1 every cell is measured that many times, the servers' order reversed in odd rounds (one
    cell of 8 s varies by 10-20 % here). The reference servers are measured over gRPC only (they have no REST API).
    Returns every cell, in the order measured (the first round's first), and the exit codes."""
    def label(server, batching):
        return f"server, batching {'on' if batching else 'off'}" if server.kind == "ours" else server.label

    cells, exit_codes = [], {}
    try:
        for server, batching in servers:
            print(f"{label(server, batching)}: starting ...", flush=True)
            server.start()
            if server.kind != "floor":
                asyncio.run(check_predictions(server, requests, bodies, expected))
                print(f"{label(server, batching)}: {CHECK_ROWS} rows' predictions equal the in-process ones",
                      flush=True)
        for round_, concurrency, api in itertools.product(range(rounds), concurrencies, ("gRPC", "REST")):
            for server, batching in (servers if round_ % 2 == 0 else servers[::-1]):
                if api == "REST" and server.kind not in ("ours", "baseline"):
                    continue
                if api == "gRPC":
                    coroutine = grpc_cell(server, requests, concurrency, args.warmup, args.seconds)
                else:
                    coroutine = rest_cell(server, bodies, concurrency, args.warmup, args.seconds)
                # one event loop per cell
                cell = Cell(api, batching, concurrency, **asyncio.run(coroutine), kind=server.kind)
                cells.append(cell)
                print(f"  {label(server, batching):<40} {api:4} c={concurrency:<3} {cell.rate:8.0f} req/s  p50 "
                      f"{cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  failures {cell.failures}  rows/batch "
                      f"{rows(cell)}", flush=True)
        for server, batching in servers:
            exit_codes[(server.kind, batching)] = code = server.stop()
            print(f"{label(server, batching)}: SIGTERM -> exit code {code}", flush=True)
            if code != 0:
                print(server.log_tail(2000), file=sys.stderr)
        return cells, exit_codes
    finally:
        for server, _ in servers:
            server.kill()


# --- the report ---------------------------------------------------------------------------------------------------

def find(cells, api, batching, concurrency, kind="ours") -> Cell | None:
    """A serving.server cell, or a reference server's: kind "baseline" (batching True), "naive" or "floor" (gRPC,
    batching False)."""
    return next((c for c in cells if (c.api, c.batching, c.concurrency, c.kind) == (api, batching, concurrency, kind)),
                None)


def rows(cell: Cell) -> str:
    return "—" if cell.rows_per_batch is None else f"{cell.rows_per_batch:.1f}"


def report(args, model_name, version, reference, tf_version, cells, exit_codes, reference_exit_codes, batching_config,
           load_before: float) -> str:
    command = "make bench-serving" if len(sys.argv) == 1 else f"python bench/bench_serving.py {' '.join(sys.argv[1:])}"
    # The load average says whether something else was running (the machine may be shared).
    load = f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    machine = (f"{platform.node()}: {platform.platform()}, {psutil.cpu_count()} CPUs ({load}), "
               f"Python {platform.python_version()}, TensorFlow {tf_version}, grpcio {grpc.__version__}, "
               f"aiohttp {aiohttp.__version__}")
    b = batching_config
    sig, ses, idle = reference["signature"], reference["session"], reference["session_idle"]
    lines = [
        HEADING, "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}; command: `{command}` "
        "(bench/bench_serving.py).",
        f"Model: {model_name} version {version}. Every request carries one serialized tf.Example, rotating over "
        f"{args.rows:,} rows of data/taxi/data.csv; {args.seconds:g} s measured per cell after {args.warmup:g} s of "
        "warm-up; the client (Python asyncio, one event loop, one gRPC channel / aiohttp session) runs on the same "
        f"machine as the server. Batching on: max_batch_size {b.max_batch_size}, batch_timeout_micros "
        f"{b.batch_timeout_micros}, num_batch_threads {b.num_batch_threads}. rows/batch: the server's mean batch "
        "size over the measured window (its Prometheus batch histogram). CPU columns: % of one core over the measured "
        "window (client: the benchmark process). The naive asyncio handler is the naive reference, re-measured "
        "here after serving.server with the same client, concurrency levels and durations (gRPC only): a grpc.aio "
        "Predict handler calling `signatures[\"serving_default\"]` inline on the event loop, no executor, no batching "
        f"(naive_server in bench/bench_serving.py). The baseline is serving.server as it was at {BASELINE_REF}, "
        "before its rebuild along TF Serving's layers, run from a git worktree with batching on, measured cell by cell "
        "alternating with ours (batching on) so that machine drift hits both alike. The empty handler is "
        "that server with the model call left out (a fixed response): the gRPC round trip alone with this client, the "
        "floor under any Python gRPC server here.",
        "",
        "In-process references (one call at a time, in the benchmark process):", "",
        f"- {REFERENCE_LABELS['signature']}: single example p50 {sig['p50_ms']:.3f} ms, p99 {sig['p99_ms']:.3f} ms, "
        f"{sig['calls_per_s']:,.0f} calls/s ({sig['calls']:,} calls); batch {BATCH}: {sig['examples_per_s']:,.0f} "
        f"examples/s ({sig['batches']} batches)",
        f"- {REFERENCE_LABELS['session']}: single example p50 {ses['p50_ms']:.3f} ms, p99 {ses['p99_ms']:.3f} ms, "
        f"{ses['calls_per_s']:,.0f} calls/s; batch {BATCH}: {ses['examples_per_s']:,.0f} examples/s",
        f"- {REFERENCE_LABELS['session_idle']}: single example p50 {idle['p50_ms']:.3f} ms, p99 {idle['p99_ms']:.3f} ms "
        f"({idle['calls']:,} calls)", "",
        "| server | API | batching | concurrency | req/s | p50 ms | p99 ms | failed | rows/batch | client CPU | "
        "server CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    modes = {"naive": "none (inline)", "floor": "none (no model)"}
    labels = {"ours": Server.label, "baseline": BaselineServer.label, "naive": NaiveServer.label,
              "floor": FloorServer.label}
    for batching, kind in ((True, "ours"), (True, "baseline"), (False, "ours"), (False, "naive"), (False, "floor")):
        for concurrency in args.concurrency:
            for api in ("gRPC", "REST"):
                c = find(cells, api, batching, concurrency, kind)
                if c:
                    server = labels[kind]
                    mode = modes.get(kind, "on" if batching else "off")
                    lines.append(f"| {server} | {api} | {mode} | {concurrency} | {c.rate:,.0f} | "
                                 f"{c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.failures} | {rows(c)} | {c.client_cpu:.0f}% | "
                                 f"{c.server_cpu:.0f}% |")

    lines += ["", "Ratios:", ""]
    for batching in (True, False):
        c1 = find(cells, "gRPC", batching, 1)
        if c1:
            lines.append(f"- gRPC p50 at concurrency 1, batching {'on' if batching else 'off'}: {c1.p50_ms:.3f} ms = "
                         f"the session call after idle ({idle['p50_ms']:.3f} ms) "
                         f"+{c1.p50_ms - idle['p50_ms']:.3f} ms of gRPC, server and client")
    n1, f1 = find(cells, "gRPC", False, 1, "naive"), find(cells, "gRPC", False, 1, "floor")
    if f1:
        lines.append(f"- gRPC floor at concurrency 1: the empty handler's p50 {f1.p50_ms:.3f} ms + the session call "
                     f"after idle ({idle['p50_ms']:.3f} ms) = {f1.p50_ms + idle['p50_ms']:.3f} ms, the least a server "
                     "running the model in-process can answer in with this client")
    if n1:
        lines.append(f"- gRPC p50 at concurrency 1, naive asyncio handler: {n1.p50_ms:.3f} ms = "
                     f"the signature call ({sig['p50_ms']:.3f} ms) +{n1.p50_ms - sig['p50_ms']:.3f} ms of gRPC, "
                     "server and client")
    for batching in (True, False):
        ratios = []
        for concurrency in args.concurrency:
            g, r = find(cells, "gRPC", batching, concurrency), find(cells, "REST", batching, concurrency)
            if g and r and g.rate:
                ratios.append(f"c={concurrency} {r.rate / g.rate:.2f}")
        lines.append(f"- REST/gRPC throughput, batching {'on' if batching else 'off'}: {', '.join(ratios)}")
    # Against the naive reference, re-measured in this run.
    versus = []
    for concurrency in args.concurrency:
        g, n = find(cells, "gRPC", True, concurrency), find(cells, "gRPC", False, concurrency, "naive")
        if g and n and n.rate:
            versus.append(f"c={concurrency} {g.rate / n.rate:.2f} ({g.rate:,.0f} vs {n.rate:,.0f})")
    if versus:
        lines.append(f"- our gRPC (batching on) req/s ÷ naive asyncio handler req/s: {', '.join(versus)}")
    g1, n1 = find(cells, "gRPC", True, 1), find(cells, "gRPC", False, 1, "naive")
    if g1 and n1:
        lines.append(f"- gRPC p50 at concurrency 1, ours (batching on) vs naive asyncio handler: {g1.p50_ms:.3f} ms vs "
                     f"{n1.p50_ms:.3f} ms ({g1.p50_ms - n1.p50_ms:+.3f} ms)")
    best = max((c for c in cells if c.api == "gRPC" and c.kind == "ours"), key=lambda c: c.rate, default=None)
    if best:
        lines.append(f"- best gRPC throughput {best.rate:,.0f} req/s (batching {'on' if best.batching else 'off'}, "
                     f"c={best.concurrency}) = {best.rate / ses['calls_per_s']:.2f}× the in-process "
                     f"single-example session calls/s, {best.rate / ses['examples_per_s']:.3f}× the in-process "
                     f"batch-{BATCH} examples/s")

    # Against the server before the rebuild, measured in this run: the median of the rounds' ratios.
    for api in ("gRPC", "REST"):
        parts = []
        for concurrency in args.concurrency:
            ours_rounds = [c for c in cells if (c.api, c.batching, c.concurrency, c.kind) == (api, True, concurrency, "ours")]
            base_rounds = [c for c in cells if (c.api, c.concurrency, c.kind) == (api, concurrency, "baseline")]
            ratios = [c.rate / b.rate for c, b in zip(ours_rounds, base_rounds, strict=True) if b.rate]
            if ratios:
                parts.append(f"c={concurrency} {statistics.median(ratios):.2f} (rounds "
                             f"{'/'.join(f'{r:.2f}' for r in ratios)})")
        if parts:
            lines.append(f"- {api} req/s, batching on, ÷ the baseline ({BASELINE_REF}), median of "
                         f"{args.rounds} interleaved rounds: {', '.join(parts)}")
    ours = [c for c in cells if c.kind == "ours"]
    failures = sum(c.failures for c in ours)
    first_error = next((c for c in ours if c.first_error), None)
    lines.append(f"- failed requests (serving.server, batching on and off, warm-up included): {failures:,}"
                 + (f" (first: {first_error.api} c={first_error.concurrency}: `{first_error.first_error}`)"
                    if first_error else ""))
    codes = ", ".join(f"batching {k}: {v}" for k, v in exit_codes.items())
    lines.append(f"- exit codes after SIGTERM: {codes}")
    references = [c for c in cells if c.kind != "ours"]
    reference_error = next((c for c in references if c.first_error), None)
    codes = ", ".join(f"{k} {v}" for k, v in reference_exit_codes.items())
    lines += ["", f"Reference servers: {sum(c.failures for c in references):,} failed requests"
              + (f", first: {reference_error.kind} c={reference_error.concurrency}: `{reference_error.first_error}`"
                 if reference_error else "")
              + f"; SIGTERM exit codes: {codes}.", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replaces this benchmark's section (from HEADING to the next `## ` heading) or appends it; keeps the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach table says how it was produced.\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == HEADING), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell, not measured (default 2)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 32, 64],
                        help="comma-separated concurrency levels (default 1,16,32,64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the cells measured against the baseline, order reversed in odd ones (default 3)")
    parser.add_argument("--rows", type=int, default=1000, help="distinct rows to rotate over (default 1000)")
    parser.add_argument("--calls", type=int, default=2000, help="in-process single-example calls (default 2000)")
    parser.add_argument("--batches", type=int, default=20, help=f"in-process batches of {BATCH} (default 20)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the markdown file to update (default docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave the markdown file alone")
    parser.add_argument("--naive-server", nargs=3, metavar=("PORT", "MODEL_NAME", "MODEL_PATH"),
                        help="internal: run the naive reference server (the benchmark starts it itself)")
    parser.add_argument("--empty", action="store_true", help="internal: with --naive-server, the gRPC floor")
    parser.add_argument("--baseline", default=BASELINE_REF,
                        help=f"git ref of the server to compare with in the same run (default {BASELINE_REF}); '' skips")
    args = parser.parse_args()
    if args.naive_server:
        port, name, path = args.naive_server
        naive_server(int(port), name, path, args.empty)
        return
    load_before = os.getloadavg()[0]
    if args.rows < CHECK_ROWS:
        parser.error(f"--rows must be at least {CHECK_ROWS}")

    try:
        config = load_config()
    except ConfigError as e:
        sys.exit(f"bench-serving: configuration: {e}")
    version, model_path = newest_model(config.serving_model_dir)
    serialized = examples.serialize(examples.read_csv_rows(str(DATA), args.rows),
                                    examples.load_schema(config.schema_path))
    requests, bodies = grpc_requests(config.model_name, serialized), rest_bodies(serialized)

    print(f"in-process reference: {model_path} ...", flush=True)
    reference, expected, tf_version = in_process(model_path, serialized, args.calls, args.batches)
    for key, measured in reference.items():
        print(f"  {REFERENCE_LABELS[key]}: single example p50 {measured['p50_ms']:.3f} ms, "
              f"{measured['calls_per_s']:,.0f} calls/s", flush=True)

    cells, exit_codes = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        try:
            # Ours with batching on, measured cell by cell against the baseline (the server before the layered
            # rebuild, from a git worktree); then batching off; then the references, never two busy at once.
            paired = [(Server(config.model_name, config.serving_model_dir, overlay_env(work, True),
                              work / "server-batching-on.log"), True)]
            if args.baseline:
                worktree = work / "baseline"
                subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.baseline],
                               check=True, capture_output=True)
                paired.append((BaselineServer(config.model_name, config.serving_model_dir, overlay_env(work, True),
                                              work / "server-baseline.log", worktree), True))
            try:
                measured, codes = run_servers(paired, requests, bodies, expected, args, args.concurrency,
                                              args.rounds if args.baseline else 1)
            finally:
                if args.baseline:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                                   check=False, capture_output=True)
            cells += measured
            exit_codes["on"] = codes[("ours", True)]
            reference_exit_codes = {BaselineServer.label: codes[("baseline", True)]} if args.baseline else {}
            off = Server(config.model_name, config.serving_model_dir, overlay_env(work, False),
                         work / "server-batching-off.log")
            measured, codes = run_servers([(off, False)], requests, bodies, expected, args, args.concurrency)
            cells += measured
            exit_codes["off"] = codes[("ours", False)]
            floor_concurrency = [c for c in args.concurrency if c in FLOOR_CONCURRENCY]
            for server_class, concurrencies in ((NaiveServer, args.concurrency), (FloorServer, floor_concurrency)):
                server = server_class(config.model_name, model_path, work / f"server-{server_class.kind}.log")
                measured, codes = run_servers([(server, False)], requests, bodies, expected, args, concurrencies)
                cells += measured
                reference_exit_codes[server_class.label] = codes[(server_class.kind, False)]
        except BenchError as e:
            sys.exit(f"bench-serving: {e}")

    section = report(args, config.model_name, version, reference, tf_version, cells, exit_codes, reference_exit_codes,
                     config.serving.batching, load_before)
    print("\n" + section)
    if not args.no_doc:
        write_section(args.doc, section)
        print(f"written to {args.doc}")


if __name__ == "__main__":
    main()

"""The local model server: TF Serving's REST and gRPC APIs over the versions the pipeline pushed.

    make serve                        # the project's configuration: 127.0.0.1:8501 (REST), :8500 (gRPC)
    python -m serving.server --model_base_path output/serving/chicago_taxi --port 8500 --rest_api_port 8501

For where TF Serving cannot run (no Docker, macOS/ARM, CI); in production, TF Serving on GPU (serving/deploy/).
Without model flags, settings come from the configuration's `serving` section (pipeline/config.yaml and the
TFX_E2E_* overrides; no data root or schema needed). With TF Serving's model flags (--model_base_path or
--model_config_file) the command line means what it means to tensorflow_model_server: batching only with
--enable_batching, metrics only with a --monitoring_config_file that enables them, the model config file read
once unless --model_config_file_poll_wait_seconds is set.
"""
import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace

import grpc
from aiohttp import web
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from pipeline.config import BatchingConfig, Config, ServingLimitsConfig
from serving import policy
from serving.config_protos import BatchingParameters, MonitoringConfig, read_text_proto
from serving.core import CoreOptions, ServingCore
from serving.errors import ServingError
from serving.grpc_api import InFlight, ModelService, PredictionService
from serving.manager import ModelManager, Polling
from serving.metrics import PROMETHEUS_PATH, Metrics
from serving.request_log import RequestLogger
from serving.rest import RestApi

log = logging.getLogger("serving.server")

SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Listen:
    host: str
    rest_port: int
    grpc_port: int
    grpc_socket_path: str
    max_request_bytes: int
    limits: ServingLimitsConfig
    metrics_path: str | None
    rest_timeout: float | None
    grpc_arguments: tuple[tuple[str, object], ...]
    tensor_content: bool


def _flag_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = {"nargs": "?", "const": True, "type": _flag_bool}
    parser.add_argument("--host", help="address to bind (default: serving.host, 127.0.0.1)")
    parser.add_argument("--port", "--grpc_port", type=int, dest="grpc_port", help="gRPC; default: serving.grpc_port")
    parser.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this Unix socket")
    parser.add_argument("--rest_api_port", "--rest_port", type=int, dest="rest_port", help="default: serving.rest_port")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=0, help="REST request deadline; 0 = none")
    parser.add_argument("--model_name", help="default: model_name")
    parser.add_argument("--model_base_path", help="default: <output_root>/serving/<model_name>")
    parser.add_argument("--model_config_file", help="TF Serving's ModelServerConfig text file")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float,
                        help="re-read the model config file this often; 0 = once")
    parser.add_argument("--file_system_poll_wait_seconds", type=float,
                        help="look for new versions this often; 0 = once (default: serving.poll_seconds)")
    parser.add_argument("--max_num_load_retries", type=int, default=5)
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                        help="first retry of a failed load after this long, then doubling")
    parser.add_argument("--enable_batching", **flag, help="batch concurrent requests")
    parser.add_argument("--batching_parameters_file", default="", help="BatchingParameters text file")
    parser.add_argument("--monitoring_config_file", default="", help="MonitoringConfig text file (Prometheus)")
    parser.add_argument("--grpc_channel_arguments", default="", help="key=value,... gRPC server channel arguments")
    parser.add_argument("--enable_signature_method_name_check", **flag, default=False,
                        help="Classify/Regress only on signatures of that method_name")
    parser.add_argument("--enable_serialization_as_tensor_content", **flag, default=False,
                        help="Predict outputs in tensor_content instead of the typed value fields")
    parser.add_argument("--allow_any_model_base_path", **flag, default=False,
                        help="let HandleReloadConfigRequest name base paths outside the configured model roots")
    return parser.parse_args(argv)


def _grpc_arguments(text: str) -> tuple[tuple[str, object], ...]:
    arguments = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ServingError.invalid(f"--grpc_channel_arguments: '{item}' is not key=value")
        value = value.strip()
        arguments.append((key.strip(), int(value) if value.lstrip("-").isdigit() else value))
    return tuple(arguments)


def _batching(args, config: Config, tf_serving_style: bool) -> BatchingConfig | None:
    enabled = args.enable_batching if args.enable_batching is not None else (
        False if tf_serving_style else config.serving.batching.enabled)
    if not enabled:
        return None
    batching = config.serving.batching
    if args.batching_parameters_file:
        params = read_text_proto(args.batching_parameters_file, BatchingParameters)
        batching = replace(batching, **{key: getattr(params, key).value for key in (
            "max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
            if params.HasField(key)})
        for key in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(batching, key) < 1:
                raise ServingError.invalid(f"{args.batching_parameters_file}: {key} must be at least 1")
    return batching


def _metrics_path(args, tf_serving_style: bool) -> str | None:
    if not args.monitoring_config_file:
        return None if tf_serving_style else PROMETHEUS_PATH
    prometheus = read_text_proto(args.monitoring_config_file, MonitoringConfig).prometheus_config
    return (prometheus.path or PROMETHEUS_PATH) if prometheus.enable else None


def build(config: Config, args: argparse.Namespace) -> tuple[ServingCore, Listen]:
    """The core and what to listen on, from the configuration and the flags; ServingError on a bad flag or file."""
    serving = config.serving
    tf_serving_style = bool(args.model_config_file or args.model_base_path)
    config_file = args.model_config_file or serving.model_config_file
    if config_file:
        model_config = policy.read_model_config_file(config_file)
    else:
        model_config = policy.single_model_config(
            args.model_name or config.model_name, os.path.abspath(args.model_base_path or config.serving_model_dir),
            serving.version_policy, serving.latest_versions, serving.versions, serving.labels)
    files = serving.poll_seconds if args.file_system_poll_wait_seconds is None else args.file_system_poll_wait_seconds
    config_poll = args.model_config_file_poll_wait_seconds
    if config_poll is None:
        config_poll = 0.0 if tf_serving_style else serving.poll_seconds
    polling = Polling(files, config_poll, args.load_retry_interval_micros / 1e6, args.max_num_load_retries)
    # The canary and A/B strategies: the rollout record beside each model's versions routes its traffic (serving/rollout.py).
    manager = ModelManager(model_config, polling, config_file, canary=config.rollout.strategy in ("canary", "ab"))
    # make monitor's newest gauges per model are read at each scrape (serving/metrics.py).
    metrics = Metrics(manager.known_models, manager.available_versions, os.path.join(config.output_root, "monitoring"))
    log_dir = serving.request_log.path or os.path.join(config.output_root, "request_logs")
    request_logger = RequestLogger(log_dir, serving.request_log.sampling_rate, on_dropped=metrics.request_log_dropped)
    options = CoreOptions(serving.max_request_bytes, _batching(args, config, tf_serving_style),
                          bool(args.enable_signature_method_name_check),
                          any_model_base_path=bool(args.allow_any_model_base_path))
    core = ServingCore(manager, options, request_logger, metrics)
    listen = Listen(
        args.host or serving.host, serving.rest_port if args.rest_port is None else args.rest_port,
        serving.grpc_port if args.grpc_port is None else args.grpc_port, args.grpc_socket_path,
        serving.max_request_bytes, serving.limits, _metrics_path(args, tf_serving_style),
        args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None,
        _grpc_arguments(args.grpc_channel_arguments), bool(args.enable_serialization_as_tensor_content))
    return core, listen


class _Refused(asyncio.Protocol):
    def connection_made(self, transport):
        transport.close()


def _limited(server: web.Server, limit: int):
    """aiohttp's protocol factory, closing connections beyond `limit` at once."""
    return lambda: _Refused() if len(server.connections) >= limit else server()


async def serve(core: ServingCore, listen: Listen, ready=None) -> None:
    # No SO_REUSEPORT: a second server on the same port must fail, not share it silently.
    options = [("grpc.max_receive_message_length", listen.max_request_bytes), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0), ("grpc.max_connection_idle_ms", int(listen.limits.idle_timeout_seconds * 1000)),
               *listen.grpc_arguments]
    grpc_server = grpc.aio.server(options=options)
    in_flight = InFlight(listen.limits.max_concurrent_requests)  # our own count: grpc's limiter costs more per call
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, listen.max_request_bytes, listen.tensor_content, in_flight), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, in_flight), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{listen.host}:{listen.grpc_port}")
    if listen.grpc_socket_path:
        grpc_server.add_insecure_port(f"unix:{listen.grpc_socket_path}")
    await grpc_server.start()

    rest = RestApi(core, listen.max_request_bytes, listen.limits.body_timeout_seconds,
                   listen.limits.max_concurrent_requests, listen.metrics_path, listen.rest_timeout)
    # aiohttp's low-level server: every path reaches RestApi (a router would answer odd paths itself), which reads
    # bodies under its own size and time limits.
    def request_factory(message, payload, protocol, writer, task):  # bodies above the limit raise on read
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=listen.max_request_bytes)

    server = web.Server(rest.handle, request_factory=request_factory, access_log=None,
                        keepalive_timeout=listen.limits.idle_timeout_seconds)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        rest_server = await loop.create_server(_limited(runner.server, listen.limits.max_connections), listen.host,
                                               listen.rest_port, reuse_address=True)
    except OSError:
        await runner.cleanup()
        await grpc_server.stop(None)
        raise
    rest_port = rest_server.sockets[0].getsockname()[1]
    metrics = f", metrics http://{listen.host}:{rest_port}{listen.metrics_path}" if listen.metrics_path else ""
    print(f"serving {', '.join(core.model_names())}: REST http://{listen.host}:{rest_port}/v1/models/..., "
          f"gRPC {listen.host}:{grpc_port}{metrics}", flush=True)
    if ready:
        ready(rest_port, grpc_port)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down: finishing in-flight requests", flush=True)
    rest_server.close()
    # aiohttp's shutdown stops reading from connections at once: let requests whose bodies are still arriving
    # finish first, within the same grace as gRPC's.
    await asyncio.gather(rest.drain(SHUTDOWN_GRACE_SECONDS), grpc_server.stop(grace=SHUTDOWN_GRACE_SECONDS))
    await runner.cleanup()
    core.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.config import exit_on_config_error, load_config

    with exit_on_config_error("error: ", also=(ServingError,)):
        config = load_config(check_data=False)
        core, listen = build(config, args)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    log.info("TensorFlow %s on %s", tf.__version__, f"{len(gpus)} GPU(s)" if gpus else "CPU")
    core.manager.start()
    try:
        asyncio.run(serve(core, listen))
    except (OSError, RuntimeError) as e:  # asyncio: OSError; grpc: RuntimeError("Failed to bind ...")
        print(f"error: cannot listen on {listen.host} (REST {listen.rest_port}, gRPC {listen.grpc_port}): "
              f"{getattr(e, 'strerror', None) or e} (is another server on these ports?)", file=sys.stderr)
        core.close()
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The local model server: TF Serving's REST and gRPC APIs over the versions the pipeline pushed.

    make serve                         # python -m serving.server: 127.0.0.1:8501 (REST), 127.0.0.1:8500 (gRPC)
    python -m serving.server --rest_port 9001 --grpc_port 9000 --model_config_file models.config

For where TF Serving cannot run (no Docker, macOS/ARM, CI); in production, TF Serving on GPU (serving/deploy/).
The same clients work against both: REST /v1/models/... (status, metadata, :predict, :classify,
:regress), gRPC tensorflow.serving.PredictionService and ModelService, Prometheus metrics at
/monitoring/prometheus/metrics. Settings come from pipeline/config.yaml's `serving` section, with the
same TFX_E2E_* overrides as the pipeline; flags named like TF Serving's override them.
"""
import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import orjson
from aiohttp import web
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pipeline.config import BatchingConfig
from serving import tensors
from serving.batching import Batcher
from serving.errors import ServingError
from serving.models import ModelManager, Servable, Signature
from serving.monitoring import PROMETHEUS_PATH, Metrics, RequestLogger

log = logging.getLogger("serving.server")

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
                          re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def from_proto(cls, spec) -> "ModelSpec":
        choice = spec.WhichOneof("version_choice")
        return cls(spec.name, spec.version.value if choice == "version" else None,
                   spec.version_label if choice == "version_label" else None)


class ServingCore:
    """What both APIs call: resolve the servable, check the request against its signature, run (batched)."""

    def __init__(self, manager: ModelManager, batching: BatchingConfig | None, request_logger: RequestLogger,
                 metrics: Metrics, num_threads: int = 2):
        self.manager = manager
        self.batching = batching
        self.request_logger = request_logger
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=batching.num_batch_threads if batching else num_threads,
                                           thread_name_prefix="batch")

    async def _run(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray]):
        if self.batching and signature.batchable:
            batcher = servable.batchers.get(signature.name)
            if batcher is None:
                batcher = servable.batchers[signature.name] = Batcher(
                    lambda batch: servable.run(signature, batch), self.executor, self.batching.max_batch_size,
                    self.batching.batch_timeout_micros, self.batching.max_enqueued_batches,
                    self.batching.num_batch_threads, lambda rows: self.metrics.batch(servable.name, rows))
            return await batcher.submit(inputs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, servable.run, signature, inputs)

    async def predict(self, spec: ModelSpec, signature_name: str, inputs: dict[str, np.ndarray],
                      output_filter=()) -> tuple[Servable, Signature, dict[str, np.ndarray]]:
        servable = self.manager.resolve(spec.name, spec.version, spec.label)
        signature = servable.signature(signature_name)
        unknown, missing = sorted(set(inputs) - set(signature.inputs)), sorted(set(signature.inputs) - set(inputs))
        if unknown or missing:
            raise ServingError.invalid(f"Request inputs do not match the signature '{signature.name}': unknown "
                                       f"{unknown}, missing {missing} (expected {sorted(signature.inputs)})")
        for name, array in inputs.items():
            tensors.check_dtype(name, array, signature.inputs[name])
        unknown_outputs = sorted(set(output_filter) - set(signature.outputs))
        if unknown_outputs:
            raise ServingError.invalid(f"output_filter: {unknown_outputs} not in the signature's outputs "
                                       f"{sorted(signature.outputs)}")
        outputs = await self._run(servable, signature, inputs)
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        if self.request_logger.sampled():
            self._log_predict(servable, signature, inputs, outputs)
        return servable, signature, outputs

    async def run_method(self, spec: ModelSpec, signature_name: str, method: str, examples: list[bytes]):
        """Classify / Regress: a signature of that method, taking serialized tf.Examples."""
        servable = self.manager.resolve(spec.name, spec.version, spec.label)
        signature = servable.signature(signature_name)
        if signature.method_name != method:
            kind = "classification" if method == CLASSIFY_METHOD else "regression"
            raise ServingError.invalid(f"Expected {kind} signature method_name to be {method}. "
                                       f"Was: {signature.method_name}")
        (input_name,) = signature.inputs
        outputs = await self._run(servable, signature, {input_name: np.array(examples, dtype=object)})
        return servable, signature, outputs

    async def classify(self, spec: ModelSpec, signature_name: str, examples: list[bytes]):
        """Per example, (label, score) pairs; a signature with only scores has labels "0", "1"..."""
        servable, signature, outputs = await self.run_method(spec, signature_name, CLASSIFY_METHOD, examples)
        classes, scores = outputs.get("classes"), outputs.get("scores")
        rows = []
        for i in range(len(examples)):
            labels = [c.decode() for c in classes[i]] if classes is not None else [str(j) for j in range(len(scores[i]))]
            values = scores[i].tolist() if scores is not None else [0.0] * len(labels)
            rows.append(list(zip(labels, values, strict=True)))
        return servable, signature, rows

    async def regress(self, spec: ModelSpec, signature_name: str, examples: list[bytes]):
        servable, signature, outputs = await self.run_method(spec, signature_name, REGRESS_METHOD, examples)
        return servable, signature, np.asarray(outputs["outputs"]).reshape(-1).tolist()

    def _log_predict(self, servable, signature, inputs, outputs) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = servable.name, signature.name
        request.model_spec.version.value = servable.version
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tensors.to_proto(array, signature.inputs[name]))
        response = predict_pb2.PredictResponse(model_spec=request.model_spec)
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(tensors.to_proto(array, signature.outputs[name]))
        record = prediction_log_pb2.PredictionLog()
        record.log_metadata.model_spec.CopyFrom(request.model_spec)
        record.predict_log.request.CopyFrom(request)
        record.predict_log.response.CopyFrom(response)
        self.request_logger.log(servable.name, record)

    def metadata(self, spec: ModelSpec) -> tuple[Servable, meta_graph_pb2.SignatureDef]:
        servable = self.manager.resolve(spec.name, spec.version, spec.label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(definition)
        return servable, signature_map

    def close(self) -> None:
        self.manager.stop()
        self.executor.shutdown(wait=True)
        self.request_logger.close()


# --- REST ---------------------------------------------------------------------------------------------------------

def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json")


def _error(error: ServingError) -> web.Response:
    return _json({"error": error.message}, error.http_status)


def _spec_from_path(match) -> ModelSpec:
    name, version, label = match.group(1), match.group(2), match.group(3)
    return ModelSpec(name, int(version) if version else None, label)


class RestApi:
    def __init__(self, core: ServingCore, max_request_bytes: int):
        self.core = core
        self.max_request_bytes = max_request_bytes

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        if path == PROMETHEUS_PATH and request.method == "GET":
            available = {name: [] for name in self.core.manager.model_names()}
            for name in available:
                try:
                    status = self.core.manager.status(name)
                    available[name] = [s.version for s in status.model_version_status
                                       if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE]
                except ServingError:
                    pass
            return web.Response(text=self.core.metrics.render(available), content_type="text/plain")
        started = time.perf_counter()
        api, spec, version, status = "unknown", None, "", "OK"
        try:
            match = PREDICT_PATH.fullmatch(path)
            if match and request.method == "POST":
                spec, api = _spec_from_path(match), match.group(4).lower()
                response, version = await self._method(api, spec, await self._body(request))
                return response
            match = STATUS_PATH.fullmatch(path)
            if match and request.method == "GET":
                spec = _spec_from_path(match)
                api = "metadata" if match.group(4) else "status"
                response, version = self._metadata(spec) if match.group(4) else self._status(spec)
                return response
            raise ServingError.invalid(f"Malformed request: {request.method} {path}")
        except ServingError as e:
            status = e.code.name
            return _error(e)
        except web.HTTPRequestEntityTooLarge:
            status = "RESOURCE_EXHAUSTED"
            return _json({"error": f"Request body is larger than the limit of {self.max_request_bytes} bytes"}, 413)
        except Exception as e:  # noqa: BLE001 - a bug or a TensorFlow failure: TF Serving's INTERNAL, logged
            status = "INTERNAL"
            log.exception("%s %s failed", request.method, path)
            return _json({"error": f"Internal error: {type(e).__name__}: {e}"}, 500)
        finally:
            if spec is not None:
                self.core.metrics.observe(spec.name, version, api, "REST", status, time.perf_counter() - started)

    async def _body(self, request: web.Request):
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_request_bytes, actual_size=request.content_length)
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ServingError.invalid(f"JSON Parse error: {e}") from None

    async def _method(self, api: str, spec: ModelSpec, body):
        if not isinstance(body, dict):
            raise ServingError.invalid("the request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError.invalid("\"signature_name\" must be a string")
        if api == "predict":
            servable = self.core.manager.resolve(spec.name, spec.version, spec.label)
            signature = servable.signature(signature_name)
            inputs, row_format = tensors.parse_predict_json(body, signature.inputs)
            # Pin the resolved version: a swap between parsing and running must not change the signature.
            pinned = ModelSpec(spec.name, servable.version)
            servable, _, outputs = await self.core.predict(pinned, signature_name, inputs)
            return _json(tensors.outputs_to_json(outputs, row_format)), str(servable.version)
        examples = tensors.json_examples(body)
        if api == "classify":
            servable, _, rows = await self.core.classify(spec, signature_name, examples)
            return _json({"result": [[[label, score] for label, score in row] for row in rows]}), str(servable.version)
        servable, _, values = await self.core.regress(spec, signature_name, examples)
        return _json({"result": values}), str(servable.version)

    def _status(self, spec: ModelSpec):
        response = self.core.manager.status(spec.name, spec.version, spec.label)
        return _json(json_format.MessageToDict(response, preserving_proto_field_name=True,
                                               including_default_value_fields=True)), ""

    def _metadata(self, spec: ModelSpec):
        servable, signature_map = self.core.metadata(spec)
        body = {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True, including_default_value_fields=True)}}
        return _json(body), str(servable.version)


# --- gRPC ---------------------------------------------------------------------------------------------------------

def _grpc_errors(api: str):
    """Turns ServingError into the gRPC status, and records the request in the metrics."""
    def decorate(method):
        async def wrapper(self, request, context):
            started = time.perf_counter()
            name, version, status = request.model_spec.name if request.HasField("model_spec") else "", "", "OK"
            try:
                response = await method(self, request, context)
                if "model_spec" in response.DESCRIPTOR.fields_by_name and response.model_spec.HasField("version"):
                    version = str(response.model_spec.version.value)
                return response
            except ServingError as e:
                status = e.code.name
                await context.abort(e.code, e.message)
            except Exception as e:  # noqa: BLE001 - a bug or a TensorFlow failure: INTERNAL, logged
                status = "INTERNAL"
                log.exception("gRPC %s failed", api)
                await context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}: {e}")
            finally:
                self.core.metrics.observe(name, version, api, "GRPC", status, time.perf_counter() - started)
        return wrapper
    return decorate


def _response_spec(target, servable: Servable, signature_name: str) -> None:
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature_name


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_grpc_errors("predict")
    async def Predict(self, request, context):
        inputs = {name: tensors.to_numpy(proto) for name, proto in request.inputs.items()}
        servable, signature, outputs = await self.core.predict(
            ModelSpec.from_proto(request.model_spec), request.model_spec.signature_name, inputs,
            tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        _response_spec(response.model_spec, servable, signature.name)
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(tensors.to_proto(array, signature.outputs[name]))
        return response

    @_grpc_errors("classify")
    async def Classify(self, request, context):
        servable, signature, rows = await self.core.classify(
            ModelSpec.from_proto(request.model_spec), request.model_spec.signature_name, _input_examples(request.input))
        response = classification_pb2.ClassificationResponse()
        _response_spec(response.model_spec, servable, signature.name)
        for row in rows:
            response.result.classifications.add().classes.extend(
                classification_pb2.Class(label=label, score=score) for label, score in row)
        return response

    @_grpc_errors("regress")
    async def Regress(self, request, context):
        servable, signature, values = await self.core.regress(
            ModelSpec.from_proto(request.model_spec), request.model_spec.signature_name, _input_examples(request.input))
        response = regression_pb2.RegressionResponse()
        _response_spec(response.model_spec, servable, signature.name)
        response.result.regressions.extend(regression_pb2.Regression(value=value) for value in values)
        return response

    @_grpc_errors("metadata")
    async def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError.invalid("Metadata field(s) other than signature_def are not supported: "
                                       f"{list(request.metadata_field)}")
        servable, signature_map = self.core.metadata(ModelSpec.from_proto(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _response_spec(response.model_spec, servable, "")
        response.metadata["signature_def"].Pack(signature_map)
        return response


def _input_examples(model_input) -> list[bytes]:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context
        examples = []
        for example in model_input.example_list_with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise ServingError.invalid("Input is empty")
    if not examples:
        raise ServingError.invalid("Input is empty")
    return [e.SerializeToString() for e in examples]


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_grpc_errors("status")
    async def GetModelStatus(self, request, context):
        spec = ModelSpec.from_proto(request.model_spec)
        return self.core.manager.status(spec.name, spec.version, spec.label)

    async def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.core.manager.reload, request.config)
            # Load what the new configuration asks for before answering, as TF Serving does.
            await asyncio.get_running_loop().run_in_executor(None, self.core.manager.poll_once)
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
        return response


# --- the process --------------------------------------------------------------------------------------------------

async def serve(core: ServingCore, host: str, rest_port: int, grpc_port: int, max_request_bytes: int,
                ready=None) -> None:
    # No SO_REUSEPORT: a second server on the same port must fail, not share it silently.
    options = [("grpc.max_receive_message_length", max_request_bytes), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]
    grpc_server = grpc.aio.server(options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{host}:{grpc_port}")
    await grpc_server.start()

    rest = RestApi(core, max_request_bytes)
    # aiohttp's own limit is a little above ours, so that RestApi answers oversized bodies in TF Serving's format.
    app = web.Application(client_max_size=max_request_bytes + 1)
    app.router.add_route("*", "/{tail:.*}", rest.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, rest_port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await grpc_server.stop(None)
        raise
    rest_port = site._server.sockets[0].getsockname()[1]
    print(f"serving {', '.join(core.manager.model_names())}: REST http://{host}:{rest_port}/v1/models/..., "
          f"gRPC {host}:{grpc_port}, metrics http://{host}:{rest_port}{PROMETHEUS_PATH}", flush=True)
    if ready:
        ready(rest_port, grpc_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down: finishing in-flight requests", flush=True)
    await grpc_server.stop(grace=5)
    await runner.cleanup()
    core.close()


def build_core(config, model_config_file: str = "", model_name: str = "", model_base_path: str = "") -> ServingCore:
    from serving.models import read_model_config_file, single_model_config

    serving = config.serving
    model_config_file = model_config_file or serving.model_config_file
    metrics = Metrics()
    if model_config_file:
        model_config = read_model_config_file(model_config_file)
    else:
        model_config = single_model_config(model_name or config.model_name, model_base_path or config.serving_model_dir,
                                           serving.version_policy, serving.latest_versions, serving.versions,
                                           serving.labels)
    manager = ModelManager(model_config, serving.poll_seconds, model_config_file, on_change=metrics.model_event)
    batching = serving.batching if serving.batching.enabled else None
    log_dir = serving.request_log.path or os.path.join(config.output_root, "request_logs")
    return ServingCore(manager, batching, RequestLogger(log_dir, serving.request_log.sampling_rate), metrics)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="address to bind (default: serving.host, 127.0.0.1)")
    parser.add_argument("--rest_api_port", "--rest_port", type=int, dest="rest_port", help="default: serving.rest_port")
    parser.add_argument("--port", "--grpc_port", type=int, dest="grpc_port", help="gRPC; default: serving.grpc_port")
    parser.add_argument("--model_name", help="default: model_name")
    parser.add_argument("--model_base_path", help="default: <output_root>/serving/<model_name>")
    parser.add_argument("--model_config_file", help="TF Serving's ModelServerConfig text file (re-read every poll)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.config import ConfigError, load_config

    try:
        config = load_config()
        core = build_core(config, args.model_config_file or "", args.model_name or "", args.model_base_path or "")
    except (ConfigError, ServingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    log.info("TensorFlow %s on %s", tf.__version__, f"{len(gpus)} GPU(s)" if gpus else "CPU")
    core.manager.start()
    host = args.host or config.serving.host
    rest_port = config.serving.rest_port if args.rest_port is None else args.rest_port
    grpc_port = config.serving.grpc_port if args.grpc_port is None else args.grpc_port
    try:
        asyncio.run(serve(core, host, rest_port, grpc_port, config.serving.max_request_bytes))
    except (OSError, RuntimeError) as e:  # aiohttp: OSError; grpc: RuntimeError("Failed to bind ...")
        print(f"error: cannot listen on {host} (REST {rest_port}, gRPC {grpc_port}): {getattr(e, 'strerror', None) or e} "
              "(is another server on these ports?)", file=sys.stderr)
        core.close()
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The gRPC API (TF Serving's PredictionServiceImpl and ModelServiceImpl) over the core: Predict, Classify,
Regress, MultiInference, GetModelMetadata, GetModelStatus, HandleReloadConfigRequest. It translates protos to
the core's calls and back; a ServingError becomes its status code, anything else INTERNAL (logged)."""
import asyncio
import functools
import logging
import time

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import tensors
from serving.core import ModelSpec, ServingCore, _fill_spec, begin_request, resolved_version
from serving.errors import ServingError

log = logging.getLogger("serving.grpc")


class InFlight:
    """Calls being answered, against a cap; only the event loop touches it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0


def _api(api: str):
    """Runs the call within the cap on calls in flight, turns errors into gRPC statuses, records it in the
    metrics."""
    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            started = time.perf_counter()
            name, version, status = "", "", "OK"
            begin_request()
            spec = getattr(request, "model_spec", None)
            if spec is None and getattr(request, "tasks", None):
                spec = request.tasks[0].model_spec
            if spec is not None:
                name = spec.name
            try:
                if self.in_flight.count >= self.in_flight.limit:
                    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"Too many calls in flight (limit {self.in_flight.limit})")
                self.in_flight.count += 1
                try:
                    response = await method(self, request, context)
                finally:
                    self.in_flight.count -= 1
                if getattr(response, "model_spec", None) is not None and response.HasField("model_spec"):
                    version = str(response.model_spec.version.value)
                return response
            except ServingError as e:
                status = e.code.name
                await context.abort(e.code, e.message)
            except Exception as e:  # noqa: BLE001 - a bug: INTERNAL, logged
                status = "INTERNAL"
                log.exception("gRPC %s failed", api)
                await context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}")
            finally:
                self.core.metrics.observe(name, version or resolved_version(), api, "GRPC", status,
                                          time.perf_counter() - started)
        return wrapper
    return decorate


def input_examples(model_input) -> list[bytes]:
    """tensorflow.serving.Input (example_list or example_list_with_context) as serialized tf.Examples."""
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


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore, max_request_bytes: int, tensor_content: bool = False,
                 in_flight: InFlight | None = None):
        self.core = core
        self.in_flight = in_flight or InFlight(512)
        self.max_request_bytes = max_request_bytes
        self.tensor_content = tensor_content  # --enable_serialization_as_tensor_content

    @_api("predict")
    async def Predict(self, request, context):
        # By key, not .items(): a protobuf map's items() is collections.abc's, three Python frames per request.
        inputs = {name: tensors.to_numpy(request.inputs[name], self.max_request_bytes) for name in request.inputs}
        servable, signature, outputs = await self.core.predict(
            ModelSpec.from_proto(request.model_spec), request.model_spec.signature_name, inputs,
            tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, signature.name)
        for name, array in outputs.items():
            tensors.fill_proto(response.outputs[name], array, signature.outputs[name], self.tensor_content)
        return response

    async def _on_examples(self, request, run, response_class):
        """Classify and Regress: a tensorflow.serving.Input of tf.Examples in, a result of that method out."""
        servable, signature, result = await run(
            ModelSpec.from_proto(request.model_spec), request.model_spec.signature_name, input_examples(request.input))
        response = response_class(result=result)
        _fill_spec(response.model_spec, servable, signature.name)
        return response

    @_api("classify")
    async def Classify(self, request, context):
        return await self._on_examples(request, self.core.classify, classification_pb2.ClassificationResponse)

    @_api("regress")
    async def Regress(self, request, context):
        return await self._on_examples(request, self.core.regress, regression_pb2.RegressionResponse)

    @_api("multi_inference")
    async def MultiInference(self, request, context):
        tasks = [(ModelSpec.from_proto(t.model_spec), t.model_spec.signature_name, t.method_name)
                 for t in request.tasks]
        results = await self.core.multi_inference(tasks, input_examples(request.input))
        response = inference_pb2.MultiInferenceResponse()
        for servable, signature, result in results:
            entry = response.results.add()
            _fill_spec(entry.model_spec, servable, signature.name)
            target = entry.classification_result if isinstance(result, classification_pb2.ClassificationResult) \
                else entry.regression_result
            target.CopyFrom(result)
        return response

    @_api("metadata")
    async def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError.invalid("Metadata field(s) other than signature_def are not supported: "
                                       f"{list(request.metadata_field)[:10]}")
        servable, signature_map = self.core.metadata(ModelSpec.from_proto(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable, "")
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore, in_flight: InFlight):
        self.core = core
        self.in_flight = in_flight

    @_api("status")
    async def GetModelStatus(self, request, context):
        return self.core.status(ModelSpec.from_proto(request.model_spec))

    async def HandleReloadConfigRequest(self, request, context):
        """Loads what the new configuration asks for before answering, as TF Serving does; the outcome is in the
        response's status."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.core.reload, request.config)
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
        return response

"""The server core (TF Serving's ServerCore): the one entry point both APIs call.

It resolves a model spec to a loaded version once per request, checks the request against the signature, runs
it (batched per model, version and signature), logs a sample of requests and reports status and metadata. The
REST and gRPC layers only translate their wire formats; nothing else reaches the manager.
"""
import asyncio
import contextvars
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from pipeline.config import BatchingConfig
from serving import tensors
from serving.batching import Batcher
from serving.errors import ServingError
from serving.loader import Servable, Signature
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.request_log import RequestLogger

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# TF Serving's output keys for classify and regress signatures (signature_constants.h).
CLASSES, SCORES, REGRESS_OUTPUTS = "classes", "scores", "outputs"


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


@dataclass(frozen=True)
class CoreOptions:
    """What TF Serving sets by flags."""
    max_request_bytes: int
    batching: BatchingConfig | None = None       # --enable_batching, --batching_parameters_file
    method_name_check: bool = False              # --enable_signature_method_name_check
    any_model_base_path: bool = False            # reloads may name any base path (--allow_any_model_base_path)
    num_threads: int = 2


Inputs = dict[str, np.ndarray] | Callable[[Signature], dict[str, np.ndarray]]

# The version the current request was resolved to (each REST and gRPC call runs in its own asyncio context, and
# starts by clearing it): the API layers count a request that fails after resolution under that version, so a
# canary's errors count against the canary (serving/rollout.py), not under model_version="".
_resolved: contextvars.ContextVar[str] = contextvars.ContextVar("resolved_version", default="")


def begin_request() -> None:
    _resolved.set("")


def resolved_version() -> str:
    return _resolved.get()


class ServingCore:
    def __init__(self, manager: ModelManager, options: CoreOptions, request_logger: RequestLogger, metrics: Metrics):
        self.manager = manager
        self.options = options
        self.request_logger = request_logger
        self.metrics = metrics
        batching = options.batching
        self.executor = ThreadPoolExecutor(max_workers=batching.num_batch_threads if batching else options.num_threads,
                                           thread_name_prefix="batch")
        self._batchers: dict[tuple[str, int, str], Batcher] = {}
        # A reload may name base paths under the folders of the models configured at start, unless allowed any.
        self._model_roots = None if options.any_model_base_path else \
            [os.path.dirname(p.rstrip(os.sep)) for p in manager.base_paths()]
        manager.on_change = self._model_event

    def _model_event(self, name: str, version: int, event: str) -> None:
        self.metrics.model_event(name, version, event)
        if event == "unloaded":  # the batchers hold the version: drop them so its Session can close
            for key in [k for k in self._batchers if k[:2] == (name, version)]:
                del self._batchers[key]

    # --- running -------------------------------------------------------------------------------------------------
    def resolve(self, spec: ModelSpec) -> Servable:
        servable = self.manager.resolve(spec.name, spec.version, spec.label)
        _resolved.set(str(servable.version))
        return servable

    async def _run(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray]):
        batching = self.options.batching
        # One input (most signatures) needs only its rank checked: the set of sizes is for several.
        if signature.batchable and (len(inputs) != 1 or not next(iter(inputs.values())).ndim):
            rows = {len(a) if a.ndim else -1 for a in inputs.values()}
            if -1 in rows:
                raise ServingError.invalid(f"signature '{signature.name}' takes a batch: every input needs a leading "
                                           "batch dimension, got a scalar")
            if len(rows) > 1:
                raise ServingError.invalid("inputs have different batch sizes (dimension 0)")
        if batching and signature.batchable:
            key = (servable.name, servable.version, signature.name)
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = self._batchers[key] = Batcher(
                    _runner(servable, signature), self.executor, batching, lambda rows: self.metrics.batch(key[0], rows))
            return await batcher.submit(inputs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, servable.run, signature, inputs)

    async def predict(self, spec: ModelSpec, signature_name: str, inputs: Inputs, output_filter=()):
        """(servable, signature, outputs); `inputs` may be a function of the resolved signature (REST's JSON needs
        the signature's dtypes), so the version is resolved once."""
        servable = self.resolve(spec)
        signature = servable.signature(signature_name)
        if callable(inputs):
            inputs = inputs(signature)
        if inputs.keys() != signature.inputs.keys():
            unknown, missing = sorted(set(inputs) - set(signature.inputs)), sorted(set(signature.inputs) - set(inputs))
            raise ServingError.invalid(f"Request inputs do not match the signature '{signature.name}': unknown "
                                       f"{unknown}, missing {missing} (expected {sorted(signature.inputs)})")
        for name, array in inputs.items():
            tensors.check_dtype(name, array, signature.inputs[name])
        unknown_outputs = sorted(set(output_filter) - set(signature.outputs)) if output_filter else None
        if unknown_outputs:
            raise ServingError.invalid(f"output_filter: {unknown_outputs} not in the signature's outputs "
                                       f"{sorted(signature.outputs)}")
        outputs = await self._run(servable, signature, inputs)
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in output_filter}
        if self.request_logger.sampled():
            request = predict_pb2.PredictRequest()
            _fill_spec(request.model_spec, servable, signature.name)
            for name, array in inputs.items():
                request.inputs[name].CopyFrom(tensors.to_proto(array, signature.inputs[name], tensor_content=True))
            response = predict_pb2.PredictResponse(model_spec=request.model_spec)
            for name, array in outputs.items():
                response.outputs[name].CopyFrom(tensors.to_proto(array, signature.outputs[name], tensor_content=True))
            record = prediction_log_pb2.PredictionLog()
            record.predict_log.request.CopyFrom(request)
            record.predict_log.response.CopyFrom(response)
            self._log(servable, record)
        return servable, signature, outputs

    def _method_signature(self, servable: Servable, signature_name: str, method: str) -> Signature:
        """A classify/regress signature. TF Serving checks its method_name only when asked
        (--enable_signature_method_name_check); it always checks the inputs and outputs."""
        signature = servable.signature(signature_name)
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if self.options.method_name_check and signature.method_name != method:
            raise ServingError.invalid(f"Expected {kind} signature method_name to be {method}. "
                                       f"Was: {signature.method_name}")
        if len(signature.inputs) != 1:
            raise ServingError.invalid(f"Expected one input Tensor in the {kind} signature, found "
                                       f"{len(signature.inputs)}")
        if method == CLASSIFY_METHOD and not {CLASSES, SCORES} & set(signature.outputs):
            raise ServingError.invalid(f"Expected classification signature outputs to contain at least one of "
                                       f"\"{CLASSES}\" or \"{SCORES}\" (found {sorted(signature.outputs)})")
        if method == REGRESS_METHOD and REGRESS_OUTPUTS not in signature.outputs:
            raise ServingError.invalid(f"No regression outputs found: expected an output named \"{REGRESS_OUTPUTS}\" "
                                       f"(found {sorted(signature.outputs)})")
        return signature

    async def _run_method(self, servable: Servable, signature: Signature, examples: list[bytes]):
        (input_name,) = signature.inputs
        return await self._run(servable, signature, {input_name: np.array(examples, dtype=object)})

    async def classify(self, spec: ModelSpec, signature_name: str, examples: list[bytes]):
        """(servable, signature, ClassificationResult)."""
        servable = self.resolve(spec)
        signature = self._method_signature(servable, signature_name, CLASSIFY_METHOD)
        outputs = await self._run_method(servable, signature, examples)
        result = _classification_result(outputs, len(examples))
        self._log_method(servable, signature, examples, result, "classify_log")
        return servable, signature, result

    async def regress(self, spec: ModelSpec, signature_name: str, examples: list[bytes]):
        """(servable, signature, RegressionResult)."""
        servable = self.resolve(spec)
        signature = self._method_signature(servable, signature_name, REGRESS_METHOD)
        outputs = await self._run_method(servable, signature, examples)
        values = np.asarray(outputs[REGRESS_OUTPUTS]).reshape(-1)
        if len(values) != len(examples):
            raise ServingError.invalid(f"Expected {len(examples)} regression outputs, got {len(values)}")
        result = regression_pb2.RegressionResult(regressions=[regression_pb2.Regression(value=v) for v in values])
        self._log_method(servable, signature, examples, result, "regress_log")
        return servable, signature, result

    async def multi_inference(self, tasks: list[tuple[ModelSpec, str, str]], examples: list[bytes]):
        """[(servable, signature, result)] for each (spec, signature_name, method_name) task on the same input; as
        TF Serving, every task names the same model and a different signature."""
        if not tasks:
            raise ServingError.invalid("MultiInference needs at least one task")
        if len({(spec.name, spec.version, spec.label) for spec, _, _ in tasks}) != 1:
            raise ServingError.invalid("Input request specifies more than one model")
        if len({name for _, name, _ in tasks}) != len(tasks):
            raise ServingError.invalid("Duplicate evaluation of signature")
        servable = self.resolve(tasks[0][0])
        results = []
        for _, signature_name, method in tasks:
            if method not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError.invalid(f"Unsupported signature method_name: {method}")
            run = self.classify if method == CLASSIFY_METHOD else self.regress
            results.append(await run(ModelSpec(servable.name, servable.version), signature_name, examples))
        return results

    def _log(self, servable: Servable, record) -> None:
        record.log_metadata.model_spec.name = servable.name
        record.log_metadata.model_spec.version.value = servable.version
        record.log_metadata.timestamp_secs = int(time.time())  # make monitor's windows go by it
        self.request_logger.log(servable.name, record)

    def _log_method(self, servable, signature, examples, result, kind: str) -> None:
        if not self.request_logger.sampled():
            return
        record = prediction_log_pb2.PredictionLog()
        entry = getattr(record, kind)
        _fill_spec(entry.request.model_spec, servable, signature.name)
        for serialized in examples:
            entry.request.input.example_list.examples.add().ParseFromString(serialized)
        entry.response.model_spec.CopyFrom(entry.request.model_spec)
        entry.response.result.CopyFrom(result)
        self._log(servable, record)

    # --- status, metadata, configuration --------------------------------------------------------------------------
    def status(self, spec: ModelSpec):
        return self.manager.status(spec.name, spec.version, spec.label)

    def metadata(self, spec: ModelSpec) -> tuple[Servable, get_model_metadata_pb2.SignatureDefMap]:
        servable = self.resolve(spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(definition)
        return servable, signature_map

    def reload(self, config) -> None:
        self.manager.reload(config, self._model_roots)

    def model_names(self) -> list[str]:
        return self.manager.model_names()

    def available_versions(self) -> dict[str, list[int]]:
        return self.manager.available_versions()

    def close(self) -> None:
        self.manager.stop()
        self.executor.shutdown(wait=True)
        self.request_logger.close()


def _runner(servable: Servable, signature: Signature):
    return lambda inputs: servable.run(signature, inputs)


def _fill_spec(target, servable: Servable, signature_name: str) -> None:
    target.name = servable.name
    target.version.value = servable.version
    target.signature_name = signature_name


def _classification_result(outputs: dict[str, np.ndarray], count: int) -> classification_pb2.ClassificationResult:
    """Per example, (label, score) pairs; a signature with only scores has empty labels, as TF Serving gives."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, array in ((CLASSES, classes), (SCORES, scores)):
        if array is not None and (array.ndim != 2 or len(array) != count):
            raise ServingError.invalid(f"Expected output Tensor \"{name}\" of shape [{count}, num_classes], got "
                                       f"{list(array.shape)}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise ServingError.invalid(f"Tensors class and score should match in shape: {list(classes.shape)} vs "
                                   f"{list(scores.shape)}")
    result = classification_pb2.ClassificationResult()
    for i in range(count):
        row = result.classifications.add()
        width = (classes if classes is not None else scores).shape[1]
        for j in range(width):
            label = classes[i][j] if classes is not None else b""
            row.classes.add(label=label.decode(errors="replace") if isinstance(label, bytes) else str(label),
                            score=float(scores[i][j]) if scores is not None else 0.0)
    return result

"""The loader: one version of a model, loaded as TF Serving's SavedModelBundle loads it, with its signatures as
Session callables and its warm-up requests replayed.

A Servable owns its Session; the Session is closed when the last reference to the Servable goes (the manager
drops it on unload, in-flight requests finish on it first), so an unloaded version frees its memory.
"""
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from modules.contract import WARMUP_FILE
from serving.errors import ServingError

log = logging.getLogger("serving.loader")

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
DEFAULT_SIGNATURE = "serving_default"  # TF Serving's, when a request names none
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, int]   # input name → DataType, in sorted name order (the order `function` takes them)
    outputs: dict[str, int]  # in sorted name order (the order `function` returns them)
    function: Callable[..., list]  # input arrays in `inputs` order → output arrays in `outputs` order
    batchable: bool          # every input and output has a leading batch dimension


class Servable:
    """One loaded version of a model."""

    def __init__(self, name: str, version: int, path: str, signature_defs, signatures: dict[str, Signature], session):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs  # the MetaGraphDef's signature_def map (GetModelMetadata)
        self.signatures = signatures
        self.session = session                # the tf.compat.v1.Session holding the graph and variables
        # The finalizer holds the Session, not the Servable: it runs when the Servable's last reference goes.
        self._finalizer = weakref.finalize(self, session.close)

    def close(self) -> None:
        self._finalizer()

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError.invalid(f"Serving signature name: \"{name}\" not found in signature def "
                                       f"(available: {', '.join(sorted(self.signatures))})")
        return self.signatures[name]

    def run(self, signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = signature.function(*map(inputs.__getitem__, signature.inputs))  # no sort, no frame per call
        except (ValueError, TypeError) as e:
            raise ServingError.invalid(_op_error(str(e))) from None
        except _op_error_class() as e:  # TensorFlow's canonical codes are gRPC's
            raise ServingError(_GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), _op_error(e.message)) from None
        return dict(zip(signature.outputs, outputs, strict=True))


def _op_error_class() -> type:
    """tf.errors.OpError, looked up only when a call fails (an except clause's expression is evaluated then): a
    successful call pays no import statement."""
    import tensorflow as tf

    return tf.errors.OpError


def _op_error(message: str) -> str:
    """The line of a TensorFlow error that names the problem, without graph-execution boilerplate."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{node")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(noise)]
    return useful[0] if useful else (lines[0] if lines else "invalid input")


def _leading_batch_dim(info) -> bool:
    return not info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) >= 1 and info.tensor_shape.dim[0].size == -1


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads a SavedModel as TF Serving does; raises with a readable reason.

    Like TF Serving's SavedModelBundle: the 'serve' MetaGraph is imported into a Session, its variables restored
    through the saver_def and its init op run (tables, assets); signatures run by their tensor names. So a model
    that only tf.saved_model.load can run fails here as it fails in TF Serving (a Keras 3 model saved without
    its variables in that graph: "Could not find variable ..."), and the warm-up request catches it before the
    version serves. Each signature is a Session callable that runs its ops on the calling thread: for requests
    this small, handing ops to TensorFlow's inter-op pool costs more than the ops (make bench-serving: 0.22 ms
    per single-example call against 0.63 ms through tf.saved_model.load's signature).
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    config = config_pb2.ConfigProto()
    config.gpu_options.allow_growth = True  # versions share the GPU while one replaces another
    # The serving function calls the tf.Transform and Keras functions: inlined, the executor runs one flat graph
    # (366 instead of 459 nodes here) and a single-example call takes ~20% less (0.198 vs 0.243 ms).
    config.graph_options.optimizer_options.do_function_inlining = True
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
    try:
        with session.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signatures = {key: _signature(session, key, definition)
                      for key, definition in meta_graph.signature_def.items() if _servable_signature(key, definition)}
    except BaseException:
        session.close()
        raise
    return Servable(name, version, path, meta_graph.signature_def, signatures, session)


def _servable_signature(key: str, definition) -> bool:
    """Signatures of dense tensors by name, as TF Serving's APIs take; not the SavedModel's own init op."""
    if key.startswith("__"):
        return False
    tensors = list(definition.inputs.values()) + list(definition.outputs.values())
    if not all(t.WhichOneof("encoding") == "name" for t in tensors):
        log.warning("signature '%s' has sparse or composite tensors: not served", key)
        return False
    return True


def _signature(session, key: str, definition) -> Signature:
    from tensorflow.core.protobuf import config_pb2

    inputs, outputs = sorted(definition.inputs), sorted(definition.outputs)
    options = config_pb2.CallableOptions(
        feed=[definition.inputs[k].name for k in inputs], fetch=[definition.outputs[k].name for k in outputs])
    options.run_options.inter_op_thread_pool = -1  # run on the caller's thread
    # Session's C callable (TF_SessionMakeCallable); the public make_callable with feeds goes through Session.run.
    function = session._make_callable_from_options(options)
    batchable = all(_leading_batch_dim(i) for i in definition.inputs.values()) and \
        all(_leading_batch_dim(o) for o in definition.outputs.values())
    return Signature(key, definition.method_name, {k: definition.inputs[k].dtype for k in inputs},
                     {k: definition.outputs[k].dtype for k in outputs}, function, batchable)


def warm_up(servable: Servable) -> int:
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLog records) like TF Serving; returns the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.tensors import to_numpy

    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        log_record = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log_record.WhichOneof("log_type") != "predict_log":
            continue
        request = log_record.predict_log.request
        signature = servable.signature(request.model_spec.signature_name)
        servable.run(signature, {k: to_numpy(v) for k, v in request.inputs.items()})
        count += 1
    return count

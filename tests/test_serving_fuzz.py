"""Property-based: generated REST requests and gRPC PredictRequests, most of them malformed, against the real core
and API layers in this process (the toy and taxi-like test models loaded, batching on). No generated input gets a
5xx / INTERNAL answer, and the server answers a good request afterwards."""
import asyncio
import json

import grpc
import numpy as np
import pytest
from conftest import write_toy_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_models import EXAMPLES_INPUT, taxi_examples, taxi_probabilities, write_taxi_model
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from pipeline.config import BatchingConfig
from serving.core import CoreOptions, ServingCore
from serving.grpc_api import InFlight, PredictionService
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.policy import single_model_config
from serving.request_log import RequestLogger
from serving.rest import RestApi

MAX_REQUEST_BYTES = 1 << 20
REST_EXAMPLES, GRPC_EXAMPLES = 12_000, 8_000  # 20,000 generated inputs in all
# Inputs are drawn in batches: hypothesis's own engine, not the server, costs most of the time per example.
BATCH = 10
FUZZ = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(details)
        self.code = code


class Context:
    async def abort(self, code, details):
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_taxi_model(str(root / "taxi" / "1"))
    write_toy_model(str(root / "toy" / "1"))
    config = single_model_config("taxi", str(root / "taxi"), "latest", 1, [], {})
    config.model_config_list.config.add(name="toy", base_path=str(root / "toy"), model_platform="tensorflow")
    manager = ModelManager(config)
    manager.poll_once()
    metrics = Metrics(manager.model_names, manager.available_versions)
    core = ServingCore(manager, CoreOptions(MAX_REQUEST_BYTES, BatchingConfig(True, 64, 0, 100, 1 << 26, 1)),
                       RequestLogger(str(root / "log"), 0.0), metrics)
    loop = asyncio.new_event_loop()
    yield loop, RestApi(core, MAX_REQUEST_BYTES, 10.0, 512, "/metrics"), PredictionService(core, MAX_REQUEST_BYTES)
    core.close()
    loop.close()


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False), st.text(max_size=8), st.fixed_dictionaries({"b64": st.text(max_size=8)}))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["fare", "company", "trip_start_hour", "x", "b64", "examples"]), inner, max_size=3), max_leaves=12)
body_keys = st.sampled_from(["instances", "inputs", "signature_name", "examples", "context", "output_filter"])
bodies = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(body_keys, json_value, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.builds(lambda rows, sig: json.dumps({"signature_name": sig, "instances": rows}).encode(),
              st.lists(st.dictionaries(st.sampled_from(["fare", "company", "trip_start_hour"]), json_leaf, max_size=3),
                       max_size=3),
              st.sampled_from(["serving_raw", "serving_default", "", "classify", "regress"])),
)
paths = st.builds(
    lambda model, spec, verb: f"/v1/models/{model}{spec}{verb}",
    st.sampled_from(["taxi", "toy", "nope", "", "x%22%7D", "a/b"]),
    st.one_of(st.just(""), st.text("0123456789²", min_size=1, max_size=30).map(lambda v: f"/versions/{v}"),
              st.sampled_from(["/labels/stable", "/labels/", "/versions/-1"])),
    st.sampled_from([":predict", ":classify", ":regress", "/metadata", "", ":PREDICT", ":other"]),
) | st.text(max_size=20).map(lambda t: "/" + t)



def _dims(sizes):
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in sizes])


dtypes = st.sampled_from([types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT64,
                          types_pb2.DT_INT32, types_pb2.DT_INT8, types_pb2.DT_HALF, types_pb2.DT_BOOL,
                          types_pb2.DT_COMPLEX64, types_pb2.DT_INVALID])
tensor_protos = st.builds(
    lambda dtype, shape, unknown, floats, ints, strings, halfs, content: tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=_dims(shape).dim, unknown_rank=unknown),
        float_val=floats, double_val=floats, int64_val=ints, int_val=[i % 2**31 for i in ints], string_val=strings,
        half_val=halfs, bool_val=[i % 2 == 0 for i in ints], tensor_content=content),
    dtypes, st.lists(st.integers(min_value=-2, max_value=2**33), max_size=4), st.booleans(),
    st.lists(st.floats(width=32), max_size=4), st.lists(st.integers(min_value=-2**63, max_value=2**63 - 1), max_size=4),
    st.lists(st.binary(max_size=40), max_size=4), st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=3),
    st.binary(max_size=24))
input_names = st.sampled_from([EXAMPLES_INPUT, "fare", "company", "trip_start_hour", "inputs", "x"])
predict_requests = st.builds(
    lambda model, signature, version, label, inputs, output_filter: _predict_request(
        model, signature, version, label, inputs, output_filter),
    st.sampled_from(["taxi", "toy", "nope", ""]),
    st.sampled_from(["", "serving_default", "serving_raw", "classify", "regress", "nope"]),
    st.none() | st.integers(min_value=-1, max_value=3), st.none() | st.sampled_from(["stable", ""]),
    st.dictionaries(input_names, tensor_protos, max_size=3), st.lists(st.sampled_from(["probabilities", "y"]), max_size=2))


def _predict_request(model, signature, version, label, inputs, output_filter):
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    return request


def _good_rest(loop, rest):
    body = json.dumps({"signature_name": "serving_raw", "instances": [{"fare": 3.0, "company": "x",
                                                                      "trip_start_hour": 4}]}).encode()
    response = loop.run_until_complete(rest.respond("POST", "/v1/models/taxi:predict", body))
    assert response.status == 200
    expected = taxi_probabilities([{"fare": 3.0, "company": "x", "trip_start_hour": 4}])
    assert np.allclose(json.loads(response.body)["predictions"], expected.tolist(), atol=1e-6)


def test_generated_rest_requests_never_get_a_5xx(api):
    loop, rest, _ = api
    statuses = []

    @settings(FUZZ, max_examples=REST_EXAMPLES // BATCH)
    @given(st.lists(st.tuples(st.sampled_from(["POST", "GET", "PUT"]), paths, bodies), min_size=BATCH, max_size=BATCH))
    def check(requests):
        for method, path, body in requests:
            response = loop.run_until_complete(rest.respond(method, path, body))
            statuses.append(response.status)
            assert response.status < 500, (method, path, body, response.body)

    check()
    assert len(statuses) >= REST_EXAMPLES and {400, 404} <= set(statuses)
    _good_rest(loop, rest)


def test_generated_grpc_predict_requests_never_get_internal(api):
    loop, rest, grpc_api = api
    codes = []

    @settings(FUZZ, max_examples=GRPC_EXAMPLES // BATCH)
    @given(st.lists(predict_requests, min_size=BATCH, max_size=BATCH))
    def check(requests):
        for request in requests:
            try:
                loop.run_until_complete(grpc_api.Predict(request, Context()))
                codes.append(grpc.StatusCode.OK)
            except Aborted as e:
                codes.append(e.code)
                assert e.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                      grpc.StatusCode.DATA_LOSS), (request, str(e))

    check()
    assert len(codes) >= GRPC_EXAMPLES and grpc.StatusCode.INVALID_ARGUMENT in codes
    good = _predict_request("taxi", "", None, None, {}, [])
    good.inputs[EXAMPLES_INPUT].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=_dims([1]), string_val=taxi_examples([{"fare": 3.0}])))
    reply = loop.run_until_complete(grpc_api.Predict(good, Context()))
    assert np.allclose(list(reply.outputs["probabilities"].float_val), taxi_probabilities([{"fare": 3.0}]).ravel())
    _good_rest(loop, rest)


def test_grpc_calls_over_the_in_flight_cap_get_resource_exhausted(api):
    loop, _, grpc_api = api
    request = _predict_request("taxi", "", None, None, {}, [])
    request.inputs[EXAMPLES_INPUT].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=_dims([1]), string_val=taxi_examples([{"fare": 3.0}])))
    full = PredictionService(grpc_api.core, MAX_REQUEST_BYTES, in_flight=InFlight(1))
    full.in_flight.count = 1  # one call being answered
    with pytest.raises(Aborted) as error:
        loop.run_until_complete(full.Predict(request, Context()))
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 1" in str(error.value)
    full.in_flight.count = 0
    assert loop.run_until_complete(full.Predict(request, Context())).model_spec.name == "taxi"
    assert full.in_flight.count == 0

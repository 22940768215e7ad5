"""The local model server, started on free ports, called with plain HTTP and the official
tensorflow-serving-api stubs: predictions equal the SavedModel's own, TF Serving's response shapes and
error statuses, batching, metrics, the request log, version swaps under load, labels, and versions
that must never be served. The tests run in file order against one server (the state builds up)."""
import base64
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf
from conftest import write_toy_model
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
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
from tensorflow_serving.config import model_server_config_pb2

from pipeline.config import REPO_ROOT
from pipeline.pusher import push_atomically
from serving import examples
from serving.client import GrpcClient, RestClient
from serving.tensors import to_numpy, to_proto

pytestmark = pytest.mark.e2e  # needs a pushed model from the pipeline

MODEL = "chicago_taxi"
MAX_REQUEST_BYTES = 200_000
RAW_FEATURES = ("company", "dropoff_census_tract", "dropoff_community_area", "dropoff_latitude", "dropoff_longitude",
                "fare", "payment_type", "pickup_census_tract", "pickup_community_area", "pickup_latitude",
                "pickup_longitude", "trip_miles", "trip_seconds", "trip_start_day", "trip_start_hour",
                "trip_start_month", "trip_start_timestamp")


def _model_config(root, chicago_policy: str = "", labels: dict | None = None) -> str:
    """models.config for the server: chicago_taxi (policy and labels as given) and the toy classify/regress model."""
    config = model_server_config_pb2.ModelServerConfig()
    chicago = config.model_config_list.config.add(name=MODEL, base_path=str(root / "models" / MODEL),
                                                  model_platform="tensorflow")
    if chicago_policy:
        text_format.Parse(chicago_policy, chicago.model_version_policy)
    for label, version in (labels or {}).items():
        chicago.version_labels[label] = version
    config.model_config_list.config.add(name="toy", base_path=str(root / "models" / "toy"), model_platform="tensorflow")
    return text_format.MessageToString(config)


class Server:
    def __init__(self, root, model_path):
        self.root = root
        self.rest_port, self.grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.config_file = root / "models.config"
        self.config_file.write_text(_model_config(root))
        shutil.copytree(model_path, root / "models" / MODEL / "1")
        write_toy_model(str(root / "models" / "toy" / "1"))
        (root / "overlay.yaml").write_text(f"serving: {{poll_seconds: 0.3, max_request_bytes: {MAX_REQUEST_BYTES}, "
                                           f"request_log: {{sampling_rate: 1.0, path: {root / 'request_logs'}}}}}\n")
        env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(root / "out"), "TFX_E2E_CONFIG": str(root / "overlay.yaml")}
        self.log = open(root / "server.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--rest_port", str(self.rest_port), "--grpc_port",
             str(self.grpc_port), "--model_config_file", str(self.config_file)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.banner = self.process.stdout.readline()  # printed once both ports listen
        assert self.banner.startswith("serving "), self.logs()
        self.channel = grpc.insecure_channel(self.target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def logs(self) -> str:
        self.log.flush()
        return (self.root / "server.log").read_text()

    def http(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/monitoring/prometheus/metrics", timeout=10) as response:
            return response.read().decode()

    def wait_for(self, condition, what: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()[-3000:]}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.channel.close()
        self.log.close()


@pytest.fixture(scope="module")
def pushed_model(small_pipeline):
    config = small_pipeline.config()
    versions = sorted(glob.glob(os.path.join(config.serving_model_dir, "[0-9]*")))
    assert versions, "the pipeline pushed no model"
    return versions[-1]


@pytest.fixture(scope="module")
def server(pushed_model, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serving"), pushed_model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rows():
    config_schema = examples.load_schema(str(REPO_ROOT / "schema" / "schema.pbtxt"))
    raw = examples.read_csv_rows(str(REPO_ROOT / "tests" / "data" / "taxi_small" / "data.csv"), 8)
    return raw, examples.serialize(raw, config_schema)


@pytest.fixture(scope="module")
def pushed_signature(pushed_model):
    """The SavedModel's own signatures, in this process: what every API must agree with."""
    model = tf.saved_model.load(pushed_model)
    return lambda name: model.signatures[name]


@pytest.fixture(scope="module")
def expected(pushed_signature, rows):
    return pushed_signature("serving_default")(examples=tf.constant(rows[1]))["probabilities"].numpy()


def _raw_instances(raw_rows):
    """serving_raw's inputs: float64 numbers and strings, one per feature."""
    def value(name, text):
        if name in ("company", "payment_type"):
            return text
        return float(text) if text != "" else 0.0
    return [{name: value(name, row[name]) for name in RAW_FEATURES} for row in raw_rows]


def _b64(serialized):
    return [{"b64": base64.b64encode(s).decode()} for s in serialized]


def _grpc_predict_request(serialized, signature="serving_default", **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.get("name", MODEL)
    request.model_spec.signature_name = signature
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["examples"].CopyFrom(to_proto(np.array(serialized, dtype=object), types_pb2.DT_STRING))
    return request


def test_binds_loopback_by_default(server):
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    for port in (server.rest_port, server.grpc_port):
        addresses = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        # gRPC listens on an IPv6 socket bound to the IPv4-mapped loopback address: loopback all the same.
        assert [a.replace("[::ffff:", "").replace("]", "") for a in addresses] == [f"127.0.0.1:{port}"], addresses
    assert f"REST http://127.0.0.1:{server.rest_port}/" in server.banner


def test_model_status_and_metadata_as_tf_serving_returns_them(server):
    assert server.http("GET", f"/v1/models/{MODEL}") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert server.http("GET", f"/v1/models/{MODEL}/versions/1")[0] == 200
    assert f"{MODEL} version 1 AVAILABLE (warm-up requests replayed: 1)" in server.logs()  # the Trainer's file
    status, metadata = server.http("GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_raw", "transform_features"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert default["inputs"]["examples"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert default["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"

    spec = get_model_status_pb2.GetModelStatusRequest()
    spec.model_spec.name = MODEL
    reply = server.model_stub.GetModelStatus(spec)
    assert [(s.version, s.state) for s in reply.model_version_status] == [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    reply = server.predict_stub.GetModelMetadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(signature_map)
    assert reply.model_spec.version.value == 1
    assert signature_map.signature_def["serving_default"].outputs["probabilities"].dtype == types_pb2.DT_FLOAT


def test_rest_predict_in_every_format_equals_the_saved_model(server, rows, expected, pushed_signature):
    raw_rows, serialized = rows
    want = expected.tolist()
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(serialized)})
    assert status == 200 and np.allclose(body["predictions"], want, atol=1e-6)
    status, body = server.http("POST", f"/v1/models/{MODEL}/versions/1:predict",
                               {"signature_name": "serving_default", "inputs": {"examples": _b64(serialized)}})
    assert status == 200 and np.allclose(body["outputs"], want, atol=1e-6)
    # serving_raw, one input per feature (JSON has no NaN for "missing": these rows fill gaps with 0.0).
    instances = _raw_instances(raw_rows)
    raw_expected = pushed_signature("serving_raw")(**{
        name: tf.constant([i[name] for i in instances], tf.string if name in ("company", "payment_type") else tf.float64)
        for name in RAW_FEATURES})["probabilities"].numpy()
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw",
                                                                      "instances": instances})
    assert status == 200 and np.allclose(body["predictions"], raw_expected.tolist(), atol=1e-6)
    columns = {name: [i[name] for i in instances] for name in RAW_FEATURES}
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "inputs": columns})
    assert status == 200 and np.allclose(body["outputs"], raw_expected.tolist(), atol=1e-6)


def test_grpc_predict_equals_the_saved_model(server, rows, expected):
    reply = server.predict_stub.Predict(_grpc_predict_request(rows[1]))
    assert reply.model_spec.name == MODEL and reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    assert np.allclose(to_numpy(reply.outputs["probabilities"]), expected, atol=1e-6)
    # The project's clients, unchanged for TF Serving.
    assert np.allclose(GrpcClient(server.target, MODEL).predict(rows[1]), expected, atol=1e-6)
    assert np.allclose(RestClient(server.url, MODEL).predict(rows[1]), expected, atol=1e-6)


def test_make_predict_prints_probabilities_and_names_errors(server, expected, tmp_path):
    rows_csv = str(REPO_ROOT / "tests" / "data" / "taxi_small" / "data.csv")
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(tmp_path)}
    for transport in (["--url", server.url], ["--grpc", "--target", server.target]):
        result = subprocess.run([sys.executable, "-m", "serving.client", rows_csv, "--rows", "3", *transport],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0].split() == ["row", "P(big", "tipper)"]
        assert [float(line.split()[1]) for line in lines[1:]] == pytest.approx(expected[:3, 0].tolist(), abs=1e-4)
    result = subprocess.run([sys.executable, "-m", "serving.client", rows_csv, "--url", server.url, "--label", "nope"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"error: {server.url}/v1/models/{MODEL}/labels/nope:predict: HTTP 404: Unrecognized servable version label: nope" \
        in result.stderr
    result = subprocess.run([sys.executable, "-m", "serving.client", str(tmp_path / "missing.csv")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "missing.csv" in result.stderr


def _toy_examples(*xs):
    return [tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
        float_list=tf.train.FloatList(value=[x]))})) for x in xs]


def test_classify_and_regress_with_tf_serving_semantics(server):
    status, body = server.http("POST", "/v1/models/toy:classify",
                               {"signature_name": "classify", "examples": [{"x": 0.0}, {"x": 2.0}]})
    assert status == 200
    assert [[label for label, _ in row] for row in body["result"]] == [["no", "yes"], ["no", "yes"]]
    assert np.allclose([[score for _, score in row] for row in body["result"]],
                       [[0.5, 0.5], [1 - 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-2))]], atol=1e-6)
    status, body = server.http("POST", "/v1/models/toy:regress",
                               {"signature_name": "regress", "context": {"x": 1.5}, "examples": [{}, {"x": 3.0}]})
    assert status == 200 and np.allclose(body["result"], [4.0, 7.0])

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "classify"
    request.input.example_list.examples.extend(_toy_examples(0.0))
    reply = server.predict_stub.Classify(request)
    assert [(c.label, round(c.score, 6)) for c in reply.result.classifications[0].classes] == [("no", 0.5), ("yes", 0.5)]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "regress"
    request.input.example_list.examples.extend(_toy_examples(1.0, -1.0))
    assert [r.value for r in server.predict_stub.Regress(request).result.regressions] == [3.0, -1.0]

    # Our model has only predict signatures: TF Serving's error, as TF Serving words it.
    status, body = server.http("POST", f"/v1/models/{MODEL}:classify", {"examples": [{"fare": 1.0}]})
    assert status == 400
    assert body == {"error": "Expected classification signature method_name to be tensorflow/serving/classify. "
                             "Was: tensorflow/serving/predict"}
    status, body = server.http("POST", f"/v1/models/{MODEL}:regress", {"examples": [{"fare": 1.0}]})
    assert status == 400 and "Expected regression signature method_name" in body["error"]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.input.example_list.examples.extend(_toy_examples(0.0))
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Classify(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", f"/v1/models/{MODEL}:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": []}, 400, "\"instances\" must be a non-empty list"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [1.5]}, 400, "is not of expected type: string"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "instances": [{"fare": "abc"}]}, 400,
     "inputs do not match the signature"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "inputs": {
        **{name: [1.0] for name in RAW_FEATURES}, "company": [1.0]}}, 400, "input 'company'"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "bm90IGFuIGV4YW1wbGU="}]}, 400,
     "Could not parse example input"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "nope", "instances": [{"b64": ""}]}, 400,
     "Serving signature name: \"nope\" not found"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "%%%"}]}, 400, "not valid base64"),
    ("POST", "/v1/models/no_such_model:predict", {"instances": [{"b64": ""}]}, 404,
     "Servable not found for request: Latest(no_such_model)"),
    ("POST", f"/v1/models/{MODEL}/versions/999:predict", {"instances": [{"b64": ""}]}, 404,
     f"Servable not found for request: Specific({MODEL}, 999)"),
    ("POST", f"/v1/models/{MODEL}/labels/nope:predict", {"instances": [{"b64": ""}]}, 404,
     "Unrecognized servable version label: nope"),
    ("GET", "/v1/models/no_such_model", None, 404, "Could not find any versions of model no_such_model"),
    ("GET", f"/v1/models/{MODEL}/versions/999", None, 404, f"Could not find version 999 of model {MODEL}"),
    ("GET", "/v2/elsewhere", None, 400, "Malformed request: GET /v2/elsewhere"),
])
def test_rest_errors_and_the_server_keeps_serving(server, rows, expected, method, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got_status, got = server.http(method, path, None if raw else body, raw=raw)
    assert got_status == status
    assert message in got["error"], got
    ok_status, ok = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(rows[1][:1])})
    assert ok_status == 200 and np.allclose(ok["predictions"], expected[:1].tolist(), atol=1e-6)


@pytest.mark.parametrize("spec, code, message", [
    ({"name": "no_such_model"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(no_such_model)"),
    ({"version": 999}, grpc.StatusCode.NOT_FOUND, f"Specific({MODEL}, 999)"),
    ({"label": "nope"}, grpc.StatusCode.NOT_FOUND, "Unrecognized servable version label: nope"),
    ({"signature": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Serving signature name: \"nope\" not found"),
])
def test_grpc_errors(server, rows, spec, code, message):
    signature = spec.pop("signature", "serving_default")
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(_grpc_predict_request(rows[1], signature, **spec))
    assert error.value.code() == code and message in error.value.details()
    wrong_dtype = _grpc_predict_request(rows[1])
    wrong_dtype.inputs["examples"].CopyFrom(to_proto(np.array([1.0], dtype=np.float32), types_pb2.DT_FLOAT))
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(wrong_dtype)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expects DT_STRING" in error.value.details()
    assert server.predict_stub.Predict(_grpc_predict_request(rows[1])).model_spec.version.value == 1


def test_oversized_requests_are_refused(server, rows):
    big = _b64([b"x" * 1000] * (MAX_REQUEST_BYTES // 1000))
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": big})
    assert status == 413 and f"larger than the limit of {MAX_REQUEST_BYTES} bytes" in body["error"]
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(_grpc_predict_request([b"x" * MAX_REQUEST_BYTES]))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(rows[1][:1])})[0] == 200


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_are_batched(server, rows, expected):
    before = server.metrics()
    results, errors = [], []

    def call(i):
        try:
            reply = server.predict_stub.Predict(_grpc_predict_request(rows[1][i % 8:i % 8 + 1]))
            results.append((i % 8, to_numpy(reply.outputs["probabilities"])))
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=lambda k=k: [call(k * 10 + j) for j in range(10)]) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 320
    for row, output in results:  # every request got its own row back
        assert np.allclose(output, expected[row:row + 1], atol=1e-6)
    after = server.metrics()
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    rows_batched = _metric(after, name + "_sum", model_name=MODEL) - _metric(before, name + "_sum", model_name=MODEL)
    batches = _metric(after, name + "_count", model_name=MODEL) - _metric(before, name + "_count", model_name=MODEL)
    assert rows_batched == 320
    assert batches < 320  # some requests shared a batch


def test_prometheus_metrics_count_requests(server):
    text = server.metrics()
    assert _metric(text, ":tensorflow:serving:request_count", model_name=MODEL, model_version="1", API="predict",
                   entrypoint="GRPC", status="OK") >= 320
    assert _metric(text, ":tensorflow:serving:request_count", model_name=MODEL, API="predict", entrypoint="REST",
                   status="NOT_FOUND") >= 2
    assert _metric(text, ":tensorflow:serving:request_count", model_name=MODEL, API="predict", entrypoint="REST",
                   status="INVALID_ARGUMENT") >= 5
    assert _metric(text, ":tensorflow:serving:request_latency_count", model_name=MODEL, model_version="1",
                   API="predict", entrypoint="GRPC", status="OK") >= 320
    assert ':tensorflow:serving:available_versions{model_name="chicago_taxi"} 1' in text


def test_request_log_holds_prediction_logs(server, rows):
    server.predict_stub.Predict(_grpc_predict_request(rows[1][:3]))
    files = glob.glob(str(server.root / "request_logs" / MODEL / "prediction_log-*.tfrecord"))
    assert len(files) == 1
    server.wait_for(lambda: os.path.getsize(files[0]) > 0, "the request log")
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert len(records) >= 320  # sampling_rate 1.0: every successful predict
    last = records[-1].predict_log
    assert last.request.model_spec.name == MODEL and last.request.model_spec.version.value == 1
    assert list(last.request.inputs["examples"].string_val) == rows[1][:3]
    assert to_numpy(last.response.outputs["probabilities"]).shape == (3, 1)


def _available(server, version) -> bool:
    status, body = server.http("GET", f"/v1/models/{MODEL}/versions/{version}")
    return status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_version_swap_under_load_loses_no_request(server, rows, pushed_model):
    stop, failures, versions = threading.Event(), [], set()
    rest, grpc_client = RestClient(server.url, MODEL), GrpcClient(server.target, MODEL)

    def hammer(use_grpc: bool):
        while not stop.is_set():
            try:
                if use_grpc:
                    reply = server.predict_stub.Predict(_grpc_predict_request(rows[1][:2]))
                    versions.add(reply.model_spec.version.value)
                else:
                    rest.predict(rows[1][:2])
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(repr(e))

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        new_version = push_atomically(pushed_model, str(server.root / "models" / MODEL))
        server.wait_for(lambda: _available(server, new_version), f"version {new_version}")
        server.wait_for(lambda: server.http("GET", f"/v1/models/{MODEL}/versions/1")[1]["model_version_status"][0][
            "state"] == "END", "version 1 to be unloaded")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        grpc_client.close()
    assert failures == []
    assert versions == {1, new_version}  # answered by the old version, then by the new one
    server.new_version = new_version


def test_partial_and_corrupt_versions_are_never_served(server, rows):
    base = server.root / "models" / MODEL
    partial, corrupt = server.new_version + 10, server.new_version + 20
    (base / str(partial)).mkdir()
    shutil.copy(base / str(server.new_version) / "saved_model.pb", base / str(partial) / "saved_model.pb")
    (base / str(corrupt) / "variables").mkdir(parents=True)
    (base / str(corrupt) / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    (base / str(corrupt) / "variables" / "variables.index").write_bytes(b"")

    def corrupt_failed():
        status, body = server.http("GET", f"/v1/models/{MODEL}/versions/{corrupt}")
        return status == 200 and body["model_version_status"][0]["state"] == "END"

    server.wait_for(corrupt_failed, "the corrupt version to be refused")
    status, body = server.http("GET", f"/v1/models/{MODEL}/versions/{corrupt}")
    assert body["model_version_status"][0]["status"]["error_code"] == "UNKNOWN"
    assert body["model_version_status"][0]["status"]["error_message"]
    assert server.http("GET", f"/v1/models/{MODEL}/versions/{partial}")[0] == 404
    time.sleep(1.0)  # several polls
    reply = server.predict_stub.Predict(_grpc_predict_request(rows[1][:1]))
    assert reply.model_spec.version.value == server.new_version  # the last good version keeps serving
    logs = server.logs()
    assert f"{MODEL} version {partial} is incomplete (no variables/variables.index): not loading it" in logs
    assert f"{MODEL} version {corrupt} failed to load, not serving it" in logs
    assert logs.count(f"{MODEL} version {corrupt} failed to load") == 1  # not retried until its files change


def _reload(server, text: str):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return server.model_stub.HandleReloadConfigRequest(request)


def test_version_labels_route_stable_and_canary(server, rows):
    stable, canary = 1, server.new_version
    policy = f"specific {{ versions: {stable} versions: {canary} }}"
    reply = _reload(server, _model_config(server.root, policy, {"stable": stable, "canary": canary}))
    assert reply.status.error_code == 0, reply.status.error_message
    server.wait_for(lambda: _available(server, stable), "the stable version to load again")
    for label, version in (("stable", stable), ("canary", canary)):
        assert server.predict_stub.Predict(_grpc_predict_request(rows[1][:1], label=label)).model_spec.version.value == version
        status, body = server.http("POST", f"/v1/models/{MODEL}/labels/{label}:predict", {"instances": _b64(rows[1][:1])})
        assert status == 200
        assert server.http("GET", f"/v1/models/{MODEL}/labels/{label}")[1]["model_version_status"][0]["version"] == str(version)

    # A label on a version that cannot be served is refused, and the old labels stay.
    reply = _reload(server, _model_config(server.root, policy, {"stable": stable, "canary": 999}))
    assert reply.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "version 999" in reply.status.error_message
    assert server.predict_stub.Predict(_grpc_predict_request(rows[1][:1], label="canary")).model_spec.version.value == canary

    # The model config file is re-read when it changes: promote the canary.
    server.config_file.write_text(_model_config(server.root, policy, {"stable": canary, "canary": canary}))
    os.utime(server.config_file, (time.time() + 5, time.time() + 5))
    server.wait_for(lambda: server.predict_stub.Predict(
        _grpc_predict_request(rows[1][:1], label="stable")).model_spec.version.value == canary, "the promotion")


def test_a_second_server_on_the_same_port_fails_clearly(server, rows):
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(server.root / "out2")}
    for rest, grpc_port in ((portpicker.pick_unused_port(), server.grpc_port), (server.rest_port, portpicker.pick_unused_port())):
        result = subprocess.run([sys.executable, "-m", "serving.server", "--rest_port", str(rest), "--grpc_port",
                                 str(grpc_port), "--model_config_file", str(server.config_file)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"error: cannot listen on 127.0.0.1 (REST {rest}, gRPC {grpc_port})" in result.stderr
        assert "is another server on these ports?" in result.stderr
    assert server.predict_stub.Predict(_grpc_predict_request(rows[1][:1])).model_spec.version.value > 0


def test_graceful_shutdown(server, rows):
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "shutting down" in server.process.stdout.read()

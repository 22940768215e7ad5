"""The local model server as a process, on free loopback ports, called with plain HTTP and the official
tensorflow-serving-api stubs, on small models the tests build (no pipeline run): predictions equal the model's,
TF Serving's response forms, status codes and flags, batching, metrics, the request log, version swaps under load,
labels, versions that must never be served, and graceful shutdown with requests in flight.

Tests that only read share one server (`server`); a test that changes what is served starts its own."""
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
from serving_models import COMPANY, taxi_examples, taxi_probabilities, write_taxi_model
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from pipeline.config import REPO_ROOT
from pipeline.versions import push_atomically
from serving.client import GrpcClient, RestClient
from serving.client import main as client_main
from serving.tensors import to_numpy, to_proto

MODEL = "chicago_taxi"
MAX_REQUEST_BYTES = 200_000
ROWS = [{"fare": 12.5, "company": COMPANY, "trip_start_hour": 3}, {"fare": 4.0, "company": "Other", "trip_start_hour": 22},
        {"fare": 30.25, "company": "", "trip_start_hour": 0}, {"fare": 0.0, "company": COMPANY, "trip_start_hour": 12}]
EXAMPLES = taxi_examples(ROWS)
EXPECTED = taxi_probabilities(ROWS)


def model_config(root, chicago_policy: str = "", labels: dict | None = None) -> str:
    """models.config: chicago_taxi (policy and labels as given) and the toy classify/regress model."""
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
    """`python -m serving.server` with TF Serving's flags (batching and metrics asked for, as TF Serving needs)."""

    def __init__(self, root, *flags: str, overlay: str = "", models: bool = True, sections: str = ""):
        self.root = root
        self.rest_port, self.grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.config_file = root / "models.config"
        if models:
            self.config_file.write_text(model_config(root))
            write_taxi_model(str(root / "models" / MODEL / "1"))
            write_toy_model(str(root / "models" / "toy" / "1"))
        (root / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
        # A batch waits up to 5 ms to fill: the test model answers in microseconds, so without a wait concurrent
        # requests would rarely meet in a batch.
        (root / "batching.config").write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 5000 }")
        (root / "overlay.yaml").write_text(
            f"serving: {{max_request_bytes: {MAX_REQUEST_BYTES}, "
            f"request_log: {{sampling_rate: 1.0, path: {root / 'request_logs'}}}{overlay}}}\n{sections}")
        env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(root / "out"), "TFX_E2E_CONFIG": str(root / "overlay.yaml"),
               "TFX_E2E_DATA_ROOT": str(root / "no-data-here")}
        self.log = open(root / "server.log", "w+")
        self.command = [sys.executable, "-m", "serving.server", "--rest_api_port", str(self.rest_port), "--port",
                        str(self.grpc_port), "--model_config_file", str(self.config_file), "--enable_batching",
                        "--batching_parameters_file", str(root / "batching.config"),
                        "--monitoring_config_file", str(root / "monitoring.config"),
                        "--file_system_poll_wait_seconds", "0.3", "--model_config_file_poll_wait_seconds", "0.3",
                        *flags]
        self.env = env
        self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)
        self.banner = self.process.stdout.readline()  # printed once both ports listen
        assert self.banner.startswith("serving "), self.logs()
        self.channel = grpc.insecure_channel(self.target)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def logs(self) -> str:
        self.log.flush()
        return (self.root / "server.log").read_text()

    def http(self, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/monitoring/prometheus/metrics", timeout=10) as response:
            return response.read().decode()

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def wait_for(self, condition, what: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()[-3000:]}")

    def available(self, version, model=MODEL) -> bool:
        status, body = self.http("GET", f"/v1/models/{model}/versions/{version}")
        return status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.channel.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serving"))
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path):
    servers = []

    def start(*flags, **kwargs):
        servers.append(Server(tmp_path, *flags, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _b64(serialized):
    return [{"b64": base64.b64encode(s).decode()} for s in serialized]


def predict_request(serialized=EXAMPLES, signature="serving_default", **spec):
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


def test_starts_with_no_data_root_and_no_schema(server):
    """The overlay points TFX_E2E_DATA_ROOT at a missing directory: serving needs only the pushed models."""
    assert not (server.root / "no-data-here").exists()
    assert server.available(1)


def test_model_status_and_metadata_as_tf_serving_returns_them(server):
    assert server.http("GET", f"/v1/models/{MODEL}") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert f"{MODEL} version 1 AVAILABLE (warm-up requests replayed: 1)" in server.logs()
    status, metadata = server.http("GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "serving_raw"}
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert default["inputs"]["examples"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]

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


def test_rest_predict_in_every_format_equals_the_model(server):
    want = EXPECTED.tolist()
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(EXAMPLES)})
    assert status == 200 and np.allclose(body["predictions"], want, atol=1e-6)
    status, body = server.http("POST", f"/v1/models/{MODEL}/versions/1:predict",
                               {"signature_name": "serving_default", "inputs": {"examples": _b64(EXAMPLES)}})
    assert status == 200 and np.allclose(body["outputs"], want, atol=1e-6)
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw",
                                                                      "instances": ROWS})
    assert status == 200 and np.allclose(body["predictions"], want, atol=1e-6)
    columns = {name: [row[name] for row in ROWS] for name in ROWS[0]}
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "inputs": columns})
    assert status == 200 and np.allclose(body["outputs"], want, atol=1e-6)


def test_grpc_predict_answers_in_typed_fields_as_tf_serving(server):
    reply = server.predict_stub.Predict(predict_request())
    assert reply.model_spec.name == MODEL and reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    output = reply.outputs["probabilities"]
    assert output.tensor_content == b"" and len(output.float_val) == len(ROWS)  # what clients read as .float_val
    assert np.allclose(np.array(output.float_val).reshape(-1, 1), EXPECTED, atol=1e-6)
    assert [d.size for d in output.tensor_shape.dim] == [len(ROWS), 1]
    assert np.allclose(GrpcClient(server.target, MODEL).predict(EXAMPLES), EXPECTED, atol=1e-6)
    assert np.allclose(RestClient(server.url, MODEL).predict(EXAMPLES), EXPECTED, atol=1e-6)


def test_tensor_content_only_when_asked(own_server):
    server = own_server("--enable_serialization_as_tensor_content")
    output = server.predict_stub.Predict(predict_request()).outputs["probabilities"]
    assert not output.float_val and np.allclose(to_numpy(output), EXPECTED, atol=1e-6)


def test_make_predict_prints_probabilities_and_names_errors(server, tmp_path, monkeypatch, capsys):
    rows_csv = str(REPO_ROOT / "tests" / "data" / "taxi_small" / "data.csv")
    with open(rows_csv) as f:
        import csv
        rows = [row for _, row in zip(range(3), csv.DictReader(f), strict=False)]
    expected = taxi_probabilities(rows)

    def printed_probabilities(stdout):
        lines = stdout.strip().splitlines()
        assert lines[0].split() == ["row", "P(big", "tipper)"]
        return [float(line.split()[1]) for line in lines[1:]]

    # `make predict` runs the module as a process once; the other cases call its main() here (TF imports once).
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "serving.client", rows_csv, "--rows", "3", "--url", server.url],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert printed_probabilities(result.stdout) == pytest.approx(expected[:, 0].tolist(), abs=1e-4)
    monkeypatch.setenv("TFX_E2E_OUTPUT_ROOT", str(tmp_path))
    assert client_main([rows_csv, "--rows", "3", "--grpc", "--target", server.target]) == 0
    assert printed_probabilities(capsys.readouterr().out) == pytest.approx(expected[:, 0].tolist(), abs=1e-4)
    assert client_main([rows_csv, "--url", server.url, "--label", "nope"]) == 1
    assert f"error: {server.url}/v1/models/{MODEL}/labels/nope:predict: HTTP 404: Unrecognized servable version label: nope" \
        in capsys.readouterr().err
    assert client_main([str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def _toy_examples(*xs):
    return [tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
        float_list=tf.train.FloatList(value=[x]))})) for x in xs]


def test_classify_and_regress_answer_results_as_tf_serving(server):
    status, body = server.http("POST", "/v1/models/toy:classify",
                               {"signature_name": "classify", "examples": [{"x": 0.0}, {"x": 2.0}]})
    assert status == 200
    assert [[label for label, _ in row] for row in body["results"]] == [["no", "yes"], ["no", "yes"]]
    assert np.allclose([[score for _, score in row] for row in body["results"]],
                       [[0.5, 0.5], [1 - 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-2))]], atol=1e-6)
    status, body = server.http("POST", "/v1/models/toy:regress",
                               {"signature_name": "regress", "context": {"x": 1.5}, "examples": [{}, {"x": 3.0}]})
    assert status == 200 and np.allclose(body["results"], [4.0, 7.0])

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "classify"
    request.input.example_list.examples.extend(_toy_examples(0.0))
    reply = server.predict_stub.Classify(request)
    assert [(c.label, round(c.score, 6)) for c in reply.result.classifications[0].classes] == [("no", 0.5), ("yes", 0.5)]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "regress"
    request.input.example_list.examples.extend(_toy_examples(1.0, -1.0))
    assert [r.value for r in server.predict_stub.Regress(request).result.regressions] == [3.0, -1.0]

    # A predict signature without classify outputs: TF Serving checks the outputs, not the method name.
    status, body = server.http("POST", f"/v1/models/{MODEL}:classify", {"examples": [{"fare": 1.0}]})
    assert status == 400 and "Expected classification signature outputs to contain at least one of" in body["error"]
    status, body = server.http("POST", f"/v1/models/{MODEL}:regress", {"examples": [{"fare": 1.0}]})
    assert status == 400 and "No regression outputs found" in body["error"]


def _scores_only_model(path):
    """A predict-method signature (TF2 style) with a `scores` output only."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="inputs")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        scale = tf.compat.v1.Variable(1.0, name="scale")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                {"inputs": serialized}, {"scores": tf.concat([1 - tf.sigmoid(x * scale), tf.sigmoid(x * scale)], 1)}),
        })
        builder.save()


def test_classify_on_a_predict_signature_and_the_method_name_check_flag(own_server, tmp_path):
    _scores_only_model(tmp_path / "models" / "scores" / "1")
    (tmp_path / "scores.config").write_text(
        f'model_config_list {{ config {{ name: "scores" base_path: "{tmp_path / "models" / "scores"}" '
        'model_platform: "tensorflow" } }')
    server = own_server("--model_config_file", str(tmp_path / "scores.config"), models=False)
    status, body = server.http("POST", "/v1/models/scores:classify", {"examples": [{"x": 0.0}]})
    assert status == 200 and body == {"results": [[["", 0.5], ["", 0.5]]]}  # no classes output: empty labels
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "scores"
    request.input.example_list.examples.extend(_toy_examples(0.0))
    assert [c.label for c in server.predict_stub.Classify(request).result.classifications[0].classes] == ["", ""]
    server.stop()

    checked = own_server("--model_config_file", str(tmp_path / "scores.config"), "--enable_signature_method_name_check",
                         models=False)
    status, body = checked.http("POST", "/v1/models/scores:classify", {"examples": [{"x": 0.0}]})
    assert status == 400
    assert body == {"error": "Expected classification signature method_name to be tensorflow/serving/classify. "
                             "Was: tensorflow/serving/predict"}


def test_multi_inference_runs_classify_and_regress_on_one_input(server):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "toy", signature
    request.input.example_list.examples.extend(_toy_examples(0.0, 2.0))
    reply = server.predict_stub.MultiInference(request)
    assert [r.model_spec.signature_name for r in reply.results] == ["classify", "regress"]
    assert all(r.model_spec.version.value == 1 for r in reply.results)
    assert [c.label for c in reply.results[0].classification_result.classifications[1].classes] == ["no", "yes"]
    assert [r.value for r in reply.results[1].regression_result.regressions] == [1.0, 5.0]
    request.tasks[1].model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.MultiInference(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than one model" in error.value.details()


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", f"/v1/models/{MODEL}:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": []}, 400, "\"instances\" must be a non-empty list"),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [1.5]}, 400, "is not of expected type: string"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "instances": [{"fare": "abc"}]}, 400,
     "inputs do not match the signature"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "inputs": {
        "fare": [1.0], "trip_start_hour": [1], "company": [1.0]}}, 400, "input 'company'"),
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
    # Hostile input that used to answer 500: each a clear 400 now.
    ("POST", f"/v1/models/{MODEL}:predict", {"inputs": "x"}, 400, "takes a batch"),
    ("POST", f"/v1/models/{MODEL}:predict", {"inputs": {"examples": [["x"] * 2, "y"]}}, 400, "ragged"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "instances": [
        {"fare": 1.0, "company": "a", "trip_start_hour": 2**63}]}, 400, "out of range for DT_INT64"),
    ("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "serving_raw", "instances": [
        {"fare": 1.0, "company": "a", "trip_start_hour": 2**64}]}, 400, "is not of expected type: integer"),
    ("POST", f"/v1/models/{MODEL}/versions/{'9' * 5000}:predict", {"instances": [{"b64": ""}]}, 400,
     "is not a version number"),
    ("GET", f"/v1/models/{MODEL}/versions/{2**63}", None, 400, "is not a version number"),
])
def test_rest_errors_and_the_server_keeps_serving(server, method, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got_status, got = server.http(method, path, None if raw else body, raw=raw)
    assert got_status == status
    assert message in got["error"], got
    ok_status, ok = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(EXAMPLES[:1])})
    assert ok_status == 200 and np.allclose(ok["predictions"], EXPECTED[:1].tolist(), atol=1e-6)


def test_strings_nested_a_thousand_deep_are_a_400(server):
    body = "[" * 1000 + '"x"' + "]" * 1000
    status, got = server.http("POST", f"/v1/models/{MODEL}:predict", raw=f'{{"inputs": {body}}}'.encode())
    assert status == 400 and ("nested deeper than" in got["error"] or "JSON Parse error" in got["error"])
    status, got = server.http("POST", f"/v1/models/{MODEL}:predict", raw=("{\"inputs\": " + "[" * 30 + '"x"' + "]" * 30
                                                                          + "}").encode())
    assert status == 400  # within orjson's depth: our walker refuses rank > 32 or the model refuses the rank


def test_many_short_strings_and_one_long_one_stay_small(server):
    """A 4 MiB-class body of short strings plus one long string: no fixed-width copy (np.shape on a list of bytes
    made one of len(list) x longest bytes)."""
    body = json.dumps({"inputs": {"examples": ["a"] * 15_000 + ["b" * 60_000]}}).encode()
    assert len(body) < MAX_REQUEST_BYTES
    before = server.rss_kb()
    status, got = server.http("POST", f"/v1/models/{MODEL}:predict", raw=body)
    assert status == 400 and got["error"] == "Task size 15001 is larger than maximum batch size 64"
    assert server.rss_kb() - before < 100_000


@pytest.mark.parametrize("spec, code, message", [
    ({"name": "no_such_model"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(no_such_model)"),
    ({"version": 999}, grpc.StatusCode.NOT_FOUND, f"Specific({MODEL}, 999)"),
    ({"label": "nope"}, grpc.StatusCode.NOT_FOUND, "Unrecognized servable version label: nope"),
    ({"signature": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Serving signature name: \"nope\" not found"),
])
def test_grpc_errors(server, spec, code, message):
    signature = spec.pop("signature", "serving_default")
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(predict_request(EXAMPLES, signature, **spec))
    assert error.value.code() == code and message in error.value.details()
    assert server.predict_stub.Predict(predict_request()).model_spec.version.value == 1


def _raw_request(**tensors):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "serving_raw"
    defaults = {"fare": to_proto(np.array([1.0]), types_pb2.DT_DOUBLE),
                "trip_start_hour": to_proto(np.array([1]), types_pb2.DT_INT64),
                "company": to_proto(np.array([b"a"], dtype=object), types_pb2.DT_STRING)}
    for name, proto in {**defaults, **tensors}.items():
        request.inputs[name].CopyFrom(proto)
    return request


def _tensor(text: str):
    from tensorflow.core.framework import tensor_pb2
    return text_format.Parse(text, tensor_pb2.TensorProto())


@pytest.mark.parametrize("tensors, message", [
    ({"examples": to_proto(np.array([1.0], dtype=np.float32), types_pb2.DT_FLOAT)}, "expects DT_STRING"),
    ({"fare": _tensor("dtype: DT_DOUBLE tensor_shape { dim { size: 64 } dim { size: 30000000 } } double_val: 1")},
     "is larger than the request limit"),
    ({"fare": _tensor("dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } tensor_content: '0123456789'")},
     "is not a whole number of DT_DOUBLE values"),
    ({"fare": _tensor("dtype: DT_DOUBLE tensor_shape { dim { size: -3 } } double_val: 1")}, "is not fully defined"),
    ({"trip_start_hour": _tensor("dtype: DT_INT32 tensor_shape { dim { size: 1 } } int_val: 1")},
     "Type mismatch: actual int32 vs. expect int64"),
    ({"fare": _tensor("dtype: DT_DOUBLE tensor_shape { } double_val: 1")}, "takes a batch"),
])
def test_grpc_hostile_tensors_are_invalid_argument(server, tensors, message):
    request = predict_request() if "examples" in tensors else _raw_request(**tensors)
    if "examples" in tensors:
        request.inputs["examples"].CopyFrom(tensors["examples"])
    before = server.rss_kb()
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()
    assert server.rss_kb() - before < 100_000  # the [64, 30000000] tensor allocated 7.7 GB before
    assert server.predict_stub.Predict(predict_request()).model_spec.version.value == 1


def test_oversized_requests_are_refused(server):
    big = _b64([b"x" * 1000] * (MAX_REQUEST_BYTES // 1000))
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": big})
    assert status == 413 and f"larger than the limit of {MAX_REQUEST_BYTES} bytes" in body["error"]
    with pytest.raises(grpc.RpcError) as error:
        server.predict_stub.Predict(predict_request([b"x" * MAX_REQUEST_BYTES]))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(EXAMPLES[:1])})[0] == 200


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_concurrent_requests_are_batched(own_server, tmp_path):
    """On a model slow enough that requests in flight together meet in a batch (a fast one runs each at once)."""
    write_taxi_model(str(tmp_path / "models" / "slow" / "1"), work=8)
    (tmp_path / "slow.config").write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: '
                                          f'"{tmp_path / "models" / "slow"}" model_platform: "tensorflow" }} }}')
    server = own_server("--model_config_file", str(tmp_path / "slow.config"), models=False)
    before = server.metrics()
    futures = [(i % 4, server.predict_stub.Predict.future(predict_request(EXAMPLES[i % 4:i % 4 + 1]), timeout=30))
               for i in range(320)]  # all in flight at once
    for row, future in futures:  # every request got its own row back
        assert np.allclose(to_numpy(future.result().outputs["probabilities"]), EXPECTED[row:row + 1], atol=1e-6)
    after = server.metrics()
    name = ":tensorflow:serving:batching_session:processed_batch_size"
    rows_batched = _metric(after, name + "_sum", model_name=MODEL) - _metric(before, name + "_sum", model_name=MODEL)
    batches = _metric(after, name + "_count", model_name=MODEL) - _metric(before, name + "_count", model_name=MODEL)
    assert rows_batched == 320
    assert batches < 320  # some requests shared a batch


def test_prometheus_metrics_count_requests_and_resist_injection(server):
    before = server.metrics()
    for _ in range(3):
        server.predict_stub.Predict(predict_request())
    server.http("POST", f"/v1/models/{MODEL}/versions/999:predict", {"instances": _b64(EXAMPLES[:1])})
    for i in range(1000):
        server.http("GET", f"/v1/models/random{i}")
    server.http("GET", "/v1/models/x%22%7D%201%0Afoo")
    text = server.metrics()
    count = ":tensorflow:serving:request_count"
    assert _metric(text, count, model_name=MODEL, model_version="1", API="predict", entrypoint="GRPC",
                   status="OK") - _metric(before, count, model_name=MODEL, model_version="1", API="predict",
                                          entrypoint="GRPC", status="OK") == 3
    assert _metric(text, count, model_name=MODEL, API="predict", entrypoint="REST", status="NOT_FOUND") >= 1
    assert _metric(text, count, model_name="<unknown>", API="status", entrypoint="REST", status="NOT_FOUND") >= 1001
    assert "foo" not in text and "random" not in text
    assert _metric(text, ":tensorflow:serving:available_versions", model_name=MODEL) == 1
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    for i in range(1000, 1100):
        server.http("GET", f"/v1/models/random{i}")
    assert len([line for line in server.metrics().splitlines() if line and not line.startswith("#")]) == len(series)


def test_request_log_holds_prediction_logs(server):
    server.predict_stub.Predict(predict_request(EXAMPLES[:3]))
    server.http("POST", "/v1/models/toy:regress", {"signature_name": "regress", "examples": [{"x": 1.0}, {"x": 2.0}]})
    model_files = lambda model: glob.glob(str(server.root / "request_logs" / model / "prediction_log-*.tfrecord"))  # noqa: E731

    def records(model):
        return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(model_files(model))]

    server.wait_for(lambda: model_files(MODEL) and any(
        list(r.predict_log.request.inputs["examples"].string_val) == EXAMPLES[:3] for r in records(MODEL)), "the log")
    last = [r for r in records(MODEL) if list(r.predict_log.request.inputs["examples"].string_val) == EXAMPLES[:3]][-1]
    assert last.log_metadata.model_spec.name == MODEL and last.log_metadata.model_spec.version.value == 1
    assert to_numpy(last.predict_log.response.outputs["probabilities"]).shape == (3, 1)
    server.wait_for(lambda: model_files("toy") and any(r.WhichOneof("log_type") == "regress_log"
                                                       for r in records("toy")), "the regress log")
    regress = [r for r in records("toy") if r.WhichOneof("log_type") == "regress_log"][-1].regress_log
    assert len(regress.request.input.example_list.examples) == 2  # every example of the request
    assert [r.value for r in regress.response.result.regressions] == [3.0, 5.0]


def test_version_swap_under_load_loses_no_request(own_server, tmp_path):
    server = own_server()
    stop, failures, versions = threading.Event(), [], set()
    rest, grpc_client = RestClient(server.url, MODEL), GrpcClient(server.target, MODEL)

    def hammer(use_grpc: bool):
        while not stop.is_set():
            try:
                if use_grpc:
                    versions.add(server.predict_stub.Predict(predict_request(EXAMPLES[:2])).model_spec.version.value)
                else:
                    rest.predict(EXAMPLES[:2])
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(repr(e))

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        write_taxi_model(str(tmp_path / "v2"), bias=1.0)
        new_version = push_atomically(str(tmp_path / "v2"), str(tmp_path / "models" / MODEL))
        server.wait_for(lambda: server.available(new_version), f"version {new_version}")
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
    reply = server.predict_stub.Predict(predict_request(EXAMPLES[:1]))
    assert np.allclose(to_numpy(reply.outputs["probabilities"]), taxi_probabilities(ROWS[:1], bias=1.0), atol=1e-6)


def test_partial_corrupt_and_odd_versions_are_never_served(own_server, tmp_path):
    base = tmp_path / "models" / MODEL
    (base / "²").mkdir(parents=True)  # a non-ASCII digit: crashed every poll and the startup before
    server = own_server()
    partial, corrupt = 10, 20
    (base / str(partial)).mkdir()
    shutil.copy(base / "1" / "saved_model.pb", base / str(partial) / "saved_model.pb")
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
    assert server.predict_stub.Predict(predict_request(EXAMPLES[:1])).model_spec.version.value == 1
    logs = server.logs()
    assert f"{MODEL} version {partial} is incomplete (no variables/variables.index): not loading it" in logs
    assert f"{MODEL} version {corrupt} failed to load (attempt 1, retrying in 60 s)" in logs
    assert logs.count(f"{MODEL} version {corrupt} failed to load") == 1  # backoff: not again within 60 s
    # Fixed in place: tried again at once, and it serves.
    shutil.rmtree(base / str(corrupt))
    write_taxi_model(str(base / str(corrupt)), bias=2.0)
    server.wait_for(lambda: server.available(corrupt), "the fixed version")


def _reload(server, text: str):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return server.model_stub.HandleReloadConfigRequest(request)


def test_version_labels_route_stable_and_canary(own_server, tmp_path):
    server = own_server()
    write_taxi_model(str(tmp_path / "v2"), bias=1.0)
    shutil.copytree(tmp_path / "v2", tmp_path / "models" / MODEL / "2")
    server.wait_for(lambda: server.available(2), "version 2")
    policy = "specific { versions: 1 versions: 2 }"
    reply = _reload(server, model_config(server.root, policy, {"stable": 1, "canary": 2}))
    assert reply.status.error_code == 0, reply.status.error_message
    assert server.available(1)  # loaded before the reload answered, as TF Serving does
    for label, version in (("stable", 1), ("canary", 2)):
        assert server.predict_stub.Predict(predict_request(EXAMPLES[:1], label=label)).model_spec.version.value == version
        status, body = server.http("POST", f"/v1/models/{MODEL}/labels/{label}:predict", {"instances": _b64(EXAMPLES[:1])})
        assert status == 200
        assert server.http("GET", f"/v1/models/{MODEL}/labels/{label}")[1]["model_version_status"][0]["version"] == str(version)

    # A label on a version that cannot be served is refused, and the old labels stay.
    reply = _reload(server, model_config(server.root, policy, {"stable": 1, "canary": 999}))
    assert reply.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "version 999" in reply.status.error_message
    assert server.predict_stub.Predict(predict_request(EXAMPLES[:1], label="canary")).model_spec.version.value == 2

    # The model config file is re-read when it changes (--model_config_file_poll_wait_seconds): promote the canary.
    server.config_file.write_text(model_config(server.root, policy, {"stable": 2, "canary": 2}))
    os.utime(server.config_file, (time.time() + 5, time.time() + 5))
    server.wait_for(lambda: server.predict_stub.Predict(
        predict_request(EXAMPLES[:1], label="stable")).model_spec.version.value == 2, "the promotion")


@pytest.mark.parametrize("name, base, message", [
    ("../x", "models/x", "model name '../x'"),
    ("x", "/etc", "outside the allowed model roots"),
])
def test_a_reload_request_cannot_escape_the_model_roots(server, name, base, message):
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=str(server.root / base) if not base.startswith("/")
                                        else base, model_platform="tensorflow")
    reply = _reload(server, text_format.MessageToString(config))
    assert reply.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message in reply.status.error_message
    assert server.predict_stub.Predict(predict_request(EXAMPLES[:1])).model_spec.version.value == 1  # unchanged
    assert not (server.root / "request_logs" / "..").joinpath("x").exists()


def test_many_slow_clients_do_not_stop_a_status_request(own_server):
    import socket

    server = own_server(overlay=", limits: {body_timeout_seconds: 3.0, idle_timeout_seconds: 30.0, "
                                "max_connections: 2048, max_concurrent_requests: 256}")
    sockets = []
    try:
        for _ in range(1000):  # each promises a body and dribbles one byte of it
            s = socket.create_connection(("127.0.0.1", server.rest_port))
            s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
            sockets.append(s)
        started = time.monotonic()
        status, body = server.http("GET", f"/v1/models/{MODEL}", timeout=5)
        assert status == 200 and time.monotonic() - started < 1.0
        answers = []
        for s in sockets[:300]:  # the first ones time out with 408; those over the in-flight cap got 429 at once
            s.settimeout(10)
            answers.append(s.recv(64).split(b" ")[1])
        assert set(answers) <= {b"408", b"429"} and b"408" in answers
    finally:
        for s in sockets:
            s.close()
    assert server.http("GET", f"/v1/models/{MODEL}")[0] == 200


def test_bad_flags_and_files_fail_at_start_with_tf_servings_wording(tmp_path):
    (tmp_path / "bad.config").write_text("model_config_list { config { name: 'x' bogus: 1 } }")
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(tmp_path / "none")}
    result = subprocess.run([sys.executable, "-m", "serving.server", "--model_config_file", str(tmp_path / "bad.config")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr and "bogus" in result.stderr
    (tmp_path / "batching.config").write_text("max_batch_size { value: 0 }")
    result = subprocess.run([sys.executable, "-m", "serving.server", "--model_base_path", str(tmp_path),
                             "--enable_batching", "--batching_parameters_file", str(tmp_path / "batching.config")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "max_batch_size must be at least 1" in result.stderr


def test_tf_serving_flags_batching_off_metrics_off_unix_socket(own_server, tmp_path):
    socket_path = tmp_path / "grpc.sock"
    server = own_server("--enable_batching=false", "--monitoring_config_file", "", "--grpc_socket_path",
                        str(socket_path), "--grpc_channel_arguments", "grpc.max_concurrent_streams=100")
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request())
    assert np.allclose(to_numpy(reply.outputs["probabilities"]), EXPECTED, atol=1e-6)
    status, body = server.http("GET", "/monitoring/prometheus/metrics")
    assert status == 400  # no MonitoringConfig enabling it: no metrics endpoint, as TF Serving
    assert "metrics http" not in server.banner


def test_a_second_server_on_the_same_port_fails_clearly(server):
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(server.root / "out2")}
    for rest, grpc_port in ((portpicker.pick_unused_port(), server.grpc_port), (server.rest_port, portpicker.pick_unused_port())):
        result = subprocess.run([sys.executable, "-m", "serving.server", "--rest_api_port", str(rest), "--port",
                                 str(grpc_port), "--model_config_file", str(server.config_file)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"error: cannot listen on 127.0.0.1 (REST {rest}, gRPC {grpc_port})" in result.stderr
        assert "is another server on these ports?" in result.stderr
    assert server.predict_stub.Predict(predict_request(EXAMPLES[:1])).model_spec.version.value > 0


def test_graceful_shutdown_finishes_requests_in_flight(own_server):
    """SIGTERM while a request's body is still arriving: the request is answered, then the process exits 0."""
    import socket

    server = own_server()
    body = json.dumps({"instances": _b64(EXAMPLES)}).encode()
    with socket.create_connection(("127.0.0.1", server.rest_port)) as s:
        s.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body[:10])
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None  # waiting for the request in flight
        s.sendall(body[10:])
        s.settimeout(10)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert np.allclose(json.loads(payload)["predictions"], EXPECTED.tolist(), atol=1e-6)
    assert server.process.wait(timeout=30) == 0
    assert "shutting down" in server.process.stdout.read()


def test_make_serve_starts_from_the_configuration_with_only_the_pushed_models(tmp_path):
    """`make serve` (no model flags): the configuration's model under <output_root>/serving/, its batching and
    metrics; TFX_E2E_DATA_ROOT names a directory that does not exist and no schema is read."""
    write_taxi_model(str(tmp_path / "out" / "serving" / MODEL / "7"))
    rest_port, grpc_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    env = {**os.environ, "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(tmp_path / "missing")}
    process = subprocess.Popen([sys.executable, "-m", "serving.server", "--rest_port", str(rest_port), "--grpc_port",
                                str(grpc_port)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"serving {MODEL}: ") and "/monitoring/prometheus/metrics" in banner
        body = json.dumps({"instances": _b64(EXAMPLES)}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict",
                                                           data=body), timeout=30) as response:
            assert np.allclose(json.loads(response.read())["predictions"], EXPECTED.tolist(), atol=1e-6)
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
            assert _metric(r.read().decode(), ":tensorflow:serving:available_versions", model_name=MODEL) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_rest_api_timeout_answers_deadline_exceeded(own_server, tmp_path):
    write_taxi_model(str(tmp_path / "models" / "slow" / "1"), work=64)
    (tmp_path / "slow.config").write_text(f'model_config_list {{ config {{ name: "{MODEL}" base_path: '
                                          f'"{tmp_path / "models" / "slow"}" model_platform: "tensorflow" }} }}')
    server = own_server("--model_config_file", str(tmp_path / "slow.config"), "--rest_api_timeout_in_ms", "1",
                        "--enable_batching=false",
                        models=False)
    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(EXAMPLES * 16)})
    assert status == 504 and body == {"error": "Request did not finish within 1 ms"}
    assert server.http("GET", f"/v1/models/{MODEL}")[0] == 200  # the server goes on

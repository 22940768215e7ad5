"""REST and gRPC clients for TF Serving's API (TF Serving itself, or the local server: the same calls).

    make predict                                        # first 5 rows of the bundled CSV, REST, 127.0.0.1:8501
    python -m serving.client rows.csv --grpc --rows 20  # gRPC on 127.0.0.1:8500
    python -m serving.client rows.json --url http://tf-serving:8501 --label canary

Rows are raw feature values (a CSV with a header, or a JSON list of objects); they become tf.Examples
typed by the schema and go to the serving_default signature, which returns the big-tipper probability.
"""
import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np

from modules import contract
from serving import examples

SIGNATURE, OUTPUT = contract.SERVING_SIGNATURE, contract.OUTPUT_KEY


class ServingClientError(RuntimeError):
    """A request that did not give predictions, with the server's reason."""


class RestClient:
    def __init__(self, url: str, model: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def _path(self, version: int | None, label: str | None) -> str:
        suffix = f"/versions/{version}" if version else f"/labels/{label}" if label else ""
        return f"{self.url}/v1/models/{self.model}{suffix}"

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error", "")
            except ValueError:
                reason = e.reason
            raise ServingClientError(f"{url}: HTTP {e.code}: {reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise ServingClientError(f"{url}: {getattr(e, 'reason', e)} (is the server running?)") from None

    def status(self, version: int | None = None, label: str | None = None) -> dict:
        return self._call(self._path(version, label))

    def predict(self, serialized: list[bytes], version: int | None = None, label: str | None = None) -> np.ndarray:
        body = {"signature_name": SIGNATURE,
                "instances": [{"b64": base64.b64encode(s).decode()} for s in serialized]}
        result = self._call(self._path(version, label) + ":predict", body)
        return np.asarray(result["predictions"], dtype=np.float32).reshape(len(serialized), -1)


class GrpcClient:
    def __init__(self, target: str, model: str, timeout: float = 10.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model = model
        self.timeout = timeout
        self.target = target
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, serialized: list[bytes], version: int | None = None, label: str | None = None) -> np.ndarray:
        import grpc
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2

        from serving.tensors import to_numpy, to_proto

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = SIGNATURE
        if version:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        request.inputs[contract.EXAMPLES_INPUT].CopyFrom(to_proto(np.array(serialized, dtype=object), types_pb2.DT_STRING))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingClientError(f"{self.target}: {e.code().name}: {e.details()}") from None
        return to_numpy(response.outputs[OUTPUT]).reshape(len(serialized), -1)

    def close(self) -> None:
        self._channel.close()


def read_rows(path: str, limit: int) -> list[dict]:
    if path.endswith(".json"):
        with open(path) as f:
            rows = json.load(f)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a JSON list of objects (one per row)")
        return rows[:limit] if limit else rows
    return examples.read_csv_rows(path, limit)


def main(argv=None) -> int:
    from pipeline.config import load_config_or_exit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="?", help="CSV (header row) or JSON list of objects; default: the bundled data")
    parser.add_argument("--rows", type=int, default=5, dest="limit", help="how many rows (0: all; default 5)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC (default: REST)")
    parser.add_argument("--url", help="REST base URL (default: http://127.0.0.1:<serving.rest_port>)")
    parser.add_argument("--target", help="gRPC host:port (default: 127.0.0.1:<serving.grpc_port>)")
    parser.add_argument("--version", type=int, help="a specific model version")
    parser.add_argument("--label", help="a version label (stable, canary)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    args = parser.parse_args(argv)
    config = load_config_or_exit()
    path = args.rows or f"{config.data_root}/data.csv"
    try:
        rows = read_rows(path, args.limit)
        serialized = examples.serialize(rows, examples.load_schema(config.schema_path))
    except (OSError, ValueError) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    if not serialized:
        print(f"error: {path}: no rows", file=sys.stderr)
        return 2
    if args.grpc:
        client = GrpcClient(args.target or f"127.0.0.1:{config.serving.grpc_port}", config.model_name, args.timeout)
    else:
        client = RestClient(args.url or f"http://127.0.0.1:{config.serving.rest_port}", config.model_name, args.timeout)
    try:
        probabilities = client.predict(serialized, args.version, args.label)
    except ServingClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'row':>5}  {'P(big tipper)':>13}")
    for i, p in enumerate(probabilities[:, 0]):
        print(f"{i:>5}  {p:>13.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The REST API (TF Serving's HttpRestApiHandler): /v1/models/<name>[/versions/<v>|/labels/<l>][:predict|:classify|
:regress|/metadata], and the Prometheus metrics. It translates JSON to the core's calls and back; errors are TF
Serving's {"error": ...} with the HTTP status its server maps each code to.

`respond` is the whole API on (method, path, body bytes), without the transport: the property-based tests call it
directly. `handle` adds the transport's limits: body size, body read time, requests in flight.
"""
import asyncio
import logging
import re
import time

import orjson
from aiohttp import web
from google.protobuf import json_format

from serving import tensors
from serving.core import ModelSpec, ServingCore, begin_request, resolved_version
from serving.errors import ServingError
from serving.source import MAX_VERSION

log = logging.getLogger("serving.rest")

_SPEC = r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(/metadata)?", re.IGNORECASE)


def _json(body, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json")


def _spec(match) -> ModelSpec:
    name, version, label = match.group(1), match.group(2), match.group(3)
    if version is not None:
        if not (version.isascii() and version.isdigit()) or len(version) > 19 or int(version) > MAX_VERSION:
            raise ServingError.invalid(f"version '{version[:40]}' is not a version number (0 to {MAX_VERSION})")
        return ModelSpec(name, int(version))
    return ModelSpec(name, None, label)


def _message_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


class RestApi:
    def __init__(self, core: ServingCore, max_request_bytes: int, body_timeout: float, max_in_flight: int,
                 metrics_path: str | None, request_timeout: float | None = None):
        self.core = core
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        self.max_in_flight = max_in_flight
        self.metrics_path = metrics_path
        self.request_timeout = request_timeout  # --rest_api_timeout_in_ms
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.metrics_path and request.path == self.metrics_path and request.method == "GET":
            body, content_type = self.core.metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})
        if request.method != "POST":
            return await self.respond(request.method, request.path, b"")
        if self._in_flight >= self.max_in_flight:
            return _json({"error": f"Too many requests in flight (limit {self.max_in_flight})"}, 429)
        self._in_flight += 1
        try:
            if request.content_length is not None and request.content_length > self.max_request_bytes:
                return self._too_large()
            try:
                # A body already received in full (most, being small) is read without arming the timer.
                if request.content.is_eof():
                    body = await request.read()  # the request's client_max_size is max_request_bytes
                else:
                    async with asyncio.timeout(self.body_timeout):
                        body = await request.read()
            except asyncio.TimeoutError:
                return _json({"error": f"Request body not received within {self.body_timeout:g} s"}, 408)
            except web.HTTPRequestEntityTooLarge:
                return self._too_large()
            return await self.respond(request.method, request.path, body)
        finally:
            self._in_flight -= 1

    async def drain(self, timeout: float) -> None:
        """Waits for the requests in flight (their bodies still arriving, or running) to be answered."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def _too_large(self) -> web.Response:
        return _json({"error": f"Request body is larger than the limit of {self.max_request_bytes} bytes"}, 413)

    async def respond(self, method: str, path: str, body: bytes) -> web.Response:
        """One API call; never raises."""
        started = time.perf_counter()
        api, model, version, status = "unknown", None, "", "OK"
        begin_request()
        try:
            match = PREDICT_PATH.fullmatch(path)
            if match and method == "POST":
                model, api = match.group(1), match.group(4).lower()
                if self.request_timeout:
                    async with asyncio.timeout(self.request_timeout):
                        response, version = await self._method(api, _spec(match), _parse(body))
                else:  # no context manager at all: even a nullcontext costs two calls per request
                    response, version = await self._method(api, _spec(match), _parse(body))
                return response
            match = STATUS_PATH.fullmatch(path)
            if match and method == "GET":
                model, api = match.group(1), "metadata" if match.group(4) else "status"
                response, version = self._metadata(_spec(match)) if match.group(4) else self._status(_spec(match))
                return response
            raise ServingError.invalid(f"Malformed request: {method} {path[:200]}")
        except ServingError as e:
            status = e.code.name
            return _json({"error": e.message}, e.http_status)
        except asyncio.TimeoutError:
            status = "DEADLINE_EXCEEDED"
            return _json({"error": f"Request did not finish within {self.request_timeout * 1000:g} ms"}, 504)
        except Exception as e:  # noqa: BLE001 - a bug: TF Serving's INTERNAL, logged
            status = "INTERNAL"
            log.exception("%s %s failed", method, path[:200])
            return _json({"error": f"Internal error: {type(e).__name__}"}, 500)
        finally:
            if model is not None:
                self.core.metrics.observe(model, version or resolved_version(), api, "REST", status,
                                          time.perf_counter() - started)

    async def _method(self, api: str, spec: ModelSpec, body):
        if not isinstance(body, dict):
            raise ServingError.invalid("the request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError.invalid("\"signature_name\" must be a string")
        if api == "predict":
            row_format = "instances" in body
            servable, _, outputs = await self.core.predict(
                spec, signature_name, lambda signature: tensors.parse_predict_json(body, signature.inputs)[0])
            return _json(tensors.outputs_to_json(outputs, row_format)), str(servable.version)
        examples = tensors.json_examples(body)
        if api == "classify":
            servable, _, result = await self.core.classify(spec, signature_name, examples)
            rows = [[[c.label, c.score] for c in row.classes] for row in result.classifications]
            return _json({"results": rows}), str(servable.version)
        servable, _, result = await self.core.regress(spec, signature_name, examples)
        return _json({"results": [r.value for r in result.regressions]}), str(servable.version)

    def _status(self, spec: ModelSpec):
        return _json(_message_dict(self.core.status(spec))), ""

    def _metadata(self, spec: ModelSpec):
        servable, signature_map = self.core.metadata(spec)
        body = {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": _message_dict(signature_map)}}
        return _json(body), str(servable.version)


def _parse(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ServingError.invalid(f"JSON Parse error: {e}") from None

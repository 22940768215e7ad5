"""The Vertex AI event handler (runners/vertex_trigger.py) in the real functions-framework server, started here as
Cloud Run starts it (`functions-framework --target on_event`). Real CloudEvents are posted to it, binary and
structured, from Cloud Storage and from Pub/Sub; malformed ones get 400 and submit nothing. The cloud cannot be
reached from here, so a test double stands in for the Vertex AI SDK only; every recorded call binds to the real
SDK's signatures, and the double refuses a second job with the same id, as Vertex does (AlreadyExists)."""
import base64
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT

OVERLAY = """
output_root: gs://tfx-e2e-test-bucket/tfx-e2e
data_root: gs://tfx-e2e-test-bucket/landing/taxi
gcp: {project: tfx-e2e-test, region: europe-west4, service_account: pipelines@tfx-e2e-test.iam.gserviceaccount.com}
image: europe-west4-docker.pkg.dev/tfx-e2e-test/tfx-e2e/pipeline:abc123
example_gen: csv
continuous: {span_folders: span}
"""
TEMPLATE = "gs://tfx-e2e-test-bucket/pipelines/abc123/chicago-taxi.json"
BUCKET = "tfx-e2e-test-bucket"

# The function's source as deployed, plus the test double for google.cloud.aiplatform (records to a file).
WRAPPER = '''
import json, os
from google.api_core.exceptions import AlreadyExists
from runners import vertex_trigger
from runners.vertex_trigger import on_event  # noqa: F401 (the target)

CALLS = os.environ["TRIGGER_TEST_CALLS"]
JOBS = CALLS + ".jobs"  # the job ids "Vertex" holds (the test clears CALLS, not these)


def _record(name, kwargs):
    with open(CALLS, "a") as f:
        f.write(json.dumps([name, kwargs]) + "\\n")


class FakeAiplatform:
    class PipelineJob:
        def __init__(self, **kwargs):
            self.job_id = kwargs.get("job_id")
            _record("PipelineJob", kwargs)

        def submit(self, **kwargs):
            submitted = open(JOBS).read().split() if os.path.exists(JOBS) else []
            if self.job_id in submitted:
                raise AlreadyExists(f"PipelineJob {self.job_id} already exists")
            with open(JOBS, "a") as f:
                f.write(self.job_id + "\\n")
            _record("submit", {**kwargs, "_job_id": self.job_id})


vertex_trigger.aiplatform = FakeAiplatform
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("trigger")
    (home / "main.py").write_text(WRAPPER)
    (home / "gcp.yaml").write_text(OVERLAY)
    calls = home / "calls.jsonl"
    calls.write_text("")
    port = _free_port()
    env = dict(os.environ, TFX_E2E_PROFILE="vertex", TFX_E2E_CONFIG=str(home / "gcp.yaml"),
               TFX_E2E_TEMPLATE=TEMPLATE, TRIGGER_TEST_CALLS=str(calls),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    ff = str(Path(sys.executable).parent / "functions-framework")
    log = open(home / "server.log", "w")
    process = subprocess.Popen([ff, "--target", "on_event", "--source", str(home / "main.py"),
                                "--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError((home / "server.log").read_text()[-3000:]) from None
            time.sleep(0.1)
    yield url, calls
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _post(url, body, headers) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _storage_object(name, bucket=BUCKET):
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": "1732900000000000",
            "contentType": "application/octet-stream", "size": "0", "timeCreated": "2026-11-29T23:00:00.000Z"}


def _binary(url, event_type, data, event_id, subject=""):
    """Binary mode: the attributes in ce-* headers, the data as the body (as Eventarc delivers)."""
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": event_id,
               "ce-type": event_type, "ce-time": "2026-11-29T23:00:00Z",
               "ce-source": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}"}
    if subject:
        headers["ce-subject"] = subject
    return _post(url, data, headers)


def _structured(url, event_type, data, event_id):
    """Structured mode: one JSON document holding the attributes and the data."""
    event = {"specversion": "1.0", "id": event_id, "type": event_type, "time": "2026-11-29T23:00:00Z",
             "source": "//pubsub.googleapis.com/projects/tfx-e2e-test/topics/spans", "datacontenttype":
             "application/json", "data": data}
    return _post(url, event, {"Content-Type": "application/cloudevents+json"})


def _calls(calls: Path) -> list:
    lines = calls.read_text().splitlines()
    calls.write_text("")
    return [json.loads(line) for line in lines]


def _bound_to_the_real_sdk(recorded):
    from google.cloud.aiplatform import PipelineJob

    methods = {"PipelineJob": PipelineJob.__init__, "submit": PipelineJob.submit}
    for name, kwargs in recorded:
        inspect.signature(methods[name]).bind(None, **{k: v for k, v in kwargs.items() if not k.startswith("_")})


def _job(span, job_id):
    return ["PipelineJob", {"display_name": "chicago-taxi", "template_path": TEMPLATE,
                            "pipeline_root": "gs://tfx-e2e-test-bucket/tfx-e2e/pipelines/chicago-taxi",
                            "project": "tfx-e2e-test", "location": "europe-west4", "enable_caching": True,
                            "labels": {"tfx-e2e-reason": "event", "tfx-e2e-span": str(span)},
                            "parameter_values": {"span": span, "reason": "event"}, "job_id": job_id}]


SUBMIT = {"service_account": "pipelines@tfx-e2e-test.iam.gserviceaccount.com"}


def test_storage_finalize_binary_submits_once_per_span(server):
    url, calls = server
    name = "landing/taxi/span-17/_SUCCESS"
    status, body = _binary(url, "google.cloud.storage.object.v1.finalized", _storage_object(name), "ev-1",
                           subject=f"objects/{name}")
    assert (status, body) == (200, "OK")  # a CloudEvent function answers 200 OK
    recorded = _calls(calls)
    assert recorded == [_job(17, "chicago-taxi-span-17"), ["submit", {**SUBMIT, "_job_id": "chicago-taxi-span-17"}]]
    _bound_to_the_real_sdk(recorded)
    # The same event again (at-least-once delivery): the same job id, refused by Vertex; no second run.
    status, body = _binary(url, "google.cloud.storage.object.v1.finalized", _storage_object(name), "ev-1",
                           subject=f"objects/{name}")
    assert (status, body) == (200, "OK")
    assert _calls(calls) == [_job(17, "chicago-taxi-span-17")]


def test_storage_finalize_structured_span(server):
    url, calls = server
    status, _ = _structured(url, "google.cloud.storage.object.v1.finalized",
                            _storage_object("landing/taxi/span-21/_SUCCESS"), "ev-2")
    assert status == 200
    assert _calls(calls)[0] == _job(21, "chicago-taxi-span-21")


def test_daily_span_folders_count_days():
    """With continuous.span_folders: date, <YYYY-MM-DD>/ is the span of days since 1970-01-01."""
    from runners.vertex_trigger import Malformed, span_of

    root = f"gs://{BUCKET}/landing/taxi"
    assert span_of(BUCKET, "landing/taxi/2016-03-31/_SUCCESS", root, "date") == 16891
    with pytest.raises(Malformed, match="'2016-02-30' is not a date"):
        span_of(BUCKET, "landing/taxi/2016-02-30/_SUCCESS", root, "date")
    with pytest.raises(Malformed, match=r"reads YYYY-MM-DD folders \(continuous.span_folders: date\), not 'span-3'"):
        span_of(BUCKET, "landing/taxi/span-3/_SUCCESS", root, "date")


def test_a_pipeline_without_the_span_parameter_submits_nothing(tmp_path, monkeypatch):
    """A deployment whose pipeline takes no `span` (a flat data root) is a server error, not the event's: it
    raises (functions-framework answers 500, Eventarc redelivers) before anything is submitted."""
    from cloudevents.http import CloudEvent

    from runners import vertex_trigger

    (tmp_path / "flat.yaml").write_text(OVERLAY.replace("continuous: {span_folders: span}\n", ""))
    monkeypatch.setenv("TFX_E2E_PROFILE", "vertex")
    monkeypatch.setenv("TFX_E2E_CONFIG", str(tmp_path / "flat.yaml"))
    submitted = []
    monkeypatch.setattr(vertex_trigger, "aiplatform", submitted)  # any use of the SDK would fail the test
    event = CloudEvent({"type": "google.cloud.storage.object.v1.finalized", "source": "//storage.googleapis.com/x"},
                       _storage_object("landing/taxi/span-22/_SUCCESS"))
    with pytest.raises(RuntimeError, match="takes no `span` parameter"):
        vertex_trigger.handle(event)
    assert submitted == []


def test_pubsub_storage_notification(server):
    """A Cloud Storage notification through Pub/Sub: by its attributes, or by the object resource as data."""
    url, calls = server
    message = {"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": BUCKET,
                                          "objectId": "landing/taxi/span-18/_SUCCESS"},
                           "data": base64.b64encode(b"{}").decode(), "messageId": "1"},
               "subscription": "projects/tfx-e2e-test/subscriptions/spans"}
    status, _ = _structured(url, "google.cloud.pubsub.topic.v1.messagePublished", message, "ev-3")
    assert status == 200
    assert _calls(calls)[0] == _job(18, "chicago-taxi-span-18")
    resource = base64.b64encode(json.dumps(_storage_object("landing/taxi/span-19/_SUCCESS")).encode()).decode()
    status, _ = _binary(url, "google.cloud.pubsub.topic.v1.messagePublished",
                        {"message": {"data": resource, "messageId": "2"}, "subscription": "s"}, "ev-4")
    assert status == 200
    assert _calls(calls)[0] == _job(19, "chicago-taxi-span-19")


@pytest.mark.parametrize("post, why", [
    (lambda url: _post(url, b"not json at all", {"Content-Type": "text/plain"}), "Bad Request"),  # refused by functions-framework
    (lambda url: _post(url, {"hello": "world"}, {"Content-Type": "application/json"}), "Bad Request"),
    (lambda url: _structured(url, "google.cloud.storage.object.v1.deleted",
                             _storage_object("landing/taxi/span-20/_SUCCESS"), "bad-1"), "event type"),
    (lambda url: _binary(url, "google.cloud.storage.object.v1.finalized",
                         _storage_object("landing/taxi/span-20/data.csv"), "bad-2"), "is not a _SUCCESS marker"),
    (lambda url: _binary(url, "google.cloud.storage.object.v1.finalized",
                         _storage_object("landing/taxi/incoming/_SUCCESS"), "bad-3"), "is not a span folder"),
    (lambda url: _binary(url, "google.cloud.storage.object.v1.finalized",
                         _storage_object("elsewhere/span-20/_SUCCESS"), "bad-4"), "not a span folder of the data root"),
    (lambda url: _binary(url, "google.cloud.storage.object.v1.finalized",
                         _storage_object("landing/taxi/2016-03-31/_SUCCESS"), "bad-5"), "the pipeline reads span-N folders"),
    (lambda url: _binary(url, "google.cloud.storage.object.v1.finalized", {"name": 3}, "bad-6"), "object resource"),
    (lambda url: _structured(url, "google.cloud.pubsub.topic.v1.messagePublished",
                             {"message": {"data": "%%%"}}, "bad-7"), "no JSON object resource"),
    (lambda url: _structured(url, "google.cloud.pubsub.topic.v1.messagePublished",
                             {"message": {"attributes": {"eventType": "OBJECT_DELETE", "bucketId": BUCKET,
                                                         "objectId": "landing/taxi/span-20/_SUCCESS"}}}, "bad-8"),
     "not OBJECT_FINALIZE"),
])
def test_malformed_events_get_400_and_submit_nothing(server, post, why):
    url, calls = server
    status, body = post(url)
    assert status == 400, body
    assert why in body
    assert _calls(calls) == []

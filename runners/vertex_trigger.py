"""Vertex AI event handler: a Cloud Run function (functions-framework) that submits the compiled pipeline when a
new span lands.

It takes a CloudEvent, binary or structured:
- a Cloud Storage object-finalize event (`google.cloud.storage.object.v1.finalized`; Eventarc's trigger for
  `gcloud functions deploy --trigger-event-filters=type=google.cloud.storage.object.v1.finalized`), or
- a Pub/Sub message (`google.cloud.pubsub.topic.v1.messagePublished`) carrying a Cloud Storage notification
  (attributes `bucketId` / `objectId`, or the object resource as the message's JSON data),

for the `_SUCCESS` marker of a span folder: `gs://BUCKET/ROOT/span-N/_SUCCESS` or `.../YYYY-MM-DD/_SUCCESS`
(the span is N, or days since 1970-01-01, as pipeline/spans.py counts them). It submits the compiled pipeline
(TFX_E2E_TEMPLATE: a gs:// URI or a file, default build/<pipeline>.json) through runners/submit.py with the
span as the runtime parameter `span` and the job id `<pipeline>-span-<N>`: the same event twice (Eventarc
delivers at least once) submits one run, because Vertex refuses a second job with that id (AlreadyExists, which
answers 200 here). The configuration must compile to a pipeline that takes `span` (metadata: managed with
continuous.span_folders, or a BigQuery query with span placeholders: pipeline/span_parameter.py); otherwise every
event answers 500 and nothing is submitted (the deployment is wrong, not the event; Eventarc redelivers).

Answers: 200 submitted (or already submitted); 400 not a CloudEvent, another event type, or an object that is
not a span folder's _SUCCESS marker (under the data root when data_root is a gs:// URI); nothing is submitted.

    functions-framework --target on_event --source runners/vertex_trigger.py --port 8080
"""
import base64
import binascii
import json
import os
import re

import functions_framework
from werkzeug.exceptions import BadRequest

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
ENV_TEMPLATE = "TFX_E2E_TEMPLATE"  # the compiled pipeline this function submits (a gs:// URI, as Cloud Build uploads)
MARKER = "_SUCCESS"
_SPAN_FOLDER = re.compile(r"^(?:span-(\d+)|(\d{4}-\d{2}-\d{2}))$")

# The Vertex AI SDK module (google.cloud.aiplatform); tests put a test double here.
aiplatform = None


class Malformed(ValueError):
    """An event this function does not take: answered 400, nothing submitted."""


def _object_of(event) -> tuple[str, str]:
    """(bucket, object name) of the Cloud Storage object the event is about."""
    kind = event["type"]
    data = event.get_data()
    if kind == STORAGE_FINALIZED:
        if not isinstance(data, dict) or not isinstance(data.get("bucket"), str) or not isinstance(
                data.get("name"), str):
            raise Malformed(f"{STORAGE_FINALIZED}: the data must be the object resource with 'bucket' and 'name'")
        return data["bucket"], data["name"]
    if kind == PUBSUB_PUBLISHED:
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise Malformed(f"{PUBSUB_PUBLISHED}: no 'message' in the data")
        attributes = message.get("attributes") or {}
        if attributes.get("eventType", "OBJECT_FINALIZE") != "OBJECT_FINALIZE":
            raise Malformed(f"Pub/Sub: a Cloud Storage {attributes['eventType']} notification, not OBJECT_FINALIZE")
        if isinstance(attributes.get("bucketId"), str) and isinstance(attributes.get("objectId"), str):
            return attributes["bucketId"], attributes["objectId"]
        try:
            resource = json.loads(base64.b64decode(message.get("data", ""), validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise Malformed("Pub/Sub: the message has no bucketId/objectId attributes and no JSON object resource") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("bucket"), str) or not isinstance(
                resource.get("name"), str):
            raise Malformed("Pub/Sub: the message's object resource has no 'bucket' and 'name'")
        return resource["bucket"], resource["name"]
    raise Malformed(f"event type {kind!r}: this function takes {STORAGE_FINALIZED} or {PUBSUB_PUBLISHED}")


def span_of(bucket: str, name: str, data_root: str = "", folders: str = "") -> int:
    """The span whose _SUCCESS marker gs://bucket/name is; Malformed if it is not one, not under data_root, or not
    of the folder kind the pipeline reads (`folders`: continuous.span_folders, "" for either)."""
    import datetime

    from pipeline.spans import span_of_date

    parts = name.split("/")
    if len(parts) < 2 or parts[-1] != MARKER:
        raise Malformed(f"gs://{bucket}/{name} is not a {MARKER} marker of a span folder")
    match = _SPAN_FOLDER.match(parts[-2])
    if not match:
        raise Malformed(f"gs://{bucket}/{name}: {parts[-2]!r} is not a span folder (span-N or YYYY-MM-DD)")
    kind = "span" if match.group(1) is not None else "date"
    if folders and kind != folders:
        raise Malformed(f"gs://{bucket}/{name}: the pipeline reads {'span-N' if folders == 'span' else 'YYYY-MM-DD'} "
                        f"folders (continuous.span_folders: {folders}), not {parts[-2]!r}")
    if data_root.startswith("gs://"):
        root = data_root.rstrip("/")
        if f"gs://{bucket}/{'/'.join(parts[:-2])}".rstrip("/") != root:
            raise Malformed(f"gs://{bucket}/{name} is not a span folder of the data root {root}")
    if match.group(1) is not None:
        return int(match.group(1))
    try:
        return span_of_date(datetime.date.fromisoformat(match.group(2)))
    except ValueError:
        raise Malformed(f"gs://{bucket}/{name}: {match.group(2)!r} is not a date") from None


def job_id(pipeline_name: str, span: int) -> str:
    """Vertex's job id for (pipeline, span): the same span always gets the same id ([a-z][-a-z0-9]{0,127})."""
    base = re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-") or "pipeline"
    if not base[0].isalpha():
        base = "p-" + base
    suffix = f"-span-{span}"
    return base[:128 - len(suffix)].rstrip("-") + suffix


def _config():
    from pipeline.config import load_config

    env = {k: v for k, v in os.environ.items() if k != ENV_TEMPLATE}
    return load_config(env.get("TFX_E2E_PROFILE", "vertex"), env=env, check_data=False)


def handle(event) -> tuple[str, int]:
    """Submits the pipeline for the span the event names; (message, HTTP status)."""
    from pipeline import span_parameter
    from runners.kubeflow_v2_runner import compiled_path
    from runners.submit import submit_vertex

    try:
        bucket, name = _object_of(event)
        config = _config()
        span = span_of(bucket, name, config.data_root, config.continuous.span_folders)
    except Malformed as e:
        print(f"ignored: {e}")
        return f"ignored: {e}", 400
    if not span_parameter.takes_span(config):
        raise RuntimeError("the configured pipeline takes no `span` parameter (set continuous.span_folders, or write "
                           "vertex.bigquery_query with span placeholders): nothing submitted")
    template = os.environ.get(ENV_TEMPLATE) or compiled_path(config.pipeline_name)
    run_id = job_id(config.pipeline_name, span)
    sdk = aiplatform
    if sdk is None:
        from google.cloud import aiplatform as sdk
    try:
        submit_vertex(config, template, schedule=False, aiplatform=sdk,
                      parameter_values={span_parameter.PARAMETER: span}, job_id=run_id, reason="event")
    except Exception as e:  # AlreadyExists: this span's run was submitted before (a redelivered event)
        if type(e).__name__ != "AlreadyExists":
            raise
        print(f"span {span}: {run_id} was already submitted")
        return f"span {span}: {run_id} already submitted", 200
    print(f"span {span}: submitted {template} as {run_id} (gs://{bucket}/{name})")
    return f"span {span}: submitted {run_id}", 200


@functions_framework.cloud_event
def on_event(event):
    message, status = handle(event)
    if status == 400:
        raise BadRequest(message)  # functions-framework answers it as 400; a CloudEvent function's return is ignored
    return message

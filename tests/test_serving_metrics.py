"""serving/metrics.py and serving/request_log.py on their own (unit tier: no server, no model)."""
import errno
import logging
import os
import random
import string
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from serving import request_log as request_log_module
from serving.metrics import (
    AVAILABLE_VERSIONS,
    BATCH_SIZE,
    LATENCY_BUCKETS_US,
    LOAD_EVENTS,
    PROMETHEUS_PATH,
    REQUEST_COUNT,
    REQUEST_LATENCY,
    REQUEST_LOG_DROPPED,
    UNKNOWN_MODEL,
    Metrics,
)
from serving.request_log import RECORD_OVERHEAD, RequestLogger

INJECTION = 'x"} 1\nfoo'


class Models:
    def __init__(self, versions=None):
        self.versions = {"taxi": [1, 2]} if versions is None else versions

    def known(self):
        return self.versions.keys()

    def available(self):
        return {model: list(v) for model, v in self.versions.items()}


def make_metrics(versions=None):
    models = Models(versions)
    return Metrics(models.known, models.available), models


def parse(metrics):
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    text = body.decode()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def series(metrics) -> int:
    _, families = parse(metrics)
    return sum(len(family.samples) for family in families.values())


def samples(family, **labels):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


# --- metrics -------------------------------------------------------------------------------------------------


def test_exposition_parses_with_tf_serving_names_and_types():
    metrics, _ = make_metrics()
    metrics.observe("taxi", "1", "predict", "REST", "OK", 0.002)
    metrics.batch("taxi", 8)
    metrics.model_event("taxi", 1, "loaded")
    metrics.request_log_dropped("taxi")
    text, families = parse(metrics)

    assert PROMETHEUS_PATH == "/monitoring/prometheus/metrics"
    types = {name: family.type for name, family in families.items()}
    assert types == {REQUEST_COUNT: "counter", REQUEST_LATENCY: "histogram", BATCH_SIZE: "histogram",
                     LOAD_EVENTS: "counter", REQUEST_LOG_DROPPED: "counter", AVAILABLE_VERSIONS: "gauge"}
    assert REQUEST_COUNT == ":tensorflow:serving:request_count"
    assert REQUEST_LATENCY == ":tensorflow:serving:request_latency"
    assert BATCH_SIZE == ":tensorflow:serving:batching_session:processed_batch_size"
    assert LOAD_EVENTS == ":tensorflow:core:servable_load_events"
    assert AVAILABLE_VERSIONS == ":tensorflow:serving:available_versions"
    assert REQUEST_LOG_DROPPED == ":tensorflow:serving:request_log_dropped"
    # TF Serving's counters have no _total suffix, in the comments or in the samples.
    assert "_total" not in text
    assert "# TYPE :tensorflow:serving:request_count counter\n" in text
    assert "# TYPE :tensorflow:core:servable_load_events counter\n" in text
    lines = text.splitlines()
    assert ':tensorflow:serving:request_count{API="predict",entrypoint="REST",model_name="taxi",model_version="1",' \
           'status="OK"} 1.0' in lines
    assert ':tensorflow:core:servable_load_events{event="loaded",model_name="taxi",model_version="1"} 1.0' in lines
    assert ':tensorflow:serving:request_log_dropped{model_name="taxi"} 1.0' in lines
    assert ':tensorflow:serving:available_versions{model_name="taxi"} 2.0' in lines
    assert not any(line.startswith("_created") or "_created" in line for line in lines)


def test_own_registry_not_the_global_one():
    metrics, _ = make_metrics()
    metrics.observe("taxi", "1", "predict", "REST", "OK", 0.001)
    assert metrics.registry is not REGISTRY
    assert REGISTRY.get_sample_value(REQUEST_COUNT, {"model_name": "taxi"}) is None


def test_request_count_and_latency_buckets():
    metrics, _ = make_metrics()
    for seconds in (50e-6, 300e-6, 300e-6, 2.0, 10.0):
        metrics.observe("taxi", "2", "predict", "GRPC", "OK", seconds)
    metrics.observe("taxi", "2", "predict", "GRPC", "INVALID_ARGUMENT", 0.001)
    _, families = parse(metrics)
    ok = {"model_name": "taxi", "model_version": "2", "API": "predict", "entrypoint": "GRPC", "status": "OK"}
    [count] = samples(families[REQUEST_COUNT], **ok)
    assert count.value == 5
    [bad] = samples(families[REQUEST_COUNT], status="INVALID_ARGUMENT")
    assert bad.value == 1
    latency = samples(families[REQUEST_LATENCY], **ok)
    buckets = {s.labels["le"]: s.value for s in latency if s.name.endswith("_bucket")}
    assert list(buckets) == [str(b) for b in LATENCY_BUCKETS_US] + ["+Inf"]
    assert buckets["100"] == 1 and buckets["250"] == 1
    assert buckets["500"] == 3 and buckets["1000000"] == 3
    assert buckets["5000000"] == 4 and buckets["+Inf"] == 5
    [total] = [s.value for s in latency if s.name.endswith("_count")]
    [micros] = [s.value for s in latency if s.name.endswith("_sum")]
    assert total == 5
    assert micros == pytest.approx(50 + 300 + 300 + 2e6 + 10e6)


def test_batch_size_histogram():
    metrics, _ = make_metrics()
    for rows in (1, 3, 3, 64, 600):
        metrics.batch("taxi", rows)
    _, families = parse(metrics)
    family = families[BATCH_SIZE]
    buckets = {s.labels["le"]: s.value for s in samples(family, model_name="taxi") if s.name.endswith("_bucket")}
    assert buckets["1"] == 1 and buckets["2"] == 1 and buckets["4"] == 3
    assert buckets["32"] == 3 and buckets["64"] == 4 and buckets["512"] == 4 and buckets["+Inf"] == 5
    [rows] = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert rows == 1 + 3 + 3 + 64 + 600


def test_injection_in_model_name_is_one_unknown_series_and_still_parses():
    metrics, _ = make_metrics()
    metrics.observe(INJECTION, "1", "predict", "REST", "NOT_FOUND", 0.001)
    text, families = parse(metrics)
    assert not any(line.startswith("foo") for line in text.splitlines())
    [count] = families[REQUEST_COUNT].samples
    assert count.labels["model_name"] == UNKNOWN_MODEL
    assert count.labels["model_version"] == UNKNOWN_MODEL
    assert count.value == 1
    assert set(families) == {REQUEST_COUNT, REQUEST_LATENCY, BATCH_SIZE, LOAD_EVENTS, REQUEST_LOG_DROPPED,
                             AVAILABLE_VERSIONS}


def test_label_values_are_escaped():
    # servable_load_events keeps the name it is given (config names): prometheus_client escapes it.
    metrics, _ = make_metrics()
    metrics.model_event(INJECTION, 3, 'a\\b"c')
    text, families = parse(metrics)
    assert not any(line.startswith("foo") for line in text.splitlines())
    [event] = families[LOAD_EVENTS].samples
    assert event.labels == {"model_name": INJECTION, "model_version": "3", "event": 'a\\b"c'}


@settings(max_examples=300, deadline=None, database=None)
@given(name=st.text(), version=st.text(max_size=30))
def test_any_unknown_name_renders_parseable_output(name, version):
    metrics, _ = make_metrics()
    metrics.observe(name, version, "predict", "REST", "NOT_FOUND", 0.001)
    _, families = parse(metrics)
    labels = {s.labels["model_name"] for s in families[REQUEST_COUNT].samples}
    assert labels == ({"taxi"} if name == "taxi" else {UNKNOWN_MODEL})


def test_thousand_unknown_names_leave_the_series_count_unchanged():
    metrics, _ = make_metrics()
    metrics.observe("taxi", "1", "predict", "REST", "OK", 0.001)
    metrics.observe("nope", "1", "predict", "REST", "NOT_FOUND", 0.001)
    metrics.observe("taxi", "7", "predict", "REST", "NOT_FOUND", 0.001)
    metrics.request_log_dropped("nope")
    metrics.batch("nope", 4)
    before = series(metrics)
    rng = random.Random(0)
    for _ in range(1000):
        name = "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40)))
        metrics.observe(name, str(rng.randint(0, 10**30)), "predict", "REST", "NOT_FOUND", 0.001)
        metrics.observe("taxi", str(rng.randint(3, 10**30)), "predict", "REST", "NOT_FOUND", 0.001)
        metrics.request_log_dropped(name)
        metrics.batch(name, 4)
    assert series(metrics) == before
    _, families = parse(metrics)
    assert samples(families[REQUEST_COUNT], model_name=UNKNOWN_MODEL)[0].value == 1001
    assert samples(families[REQUEST_COUNT], model_name="taxi", model_version=UNKNOWN_MODEL)[0].value == 1001
    assert [s.value for s in samples(families[BATCH_SIZE], model_name=UNKNOWN_MODEL) if s.name.endswith("_count")] == [1001]
    assert samples(families[REQUEST_LOG_DROPPED], model_name=UNKNOWN_MODEL)[0].value == 1001


def test_known_models_and_versions_are_read_at_observe_time():
    metrics, models = make_metrics()
    metrics.observe("wide", "1", "predict", "REST", "NOT_FOUND", 0.001)
    models.versions["wide"] = [1]
    metrics.observe("wide", "1", "predict", "REST", "OK", 0.001)
    metrics.observe("taxi", "", "status", "REST", "OK", 0.001)  # not resolved to a version: kept as ""
    # A version seen while available keeps its label after it is unloaded (a request finishing after a swap).
    models.versions["wide"] = [2]
    metrics.observe("wide", "1", "predict", "REST", "OK", 0.001)
    _, families = parse(metrics)
    counts = {(s.labels["model_name"], s.labels["model_version"]): s.value for s in families[REQUEST_COUNT].samples}
    assert counts == {(UNKNOWN_MODEL, UNKNOWN_MODEL): 1, ("wide", "1"): 2, ("taxi", ""): 1}
    gauge = {s.labels["model_name"]: s.value for s in families[AVAILABLE_VERSIONS].samples}
    assert gauge == {"taxi": 2, "wide": 1}


def test_failing_available_versions_still_renders_the_rest(caplog):
    calls = []

    def available():
        calls.append(1)
        raise RuntimeError("manager busy")

    metrics = Metrics(lambda: ["taxi"], available)
    metrics.observe("taxi", "", "predict", "REST", "OK", 0.001)
    _, families = parse(metrics)
    assert families[AVAILABLE_VERSIONS].samples == []
    assert samples(families[REQUEST_COUNT], model_name="taxi")[0].value == 1
    assert "available_versions() failed" in caplog.text


def test_observe_is_thread_safe():
    metrics, _ = make_metrics()

    def work():
        for _ in range(2000):
            metrics.observe("taxi", "1", "predict", "REST", "OK", 0.0001)
            metrics.batch("taxi", 2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        parse(metrics)  # rendering while recording
    for thread in threads:
        thread.join()
    _, families = parse(metrics)
    assert samples(families[REQUEST_COUNT], model_name="taxi")[0].value == 16000
    assert [s.value for s in families[BATCH_SIZE].samples if s.name.endswith("_count")] == [16000]


# --- request log ---------------------------------------------------------------------------------------------


def prediction_log(model: str, i: int, payload: int = 10):
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    record.log_metadata.model_spec.name = model
    record.log_metadata.model_spec.version.value = i
    tensor = record.predict_log.request.inputs["x"]
    tensor.dtype = 7  # DT_STRING
    tensor.string_val.append(b"a" * payload)
    record.predict_log.response.outputs["y"].float_val.append(float(i))
    return record


def read_records(paths):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for raw in tf.data.TFRecordDataset([str(p) for p in paths]):
        record = prediction_log_pb2.PredictionLog()
        record.ParseFromString(raw.numpy())
        out.append(record)
    return out


def log_files(directory, model):
    folder = directory / model
    return sorted(folder.glob("prediction_log-*.tfrecord")) if folder.exists() else []


class Drops:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, model, n):
        with self.lock:
            self.calls.append((model, n))

    def total(self):
        return sum(n for _, n in self.calls)


def test_sampled():
    assert not any(RequestLogger("/nonexistent", 0.0).sampled() for _ in range(100))
    assert all(RequestLogger("/nonexistent", 1.0).sampled() for _ in range(100))


def test_request_log_round_trips(tmp_path):
    logger = RequestLogger(str(tmp_path), 1.0)
    sent = {"taxi": [prediction_log("taxi", i) for i in range(20)], "wide.v2": [prediction_log("wide.v2", i) for i in range(5)]}
    for i in range(20):
        logger.log("taxi", sent["taxi"][i])
        if i < 5:
            logger.log("wide.v2", sent["wide.v2"][i])
    logger.close()
    assert logger.written == 25 and logger.dropped == 0
    for model, records in sent.items():
        [path] = log_files(tmp_path, model)
        assert path.name.startswith("prediction_log-") and path.name.endswith("-000000.tfrecord")
        assert read_records([path]) == records
    assert sorted(os.listdir(tmp_path)) == ["taxi", "wide.v2"]


def test_a_second_logger_in_the_same_second_does_not_overwrite(tmp_path):
    for _ in range(2):
        logger = RequestLogger(str(tmp_path), 1.0)
        logger.log("taxi", prediction_log("taxi", 1))
        logger.close()
    assert len(read_records(log_files(tmp_path, "taxi"))) == 2


def test_request_log_rotates_by_size(tmp_path):
    record_bytes = len(prediction_log("taxi", 0, payload=100).SerializeToString()) + RECORD_OVERHEAD
    logger = RequestLogger(str(tmp_path), 1.0, max_file_bytes=1000, max_files=100)
    sent = [prediction_log("taxi", i, payload=100) for i in range(40)]
    for record in sent:
        logger.log("taxi", record)
    logger.close()
    files = log_files(tmp_path, "taxi")
    per_file = 1000 // record_bytes
    assert len(files) == -(-40 // per_file)
    assert all(path.stat().st_size <= 1000 for path in files)
    assert read_records(files) == sent


def test_request_log_caps_files_keeping_the_newest(tmp_path):
    logger = RequestLogger(str(tmp_path), 1.0, max_file_bytes=1000, max_files=3)
    sent = [prediction_log("taxi", i, payload=100) for i in range(60)]
    for record in sent:
        logger.log("taxi", record)
    logger.close()
    files = log_files(tmp_path, "taxi")
    assert len(files) == 3
    kept = read_records(files)
    assert 0 < len(kept) < 60
    assert kept == sent[-len(kept):]


class BlockedWriter:
    """Stands in for tf.io.TFRecordWriter: write() waits until released."""

    def __init__(self, release: threading.Event, writes: list):
        self.release, self.writes = release, writes

    def write(self, data):
        self.release.wait()
        self.writes.append(data)

    def flush(self):
        pass

    def close(self):
        pass


def test_request_log_bounds_memory(tmp_path, monkeypatch, caplog):
    release, writes = threading.Event(), []
    monkeypatch.setattr(RequestLogger, "_open_writer", lambda self, path: BlockedWriter(release, writes))
    size = len(prediction_log("taxi", 1).SerializeToString())  # the same for versions 1 to 127
    drops = Drops()
    logger = RequestLogger(str(tmp_path), 1.0, max_queue_bytes=3 * size, on_dropped=drops)
    with caplog.at_level(logging.WARNING, logger="serving.request_log"):
        for i in range(1, 101):
            logger.log("taxi", prediction_log("taxi", i))
            assert logger._queued_bytes <= 3 * size
    assert logger.dropped == 97  # three queued (one of them in the blocked write), the rest dropped
    assert drops.total() == 97 and {model for model, _ in drops.calls} == {"taxi"}
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
    release.set()
    logger.close()
    assert logger.written == 3 and len(writes) == 3


class FailingWriter:
    def __init__(self, path):
        pass

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_write_error_is_counted_and_logged_once_and_the_writer_recovers(tmp_path, monkeypatch, caplog):
    real_open = RequestLogger._open_writer
    drops = Drops()
    logger = RequestLogger(str(tmp_path), 1.0, on_dropped=drops)
    monkeypatch.setattr(RequestLogger, "_open_writer", lambda self, path: FailingWriter(path))
    with caplog.at_level(logging.INFO, logger="serving.request_log"):
        for i in range(50):
            logger.log("taxi", prediction_log("taxi", i))
        deadline = time.monotonic() + 60
        while logger.dropped < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert logger.dropped == 50 and logger.written == 0
    assert drops.total() == 50
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in caplog.text
    assert logger._thread.is_alive()
    # The disk has room again: records are written.
    monkeypatch.setattr(RequestLogger, "_open_writer", real_open)
    after = [prediction_log("taxi", 100 + i) for i in range(5)]
    for record in after:
        logger.log("taxi", record)
    logger.close()
    assert logger.written == 5 and logger.dropped == 50
    assert read_records(log_files(tmp_path, "taxi")) == after


def test_folder_creation_error_is_counted(tmp_path, caplog):
    (tmp_path / "taxi").write_text("a file where the model folder should be")
    drops = Drops()
    logger = RequestLogger(str(tmp_path), 1.0, on_dropped=drops)
    with caplog.at_level(logging.ERROR, logger="serving.request_log"):
        for i in range(10):
            logger.log("taxi", prediction_log("taxi", i))
        logger.close()
    assert logger.dropped == 10 and drops.total() == 10
    assert len(caplog.records) == 1


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", "x\n", "/abs", "a\\b", "naïve"])
def test_unsafe_model_names_are_refused(tmp_path, name, caplog):
    root = tmp_path / "logs"
    root.mkdir()
    drops = Drops()
    logger = RequestLogger(str(root), 1.0, on_dropped=drops)
    with caplog.at_level(logging.ERROR, logger="serving.request_log"):
        for i in range(3):
            logger.log(name, prediction_log("taxi", i))
    logger.close()
    assert logger.dropped == 3 and drops.calls == [(name, 1)] * 3
    assert len(caplog.records) == 1
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_close_waits_for_every_queued_record(tmp_path, monkeypatch):
    real_open = RequestLogger._open_writer

    class SlowWriter:
        def __init__(self, path):
            self.inner = real_open(None, path)

        def write(self, data):
            time.sleep(0.005)
            self.inner.write(data)

        def flush(self):
            self.inner.flush()

        def close(self):
            self.inner.close()

    monkeypatch.setattr(RequestLogger, "_open_writer", lambda self, path: SlowWriter(path))
    logger = RequestLogger(str(tmp_path), 1.0)
    sent = [prediction_log("taxi", i) for i in range(200)]
    for record in sent:
        logger.log("taxi", record)
    assert logger.written < 200
    logger.close()
    assert logger.written == 200 and not logger._thread.is_alive()
    assert read_records(log_files(tmp_path, "taxi")) == sent
    logger.log("taxi", sent[0])  # after close: dropped, not queued forever
    assert logger.dropped == 1


def test_close_without_records_starts_no_thread(tmp_path):
    logger = RequestLogger(str(tmp_path), 0.5)
    logger.close()
    assert logger._thread is None and list(tmp_path.iterdir()) == []


def test_rate_limited_log_reports_again_later(caplog):
    now = [1000.0]
    report = request_log_module._RateLimitedLog(logging.ERROR, "trouble %s", clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="serving.request_log"):
        for _ in range(5):
            report("x")
        now[0] += request_log_module.LOG_EVERY_S + 1
        report("x")
    assert [r.getMessage() for r in caplog.records] == ["trouble x", "trouble x (4 more since the last report)"]

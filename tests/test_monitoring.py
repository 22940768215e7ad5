"""make monitor (monitoring/): PredictionLogs unbatched, TFDV statistics per window and version, skew against the
served version's training statistics in ML Metadata, drift between windows, scores against the Evaluator's,
schema anomalies, reports, gauges and exit statuses.

Unit tests build PredictionLogs by hand; the e2e tests score the bundled slice with the model small_pipeline pushed
and write real PredictionLogs for it."""
import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_DATA

SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "schema.pbtxt"
HOUR = 3600
T0 = 1_790_000_000 // HOUR * HOUR  # a window boundary


def _schema():
    from serving.examples import load_schema
    return load_schema(str(SCHEMA))


def _example(**features) -> bytes:
    from serving.examples import to_example
    return to_example(features, _schema()).SerializeToString()


# --- unit: reading logs -------------------------------------------------------------------------------------------

def test_unbatch_every_kind_of_log_and_every_example():
    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    from monitoring.logs import unbatch

    schema = _schema()
    predict = prediction_log_pb2.PredictionLog()
    predict.log_metadata.model_spec.version.value = 7
    predict.log_metadata.timestamp_secs = T0 + 5
    predict.predict_log.request.inputs["examples"].CopyFrom(
        tf.make_tensor_proto([_example(fare=1.0), _example(fare=2.0), _example(fare=3.0)], tf.string))
    predict.predict_log.response.outputs["probabilities"].CopyFrom(
        tf.make_tensor_proto(np.array([[0.1], [0.2], [0.3]], np.float32)))
    request = unbatch(predict, 0.0, schema)
    assert (request.version, request.time, len(request.examples), request.file_time) == (7, T0 + 5, 3, False)
    assert request.scores == pytest.approx([0.1, 0.2, 0.3])

    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.version.value = 8  # no log_metadata version: the request's
    listed = classify.classify_log.request.input.example_list_with_context
    listed.context.ParseFromString(_example(company="Flash Cab", fare=9.0))
    for fare in (4.0, 5.0):
        listed.examples.add().ParseFromString(_example(fare=fare))
    for score in (0.6, 0.7):
        c = classify.classify_log.response.result.classifications.add()
        c.classes.add(label="0", score=1 - score)
        c.classes.add(label="1", score=score)
    request = unbatch(classify, 123.0, schema)
    assert (request.version, request.time, request.file_time) == (8, 123.0, True)
    merged = [example_pb2.Example.FromString(e).features.feature for e in request.examples]
    assert [f["fare"].float_list.value[0] for f in merged] == [4.0, 5.0]  # the example's value wins the context's
    assert [f["company"].bytes_list.value[0] for f in merged] == [b"Flash Cab"] * 2
    assert request.scores == pytest.approx([0.6, 0.7])

    regress = prediction_log_pb2.PredictionLog()
    for fare in (1.0, 2.0):
        regress.regress_log.request.input.example_list.examples.add().ParseFromString(_example(fare=fare))
        regress.regress_log.response.result.regressions.add(value=fare / 10)
    assert unbatch(regress, 0.0, schema).scores == pytest.approx([0.1, 0.2])

    multi = prediction_log_pb2.PredictionLog()
    multi.multi_inference_log.request.input.example_list.examples.add().ParseFromString(_example(fare=1.0))
    multi.multi_inference_log.response.results.add().regression_result.regressions.add(value=0.4)
    assert len(unbatch(multi, 0.0, schema).examples) == 1

    raw = prediction_log_pb2.PredictionLog()
    raw.predict_log.request.model_spec.signature_name = "serving_raw"
    raw.predict_log.request.inputs["fare"].CopyFrom(tf.make_tensor_proto(np.array([5.5, np.nan])))
    raw.predict_log.request.inputs["trip_start_hour"].CopyFrom(tf.make_tensor_proto(np.array([3.0, 4.0])))
    raw.predict_log.request.inputs["payment_type"].CopyFrom(tf.make_tensor_proto([b"Cash", b""], tf.string))
    rows = [example_pb2.Example.FromString(e).features.feature for e in unbatch(raw, 0.0, schema).examples]
    assert rows[0]["fare"].float_list.value == [5.5] and "fare" not in rows[1]  # NaN: missing
    assert rows[1]["trip_start_hour"].int64_list.value == [4]  # typed by the schema (INT), not float64
    assert rows[0]["payment_type"].bytes_list.value == [b"Cash"] and "payment_type" not in rows[1]


def test_damaged_files_are_reported_with_their_path_and_skipped(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from monitoring import logs

    good = tmp_path / "a.tfrecord"
    with tf.io.TFRecordWriter(str(good)) as writer:
        for i in range(10):
            record = prediction_log_pb2.PredictionLog()
            record.predict_log.request.inputs["examples"].CopyFrom(
                tf.make_tensor_proto([_example(fare=float(i))], tf.string))
            writer.write(record.SerializeToString())
        writer.write(b"\xff not a PredictionLog")
    data = good.read_bytes()
    (tmp_path / "b-truncated.tfrecord").write_bytes(data[: len(data) // 2])
    (tmp_path / "c-garbage.tfrecord").write_bytes(os.urandom(300))
    problems = []
    requests = list(logs.read(logs.list_files(str(tmp_path)), problems.append, _schema()))
    by_path = {Path(p.path).name: p for p in problems}
    assert set(by_path) == {"a.tfrecord", "b-truncated.tfrecord", "c-garbage.tfrecord"}
    assert "1 of 11 records are not PredictionLogs" in by_path["a.tfrecord"].error
    assert by_path["b-truncated.tfrecord"].records_read == 5 and "DataLoss" in by_path["b-truncated.tfrecord"].error
    assert by_path["c-garbage.tfrecord"].records_read == 0
    assert len(requests) == 10 + 5  # what was read before the damage is kept


def test_streamed_statistics_equal_one_batch():
    """Fed in batches of 7, TFDV's accumulators give the statistics of the whole (counts, mean)."""
    from monitoring.logs import Request
    from monitoring.stats import WindowedStatistics

    windows = WindowedStatistics(_schema(), HOUR, batch_size=7)
    for i in range(100):
        windows.add(Request(1, T0 + i, [_example(fare=float(i), payment_type="Cash")], [i / 100]))
    windows.add(Request(2, T0 + HOUR, [_example(fare=1.0)], []))
    windows.finish()
    slot = windows.slots[(T0, 1)]
    (dataset,) = slot.features.result().datasets
    fare = next(f for f in dataset.features if f.path.step == ["fare"])
    assert (dataset.num_examples, slot.requests) == (100, 100)
    assert fare.num_stats.mean == pytest.approx(49.5)
    assert slot.scores.result().datasets[0].num_examples == 100
    assert set(windows.slots) == {(T0, 1), (T0 + HOUR, 2)}


def test_monitoring_schema_adds_comparators_where_the_schema_has_none():
    from monitoring.compare import monitoring_schema
    from pipeline.config import ConfigError

    schema = monitoring_schema(_schema(), {"trip_start_hour": 0.2, "fare": 0.9, "payment_type": 0.5})
    features = {f.name: f for f in schema.feature}
    assert features["trip_start_hour"].drift_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.2)
    assert features["fare"].drift_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.3)  # the schema's
    assert features["fare"].skew_comparator.jensen_shannon_divergence.threshold == pytest.approx(0.9)
    assert features["payment_type"].skew_comparator.infinity_norm.threshold == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="monitoring.comparators: nope not in the schema"):
        monitoring_schema(_schema(), {"nope": 0.1})


def test_numeric_distances_follow_the_data_not_one_outlier():
    """Jensen-Shannon divergence on common buckets (the reference's deciles): small windows of the reference's own
    distribution stay far under the threshold, whatever the outliers; a shifted one does not. (On TFDV's own
    equal-width histograms, the 700-dollar outlier alone gave 0.35-0.5 between samples of the same data.)"""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    from monitoring.compare import monitoring_schema, skew
    from monitoring.logs import Request
    from monitoring.stats import WindowedStatistics
    from serving.examples import to_example

    schema = monitoring_schema(_schema(), {"fare": 0.3, "trip_start_hour": 0.05})
    rng = np.random.default_rng(0)
    fares = np.round(rng.lognormal(2.2, 0.6, 3000), 2)
    fares[0] = 700.0
    hours = rng.integers(0, 24, 3000)
    # StatisticsGen's statistics: TFDV's default options (10 quantile buckets)
    training = tfdv.generate_statistics_from_dataframe(pd.DataFrame({"fare": fares, "trip_start_hour": hours}))

    def window(values, hours):
        windows = WindowedStatistics(schema, HOUR, batch_size=500)
        for fare, hour in zip(values, hours, strict=True):
            example = to_example({"fare": float(fare), "trip_start_hour": int(hour)}, schema)
            windows.add(Request(1, T0, [example.SerializeToString()], []))
        windows.finish()
        return {f.feature: f.value for f in skew(training, windows.slots[(T0, 1)].features.result(), schema)}

    for start in range(1, 1500, 300):  # windows of 300 requests, the outlier in none of them
        same = window(fares[start:start + 300], hours[start:start + 300])
        assert same["fare"] < 0.03 and same["trip_start_hour"] < 0.03, same
    shifted = window(fares[1:301] * 3 + 10, (hours[1:301] + 8) % 24)
    assert shifted["fare"] > 0.5


def test_decay_evaluates_the_version_that_served_the_span(tmp_path, monkeypatch, capsys):
    """The request log names the version that served a daily span's date; else the rollout record's stable; else
    the newest pushed version. A missing span is an error naming it (exit 1)."""
    import datetime

    from monitoring import decay, replay
    from pipeline.config import load_config
    from pipeline.spans import Span, span_of_date
    from serving import registry

    monkeypatch.setenv("TFX_E2E_OUTPUT_ROOT", str(tmp_path / "out"))
    config = load_config(check_data=False)
    for version in (1, 2):
        os.makedirs(os.path.join(config.serving_model_dir, str(version)))
    day = datetime.date(2026, 9, 21)
    midnight = datetime.datetime(2026, 9, 21, tzinfo=datetime.timezone.utc).timestamp()
    logs = tmp_path / "out" / "request_logs" / "chicago_taxi"
    logs.mkdir(parents=True)
    served_that_day = list(replay.predict_logs("chicago_taxi", 1, [_example(fare=1.0)] * 5, [0.5] * 5, midnight,
                                               3600))
    next_day = list(replay.predict_logs("chicago_taxi", 2, [_example(fare=1.0)] * 9, [0.5] * 9, midnight + 86400,
                                        3600))
    replay.write(str(logs / "prediction_log-1.tfrecord"), served_that_day + next_day)

    dated = Span(span_of_date(day), str(tmp_path), day.isoformat(), True)
    assert decay.served_version(config, dated, None) == (1, "request log: 5 of 5 requests on 2026-09-21")
    numbered = Span(7, str(tmp_path), "span-7", True)
    assert decay.served_version(config, numbered, None) == (2, "newest pushed version")
    registry.write_record(config.serving_model_dir, registry.RolloutRecord(stable=1))
    assert decay.served_version(config, numbered, None) == (1, "rollout record: stable")
    assert decay.served_version(config, numbered, 2) == (2, "--version")

    (tmp_path / "data" / "span-7").mkdir(parents=True)
    assert decay.main(["--span", "8", "--data-root", str(tmp_path / "data")]) == 1
    assert f"span 8: not in {tmp_path / 'data'}" in capsys.readouterr().err
    assert decay.main(["--span", "7", "--data-root", str(tmp_path / "data")]) == 1
    assert f"span 7 ({tmp_path / 'data' / 'span-7'}) is not complete: no _SUCCESS marker" in capsys.readouterr().err


def test_a_threshold_within_sampling_noise_is_not_judged():
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    from monitoring.compare import effective_examples, min_examples

    measure = anomalies_pb2.DriftSkewInfo.Measurement
    assert min_examples(measure.L_INFTY, 0.05) == 900  # 3 standard errors of a share (at most 0.5/sqrt(n))
    assert min_examples(measure.JENSEN_SHANNON_DIVERGENCE, 0.05) == 159
    assert min_examples(measure.JENSEN_SHANNON_DIVERGENCE, 0.3) == 27

    def stats(n):
        result = statistics_pb2.DatasetFeatureStatisticsList()
        result.datasets.add(num_examples=n)
        return result
    assert effective_examples(stats(2000), stats(1500)) == pytest.approx(857.14, abs=0.01)
    assert effective_examples(stats(0), stats(1500)) == 0


def test_configuration_errors_exit_2(tmp_path, monkeypatch, capsys):
    from monitoring.monitor import main

    overlay = tmp_path / "bad.yaml"
    overlay.write_text("monitoring: {on_alert: page}\n")
    monkeypatch.setenv("TFX_E2E_CONFIG", str(overlay))
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2
    assert ("error: configuration: monitoring.on_alert: must be 'none' or 'retrain', got 'page'\n"
            == capsys.readouterr().err)
    overlay.write_text("monitoring: {window_minutes: 0}\n")
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2
    assert "monitoring.window_minutes: must be at least 1, got 0" in capsys.readouterr().err
    overlay.write_text("monitoring: {}\n")
    with pytest.raises(SystemExit) as done:
        main(["--window-minutes", "0"])
    assert (done.value.code, capsys.readouterr().err) == (2, "error: configuration: --window-minutes: must be at "
                                                              "least 1, got 0\n")


def test_the_servers_request_log_records_the_request_time(tmp_path):
    """The server's core stamps each logged request's log_metadata.timestamp_secs, and make monitor windows by it,
    not by the file's time; another logger's record without a stamp falls back to its file's time."""
    import asyncio
    import time

    import tensorflow as tf
    from serving_models import write_taxi_model
    from tensorflow_serving.apis import prediction_log_pb2

    from monitoring import logs
    from serving.core import CoreOptions, ModelSpec, ServingCore
    from serving.manager import ModelManager
    from serving.metrics import Metrics
    from serving.policy import single_model_config
    from serving.request_log import RequestLogger

    write_taxi_model(str(tmp_path / "models" / "7"), warmup=False)
    manager = ModelManager(single_model_config("chicago_taxi", str(tmp_path / "models"), "latest", 1, [], {}))
    manager.poll_once()
    core = ServingCore(manager, CoreOptions(1 << 20), RequestLogger(str(tmp_path / "log"), 1.0),
                       Metrics(manager.model_names, manager.available_versions))
    before = int(time.time())
    asyncio.run(core.predict(ModelSpec("chicago_taxi"), "serving_default",
                             {"examples": np.array([_example(fare=1.0)], dtype=object)}))
    core.close()
    after = time.time()
    (path,) = logs.list_files(str(tmp_path / "log" / "chicago_taxi"))
    os.utime(path, (1.0, 1.0))  # a file time far from the request's: it must not be used
    (request,) = logs.read([path], pytest.fail, _schema())
    assert before <= request.time <= after and (request.version, request.file_time) == (7, False)

    other = tmp_path / "other.tfrecord"
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.inputs["examples"].CopyFrom(tf.make_tensor_proto([_example(fare=1.0)], tf.string))
    with tf.io.TFRecordWriter(str(other)) as writer:
        writer.write(record.SerializeToString())
    os.utime(other, (T0, T0))
    (request,) = logs.read([str(other)], pytest.fail, _schema())
    assert (request.time, request.file_time) == (T0, True)


def _window(version="7", value=0.42, alert=True):
    finding = {"check": "skew", "feature": "fare", "alert": alert, "measure": "jensen_shannon_divergence",
               "value": value, "threshold": 0.3, "kind": "", "description": "", "share": None}
    return {"window": {"start": "2026-09-21T14:00Z", "start_seconds": T0}, "status": "ALERT" if alert else "OK",
            "versions": {version: {"requests": 1500, "skew": [finding], "score": []}},
            "drift": {"findings": [dict(finding, check="drift")]}, "anomalies": []}


def test_servers_metrics_endpoint_shows_the_monitoring_gauges(tmp_path, caplog):
    """The server's /monitoring/prometheus/metrics exposes make monitor's newest gauges under the textfile's names,
    for the models it serves; a malformed file leaves them out and never breaks the scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring.report import write_gauges
    from serving.metrics import AVAILABLE_VERSIONS, Metrics

    models = {"chicago_taxi": [7], "other": [1]}
    metrics = Metrics(models.keys, lambda: models, str(tmp_path))

    def scrape():
        body, _ = metrics.render()
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    assert not any(name.startswith("tfx_e2e_monitoring") for name in scrape())  # no monitoring run yet
    write_gauges(str(tmp_path / "chicago_taxi" / "monitoring.prom"), "chicago_taxi", _window())
    write_gauges(str(tmp_path / "other" / "monitoring.prom"), "other", _window("1", 0.01, alert=False))
    write_gauges(str(tmp_path / "unserved" / "monitoring.prom"), "unserved", _window())
    families = scrape()
    distance = {(s.labels["model"], s.labels["check"], s.labels["version"]): s.value
                for s in families["tfx_e2e_monitoring_distance"].samples}
    assert distance == {("chicago_taxi", "skew", "7"): 0.42, ("chicago_taxi", "drift", "all"): 0.42,
                        ("other", "skew", "1"): 0.01, ("other", "drift", "all"): 0.01}
    assert {s.labels["model"]: s.value for s in families["tfx_e2e_monitoring_alert"].samples} == {
        "chicago_taxi": 1.0, "other": 0.0}
    assert families["tfx_e2e_monitoring_window_start_seconds"].type == "gauge"

    (tmp_path / "chicago_taxi" / "monitoring.prom").write_text('tfx_e2e_monitoring_alert{model="chicago_taxi" 1\n')
    with caplog.at_level("ERROR", logger="serving.metrics"):
        families, _ = scrape(), scrape()
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1  # reported once, not per scrape
    assert "monitoring.prom" in caplog.records[0].getMessage()
    assert {s.labels["model"] for s in families["tfx_e2e_monitoring_alert"].samples} == {"other"}
    assert families[AVAILABLE_VERSIONS].samples  # the server's own metrics answer as before


# --- e2e: real PredictionLogs of the model small_pipeline pushed ---------------------------------------------------

def _rows():
    with open(SMALL_DATA / "data.csv", newline="") as f:
        return list(csv.DictReader(f))


def _drifted(rows):
    """Fares tripled (+10) and trip start hours moved by 8 hours."""
    return [dict(r, fare=f"{float(r['fare'] or 0) * 3 + 10:.2f}",
                 trip_start_hour=str((int(r["trip_start_hour"]) + 8) % 24)) for r in rows]


@pytest.fixture(scope="module")
def served(small_pipeline):
    """(config, version, examples) for the model small_pipeline pushed: examples["bundled"] and
    examples["drifted"] are (serialized tf.Examples, that version's scores) of the slice's rows."""
    from monitoring import replay
    from serving.examples import serialize

    assert small_pipeline.first_exit_code == 0
    config = small_pipeline.config()
    version = max(int(v) for v in os.listdir(config.serving_model_dir) if v.isdigit())
    rows = _rows()
    bundled, drifted = serialize(rows, _schema()), serialize(_drifted(rows), _schema())
    scores = replay.score(os.path.join(config.serving_model_dir, str(version)), bundled + drifted)
    return config, version, {"bundled": (bundled, scores[: len(rows)]), "drifted": (drifted, scores[len(rows):])}


def _write_traffic(path: Path, served, which: str, index, start: float, per_request: int = 1) -> None:
    from monitoring import replay

    config, version, examples = served
    serialized, scores = examples[which]
    path.parent.mkdir(parents=True, exist_ok=True)
    replay.write(str(path), replay.predict_logs(config.model_name, version, [serialized[i] for i in index],
                                                scores[index], start, HOUR, per_request))


def _monitor(small_pipeline, monkeypatch, logs: Path, capsys, args=()):
    """make monitor on `logs` in this process: (exit status, output, {window: JSON report}, report folder)."""
    import shutil

    from monitoring.monitor import main

    directory = Path(small_pipeline.config().output_root) / "monitoring" / "chicago_taxi"
    shutil.rmtree(directory, ignore_errors=True)
    for key, value in small_pipeline.env.items():
        monkeypatch.setenv(key, value)
    status = main(["--logs", str(logs), *args])
    out = capsys.readouterr()
    windows = {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("window-*.json"))}
    return status, out, windows, directory


@pytest.mark.e2e
def test_bundled_traffic_is_ok(small_pipeline, served, monkeypatch, capsys, tmp_path):
    # Two hours of the bundled rows, in two orders, 1 and 4 examples a request; a damaged file beside. (Windows of
    # the whole slice: on random halves of it, fare's Jensen-Shannon divergence is already 0.35, over the schema's
    # 0.3, as TFDV's 10-bucket histograms follow a few outliers; docs/monitoring.md.)
    order = np.random.default_rng(0).permutation(len(_rows()))
    _write_traffic(tmp_path / "logs" / "prediction_log-1.tfrecord", served, "bundled", order, T0)
    _write_traffic(tmp_path / "logs" / "prediction_log-2.tfrecord", served, "bundled", order[::-1], T0 + HOUR,
                   per_request=4)
    damaged = (tmp_path / "logs" / "prediction_log-1.tfrecord").read_bytes()
    (tmp_path / "logs" / "prediction_log-3.tfrecord").write_bytes(damaged[:1000])

    status, out, windows, directory = _monitor(small_pipeline, monkeypatch, tmp_path / "logs", capsys)
    assert status == 0, out.out + out.err
    assert "Result: OK" in out.out
    assert f"skipped: {tmp_path / 'logs' / 'prediction_log-3.tfrecord'}: DataLossError" in out.err
    first, second = windows.values()
    _, version, _ = served
    assert [w["status"] for w in (first, second)] == ["OK", "OK"]
    assert (first["examples"], second["examples"]) == (3001 + 1, 3001)  # the damaged file's first record counts
    assert second["requests"] == (3001 + 3) // 4
    info = second["versions"][str(version)]
    assert info["training_run"] and "/StatisticsGen/statistics/" in info["training_statistics"]
    assert "/Evaluator/evaluation/" in info["score_reference"]
    skew = {f["feature"]: f for f in info["skew"]}
    assert {"payment_type", "company", "fare", "trip_start_hour"} <= set(skew)
    assert all(f["value"] <= f["threshold"] and not f["alert"] for f in skew.values())
    (score,) = info["score"]
    assert score["measure"] == "jensen_shannon_divergence" and 0 <= score["value"] < score["threshold"]
    assert second["drift"]["previous_window"] == first["window"]["start"]
    assert {f["feature"] for f in second["drift"]["findings"]} >= {"fare", "trip_miles", "trip_start_hour"}
    assert not any(f["alert"] for f in second["drift"]["findings"])
    assert second["files_skipped"][0]["path"].endswith("prediction_log-3.tfrecord")
    gauges = (directory / "monitoring.prom").read_text()
    assert 'tfx_e2e_monitoring_alert{model="chicago_taxi"} 0.0' in gauges
    assert f'tfx_e2e_monitoring_distance{{check="skew",feature="payment_type",measure="l_infinity",' \
           f'model="chicago_taxi",version="{version}"}}' in gauges
    # the server's metrics endpoint shows the same gauges after the run
    from prometheus_client.parser import text_string_to_metric_families

    from serving.metrics import Metrics

    metrics = Metrics(lambda: ["chicago_taxi"], lambda: {"chicago_taxi": [version]}, str(directory.parent))
    scraped = {f.name: f for f in text_string_to_metric_families(metrics.render()[0].decode())}
    assert [(s.labels, s.value) for s in scraped["tfx_e2e_monitoring_alert"].samples] == [({"model": "chicago_taxi"}, 0.0)]
    assert {s.labels["feature"] for s in scraped["tfx_e2e_monitoring_distance"].samples} >= {"fare", "payment_type"}
    page = (directory / f"{next(reversed(windows))}.html").read_text()
    assert "OK" in page and "<script" not in page and "<link" not in page  # self-contained: nothing to fetch
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # Each window's serving statistics, which the run's statistics report draws beside training and evaluation.
    from reports.statistics import newest_serving_statistics

    assert sorted(p.name for p in directory.glob("window-*-statistics.pbtxt")) == [f"{w}-statistics.pbtxt"
                                                                                   for w in windows]
    serving = newest_serving_statistics(str(directory))
    assert serving.source == str(directory / f"{next(reversed(windows))}-statistics.pbtxt")
    assert serving.statistics.num_examples == second["examples"]


@pytest.mark.e2e
def test_drifted_traffic_alerts_and_names_the_features(small_pipeline, served, monkeypatch, capsys, tmp_path):
    every = np.arange(len(_rows()))
    _write_traffic(tmp_path / "logs" / "prediction_log-1.tfrecord", served, "bundled", every, T0)
    _write_traffic(tmp_path / "logs" / "prediction_log-2.tfrecord", served, "drifted", every, T0 + HOUR)

    status, out, windows, directory = _monitor(small_pipeline, monkeypatch, tmp_path / "logs", capsys)
    assert status == 3, out.out + out.err
    first, second = windows.values()
    assert (first["status"], second["status"]) == ("OK", "ALERT")
    drift = {f["feature"]: f for f in second["drift"]["findings"] if f["alert"]}
    assert {"fare", "trip_start_hour"} <= set(drift)
    assert drift["fare"]["value"] > drift["fare"]["threshold"] == pytest.approx(0.3)
    _, version, _ = served
    skewed = {f["feature"] for f in second["versions"][str(version)]["skew"] if f["alert"]}
    assert {"fare", "trip_start_hour"} <= skewed
    assert any(a.startswith("drift: fare jensen_shannon_divergence") for a in second["alerts"])
    (score,) = second["versions"][str(version)]["score"]
    assert score["value"] > 0.02  # measured (whether the shift moves the scores past 0.2 depends on the trained model)
    assert "drift: trip_start_hour" in out.out and "Result: ALERT (1 window(s))" in out.out
    page = (directory / f"{next(reversed(windows))}.html").read_text()
    assert page.count("<svg") >= 2 and "drift: fare" in page
    assert 'tfx_e2e_monitoring_alert{model="chicago_taxi"} 1.0' in (directory / "monitoring.prom").read_text()


def _big_tipper(row) -> int:
    """The label as preprocessing_fn makes it: tips > 20 % of the fare (missing: 0)."""
    return int(float(row["tips"] or 0) > 0.2 * float(row["fare"] or 0))


def _write_span(root: Path, name: str, rows) -> None:
    (root / name).mkdir(parents=True)
    with open(root / name / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / name / "_SUCCESS").write_text("")


@pytest.mark.e2e
def test_decay_on_labelled_spans(small_pipeline, served, monkeypatch, capsys, tmp_path):
    """A labelled span of the bundled data: exit 0 and a history line with TFMA's AUC (the exact AUC of the
    version's scores, to TFMA's bucketing); the same rows with their labels flipped: exit 3, charted."""
    import tensorflow_model_analysis as tfma

    from monitoring import decay

    rows = _rows()[:1000]
    flipped = [dict(r, tips="0" if _big_tipper(r) else f"{float(r['fare'] or 0) + 1:.2f}") for r in rows]
    _write_span(tmp_path / "spans", "span-5", rows)
    _write_span(tmp_path / "spans", "span-6", flipped)
    for key, value in small_pipeline.env.items():
        monkeypatch.setenv(key, value)
    directory = Path(small_pipeline.config().output_root) / "monitoring" / "chicago_taxi"
    for name in ("decay.jsonl", "decay.html"):
        (directory / name).unlink(missing_ok=True)

    assert decay.main(["--span", "5", "--data-root", str(tmp_path / "spans")]) == 0, capsys.readouterr()
    (entry,) = decay.read_history(str(directory / "decay.jsonl"))
    _, version, examples = served
    labels = np.array([_big_tipper(r) for r in rows])
    scores = examples["bundled"][1][:1000]
    positives, negatives = scores[labels == 1], scores[labels == 0]
    exact = ((positives[:, None] > negatives).mean() + 0.5 * (positives[:, None] == negatives).mean())
    assert (entry["span"], entry["version"], entry["example_count"], entry["alert"]) == (5, version, 1000, False)
    assert entry["auc"] == pytest.approx(exact, abs=2e-3)
    overall = next(m for m in tfma.load_metrics(entry["evaluation"]) if not m.slice_key.single_slice_keys)
    assert entry["auc"] == next(e.value.double_value.value for e in overall.metric_keys_and_values
                                if e.key.name == "auc")
    # at 0.5 (TFMA's default); a score at the threshold may fall either side in TFMA's float32: one example
    assert entry["binary_accuracy"] == pytest.approx(((scores > 0.5) == labels).mean(), abs=1.5e-3)
    assert "Result: OK" in capsys.readouterr().out

    assert decay.main(["--span", "6", "--data-root", str(tmp_path / "spans")]) == 3
    out = capsys.readouterr().out
    assert f"Result: ALERT: version {version}'s AUC" in out and "below evaluator.auc_lower_bound 0.6" in out
    first, second = decay.read_history(str(directory / "decay.jsonl"))
    assert (first["span"], second["span"], second["alert"]) == (5, 6, True)
    assert second["auc"] == pytest.approx(1 - first["auc"], abs=2e-3)
    page = (directory / "decay.html").read_text()
    assert page.count("<svg") == 1 and "ALERT" in page and "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


@pytest.mark.e2e
def test_bundled_traffic_in_small_windows_is_ok(small_pipeline, served, monkeypatch, capsys, tmp_path):
    """The bundled rows at 300 requests a window (min_requests 100): no fare alert from TFDV's histograms, and
    comparisons whose threshold is within the window's sampling noise are measured, not judged."""
    order = np.random.default_rng(1).permutation(len(_rows()))
    _write_traffic(tmp_path / "logs" / "prediction_log-1.tfrecord", served, "bundled", order, T0)
    status, out, windows, _ = _monitor(small_pipeline, monkeypatch, tmp_path / "logs", capsys,
                                       ["--window-minutes", "6"])
    assert status == 0, out.out
    assert len(windows) == 10 and all(w["status"] == "OK" for w in windows.values())
    _, version, _ = served
    fare = [f["value"] for w in windows.values() for f in w["versions"][str(version)]["skew"] if f["feature"] == "fare"]
    drift = [f["value"] for w in windows.values() for f in w["drift"]["findings"] if f["feature"] == "fare"]
    assert len(fare) == 10 and len(drift) == 9 and max(fare + drift) < 0.1
    # L-infinity 0.05 (the schema's, for quarterly spans) is within a 300-request window's sampling noise
    company = [f for w in windows.values() for f in w["versions"][str(version)]["skew"] if f["feature"] == "company"]
    assert all(not f["alert"] and f["description"].startswith("not judged: ") and "needs 900" in f["description"]
               for f in company)

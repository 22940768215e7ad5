"""Canary rollouts (rollout.strategy: canary): the local server routes by the rollout record (serving/registry.py,
serving/policy.py), and the controller (serving/rollout.py) steps a good version to stable and rolls a bad one back
while clients call throughout. The analysis itself on figures given by hand."""
import json
import random
import subprocess
import sys
import threading
import time

import grpc
import pytest
from serving_models import CANARY_FAULT, write_taxi_model
from test_serving import EXAMPLES, MODEL, Server, _b64, predict_request

from pipeline.config import REPO_ROOT, ConfigError, load_config
from pipeline.versions import push_atomically
from serving import policy
from serving.registry import AUDIT_LOG, RolloutRecord, read_record, rejected_versions, write_record
from serving.rollout import Check, Figures, analyse, parse_metrics, quantile, status_lines, window

CANARY = ("rollout: {strategy: canary, steps: [10, 50, 100], step_seconds: 2, min_requests: 10, "
          "max_error_rate: 0.01, error_rate_margin: 0.005, p99_budget_ms: 2000, p99_factor: 10, "
          "max_failed_analyses: 2, available_timeout_seconds: 60, grace_seconds: 1, max_score_js: 0.1, "
          "max_anomaly_share_margin: 0.1}\n")


def _config(tmp_path, text=CANARY):
    (tmp_path / "rollout.yaml").write_text(text)
    return load_config(env={"TFX_E2E_CONFIG": str(tmp_path / "rollout.yaml")}, check_data=False)


# --- the analysis, on figures given by hand ---------------------------------------------------------------------

def _figures(requests, errors, latencies_us):
    bounds = (1000.0, 10000.0, 100000.0, float("inf"))
    return Figures(requests, errors, tuple((b, sum(1 for x in latencies_us if x <= b)) for b in bounds))


def test_quantile_interpolates_as_prometheus():
    buckets = ((1000.0, 50.0), (10000.0, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == 1000.0
    assert quantile(0.99, buckets) == pytest.approx(1000 + 9000 * (49 / 50))
    assert quantile(0.99, ((1000.0, 0.0), (float("inf"), 10.0))) == 1000.0  # in +Inf: the highest finite bound
    assert quantile(0.99, ()) == 0.0


def test_parse_metrics_and_window():
    text = "\n".join([
        "# TYPE :tensorflow:serving:request_count counter",
        ':tensorflow:serving:request_count{API="predict",entrypoint="REST",model_name="m",model_version="2",status="OK"} 90',
        ':tensorflow:serving:request_count{API="predict",entrypoint="GRPC",model_name="m",model_version="2",'
        'status="INVALID_ARGUMENT"} 10',
        ':tensorflow:serving:request_count{API="status",entrypoint="REST",model_name="m",model_version="",status="OK"} 7',
        ':tensorflow:serving:request_count{API="predict",entrypoint="REST",model_name="other",model_version="2",'
        'status="OK"} 5',
        "# TYPE :tensorflow:serving:request_latency histogram",
        ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="REST",model_name="m",model_version="2",'
        'status="OK",le="1000.0"} 80',
        ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="REST",model_name="m",model_version="2",'
        'status="OK",le="+Inf"} 90',
        ':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",model_name="m",model_version="2",'
        'status="OK"} 90',
        ':tensorflow:serving:request_latency_sum{API="predict",entrypoint="REST",model_name="m",model_version="2",'
        'status="OK"} 1.0', ""])
    figures = parse_metrics(text, "m")
    assert set(figures) == {"2"}  # status calls and other models are not inference figures of m
    assert (figures["2"].requests, figures["2"].errors, figures["2"].error_rate) == (100, 10, 0.1)
    assert figures["2"].buckets == ((1000.0, 80.0), (float("inf"), 90.0))
    later = Figures(150, 12, ((1000.0, 120.0), (float("inf"), 138.0)))
    assert window(later, figures["2"]) == Figures(50, 2, ((1000.0, 40.0), (float("inf"), 48.0)))
    assert window(figures["2"], later) == figures["2"]  # the server restarted: counters from zero


def test_analysis_checks_errors_latency_and_volume(tmp_path):
    config = _config(tmp_path).rollout
    stable = _figures(100, 1, [500] * 100)
    good = analyse(config, True, _figures(20, 0, [500] * 20), stable, True)
    assert all(c.ok for c in good), good
    assert [c.name for c in good] == ["available", "canary_requests", "stable_requests", "error_rate", "p99"]
    # Errors: limit max(0.01, stable 0.01 + 0.005) = 0.015; 1 of 20 is 0.05.
    errors = {c.name: c for c in analyse(config, True, _figures(20, 1, [500] * 20), stable, True)}
    assert errors["error_rate"] == Check("error_rate", False, "canary error rate 0.0500 (limit 0.0150)")
    # Latency: stable's p99 (~0.99 ms) x 10 is below the 2000 ms budget, so it is the limit.
    slow = {c.name: c for c in analyse(config, True, _figures(20, 0, [50000] * 20), stable, True)}
    assert not slow["p99"].ok and "x 10" in slow["p99"].detail
    few = {c.name: c.ok for c in analyse(config, False, _figures(5, 0, [500] * 5), stable, True)}
    assert few == {"available": False, "canary_requests": False, "stable_requests": True, "error_rate": True,
                   "p99": True}
    # At 100 % stable gets no unnamed traffic: no minimum for it, compared with what it gave before.
    full = analyse(config, True, _figures(20, 0, [500] * 20), stable, False)
    assert [c.name for c in full] == ["available", "canary_requests", "error_rate", "p99"] and all(c.ok for c in full)


def test_route_splits_exactly_and_falls_back():
    record = RolloutRecord(stable=1, canary=2, canary_percent=10)
    routed = [policy.route(record, {1, 2}, n) for n in range(100)]
    assert routed.count(2) == 10 and routed.count(1) == 90
    assert [policy.route(replace_percent(record, 50), {1, 2}, n) for n in range(4)] == [2, 1, 2, 1]
    assert {policy.route(replace_percent(record, 100), {1, 2}, n) for n in range(10)} == {2}
    assert policy.route(record, {1}, 0) == 1      # the canary is not loaded: stable answers
    assert policy.route(record, {2}, 1) == 2      # stable is not loaded: the canary answers
    assert policy.route(record, {7}, 0) is None   # neither: TF Serving's latest


def replace_percent(record, percent):
    return RolloutRecord(stable=record.stable, canary=record.canary, canary_percent=percent)


def test_record_round_trip_and_refusals(tmp_path):
    assert read_record(str(tmp_path)) is None and rejected_versions(str(tmp_path)) == set()
    write_record(str(tmp_path), RolloutRecord(stable=1, canary=3, canary_percent=10,
                                              rejected={"2": {"time": "t", "reason": "r"}}))
    assert read_record(str(tmp_path)) == RolloutRecord(stable=1, canary=3, canary_percent=10,
                                                       rejected={"2": {"time": "t", "reason": "r"}})
    assert rejected_versions(str(tmp_path)) == {2}
    for text, message in (("{", "Expecting"), ('{"stable": "1"}', "stable must be a version number"),
                          ('{"canary_percent": 101}', "canary_percent"), ('{"weight": 1}', "weight")):
        (tmp_path / "rollout.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            read_record(str(tmp_path))


def test_rollout_configuration_is_checked(tmp_path):
    assert load_config(env={}, check_data=False).rollout.strategy == "immediate"  # today's behaviour by default
    assert _config(tmp_path).rollout.steps == [10, 50, 100]
    assert (_config(tmp_path, AB).rollout.strategy, _config(tmp_path, AB).rollout.ab_percent) == ("ab", 50)
    for text, key in (("rollout: {strategy: bluegreen}", "rollout.strategy"), ("rollout: {steps: [50, 10, 100]}",
                      "rollout.steps"), ("rollout: {steps: [10, 50]}", "rollout.steps"),
                      ("rollout: {min_requests: 0}", "rollout.min_requests"),
                      ("rollout: {max_error_rate: 2}", "rollout.max_error_rate"),
                      ("rollout: {max_score_js: 1.5}", "rollout.max_score_js"),
                      ("rollout: {max_anomaly_share_margin: -0.1}", "rollout.max_anomaly_share_margin"),
                      ("rollout: {strategy: ab, ab_percent: 100}", "rollout.ab_percent"),
                      ("rollout: {ab_seconds: 0}", "rollout.ab_seconds")):
        with pytest.raises(ConfigError, match=key):
            _config(tmp_path, text)


# --- the local server routes by the record ------------------------------------------------------------------------

def _version(server, **spec):
    return server.predict_stub.Predict(predict_request(EXAMPLES[:1], **spec)).model_spec.version.value


def test_server_routes_by_the_rollout_record(tmp_path):
    server = Server(tmp_path, sections=CANARY)
    try:
        base = tmp_path / "models" / MODEL
        write_taxi_model(str(tmp_path / "v2"), bias=1.0)
        (tmp_path / "v2").rename(base / "2")  # whole, as the Pusher's rename
        time.sleep(1.0)  # several polls: without a record the version policy (latest 1) rules, as TF Serving's
        server.wait_for(lambda: server.available(2), "version 2 (latest, no record)")
        write_record(str(base), RolloutRecord(stable=1, canary=2, canary_percent=10))
        server.wait_for(lambda: server.available(1), "version 1 back as stable")
        server.wait_for(lambda: server.http("GET", f"/v1/models/{MODEL}/labels/canary")[0] == 200, "the labels")
        answered = [_version(server) for _ in range(100)]
        assert answered.count(2) == 10 and answered.count(1) == 90
        # Requests naming a version or a label keep TF Serving's meaning.
        assert {_version(server, version=2) for _ in range(5)} == {2}
        assert {_version(server, label="stable") for _ in range(5)} == {1}
        assert server.http("GET", f"/v1/models/{MODEL}/labels/canary")[1]["model_version_status"][0]["version"] == "2"
        status, body = server.http("POST", f"/v1/models/{MODEL}/labels/canary:predict", {"instances": _b64(EXAMPLES[:1])})
        assert status == 200 and len(body["predictions"]) == 1

        write_record(str(base), RolloutRecord(stable=1, canary=2, canary_percent=50))
        server.wait_for(lambda: [_version(server) for _ in range(4)].count(2) == 2, "the 50 % step")
        # Rolled back: the canary loses its label and is unloaded; stable answers everything.
        write_record(str(base), RolloutRecord(stable=1, rejected={"2": {"time": "t", "reason": "test"}}))
        server.wait_for(lambda: server.http("GET", f"/v1/models/{MODEL}/versions/2")[1]["model_version_status"][0][
            "state"] == "END", "version 2 unloaded")
        assert {_version(server) for _ in range(20)} == {1}
        assert server.http("GET", f"/v1/models/{MODEL}/labels/canary")[0] == 404
        # A record that is not one changes nothing, and the log says why.
        (base / "rollout.json").write_text('{"stable": "one"}')
        time.sleep(1.0)
        assert {_version(server) for _ in range(5)} == {1}
        assert "rollout record not applied" in server.logs()
    finally:
        server.stop()


# --- the controller, end to end -----------------------------------------------------------------------------------

def _audit(base):
    path = base / AUDIT_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _decisions(base, decision, **fields):
    return [e for e in _audit(base) if e["decision"] == decision and all(e.get(k) == v for k, v in fields.items())]


def test_controller_promotes_a_good_canary_and_rolls_back_a_bad_one(tmp_path):
    """A good version (stable's scores) is promoted; a bad one (errors) and a shifted one (no error, scores moved:
    the request-log check) are rolled back. Margin 0.1 on anomaly shares: each arm's mix of the clients' requests
    varies by a few percent from window to window."""
    server = Server(tmp_path, sections=CANARY)
    base = tmp_path / "models" / MODEL
    controller = subprocess.Popen(
        [sys.executable, "-m", "serving.rollout", "run", "--url", server.url, "--model_base_path", str(base),
         "--poll_seconds", "0.2"], cwd=REPO_ROOT, env=server.env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "controller.log", "w"))
    stop, failures, answered, lock = threading.Event(), [], [], threading.Lock()

    def client(index: int):
        # Unnamed requests, half of them with a fare above 20 (the bad canary's fault), over gRPC and REST; drawn
        # at random, so that no arm gets more of either kind by the order of arrival.
        draw = random.Random(index)
        while not stop.is_set():
            examples = EXAMPLES if draw.random() < 0.5 else EXAMPLES[:2]
            try:
                if index % 2:
                    reply = server.predict_stub.Predict(predict_request(examples), timeout=30)
                    with lock:
                        answered.append((time.monotonic(), reply.model_spec.version.value))
                else:
                    status, body = server.http("POST", f"/v1/models/{MODEL}:predict", {"instances": _b64(examples)})
                    if status != 200:
                        failures.append(body["error"])
            except grpc.RpcError as e:
                failures.append(e.details())

    def wait(condition, what, seconds=60):
        server.wait_for(condition, what + "\n" + (tmp_path / "controller.log").read_text()[-3000:], seconds)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        wait(lambda: _decisions(base, "adopt", stable=1), "the controller to adopt version 1")
        for t in threads:
            t.start()
        write_taxi_model(str(tmp_path / "good"))  # stable's scores
        good = push_atomically(str(tmp_path / "good"), str(base))
        wait(lambda: _decisions(base, "promote", canary=None, stable=good), f"version {good} promoted")
        promoted_at = time.monotonic()
        record = read_record(str(base))
        assert (record.stable, record.canary, record.retiring) in ((good, None, 1), (good, None, None))
        passed = _decisions(base, "pass")
        assert [(e["step"], e["percent"]) for e in passed] == [(1, 10), (2, 50)]  # then 100 % promoted
        assert [e["percent"] for e in _decisions(base, "step", canary=good)][-3:] == [10, 50, 100]
        first = passed[0]["figures"]  # the 10 % step: about a tenth of the requests went to the canary
        share = first["canary"]["requests"] / (first["canary"]["requests"] + first["stable"]["requests"])
        assert 0.03 <= share <= 0.25, first
        assert not _decisions(base, "rollback")
        wait(lambda: _decisions(base, "retire"), "version 1 to retire after the grace period", 20)
        wait(lambda: server.http("GET", f"/v1/models/{MODEL}/versions/1")[1]["model_version_status"][0]["state"]
             == "END", "version 1 unloaded")

        write_taxi_model(str(tmp_path / "bad"), bias=2.0, fail_above_fare=20.0)
        bad = push_atomically(str(tmp_path / "bad"), str(base))
        wait(lambda: _decisions(base, "rollback", version=bad), f"version {bad} rolled back")
        wait(lambda: server.http("GET", f"/v1/models/{MODEL}/versions/{bad}")[1]["model_version_status"][0]["state"]
             == "END", f"version {bad} unloaded")
        time.sleep(1.0)
        rolled_back_at = time.monotonic()
        time.sleep(1.0)
        shifted_at = time.monotonic()
        write_taxi_model(str(tmp_path / "shifted"), bias=1.0)
        shifted = push_atomically(str(tmp_path / "shifted"), str(base))
        wait(lambda: _decisions(base, "rollback", version=shifted), f"version {shifted} rolled back")
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        controller.terminate()
        assert controller.wait(timeout=30) == 0
        server.stop()

    fails = _decisions(base, "fail", canary=bad)
    assert len(fails) == 2 and fails[-1]["failures"] == 2
    assert fails[0]["figures"]["canary"]["errors"] > 0
    assert any(c["name"] == "error_rate" and not c["ok"] for c in fails[0]["checks"])
    record = read_record(str(base))
    assert (record.stable, record.canary, record.canary_percent) == (good, None, 0)
    assert set(record.rejected) == {str(bad), str(shifted)}
    assert "failed analyses in a row" in record.rejected[str(bad)]["reason"]
    assert rejected_versions(str(base)) == {bad, shifted}
    # The shifted version never errs: its scores moved, which only the request log shows.
    shifts = _decisions(base, "fail", canary=shifted)
    assert len(shifts) == 2 and all(e["figures"]["canary"]["errors"] == 0 for e in shifts), shifts
    for entry in shifts:
        checks = {c["name"]: c for c in entry["checks"]}
        assert [n for n, c in checks.items() if not c["ok"]] == ["score_js"], checks
        assert entry["figures"]["log"]["score_js"] > 0.1
        assert entry["figures"]["log"]["canary"]["score_mean"] > entry["figures"]["log"]["stable"]["score_mean"]
        assert checks["score_js"]["detail"] == (f"canary scores against stable's: Jensen-Shannon "
                                                f"{entry['figures']['log']['score_js']:.4f} (limit 0.1)")
    assert "scores against stable's" in record.rejected[str(shifted)]["reason"]
    # The good version's steps passed the request-log checks too.
    assert all({c["name"]: c["ok"] for c in e["checks"]}.keys() >= {"score_js", "anomalies"} and
               all(c["ok"] for c in e["checks"]) for e in passed)
    # Clients saw no failure the canary did not cause, and some it did (before the rollback).
    assert failures and all(CANARY_FAULT in f for f in failures), set(failures) - {f for f in failures if CANARY_FAULT in f}
    versions = {v for _, v in answered}
    assert {1, good, bad} <= versions
    assert {v for t, v in answered if t > promoted_at + 3} <= {good, bad, shifted}
    assert {v for t, v in answered if rolled_back_at < t < shifted_at} == {good}
    # `status` shows the record and the decisions with their figures.
    printed = subprocess.run([sys.executable, "-m", "serving.rollout", "status", "--model_base_path", str(base)],
                             cwd=REPO_ROOT, env=server.env, capture_output=True, text=True, check=True).stdout
    assert printed.startswith(f"stable {good}\ncanary none\n")
    assert f"rejected {bad} at " in printed and f"rejected {shifted} at " in printed and "rollback" in printed
    assert "| scores JS " in printed
    assert status_lines(str(tmp_path / "nothing")) == [f"{tmp_path / 'nothing'}: no rollout record (the controller "
                                                       "has not run)"]


# --- the controller on Kubernetes: each decision applied to the tracks and the VirtualService ---------------------

class FakeTracks:
    """Two tracks' metrics endpoints as the controller sums them: every scrape, each served version has 100 more
    requests, `bad` ones with `errors` errors among them."""

    model = MODEL

    def __init__(self, bad=(), errors=20):
        self.bad, self.errors, self.scrapes = set(bad), errors, 0

    def available(self, version):
        return True

    def figures(self):
        self.scrapes += 1
        n = 100.0 * self.scrapes
        return {str(v): Figures(n, self.errors * self.scrapes if v in self.bad else 0.0,
                                ((1000.0, n), (float("inf"), n)))
                for v in (1, 2, 3)}


def _version_dir(base, version):
    (base / str(version) / "variables").mkdir(parents=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"")
    (base / str(version) / "variables" / "variables.index").write_bytes(b"")


def test_controller_drives_istio_weights_and_track_configmaps(tmp_path):
    import yaml
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving.rollout import Controller, IstioTraffic

    config = _config(tmp_path, CANARY.replace("step_seconds: 2", "step_seconds: 1").replace("min_requests: 10",
                                                                                             "min_requests: 1"))
    base, out = tmp_path / "models", tmp_path / "istio"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'kubectl.log'}\n")
    kubectl.chmod(0o755)
    _version_dir(base, 1)
    clock = [0.0]
    controller = Controller(config.rollout, str(base), FakeTracks(bad={3}), clock=lambda: clock[0],
                            traffic=IstioTraffic(config, out, str(kubectl)))

    def applied():
        service = yaml.safe_load((out / "virtualservice.yaml").read_text())
        weighted = next(route for route in service["spec"]["http"] if route["name"] == "grpc")
        tracks = {}
        for track, suffix in (("stable", ""), ("canary", "-canary")):
            text = yaml.safe_load((out / f"configmap{suffix}.yaml").read_text())["data"]["models.config"]
            model = text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list.config[0]
            tracks[track] = list(model.model_version_policy.specific.versions)[0]
        return weighted["route"][1]["weight"], tracks["stable"], tracks["canary"]

    controller.tick()
    seen = [applied()]
    for version in (2, 3):
        _version_dir(base, version)
        for _ in range(12):
            clock[0] += 1.0
            controller.tick()
            if (out / "virtualservice.yaml").exists() and (not seen or seen[-1] != applied()):
                seen.append(applied())
    # (canary weight, stable track's version, canary track's version) as applied, decision after decision.
    assert seen == [(0, 1, 1), (0, 1, 2), (10, 1, 2), (50, 1, 2), (100, 1, 2), (0, 2, 2), (0, 2, 3), (10, 2, 3),
                    (0, 2, 2)]
    assert read_record(str(base)).rejected.keys() == {"3"}
    applies = (tmp_path / "kubectl.log").read_text().splitlines()
    assert applies[:3] == [f"apply -f {out / name}" for name in ("configmap.yaml", "configmap-canary.yaml",
                                                                 "virtualservice.yaml")]
    assert [e["decision"] for e in _audit(base)] == [
        "adopt", "start", "step", "pass", "step", "pass", "step", "promote", "retire",
        "start", "step", "fail", "fail", "rollback"]


# --- the controller on Vertex AI: the SDK and Cloud Monitoring as test doubles bound to the real signatures -------

class FakeVertex:
    """Records what the Vertex AI SDK receives; an endpoint's deployed models are kept as Vertex would keep them."""

    def __init__(self):
        self.calls, self.deployed, self.models, self.deploys, fake = [], {}, {}, 0, self

        class DeployedModel:
            def __init__(self, id, display_name):
                self.id, self.display_name = id, display_name

        class Model:
            def __init__(self, display_name, labels):
                self.display_name, self.labels = display_name, labels

            @classmethod
            def list(cls, **kwargs):
                fake.calls.append(("Model.list", kwargs))
                version = kwargs["filter"].split('"')[1]
                return [fake.models[version]] if version in fake.models else []

            @classmethod
            def upload(cls, **kwargs):
                fake.calls.append(("Model.upload", kwargs))
                model = fake.models[kwargs["labels"]["tfx_e2e_version"]] = cls(kwargs["display_name"], kwargs["labels"])
                return model

            def update(self, **kwargs):
                fake.calls.append(("Model.update", {**kwargs, "_model": self.display_name}))
                self.labels = kwargs["labels"]

        class Endpoint:
            name = "8125"

            @classmethod
            def list(cls, **kwargs):
                fake.calls.append(("Endpoint.list", kwargs))
                return [cls()] if any(c[0] == "Endpoint.create" for c in fake.calls) else []

            @classmethod
            def create(cls, **kwargs):
                fake.calls.append(("Endpoint.create", kwargs))
                return cls()

            def list_models(self):
                return [DeployedModel(i, name) for name, i in fake.deployed.items()]

            def deploy(self, **kwargs):
                fake.calls.append(("deploy", {**kwargs, "model": kwargs["model"].display_name}))
                fake.deployed[kwargs["deployed_model_display_name"]] = str(100 + fake.deploys)
                fake.deploys += 1

            def update(self, **kwargs):
                fake.calls.append(("update", kwargs))

            def undeploy(self, **kwargs):
                fake.calls.append(("undeploy", kwargs))
                fake.deployed = {n: i for n, i in fake.deployed.items() if i != kwargs["deployed_model_id"]}

        class helpers:
            @staticmethod
            def get_prebuilt_prediction_container_uri(**kwargs):
                fake.calls.append(("get_prebuilt_prediction_container_uri", kwargs))
                from google.cloud.aiplatform import helpers as real
                return real.get_prebuilt_prediction_container_uri(**kwargs)

        self.Model, self.Endpoint, self.helpers = Model, Endpoint, helpers

    def bind_to_the_real_sdk(self):
        import inspect

        from google.cloud import aiplatform
        real = {"Model.list": aiplatform.Model.list, "Model.upload": aiplatform.Model.upload,
                "Endpoint.list": aiplatform.Endpoint.list, "Endpoint.create": aiplatform.Endpoint.create,
                "get_prebuilt_prediction_container_uri": aiplatform.helpers.get_prebuilt_prediction_container_uri}
        methods = {"Model.update": aiplatform.Model.update, "deploy": aiplatform.Endpoint.deploy,
                   "update": aiplatform.Endpoint.update, "undeploy": aiplatform.Endpoint.undeploy}
        for name, kwargs in self.calls:
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
            if name in real:
                inspect.signature(real[name]).bind(**kwargs)
            else:
                inspect.signature(methods[name]).bind(None, **kwargs)


VERTEX = ("output_root: gs://tfx-e2e-test-bucket/tfx-e2e\n"
          "gcp: {project: tfx-e2e-test, region: europe-west4}\n" + CANARY)


def test_vertex_endpoint_follows_the_record(tmp_path):
    from serving.vertex import VertexTraffic

    fake = FakeVertex()
    traffic = VertexTraffic(_config(tmp_path, VERTEX), fake)
    for record in (RolloutRecord(stable=1), RolloutRecord(stable=1, canary=2, canary_percent=10),
                   RolloutRecord(stable=2, retiring=1, retire_at=5.0), RolloutRecord(stable=2),
                   RolloutRecord(stable=2, canary=3, canary_percent=10),
                   RolloutRecord(stable=2, rejected={"3": {"time": "t", "reason": "r"}})):
        traffic.apply(record)
    fake.bind_to_the_real_sdk()
    where = {"project": "tfx-e2e-test", "location": "europe-west4"}
    uploads = [kwargs for name, kwargs in fake.calls if name == "Model.upload"]
    assert uploads == [{"display_name": f"chicago_taxi-{v}", "artifact_uri": f"gs://tfx-e2e-test-bucket/tfx-e2e/serving/"
                        f"chicago_taxi/{v}", "labels": {"tfx_e2e_version": str(v)}, "serving_container_image_uri":
                        "europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest", **where} for v in (1, 2, 3)]
    deploys = [(k["model"], k["traffic_percentage"], k["machine_type"], k["accelerator_type"], k["accelerator_count"])
               for name, k in fake.calls if name == "deploy"]
    assert deploys == [("chicago_taxi-1", 100, "n1-standard-8", "NVIDIA_TESLA_T4", 1),
                       ("chicago_taxi-2", 0, "n1-standard-8", "NVIDIA_TESLA_T4", 1),
                       ("chicago_taxi-3", 0, "n1-standard-8", "NVIDIA_TESLA_T4", 1)]
    # Deployed model ids: version 1 -> 100, 2 -> 101, 3 -> 102.
    assert [k["traffic_split"] for name, k in fake.calls if name == "update"] == [
        {"100": 100}, {"100": 90, "101": 10}, {"101": 100, "100": 0}, {"101": 100}, {"101": 90, "102": 10},
        {"101": 100}]
    assert [k for name, k in fake.calls if name == "undeploy"] == [{"deployed_model_id": "100"},
                                                                   {"deployed_model_id": "102"}]
    assert [k for name, k in fake.calls if name == "Model.update"] == [
        {"labels": {"tfx_e2e_version": "3", "tfx_e2e_rollout": "rejected"}, "_model": "chicago_taxi-3"}]
    assert [k for name, k in fake.calls if name == "Endpoint.create"] == [{"display_name": "chicago-taxi", **where}]


def test_vertex_figures_from_cloud_monitoring(tmp_path):
    import inspect

    from google.cloud import monitoring_v3

    from serving.vertex import VertexMetrics, VertexTraffic

    fake = FakeVertex()
    traffic = VertexTraffic(_config(tmp_path, VERTEX), fake)
    traffic.apply(RolloutRecord(stable=1, canary=2, canary_percent=10))
    requests = []

    def series(deployed_id, **value):
        return monitoring_v3.TimeSeries(resource={"type": "aiplatform.googleapis.com/Endpoint", "labels": {
            "endpoint_id": "8125", "deployed_model_id": deployed_id}}, points=[{"value": value}])

    class FakeMonitoring:
        def list_time_series(self, **kwargs):
            requests.append(kwargs)
            metric = kwargs["filter"].split('"')[1].rsplit("/", 1)[1]
            if metric == "prediction_count":
                return [series("100", int64_value=900), series("101", int64_value=100)]
            if metric == "error_count":
                return [series("101", int64_value=7)]
            # Latencies in ms: explicit bounds 10, 100; version 2 has 90 requests under 10 ms and 10 at 10-100 ms.
            return [series("101", distribution_value={"count": 100, "bucket_options": {"explicit_buckets": {
                "bounds": [10.0, 100.0]}}, "bucket_counts": [90, 10, 0]})]

    metrics = VertexMetrics(traffic, FakeMonitoring(), clock=lambda: 1000.0)
    figures = metrics.figures()
    assert (figures["1"].requests, figures["1"].errors) == (900, 0)
    assert (figures["2"].requests, figures["2"].errors) == (100, 7)
    assert figures["2"].buckets == ((10000.0, 90.0), (100000.0, 100.0), (float("inf"), 100.0))
    assert figures["2"].p99_ms() == pytest.approx(10 + 90 * 0.9)
    assert metrics.available(2) and not metrics.available(3)
    assert requests[0]["filter"] == ('metric.type="aiplatform.googleapis.com/prediction/online/prediction_count" AND '
                                     'resource.labels.endpoint_id="8125"')
    for request in requests:
        inspect.signature(monitoring_v3.MetricServiceClient.list_time_series).bind(None, **request)


# --- the request-log checks (score distribution, schema anomalies) on PredictionLogs made by hand -------------------

def _taxi_rows(count, start=0):
    import csv

    with open(REPO_ROOT / "tests" / "data" / "taxi_small" / "data.csv") as f:
        rows = list(csv.DictReader(f))[start:start + count]
    return rows


def _prediction_logs(rows, version, bias=0.0, when=1_800_000_000, per_request=4):
    """PredictionLogs as the server writes them: serving_default requests of `per_request` examples each, the
    taxi test model's probabilities (bias shifts them), the version and time in log_metadata."""
    import numpy as np
    import tensorflow as tf
    from serving_models import taxi_probabilities
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.examples import load_schema, to_example

    schema = load_schema(str(REPO_ROOT / "schema" / "schema.pbtxt"))
    records = []
    for i in range(0, len(rows), per_request):
        chunk = rows[i:i + per_request]
        record = prediction_log_pb2.PredictionLog()
        record.log_metadata.model_spec.version.value = version
        record.log_metadata.timestamp_secs = when + i
        examples = np.array([to_example(r, schema).SerializeToString() for r in chunk], dtype=object)
        record.predict_log.request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples))
        record.predict_log.response.outputs["probabilities"].CopyFrom(
            tf.make_tensor_proto(taxi_probabilities([{**r, "fare": r["fare"] or 0} for r in chunk], bias)))
        records.append(record.SerializeToString())
    return records


def _write_log(path, records):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def test_log_cursor_reads_what_was_appended_since(tmp_path):
    from serving.rollout_log import LogCursor

    records = _prediction_logs(_taxi_rows(12), 1)  # 3 records
    _write_log(tmp_path / "prediction_log-1-000000.tfrecord", records[:2])
    cursor = LogCursor(str(tmp_path))
    cursor.skip()
    assert cursor.read() == []
    _write_log(tmp_path / "prediction_log-1-000001.tfrecord", records[2:])
    # A record cut short (still being written) waits for the next read.
    with open(tmp_path / "prediction_log-1-000000.tfrecord", "ab") as f:
        framed = (tmp_path / "prediction_log-1-000001.tfrecord").read_bytes()
        f.write(framed[:20])
    assert cursor.read() == records[2:]
    with open(tmp_path / "prediction_log-1-000000.tfrecord", "ab") as f:
        f.write(framed[20:])
    assert cursor.read() == records[2:]
    (tmp_path / "prediction_log-1-000001.tfrecord").unlink()  # pruned by the logger's rotation: forgotten
    assert cursor.read() == [] and len(cursor.offsets) == 1


def test_log_analysis_scores_and_anomalies(tmp_path):
    """A canary whose scores moved fails score_js; one whose traffic holds a payment type the schema does not know
    in 30 % of its examples (stable's none) fails anomalies; the same traffic and model passes both."""
    from serving.rollout_log import analyse, load_schema, summarize

    schema = load_schema(str(REPO_ROOT / "schema" / "schema.pbtxt"))
    rollout = _config(tmp_path).rollout  # max_score_js 0.1, max_anomaly_share_margin 0.01, min_requests 10
    stable_rows, canary_rows = _taxi_rows(400), _taxi_rows(400, start=400)
    odd = [{**r, "payment_type": "Bitcoin"} if i % 10 < 3 else r for i, r in enumerate(canary_rows)]
    arms = summarize(_prediction_logs(stable_rows, 1) + _prediction_logs(canary_rows, 2)
                     + _prediction_logs(canary_rows, 3, bias=2.0) + _prediction_logs(odd, 4), schema)
    assert {v: a.examples for v, a in arms.items()} == {1: 400, 2: 400, 3: 400, 4: 400}

    same = analyse(rollout, schema, arms[2], arms[1])
    assert [(name, ok) for name, ok, _ in same.checks] == [("score_js", True), ("anomalies", True)], same.checks
    assert same.figures["score_js"] <= 0.1
    assert same.figures["canary"] == {"logged_examples": 400, "score_mean": round(arms[2].score_mean(), 4)}

    shifted = analyse(rollout, schema, arms[3], arms[1])
    score = dict((name, (ok, detail)) for name, ok, detail in shifted.checks)["score_js"]
    assert not score[0] and shifted.figures["score_js"] > 0.1
    assert score[1] == f"canary scores against stable's: Jensen-Shannon {shifted.figures['score_js']:.4f} (limit 0.1)"
    assert shifted.figures["canary"]["score_mean"] > shifted.figures["stable"]["score_mean"] + 0.2

    anomalous = analyse(rollout, schema, arms[4], arms[1])
    checks = {name: (ok, detail) for name, ok, detail in anomalous.checks}
    assert checks["score_js"][0] and not checks["anomalies"][0]
    assert checks["anomalies"][1] == ("canary payment_type ENUM_TYPE_UNEXPECTED_STRING_VALUES in 30.0% of examples "
                                      "(stable 0.0%) (margin 10.0%)")
    assert {"feature": "payment_type", "kind": "ENUM_TYPE_UNEXPECTED_STRING_VALUES", "canary_share": 0.3,
            "stable_share": 0.0} in anomalous.figures["anomalies"]
    # The same anomaly in stable's traffic too: no worse than stable, so it passes.
    assert dict((n, ok) for n, ok, _ in analyse(rollout, schema, arms[4], arms[4]).checks)["anomalies"]

    few = analyse(rollout, schema, summarize(_prediction_logs(canary_rows[:8], 2), schema)[2], arms[1])
    assert few.checks == [(name, False, "request log: canary 8 logged examples (minimum 10)")
                          for name in ("score_js", "anomalies")]


# --- A/B (rollout.strategy: ab): a fixed split for a period, then a command decides -----------------------------

AB = CANARY.replace("strategy: canary", "strategy: ab, ab_percent: 50, ab_seconds: 5").replace(
    "step_seconds: 2", "step_seconds: 1")


def _ab_controller(tmp_path, errors: int, overlay: str = AB, istio: bool = True):
    """An A/B controller with stable version 1 in place and a fake clock: version 2, when pushed, errs on `errors`
    of each 100 requests; with istio, traffic goes through IstioTraffic's files in tmp_path/istio."""
    from serving.rollout import Controller, IstioTraffic

    config = _config(tmp_path, overlay)
    base, out = tmp_path / "models", tmp_path / "istio"
    _version_dir(base, 1)
    clock = [0.0]
    controller = Controller(config.rollout, str(base), FakeTracks(bad={2}, errors=errors), clock=lambda: clock[0],
                            traffic=IstioTraffic(config, out) if istio else None)
    return base, out, clock, controller


def test_ab_holds_the_split_reports_per_arm_and_waits_for_the_command(tmp_path):
    """Two tracks behind Istio: version 2 gets 50 % for ab_seconds (it errs on 1 % of its requests, within the
    guardrail's limit: max_error_rate 0.01), then stable gets every unnamed request back and version 2 waits;
    `promote` moves stable to it. A third version is rejected by command before its period ends."""
    import yaml

    from serving.rollout import ab_summary, read_ab

    base, out, clock, controller = _ab_controller(tmp_path, errors=1)

    def weight():
        service = yaml.safe_load((out / "virtualservice.yaml").read_text())
        return next(r for r in service["spec"]["http"] if r["name"] == "grpc")["route"][1]["weight"]

    controller.tick()
    _version_dir(base, 2)
    seen = []
    for _ in range(12):
        clock[0] += 1.0
        controller.tick()
        seen.append((clock[0], weight(), read_record(str(base)).canary))
    # Started at t=1, split from t=2 to t=7: every step passed the guardrail, none decided.
    assert seen[:7] == [(1.0, 0, 2), (2.0, 50, 2), (3.0, 50, 2), (4.0, 50, 2), (5.0, 50, 2), (6.0, 50, 2),
                        (7.0, 0, 2)]
    assert {w for _, w, _ in seen[7:]} == {0}
    assert not _decisions(base, "rollback") and not _decisions(base, "ab-fail")
    state = read_ab(str(base))
    assert (state["started_at"], state["until"], state["ended_at"]) == (2.0, 7.0, 7.0)
    assert (state["failures"], "guardrail" in state, "decision" in state) == (0, False, False)
    # FakeTracks adds 100 requests per version and scrape: 5 scrapes after the one the test started from.
    summary = ab_summary(state)
    assert (summary["stable"]["version"], summary["stable"]["requests"], summary["stable"]["errors"]) == (1, 500, 0)
    assert (summary["canary"]["version"], summary["canary"]["requests"], summary["canary"]["errors"]) == (2, 500, 5)
    (end,) = _decisions(base, "ab-end")
    assert end["figures"] == summary and end["percent"] == 0
    assert "waits for `promote` or `reject`" in end["reason"]
    assert status_lines(str(base))[1].startswith("canary 2 at 0% (A/B arm B, ended ")

    assert controller.decide("promote") == "version 2 promoted to stable"
    record = read_record(str(base))
    assert (record.stable, record.canary, record.retiring) == (2, None, 1)
    assert _decisions(base, "promote")[-1]["figures"] == summary and read_ab(str(base))["decision"] == "promote"
    assert weight() == 0
    with pytest.raises(ValueError, match="no A/B test to decide"):
        controller.decide("promote")

    _version_dir(base, 3)
    for _ in range(3):
        clock[0] += 1.0
        controller.tick()
    assert (read_record(str(base)).canary, weight()) == (3, 50)
    assert controller.decide("reject") == "version 3 rejected"
    (rollback,) = _decisions(base, "rollback")
    assert rollback["reason"] == "version 3 rejected: A/B: rejected by command"
    assert rollback["note"].startswith("decided before the end of the A/B period")
    assert read_record(str(base)).rejected.keys() == {"3"} and weight() == 0


def test_ab_guardrail_rolls_back_an_arm_b_that_breaks_production(tmp_path):
    """Arm B fails half of its requests (arm A none): each step fails the guardrail's error-rate check, and the
    second in a row (max_failed_analyses 2) rolls B back as `reject` does, before the period's end. The A/B state
    it starts from is one written before the guardrail (no `failures`)."""
    import yaml

    from serving.rollout import read_ab, write_ab
    from serving.rollout_log import ab_report, ab_report_lines

    base, out, clock, controller = _ab_controller(tmp_path, errors=50)
    controller.tick()
    _version_dir(base, 2)
    for _ in range(2):  # t=1 start, t=2 ab-start
        clock[0] += 1.0
        controller.tick()
    old = read_ab(str(base))  # as written before the guardrail: no `failures`
    del old["failures"]
    write_ab(str(base), old)
    clock[0] += 1.0
    controller.tick()  # t=3: the first step
    assert status_lines(str(base))[1] == ("canary 2 at 50% (A/B arm B, until 1970-01-01T00:00:07+00:00, 1 failed "
                                          "guardrail steps in a row)")
    for _ in range(5):
        clock[0] += 1.0
        controller.tick()

    detail = "canary error rate 0.5000 (limit 0.0100)"
    reason = f"A/B guardrail: 2 failed steps in a row: {detail}"
    fails = _decisions(base, "ab-fail")
    assert [(e["time"], e["failures"], e["reason"]) for e in fails] == [
        ("1970-01-01T00:00:03+00:00", 1, f"A/B guardrail: {detail}"),
        ("1970-01-01T00:00:04+00:00", 2, f"A/B guardrail: {detail}")]
    window = {"stable": {"requests": 100, "errors": 0, "error_rate": 0.0, "p99_ms": 0.99},
              "canary": {"requests": 100, "errors": 50, "error_rate": 0.5, "p99_ms": 0.99}}
    assert fails[-1]["figures"] == window
    checks = [{"name": "error_rate", "ok": False, "detail": detail},
              {"name": "p99", "ok": True, "detail": "canary p99 0.99 ms (limit 9.90 ms: stable 0.99 ms x 10)"}]
    assert fails[-1]["checks"] == checks
    (rollback,) = _decisions(base, "rollback")
    assert (rollback["time"], rollback["version"], rollback["reason"]) == (
        "1970-01-01T00:00:04+00:00", 2, f"version 2 rejected: {reason}")
    assert (rollback["stable"], rollback["canary"], rollback["percent"], rollback["checks"]) == (1, None, 0, checks)
    assert (rollback["figures"]["canary"]["requests"], rollback["figures"]["canary"]["errors"]) == (200, 100)
    assert not _decisions(base, "ab-end")
    # The record, as after `reject`: no canary, version 2 rejected and never started again; the canary track's
    # weight back to 0.
    record = read_record(str(base))
    assert (record.stable, record.canary, record.canary_percent, record.failures) == (1, None, 0, 0)
    assert record.rejected == {"2": {"time": "1970-01-01T00:00:04+00:00", "reason": reason, "step": 1}}
    assert [e["decision"] for e in _audit(base)] == ["adopt", "start", "ab-start", "ab-fail", "ab-fail", "rollback"]
    service = yaml.safe_load((out / "virtualservice.yaml").read_text())
    assert next(r for r in service["spec"]["http"] if r["name"] == "grpc")["route"][1]["weight"] == 0

    state = read_ab(str(base))
    assert (state["ended_at"], state["decision"], state["decided_at"], state["failures"]) == (4.0, "reject", 4.0, 2)
    assert state["guardrail"] == {"time": "1970-01-01T00:00:04+00:00", "reason": reason, "window": window,
                                  "checks": checks}
    assert f"rejected 2 at 1970-01-01T00:00:04+00:00: {reason}" in status_lines(str(base))
    report = ab_report(str(base), None, None)
    assert (report["decision"], report["ended"], report["guardrail"]) == (
        "reject", "1970-01-01T00:00:04+00:00", state["guardrail"])
    assert ab_report_lines(report)[:2] == [
        "A/B: stable 1 (A) against 2 (B) at 50% since 1970-01-01T00:00:02+00:00, ended 1970-01-01T00:00:04+00:00, "
        "decided: reject", f"  rolled back by the guardrail at 1970-01-01T00:00:04+00:00: {reason}"]
    with pytest.raises(ValueError, match="no A/B test to decide"):
        controller.decide("promote")


def test_ab_guardrail_judges_only_steps_with_min_requests(tmp_path):
    """Steps where arm B served fewer than min_requests are not judged: the same failing arm B holds its split to
    the end."""
    from serving.rollout import read_ab

    base, _, clock, controller = _ab_controller(tmp_path, errors=50, istio=False,
                                                overlay=AB.replace("min_requests: 10", "min_requests: 101"))
    controller.tick()
    _version_dir(base, 2)
    for _ in range(9):
        clock[0] += 1.0
        controller.tick()
    assert [e["decision"] for e in _audit(base)] == ["adopt", "start", "ab-start", "ab-end"]
    (end,) = _decisions(base, "ab-end")
    assert (end["figures"]["canary"]["requests"], end["figures"]["canary"]["error_rate"]) == (500, 0.5)
    state = read_ab(str(base))
    assert (state["ended_at"], state["failures"], "guardrail" in state) == (7.0, 0, False)
    record = read_record(str(base))
    assert (record.canary, record.canary_percent, record.rejected) == (2, 0, {})


def test_ab_commands_refuse_what_they_cannot_decide(tmp_path, monkeypatch, capsys):
    from serving.rollout import main

    base = tmp_path / "models"
    _version_dir(base, 1)
    (tmp_path / "canary.yaml").write_text(CANARY)
    monkeypatch.setenv("TFX_E2E_CONFIG", str(tmp_path / "canary.yaml"))
    assert main(["promote", "--model_base_path", str(base)]) == 2
    assert "promote decides an A/B test (rollout.strategy: ab)" in capsys.readouterr().err
    (tmp_path / "ab.yaml").write_text(AB)
    monkeypatch.setenv("TFX_E2E_CONFIG", str(tmp_path / "ab.yaml"))
    write_record(str(base), RolloutRecord(stable=1))
    assert main(["reject", "--model_base_path", str(base)]) == 1
    assert "no A/B test to decide (no version beside stable 1)" in capsys.readouterr().err
    assert main(["ab-report", "--model_base_path", str(base)]) == 1
    assert "no A/B test (rollout-ab.json)" in capsys.readouterr().err


def test_ab_report_joins_a_labelled_span_to_each_arms_requests(tmp_path):
    """Per arm, the logged examples of the period, their scores, and accuracy and AUC on the labelled span's rows
    each arm answered (joined by feature values); requests before the period do not count."""
    import csv

    import numpy as np
    from serving_models import taxi_probabilities
    from sklearn.metrics import roc_auc_score

    from serving.rollout import write_ab
    from serving.rollout_log import RequestLog, ab_report, ab_report_lines, load_schema

    rows, seen = [], set()
    for row in _taxi_rows(1200):  # rows with the same features (tips aside) would make ambiguous labels
        key = tuple(v for k, v in row.items() if k != "tips")
        if key not in seen and row["fare"]:
            seen.add(key)
            rows.append(row)
    a_rows, b_rows = rows[:400], rows[400:800]
    logs = tmp_path / "logs"
    logs.mkdir()
    started = 1_800_000_000.6  # arm B's requests are logged in the start's second (log times are whole seconds)
    _write_log(logs / "prediction_log-1-000000.tfrecord",
               _prediction_logs(rows[800:], 1, when=int(started) - 5000)  # before the A/B: not counted
               + _prediction_logs(a_rows, 1, when=int(started) + 10) + _prediction_logs(b_rows, 2, bias=-0.5,
                                                                                   when=int(started)))
    span = tmp_path / "span-9"
    span.mkdir()
    with open(span / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(a_rows[:300] + b_rows[:300])  # the labelled span covers part of the period's requests
    base = tmp_path / "models"
    base.mkdir()
    zero = {"requests": 0, "errors": 0, "buckets": []}
    write_ab(str(base), {"stable": 1, "canary": 2, "percent": 50, "started_at": started, "until": started + 3600,
                         "ended_at": started + 3600, "updated_at": started + 3600,
                         "figures": {"stable": zero, "canary": zero}})
    schema = load_schema(str(REPO_ROOT / "schema" / "schema.pbtxt"))
    report = ab_report(str(base), RequestLog(str(logs), schema), str(span))

    def expected(arm_rows, bias):
        labels = np.array([float(r["tips"]) > 0.2 * float(r["fare"]) for r in arm_rows])
        scores = taxi_probabilities(arm_rows, bias).reshape(-1)
        return {"examples": len(arm_rows), "accuracy": round(float(np.mean((scores >= 0.5) == labels)), 4),
                "auc": round(float(roc_auc_score(labels, scores)), 4)}

    arms = report["log"]["arms"]
    assert arms["stable"]["labelled"] == expected(a_rows[:300], 0.0)
    assert arms["canary"]["labelled"] == expected(b_rows[:300], -0.5)
    assert (arms["stable"]["logged_examples"], arms["canary"]["logged_examples"]) == (400, 400)
    assert sum(arms["canary"]["score_histogram"]) == 400
    assert arms["canary"]["score_mean"] < arms["stable"]["score_mean"]
    assert report["log"]["labelled"] == {"path": str(span), "rows": 600, "ambiguous_rows": 0}
    assert 0 < report["log"]["score_js"] <= 1
    lines = ab_report_lines(report)
    assert lines[0].startswith("A/B: stable 1 (A) against 2 (B) at 50% since ")
    assert f"labelled 300: accuracy {arms['canary']['labelled']['accuracy']}" in lines[2]


def test_vertex_endpoint_holds_the_ab_split(tmp_path):
    """An A/B test on a Vertex endpoint: both arms deployed, 50/50, then (period over) everything to arm A with arm B
    still deployed, then arm B promoted; every call bound to the SDK's signatures."""
    from serving.vertex import VertexTraffic

    fake = FakeVertex()
    traffic = VertexTraffic(_config(tmp_path, VERTEX.replace(CANARY, AB)), fake)
    for record in (RolloutRecord(stable=1), RolloutRecord(stable=1, canary=2, canary_percent=50),
                   RolloutRecord(stable=1, canary=2, canary_percent=0),
                   RolloutRecord(stable=2, retiring=1, retire_at=5.0)):
        traffic.apply(record)
    fake.bind_to_the_real_sdk()
    assert [k["traffic_split"] for name, k in fake.calls if name == "update"] == [
        {"100": 100}, {"100": 50, "101": 50}, {"100": 100, "101": 0}, {"101": 100, "100": 0}]
    assert not [k for name, k in fake.calls if name == "undeploy"]


def test_local_server_holds_the_ab_split_until_promoted(tmp_path):
    """The local server routes an A/B test by the record: half of the unnamed requests to each arm during the
    period, all to arm A after it, all to arm B once `python -m serving.rollout promote` has run."""
    from serving.rollout_log import RequestLog, ab_report, load_schema

    server = Server(tmp_path, sections=AB.replace("ab_seconds: 5", "ab_seconds: 3"))
    base = tmp_path / "models" / MODEL
    controller = subprocess.Popen(
        [sys.executable, "-m", "serving.rollout", "run", "--url", server.url, "--model_base_path", str(base),
         "--poll_seconds", "0.2"], cwd=REPO_ROOT, env=server.env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "controller.log", "w"))
    try:
        server.wait_for(lambda: _decisions(base, "adopt", stable=1), "the controller to adopt version 1")
        write_taxi_model(str(tmp_path / "b"), bias=0.5)
        b = push_atomically(str(tmp_path / "b"), str(base))
        server.wait_for(lambda: _decisions(base, "ab-start", canary=b), "the A/B test to start")
        server.wait_for(lambda: read_record(str(base)).canary_percent == 50, "the split")
        time.sleep(0.5)  # the server re-reads the record every 0.3 s
        split = [_version(server) for _ in range(40)]
        ended = _decisions(base, "ab-end")
        assert ended or split.count(b) == 20, split
        server.wait_for(lambda: _decisions(base, "ab-end"), "the end of the A/B period", 30)
        time.sleep(0.5)
        assert {_version(server) for _ in range(10)} == {1}
        assert {_version(server, label="canary") for _ in range(3)} == {b}  # arm B is still loaded
        promoted = subprocess.run([sys.executable, "-m", "serving.rollout", "promote", "--url", server.url,
                                   "--model_base_path", str(base)], cwd=REPO_ROOT, env=server.env,
                                  capture_output=True, text=True)
        assert promoted.returncode == 0 and promoted.stdout == f"version {b} promoted to stable\n", promoted.stderr
        server.wait_for(lambda: {_version(server) for _ in range(4)} == {b}, "arm B serving every request")
        report = ab_report(str(base), RequestLog(str(tmp_path / "request_logs" / MODEL),
                                                 load_schema(str(REPO_ROOT / "schema" / "schema.pbtxt"))), None)
    finally:
        controller.terminate()
        assert controller.wait(timeout=30) == 0
        server.stop()
    assert report["decision"] == "promote" and report["arms"]["canary"]["version"] == b
    assert report["arms"]["canary"]["requests"] >= 20 and report["arms"]["canary"]["errors"] == 0
    logged = report["log"]["arms"]
    assert logged["canary"]["logged_examples"] >= 20 and logged["stable"]["logged_examples"] >= 20
    assert logged["canary"]["score_mean"] > logged["stable"]["score_mean"]  # bias 0.5

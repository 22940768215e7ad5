"""The canary controller: moves a newly pushed version through the configured steps, analyses each step from the
server's Prometheus metrics and request log, and promotes it to `stable` or rolls it back (rollout.strategy: canary);
or holds a fixed split between stable and it for a period and leaves the decision to a command, rolling it back
only when it breaks production (rollout.strategy: ab, a guardrail on errors and latency).

    python -m serving.rollout run              (make rollout) the control loop
    python -m serving.rollout status           the rollout record and the last decisions
    python -m serving.rollout ab-report [--labelled SPAN]   an A/B test's per-arm figures (serving/rollout_log.py)
    python -m serving.rollout promote|reject   decide an A/B test: arm B becomes stable, or is rejected
    python -m serving.rollout run --url http://STABLE:8501 --url http://CANARY:8501 --istio DIR [--kubectl kubectl]
                                               TF Serving on Kubernetes: two tracks behind Istio (serving/deploy.py)
    python -m serving.rollout run --vertex     a Vertex AI endpoint's traffic split, Cloud Monitoring's figures
                                               (serving/vertex.py)

A separate process rather than a loop inside the server: it reads only what every server exposes (TF Serving's
metrics endpoint and version status) and writes only the rollout record (serving/registry.py) that the server
routes by, so the same analysis drives the local server, TF Serving on Kubernetes (Istio weights) and Vertex AI
endpoints (traffic split), and it can be stopped, restarted or upgraded without touching the serving process.
State lives in the record, so a restarted controller resumes the current step from its start.

On Kubernetes the record is also applied to the cluster (IstioTraffic): each track's ConfigMap names its version
and the VirtualService carries the canary's weight; the figures are the sum of every --url scraped (one per track:
each track serves its own version, so per-version figures add up without overlap).

Every decision is appended, with the figures it was taken on, to <model_base_path>/rollout-audit.jsonl.
"""
import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Config, RolloutConfig
from pipeline.files import write_atomic
from serving.metrics import PROMETHEUS_PATH, REQUEST_COUNT, REQUEST_LATENCY
from serving.registry import AB_STATE, AUDIT_LOG, RolloutRecord, read_record, write_record
from serving.source import list_versions

log = logging.getLogger("serving.rollout")

# Requests that run the model; status and metadata calls say nothing about a version's predictions.
INFERENCE_APIS = frozenset({"predict", "classify", "regress", "multi_inference"})


@dataclass(frozen=True)
class Figures:
    """One arm's requests in a window: counts, errors (any status but OK) and the latency histogram."""
    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound in microseconds, cumulative count)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_ms(self) -> float | None:
        return quantile(0.99, self.buckets) / 1000 if self.requests else None

    def __add__(self, other: "Figures") -> "Figures":
        bounds = dict(self.buckets)
        for bound, count in other.buckets:
            bounds[bound] = bounds.get(bound, 0.0) + count
        return Figures(self.requests + other.requests, self.errors + other.errors, tuple(sorted(bounds.items())))

    def summary(self) -> dict:
        p99 = self.p99_ms()
        return {"requests": int(self.requests), "errors": int(self.errors), "error_rate": round(self.error_rate, 4),
                "p99_ms": round(p99, 2) if p99 is not None else None}


def quantile(q: float, buckets) -> float:
    """Prometheus' histogram_quantile: linear interpolation within the bucket holding the q-th request; the highest
    finite bound when it falls in +Inf."""
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / (cumulative - below) if cumulative > below else 1.0)
        lower, below = bound, cumulative
    return lower


def parse_metrics(text: str, model: str) -> dict[str, Figures]:
    """Per version of `model`, the cumulative inference figures the metrics endpoint reports."""
    counts: dict[str, list[float]] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUEST_COUNT, REQUEST_LATENCY):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model_name") != model or labels.get("API") not in INFERENCE_APIS:
                continue
            version = labels.get("model_version", "")
            if family.name == REQUEST_COUNT:
                entry = counts.setdefault(version, [0.0, 0.0])
                entry[0] += sample.value
                if labels.get("status") != "OK":
                    entry[1] += sample.value
            elif sample.name.endswith("_bucket"):
                bound = float(labels["le"])
                per_version = buckets.setdefault(version, {})
                per_version[bound] = per_version.get(bound, 0.0) + sample.value
    return {version: Figures(requests, errors, tuple(sorted(buckets.get(version, {}).items())))
            for version, (requests, errors) in counts.items()}


def window(end: Figures, start: Figures | None) -> Figures:
    """What happened between two scrapes; a counter that went down (the server restarted) counts from zero."""
    if start is None or end.requests < start.requests:
        return end
    before = dict(start.buckets)
    return Figures(end.requests - start.requests, end.errors - start.errors,
                   tuple((bound, count - before.get(bound, 0.0)) for bound, count in end.buckets))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def analyse(config: RolloutConfig, available: bool, canary: Figures, stable: Figures | None,
            stable_required: bool) -> list[Check]:
    """The checks of one step. `stable` is stable's figures in the same window, or at a 100 % step (where stable
    gets no unnamed traffic, stable_required False) those of the previous step (None after a controller restart:
    the canary is then held to the absolute limits only)."""
    checks = [Check("available", available, "canary AVAILABLE" if available else "canary not AVAILABLE")]
    arms = [("canary", canary)] + ([("stable", stable)] if stable_required else [])
    for arm, figures in arms:
        requests = int(figures.requests) if figures else 0
        checks.append(Check(f"{arm}_requests", requests >= config.min_requests,
                            f"{arm} served {requests} requests (minimum {config.min_requests})"))
    return checks + compare_arms(config, canary, stable)


def compare_arms(config: RolloutConfig, canary: Figures, stable: Figures | None) -> list[Check]:
    """The error-rate and p99 checks of the canary's (or A/B arm B's) window against stable's (None: the absolute
    limits only): a step's analysis and the A/B guardrail."""
    checks = []
    error_limit = config.max_error_rate
    if stable is not None and stable.requests:
        error_limit = max(config.max_error_rate, stable.error_rate + config.error_rate_margin)
    checks.append(Check("error_rate", canary.error_rate <= error_limit,
                        f"canary error rate {canary.error_rate:.4f} (limit {error_limit:.4f})"))
    p99 = canary.p99_ms()
    if p99 is None:
        checks.append(Check("p99", False, "canary p99: no requests"))
    else:
        limit, why = config.p99_budget_ms, f"budget {config.p99_budget_ms:g} ms"
        stable_p99 = stable.p99_ms() if stable is not None else None
        if stable_p99 is not None and stable_p99 * config.p99_factor < limit:
            limit, why = stable_p99 * config.p99_factor, f"stable {stable_p99:.2f} ms x {config.p99_factor:g}"
        checks.append(Check("p99", p99 <= limit, f"canary p99 {p99:.2f} ms (limit {limit:.2f} ms: {why})"))
    return checks


class Servers:
    """What the controller asks the servers (one, or one per Kubernetes track): their metrics, summed per version,
    and whether a version is AVAILABLE on any of them, over TF Serving's REST API."""

    def __init__(self, urls: list[str], model: str, timeout: float = 10.0):
        self.urls, self.model, self.timeout = [u.rstrip("/") for u in urls], model, timeout

    def figures(self) -> dict[str, Figures]:
        total: dict[str, Figures] = {}
        for url in self.urls:
            with urllib.request.urlopen(url + PROMETHEUS_PATH, timeout=self.timeout) as response:
                for version, figures in parse_metrics(response.read().decode(), self.model).items():
                    total[version] = total.get(version, Figures()) + figures
        return total

    def available(self, version: int) -> bool:
        return any(self._available(url, version) for url in self.urls)

    def _available(self, url: str, version: int) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/v1/models/{self.model}/versions/{version}",
                                        timeout=self.timeout) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(s.get("state") == "AVAILABLE" for s in body.get("model_version_status", []))


class IstioTraffic:
    """Applies a rollout record to TF Serving on Kubernetes (the files serving/deploy.py renders for
    rollout.strategy: canary): the stable track's ConfigMap names the stable version, the canary track's the canary
    (stable's when there is none), and the VirtualService gives the canary its percent. Written to `out`, then
    `<kubectl> apply -f` on each when a kubectl command is given."""

    def __init__(self, config: Config, out: Path, kubectl: str = ""):
        self.config, self.out, self.kubectl = config, out, kubectl

    def apply(self, record: RolloutRecord) -> None:
        from serving import deploy

        labels = {"stable": record.stable, "canary": record.canary if record.canary is not None else record.stable}
        config = dataclasses.replace(self.config, serving=dataclasses.replace(self.config.serving, labels=labels))
        shared = {"batching.config": deploy.render_batching_config(config),
                  "monitoring.config": deploy.render_monitoring_config(config)}
        files = {f"configmap{'-canary' if track == 'canary' else ''}.yaml": deploy.render_configmap(
            config, {**shared, "models.config": deploy.render_track_models_config(config, track)}, track)
            for track in deploy.TRACKS}
        files["virtualservice.yaml"] = deploy.render_virtual_service(config, record.canary_percent)
        for name, text in files.items():
            write_atomic(self.out / name, text)
        if self.kubectl:
            for name in files:
                subprocess.run([self.kubectl, "apply", "-f", str(self.out / name)], check=True, capture_output=True,
                               text=True)


class Controller:
    """One model's rollout. tick() takes at most one decision; run() ticks until stopped."""

    def __init__(self, config: RolloutConfig, base_path: str, server, clock=time.time, traffic=None, requests=None):
        """server: Servers or serving.vertex.VertexMetrics; traffic: IstioTraffic, VertexTraffic or None; requests:
        serving.rollout_log.RequestLog (the score and anomaly checks) or None (the server logs no requests)."""
        self.config, self.base_path, self.server, self.clock = config, base_path, server, clock
        self.traffic = traffic  # None: the local server routes by the record itself
        self.requests = requests
        self._waiting_since: float | None = None   # the canary was started, not yet AVAILABLE
        self._step_started: float | None = None
        self._start: dict[str, Figures] = {}       # the scrape the current step's window starts from
        self._previous_stable: Figures | None = None
        self._previous_stable_log = None           # stable's logged examples in the previous step (ArmLog)
        self._ab_last: dict[str, Figures] | None = None  # A/B: the scrape the figures were last added up to
        self._ab_updated = 0.0

    # --- the record and the audit log --------------------------------------------------------------------------
    def _write(self, record: RolloutRecord) -> RolloutRecord:
        write_record(self.base_path, record)
        if self.traffic is not None:
            self.traffic.apply(record)
        return record

    def _audit(self, record: RolloutRecord, decision: str, reason: str, **extra) -> None:
        entry = {"time": datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="seconds"),
                 "model": self.server.model, "decision": decision, "stable": record.stable, "canary": record.canary,
                 "step": record.step + 1, "percent": record.canary_percent, "reason": reason, **extra}
        with open(os.path.join(self.base_path, AUDIT_LOG), "a") as f:
            f.write(json.dumps(entry, sort_keys=False) + "\n")
        log.info("%s: %s (%s)", decision, reason, self.server.model)

    # --- the state machine --------------------------------------------------------------------------------------
    def tick(self) -> None:
        record = read_record(self.base_path)
        complete = list_versions(self.base_path)[0]
        rejected = record.rejected if record else {}
        if record is None or record.stable is None:
            adoptable = [v for v in complete if str(v) not in rejected]
            if adoptable:
                record = self._write(RolloutRecord(stable=max(adoptable), rejected=dict(rejected)))
                self._audit(record, "adopt", f"version {record.stable} serves as stable (no stable before)")
            return
        now = self.clock()
        if record.retiring is not None and now >= record.retire_at:
            old = record.retiring
            record = self._write(replace(record, retiring=None, retire_at=0.0))
            self._audit(record, "retire", f"version {old} unloaded after the grace period")
        if record.canary is None:
            candidates = [v for v in complete if v > record.stable and str(v) not in rejected]
            if candidates:
                record = self._write(replace(record, canary=max(candidates), canary_percent=0, step=0, failures=0))
                self._waiting_since, self._step_started = now, None
                self._audit(record, "start", f"version {record.canary} loads beside stable {record.stable}")
            return
        if self.config.strategy == "ab":
            self._ab_tick(record, now)
            return
        if self._step_started is None:
            self._begin_step(record, now)
            return
        if now - self._step_started >= self.config.step_seconds:
            self._analyse(record, now)

    def _available(self, record: RolloutRecord, now: float) -> bool:
        """Whether the canary is AVAILABLE; rolled back when it has not been for available_timeout_seconds."""
        if not self.server.available(record.canary):
            waiting_since = self._waiting_since if self._waiting_since is not None else now
            self._waiting_since = waiting_since
            if now - waiting_since >= self.config.available_timeout_seconds:
                self._rollback(record, f"not AVAILABLE within {self.config.available_timeout_seconds:g} s")
            return False
        self._waiting_since = None
        return True

    def _begin_step(self, record: RolloutRecord, now: float) -> None:
        if not self._available(record, now):
            return
        percent = self.config.steps[record.step]
        record = self._write(replace(record, canary_percent=percent))
        # The step's clock starts with its window, not with the tick (an analysis before it may have taken a while).
        self._start, self._step_started = self.server.figures(), self.clock()
        if self.requests is not None:
            self.requests.skip()
        self._audit(record, "step", f"canary {record.canary} at {percent}% for {self.config.step_seconds:g} s")

    def _analyse(self, record: RolloutRecord, now: float) -> None:
        end = self.server.figures()
        canary = window(end.get(str(record.canary), Figures()), self._start.get(str(record.canary)))
        stable = window(end.get(str(record.stable), Figures()), self._start.get(str(record.stable)))
        full = record.canary_percent == 100
        baseline = self._previous_stable if full else stable
        checks = analyse(self.config, self.server.available(record.canary), canary, baseline, not full)
        figures = {"canary": canary.summary(), "stable": stable.summary()}
        if full and baseline is not None:
            figures["stable_previous_step"] = baseline.summary()
        if self.requests is not None:
            checks += self._log_checks(record, full, figures)
        details = {"figures": figures, "checks": [asdict(c) for c in checks]}
        failed = [c.detail for c in checks if not c.ok]
        if not full:
            self._previous_stable = stable
        if not failed:
            if record.step + 1 == len(self.config.steps):
                self._promote(record, now, details)
                return
            self._audit(record, "pass", f"step {record.step + 1} of {len(self.config.steps)} "
                        f"({record.canary_percent}%) passed", **details)
            record = self._write(replace(record, step=record.step + 1, failures=0))
            self._step_started = None
            self._begin_step(record, now)
            return
        record = self._write(replace(record, failures=record.failures + 1))
        self._audit(record, "fail", "; ".join(failed), failures=record.failures, **details)
        if record.failures >= self.config.max_failed_analyses:
            self._rollback(record, f"{record.failures} failed analyses in a row: {'; '.join(failed)}")
            return
        self._start, self._step_started = end, self.clock()  # the step runs again on a fresh window

    def _log_checks(self, record: RolloutRecord, full: bool, figures: dict) -> list[Check]:
        """The checks on the step's logged requests: the canary's scores and schema anomalies against stable's (at
        100 %, stable's from the previous step, as for the metrics)."""
        from serving import rollout_log

        arms = self.requests.window()
        stable = self._previous_stable_log if full else arms.get(record.stable)
        if not full:
            self._previous_stable_log = stable
        elif stable is None:  # restarted during the 100 % step: stable's examples of the previous step are gone
            return [Check(name, True, "no stable examples to compare with (the controller restarted at 100 %)")
                    for name in ("score_js", "anomalies")]
        result = rollout_log.analyse(self.config, self.requests.schema, arms.get(record.canary), stable)
        figures["log"] = result.figures
        return [Check(*check) for check in result.checks]

    def _promote(self, record: RolloutRecord, now: float, details: dict) -> None:
        old, new = record.stable, record.canary
        keep = self.config.grace_seconds > 0
        record = self._write(replace(record, stable=new, canary=None, canary_percent=0, step=0, failures=0,
                                     retiring=old if keep else None, retire_at=now + self.config.grace_seconds))
        self._audit(record, "promote", f"version {new} is stable; version {old} "
                    + (f"unloads in {self.config.grace_seconds:g} s" if keep else "unloads now"), **details)
        self._reset()

    def _rollback(self, record: RolloutRecord, reason: str, **details) -> None:
        version = record.canary
        rejected = {**record.rejected, str(version): {
            "time": datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="seconds"),
            "reason": reason, "step": record.step + 1}}
        record = self._write(replace(record, canary=None, canary_percent=0, step=0, failures=0, rejected=rejected))
        self._audit(record, "rollback", f"version {version} rejected: {reason}", version=version, **details)
        self._reset()

    # --- A/B (rollout.strategy: ab) ------------------------------------------------------------------------------
    def _ab_tick(self, record: RolloutRecord, now: float) -> None:
        """Holds ab_percent on the new version (arm B, labelled canary) against stable (arm A) for ab_seconds,
        adding up each arm's figures in rollout-ab.json every step_seconds and checking B's step against A's
        (_ab_guard); then sends every unnamed request back to stable and waits for `promote` or `reject`
        (decide())."""
        state = read_ab(self.base_path)
        if state is None or (state["stable"], state["canary"]) != (record.stable, record.canary):
            if not self._available(record, now):
                return
            percent = self.config.ab_percent
            record = self._write(replace(record, canary_percent=percent))
            self._ab_last, self._ab_updated = self.server.figures(), now
            until = now + self.config.ab_seconds
            write_ab(self.base_path, {"stable": record.stable, "canary": record.canary, "percent": percent,
                                      "started_at": now, "until": until, "ended_at": None, "updated_at": now,
                                      "failures": 0, "figures": {arm: _figures_json(Figures()) for arm in ARMS}})
            self._audit(record, "ab-start", f"A/B: stable {record.stable} (A) {100 - percent}%, version "
                        f"{record.canary} (B) {percent}% until {_iso(until)}")
            return
        if state["ended_at"] is not None:
            return
        if self._ab_last is None:  # a restarted controller: counting resumes from here
            self._ab_last, self._ab_updated = self.server.figures(), now
            return
        ended = now >= state["until"]
        if not ended and now - self._ab_updated < self.config.step_seconds:
            return
        end = self.server.figures()
        arms = {}
        for arm, version in (("stable", record.stable), ("canary", record.canary)):
            arms[arm] = window(end.get(str(version), Figures()), self._ab_last.get(str(version), Figures()))
            state["figures"][arm] = _figures_json(_figures_from_json(state["figures"][arm]) + arms[arm])
        self._ab_last, self._ab_updated, state["updated_at"] = end, now, now
        if self._ab_guard(record, state, arms, now):
            return
        if not ended:
            write_ab(self.base_path, state)
            return
        state["ended_at"] = now
        write_ab(self.base_path, state)
        record = self._write(replace(record, canary_percent=0))
        self._audit(record, "ab-end", f"A/B ended after {self.config.ab_seconds:g} s: every unnamed request to "
                    f"stable {record.stable}; version {record.canary} waits for `promote` or `reject`",
                    figures=ab_summary(state))

    def _ab_guard(self, record: RolloutRecord, state: dict, arms: dict[str, Figures], now: float) -> bool:
        """The guardrail on one A/B step's window: arm B against arm A by the canary's error-rate and p99 rules,
        judged only when B served min_requests (A's figures only when it did too, else the absolute limits);
        max_failed_analyses failed steps in a row roll B back as `reject` does. True when it was rolled back."""
        canary, stable = arms["canary"], arms["stable"]
        if canary.requests < self.config.min_requests:
            return False  # too few to judge: the run of failures neither grows nor ends
        checks = compare_arms(self.config, canary, stable if stable.requests >= self.config.min_requests else None)
        failed = [c.detail for c in checks if not c.ok]
        state["failures"] = state.get("failures", 0) + 1 if failed else 0
        if not failed:
            return False
        details = {"figures": {arm: figures.summary() for arm, figures in arms.items()},
                   "checks": [asdict(c) for c in checks]}
        self._audit(record, "ab-fail", f"A/B guardrail: {'; '.join(failed)}", failures=state["failures"], **details)
        if state["failures"] < self.config.max_failed_analyses:
            return False
        reason = f"A/B guardrail: {state['failures']} failed steps in a row: {'; '.join(failed)}"
        state.update(ended_at=now, decision="reject", decided_at=now,
                     guardrail={"time": _iso(now), "reason": reason, "window": details["figures"],
                                "checks": details["checks"]})
        write_ab(self.base_path, state)
        self._rollback(record, reason, figures=ab_summary(state), checks=details["checks"])
        return True

    def decide(self, decision: str) -> str:
        """`promote` (arm B becomes stable, arm A retires after the grace period) or `reject` (arm B is rolled back
        and recorded as rejected) of the A/B test in the record; the figures so far go to the audit log."""
        record = read_record(self.base_path)
        if record is None or record.canary is None:
            raise ValueError(f"{self.base_path}: no A/B test to decide (no version beside stable "
                             f"{record.stable if record else None})")
        state = read_ab(self.base_path)
        details = {}
        if state is not None and (state["stable"], state["canary"]) == (record.stable, record.canary):
            details["figures"] = ab_summary(state)
            if state["ended_at"] is None:
                details["note"] = f"decided before the end of the A/B period ({_iso(state['until'])})"
            write_ab(self.base_path, {**state, "decision": decision, "decided_at": self.clock()})
        version = record.canary
        if decision == "promote":
            self._promote(record, self.clock(), details)
            return f"version {version} promoted to stable"
        self._rollback(record, "A/B: rejected by command", **details)
        return f"version {version} rejected"

    def _reset(self) -> None:
        self._waiting_since = self._step_started = None
        self._start, self._previous_stable, self._previous_stable_log = {}, None, None
        self._ab_last = None

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        while True:
            try:
                with _Locked(self.base_path):
                    self.tick()
            except (OSError, ValueError, subprocess.CalledProcessError) as e:  # a server, the record or kubectl:
                # say so and try again at the next tick
                log.error("rollout tick failed: %s", e)
            if stop.wait(poll_seconds):
                return


ARMS = ("stable", "canary")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _figures_json(figures: Figures) -> dict:
    return {"requests": figures.requests, "errors": figures.errors,
            "buckets": [["+Inf" if bound == float("inf") else bound, count] for bound, count in figures.buckets]}


def _figures_from_json(data: dict) -> Figures:
    return Figures(data["requests"], data["errors"], tuple((float(bound), count) for bound, count in data["buckets"]))


def read_ab(base_path: str) -> dict | None:
    """The A/B test's state (rollout-ab.json, written by the controller only): arms, period, per-arm figures."""
    try:
        with open(os.path.join(base_path, AB_STATE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_ab(base_path: str, state: dict) -> None:
    write_atomic(os.path.join(base_path, AB_STATE), json.dumps(state, indent=2) + "\n")


def ab_summary(state: dict) -> dict:
    """Per arm: its version, requests, errors, error rate, p50 and p99 over the A/B period so far."""
    summary = {}
    for arm in ARMS:
        figures = _figures_from_json(state["figures"][arm])
        p50 = quantile(0.5, figures.buckets) / 1000 if figures.requests else None
        summary[arm] = {"version": state[arm], **figures.summary(),
                        "p50_ms": round(p50, 2) if p50 is not None else None}
    return summary


def status_lines(base_path: str, last: int = 10) -> list[str]:
    record = read_record(base_path)
    if record is None:
        return [f"{base_path}: no rollout record (the controller has not run)"]
    state = read_ab(base_path)
    ab = state is not None and (state["stable"], state["canary"]) == (record.stable, record.canary)
    if ab:
        progress = (f"ended {_iso(state['ended_at'])}, waiting for promote or reject" if state["ended_at"] else
                    f"until {_iso(state['until'])}")
        if state.get("failures"):
            progress += f", {state['failures']} failed guardrail steps in a row"
        canary = f"{record.canary} at {record.canary_percent}% (A/B arm B, {progress})"
    elif record.canary is not None:
        canary = (f"{record.canary} at {record.canary_percent}% (step {record.step + 1}, {record.failures} failed "
                  "analyses in a row)")
    else:
        canary = "none"
    lines = [f"stable {record.stable}", f"canary {canary}"]
    if record.retiring is not None:
        lines.append(f"retiring {record.retiring} at "
                     f"{datetime.fromtimestamp(record.retire_at, timezone.utc).isoformat(timespec='seconds')}")
    for version, why in sorted(record.rejected.items()):
        lines.append(f"rejected {version} at {why['time']}: {why['reason']}")
    try:
        with open(os.path.join(base_path, AUDIT_LOG)) as f:
            entries = [json.loads(line) for line in f if line.strip()][-last:]
    except FileNotFoundError:
        entries = []
    if entries:
        lines.append(f"last {len(entries)} decisions:")
    for entry in entries:
        figures = entry.get("figures", {})
        shown = "".join(f" | {arm} {f['requests']} req, {f['errors']} err, p99 {f['p99_ms']} ms"
                        for arm, f in figures.items() if arm in ARMS)
        if "score_js" in figures.get("log", {}):
            shown += f" | scores JS {figures['log']['score_js']}"
        lines.append(f"  {entry['time']} {entry['decision']:<8} {entry['reason']}{shown}")
    return lines


def request_log(config: Config, model: str, location: str | None):
    """The request log the score and anomaly checks read: --logs, else the local server's own when it logs
    (serving.request_log.sampling_rate > 0); None: those checks do not run."""
    if location is None:
        if config.serving.request_log.sampling_rate <= 0:
            return None
        root = config.serving.request_log.path or os.path.join(config.output_root, "request_logs")
        location = os.path.join(root, model)
    from serving import rollout_log

    return rollout_log.RequestLog(location, rollout_log.load_schema(config.schema_path),
                                  config.monitoring.batch_size)


class _Locked:
    """<model_base_path>/rollout.lock held around each tick and each command's decision: the controller and a
    `promote`/`reject` never interleave their read-modify-write of the record. Where the file system has no
    flock (some FUSE mounts), each goes unlocked."""

    def __init__(self, base_path: str):
        self.path = os.path.join(base_path, "rollout.lock")

    def __enter__(self):
        import fcntl

        try:
            self.file = open(self.path, "a")
        except FileNotFoundError:  # nothing pushed yet: no record to protect
            self.file = None
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("%s: no lock (%s)", self.path, e)
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "status", "ab-report", "promote", "reject"])
    parser.add_argument("--url", action="append", help="a server's REST API, once per Kubernetes track (default "
                        "http://<serving.host>:<serving.rest_port>)")
    parser.add_argument("--istio", type=Path, help="Kubernetes: write each track's ConfigMap and the VirtualService "
                        "here at every decision")
    parser.add_argument("--kubectl", default="", help="with --istio: apply them with this kubectl")
    parser.add_argument("--vertex", action="store_true", help="roll out on the Vertex AI endpoint <model_name> "
                        "(gcp.project, gcp.region, vertex.machine_type and accelerator)")
    parser.add_argument("--logs", help="PredictionLog files (a folder, local or gs://) for the score and anomaly "
                        "checks and ab-report (default: the local server's request log when it logs)")
    parser.add_argument("--labelled", help="ab-report: a labelled span (CSV file or folder of CSV files) of the "
                        "A/B period: each arm's accuracy and AUC on the requests it answered")
    parser.add_argument("--json", action="store_true", help="ab-report: as JSON")
    parser.add_argument("--model_base_path", help="default: <output_root>/serving/<model_name>")
    parser.add_argument("--model_name", help="default: model_name")
    parser.add_argument("--poll_seconds", type=float, help="default: serving.poll_seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipeline.config import exit_on_config_error, load_config

    with exit_on_config_error("error: "):
        config = load_config(check_data=False)
    base_path = os.path.abspath(args.model_base_path or config.serving_model_dir)
    model = args.model_name or config.model_name
    if args.command == "status":
        print("\n".join(status_lines(base_path)))
        return 0
    if args.command == "ab-report":
        from serving import rollout_log

        try:
            report = rollout_log.ab_report(base_path, request_log(config, model, args.logs), args.labelled)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(report, indent=2) if args.json else "\n".join(rollout_log.ab_report_lines(report)))
        return 0
    if config.rollout.strategy == "immediate":
        print("error: rollout.strategy is immediate: a push serves at once, there is nothing to roll out "
              "(set rollout.strategy: canary or ab)", file=sys.stderr)
        return 2
    if args.command in ("promote", "reject") and config.rollout.strategy != "ab":
        print(f"error: {args.command} decides an A/B test (rollout.strategy: ab); a canary is promoted or rolled "
              "back by its analysis", file=sys.stderr)
        return 2
    if args.kubectl and not args.istio:
        print("error: --kubectl applies the files --istio writes: give --istio DIR", file=sys.stderr)
        return 2
    if args.vertex:
        from serving.vertex import VertexMetrics, VertexTraffic

        traffic = VertexTraffic(config)
        servers = VertexMetrics(traffic)
    else:
        urls = args.url or [f"http://{config.serving.host}:{config.serving.rest_port}"]
        traffic = IstioTraffic(config, args.istio, args.kubectl) if args.istio else None
        servers = Servers(urls, model)
    if args.command in ("promote", "reject"):
        controller = Controller(config.rollout, base_path, servers, traffic=traffic)
        try:
            with _Locked(base_path):
                print(controller.decide(args.command))
        except (OSError, ValueError, subprocess.CalledProcessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    # TFDV's statistics for the request-log checks: loaded before the first decision, not inside one.
    requests = request_log(config, model, args.logs) if config.rollout.strategy == "canary" else None
    controller = Controller(config.rollout, base_path, servers, traffic=traffic, requests=requests)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    controller.run(stop, args.poll_seconds or config.serving.poll_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The request-log half of a rollout's analysis: per version, the score distribution and the schema anomalies of the
examples each arm served, from the PredictionLog files the server writes (serving.request_log), with monitoring/'s
reader and TFDV statistics and comparisons (monitoring/logs.py, monitoring/stats.py, monitoring/compare.py).

A LogCursor reads only the records appended since its last call (byte offsets per file, as the metrics' windows are
the counters' differences between two scrapes): a step's window is what the server logged between the step's start
and its analysis. The server writes records from a background thread, so a request answered just before a scrape may
be logged in the next window. Files pruned by the logger's rotation are forgotten; a record still being written at
the end of a file is read at the next call.
"""
import dataclasses
import os
import struct

from monitoring import compare, logs
from monitoring.stats import SCORE_FEATURE, WindowedStatistics

# TFRecord framing: length (uint64 little-endian), its masked CRC (4), the data, the data's masked CRC (4).
_HEADER, _FOOTER = 12, 4
# One window holds everything read: the cursor already bounds it in time.
_ONE_WINDOW = 1 << 62


class LogCursor:
    """The PredictionLog records appended to a request log folder (local or gs://) since the previous read()."""

    def __init__(self, location: str):
        self.location = location
        self.offsets: dict[str, int] = {}

    def _files(self) -> list[str]:
        return [p for p in logs.list_files(self.location) if os.path.basename(p).endswith(".tfrecord")]

    def _scan(self, path: str, keep: bool) -> list[bytes]:
        import tensorflow as tf

        records, offset = [], self.offsets.get(path, 0)
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                f.seek(offset)
                while True:
                    header = f.read(_HEADER)
                    if len(header) < _HEADER:
                        break
                    (length,) = struct.unpack("<Q", header[:8])
                    data = f.read(length) if keep else None
                    if keep and len(data) < length:
                        break
                    if not keep:
                        f.seek(offset + _HEADER + length)
                    if len(f.read(_FOOTER)) < _FOOTER:
                        break  # still being written: read at the next call
                    offset += _HEADER + length + _FOOTER
                    if keep:
                        records.append(data)
        except tf.errors.NotFoundError:  # pruned by the logger between listing and reading
            self.offsets.pop(path, None)
            return records
        self.offsets[path] = offset
        return records

    def skip(self) -> None:
        """Starts the window here: what is logged so far is not read."""
        paths = self._files()
        self.offsets = {p: self.offsets.get(p, 0) for p in paths}
        for path in paths:
            self._scan(path, keep=False)

    def read(self) -> list[bytes]:
        paths = self._files()
        self.offsets = {p: self.offsets.get(p, 0) for p in paths}
        return [record for path in paths for record in self._scan(path, keep=True)]


@dataclasses.dataclass
class ArmLog:
    """One version's logged examples in a window: TFDV statistics of its features and of its scores."""
    examples: int
    features: object          # DatasetFeatureStatisticsList
    scores: object | None     # DatasetFeatureStatisticsList of the score, None when no response held one

    def score_mean(self) -> float | None:
        if self.scores is None:
            return None
        feature = next(f for f in self.scores.datasets[0].features if f.path.step[-1] == SCORE_FEATURE)
        return feature.num_stats.mean


def summarize(records: list[bytes], schema, batch_size: int = 1000) -> dict[int, ArmLog]:
    """Per model version, the statistics of the examples the records hold (monitoring/'s unbatching: every example
    of every request)."""
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    windows = WindowedStatistics(schema, _ONE_WINDOW, batch_size)
    for raw in records:
        record = prediction_log_pb2.PredictionLog()
        try:
            record.ParseFromString(raw)
            request = logs.unbatch(record, 0.0, schema)
        except (DecodeError, ValueError, IndexError):
            continue  # not a PredictionLog: monitoring reports those; a rollout is judged on the rest
        if request is not None:
            windows.add(request)
    windows.finish()
    return {version: ArmLog(slot.features.examples, slot.features.result(),
                            slot.scores.result() if slot.scores.examples else None)
            for (_, version), slot in windows.slots.items()}


def anomaly_shares(arm: ArmLog, schema) -> dict[tuple[str, str], float]:
    """(feature, TFDV anomaly kind) -> the share of the arm's examples concerned (1.0 where TFDV's statistics
    cannot say: counted as all of them)."""
    findings = compare.drift_and_anomalies(arm.features, None, schema, max_share=1.0)
    return {(f.feature, f.kind): 1.0 if f.share is None else f.share for f in findings if f.check == "anomaly"}


@dataclasses.dataclass(frozen=True)
class LogChecks:
    """The checks' outcomes (name, ok, detail) and the figures they were taken on, for the audit log."""
    checks: list[tuple[str, bool, str]]
    figures: dict


def analyse(rollout, schema, canary: ArmLog | None, stable: ArmLog | None) -> LogChecks:
    """The canary's scores against stable's (Jensen-Shannon divergence of TFDV's histograms, TFDV's skew comparator)
    and its schema anomalies against stable's, each arm with at least rollout.min_requests logged examples."""
    figures = {arm: {"logged_examples": log.examples, "score_mean": _round(log.score_mean())} if log else
               {"logged_examples": 0} for arm, log in (("canary", canary), ("stable", stable))}
    short = [f"{arm} {figures[arm]['logged_examples']} logged examples (minimum {rollout.min_requests})"
             for arm in ("canary", "stable") if figures[arm]["logged_examples"] < rollout.min_requests]
    if short:
        detail = "request log: " + ", ".join(short)
        return LogChecks([("score_js", False, detail), ("anomalies", False, detail)], figures)
    checks = []
    if canary.scores is None or stable.scores is None:
        checks.append(("score_js", False, "request log: no scores logged for the "
                       + " and ".join(a for a, log in (("canary", canary), ("stable", stable)) if log.scores is None)))
    else:
        (finding,) = compare.scores(stable.scores, canary.scores, rollout.max_score_js)
        figures["score_js"] = round(finding.value, 4)
        checks.append(("score_js", finding.value <= rollout.max_score_js,
                       f"canary scores against stable's: Jensen-Shannon {finding.value:.4f} "
                       f"(limit {rollout.max_score_js:g})"))
    canary_shares, stable_shares = anomaly_shares(canary, schema), anomaly_shares(stable, schema)
    rows = [{"feature": feature, "kind": kind, "canary_share": round(share, 4),
             "stable_share": round(stable_shares.get((feature, kind), 0.0), 4)}
            for (feature, kind), share in sorted(canary_shares.items())]
    figures["anomalies"] = rows
    worse = [r for r in rows if r["canary_share"] > r["stable_share"] + rollout.max_anomaly_share_margin]
    if worse:
        detail = "; ".join(f"canary {r['feature']} {r['kind']} in {r['canary_share']:.1%} of examples (stable "
                           f"{r['stable_share']:.1%})" for r in worse)
        checks.append(("anomalies", False, f"{detail} (margin {rollout.max_anomaly_share_margin:.1%})"))
    else:
        checks.append(("anomalies", True, f"canary anomalies within stable's + {rollout.max_anomaly_share_margin:.1%}"
                       f" ({len(rows)} kinds, {len(stable_shares)} in stable's)"))
    return LogChecks(checks, figures)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class RequestLog:
    """The controller's view of the request log: skip() at a step's start, window() at its analysis."""

    def __init__(self, location: str, schema, batch_size: int = 1000):
        self.cursor, self.schema, self.batch_size = LogCursor(location), schema, batch_size

    def skip(self) -> None:
        self.cursor.skip()

    def window(self) -> dict[int, ArmLog]:
        return summarize(self.cursor.read(), self.schema, self.batch_size)


def load_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def _example_key(example) -> tuple:
    """A tf.Example's features and values: how a labelled row is found among the logged requests."""
    key = []
    for name, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        key.append((name, tuple(getattr(feature, kind).value) if kind else ()))
    return tuple(key)


def labelled_rows(path: str, schema) -> tuple[dict[tuple, int], int]:
    """({example key: label}, rows whose key is ambiguous) for a labelled span: a CSV file or a folder of them with
    the raw columns, the label made as preprocessing_fn makes it (tips > BIG_TIP_FRACTION x fare). A key found with
    both labels is left out (counted)."""
    import csv

    import tensorflow as tf

    from modules import features
    from serving.examples import to_example

    files = [path] if not tf.io.gfile.isdir(path) else sorted(
        tf.io.gfile.join(path, n) for n in tf.io.gfile.listdir(path) if n.endswith(".csv"))
    if not files:
        raise ValueError(f"--labelled {path}: no CSV files")
    labels: dict[tuple, int] = {}
    ambiguous: set[tuple] = set()
    for name in files:
        with tf.io.gfile.GFile(name) as f:
            for row in csv.DictReader(f):
                if row.get(features.TIPS_KEY, "") == "" or row.get("fare", "") == "":
                    continue  # no label
                label = int(float(row[features.TIPS_KEY]) > features.BIG_TIP_FRACTION * float(row["fare"]))
                key = _example_key(to_example(row, schema))
                if labels.setdefault(key, label) != label:
                    ambiguous.add(key)
    for key in ambiguous:
        del labels[key]
    return labels, len(ambiguous)


def _score_statistics(scores: list[float]):
    import pyarrow as pa
    import tensorflow_data_validation as tfdv

    from monitoring.stats import StreamingStatistics

    statistics = StreamingStatistics(tfdv.StatsOptions())
    statistics.add(pa.RecordBatch.from_arrays([pa.array([[s] for s in scores], type=pa.large_list(pa.float32()))],
                                              [SCORE_FEATURE]))
    return statistics.result()


def ab_report(base_path: str, requests: RequestLog | None, labelled: str | None, now: float | None = None) -> dict:
    """The A/B test's per-arm figures: requests, errors and latency over the period (the controller's sums), and
    from the request log the arms' score distributions (and their Jensen-Shannon divergence) and, with a labelled
    span, each arm's accuracy and AUC on the requests it answered (the span's rows joined to the logged examples by
    their feature values)."""
    import time

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from serving.rollout import _iso, ab_summary, read_ab

    state = read_ab(base_path)
    if state is None:
        raise ValueError(f"{base_path}: no A/B test (rollout-ab.json): the controller starts one with "
                         "rollout.strategy: ab")
    end = state["ended_at"] or (now if now is not None else time.time())
    report = {"stable": state["stable"], "canary": state["canary"], "percent": state["percent"],
              "started": _iso(state["started_at"]), "until": _iso(state["until"]),
              "ended": _iso(state["ended_at"]) if state["ended_at"] else None, "decision": state.get("decision"),
              "guardrail": state.get("guardrail"), "arms": ab_summary(state), "log": None}
    if requests is None:
        if labelled:
            raise ValueError("--labelled: the labelled rows are joined to the logged requests, and there is no "
                             "request log (serving.request_log.sampling_rate is 0; give --logs)")
        return report
    labels, ambiguous = labelled_rows(labelled, requests.schema) if labelled else (None, 0)
    from tensorflow.core.example import example_pb2

    arms = {state["stable"]: "stable", state["canary"]: "canary"}
    scores = {arm: [] for arm in arms.values()}
    joined = {arm: [] for arm in arms.values()}
    problems, untimed = [], 0
    for request in logs.read(logs.list_files(requests.cursor.location), problems.append, requests.schema):
        arm = arms.get(request.version)
        if arm is None or not request.scores:
            continue
        if request.file_time:
            untimed += len(request.examples)  # no timestamp: counted in, whatever its time
        elif not int(state["started_at"]) <= request.time <= end:  # logged times are whole seconds: the start's counts
            continue
        scores[arm].extend(request.scores)
        if labels is not None:
            for serialized, score in zip(request.examples, request.scores, strict=True):
                label = labels.get(_example_key(example_pb2.Example.FromString(serialized)))
                if label is not None:
                    joined[arm].append((label, score))
    log = {"location": requests.cursor.location, "examples_without_time": untimed,
           "files_skipped": [dataclasses.asdict(p) for p in problems], "arms": {}}
    for arm, values in scores.items():
        histogram = np.histogram(values, bins=10, range=(0.0, 1.0))[0].tolist() if values else []
        entry = {"logged_examples": len(values), "score_mean": round(float(np.mean(values)), 4) if values else None,
                 "score_histogram": histogram}
        if labels is not None:
            pairs = joined[arm]
            y, p = np.array([t for t, _ in pairs]), np.array([s for _, s in pairs])
            entry["labelled"] = {"examples": len(pairs),
                                 "accuracy": round(float(np.mean((p >= 0.5) == y)), 4) if pairs else None,
                                 "auc": round(float(roc_auc_score(y, p)), 4) if len(set(y.tolist())) == 2 else None}
        log["arms"][arm] = entry
    if scores["stable"] and scores["canary"]:
        (finding,) = compare.scores(_score_statistics(scores["stable"]), _score_statistics(scores["canary"]), 1.0)
        log["score_js"] = round(finding.value, 4)
    if labels is not None:
        log["labelled"] = {"path": labelled, "rows": len(labels), "ambiguous_rows": ambiguous}
    report["log"] = log
    return report


def ab_report_lines(report: dict) -> list[str]:
    progress = f"ended {report['ended']}" if report["ended"] else f"running until {report['until']}"
    lines = [f"A/B: stable {report['stable']} (A) against {report['canary']} (B) at {report['percent']}% since "
             f"{report['started']}, {progress}" + (f", decided: {report['decision']}" if report["decision"] else "")]
    if report["guardrail"]:
        lines.append(f"  rolled back by the guardrail at {report['guardrail']['time']}: {report['guardrail']['reason']}")
    log = report["log"] or {"arms": {}}
    for arm in ("stable", "canary"):
        f = report["arms"][arm]
        line = (f"  {'A' if arm == 'stable' else 'B'} {f['version']}: {f['requests']} requests, {f['errors']} errors "
                f"({f['error_rate']:.2%}), p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms")
        logged = log["arms"].get(arm)
        if logged:
            line += f"; {logged['logged_examples']} logged examples, mean score {logged['score_mean']}"
            if "labelled" in logged:
                labelled = logged["labelled"]
                line += (f"; labelled {labelled['examples']}: accuracy {labelled['accuracy']}, AUC "
                         f"{labelled['auc']}")
        lines.append(line)
    if report["log"] is None:
        lines.append("  no request log: no score distribution or labelled figures (serving.request_log or --logs)")
    elif "score_js" in log:
        lines.append(f"  scores B against A: Jensen-Shannon {log['score_js']}")
    return lines

"""make monitor: the request log summarized per time window and model version, compared, reported.

    python -m monitoring.monitor [--logs PATH] [--window-minutes N]

Reads every PredictionLog file at the log location (monitoring.logs, else the local server's request log folder
<output_root>/request_logs/<model>/; a file or a folder, local or gs://), and for each window of
monitoring.window_minutes writes <output_root>/monitoring/<model>/window-<start>.json and .html, and the window's
serving statistics as window-<start>-statistics.pbtxt (the run's statistics report draws them); the newest
window's figures go to <output_root>/monitoring/<model>/monitoring.prom (node_exporter's textfile collector; the
local server's metrics endpoint reads it too, serving/metrics.py).
Exit status: 0 nothing over a threshold, 3 an alert (any window), 1 an error, 2 a configuration error.
With monitoring.on_alert: retrain, an alert starts a pipeline run (runners.local_runner --reason monitoring_alert).
"""
import argparse
import dataclasses
import os
import subprocess
import sys
import time

from pipeline.config import REPO_ROOT, Config, ConfigError, exit_on_config_error, load_config

ALERT_EXIT = 3
RETRAIN_REASON = "monitoring_alert"


def log_location(config: Config) -> str:
    if config.monitoring.logs:
        return config.monitoring.logs
    root = config.serving.request_log.path or os.path.join(config.output_root, "request_logs")
    return os.path.join(root, config.model_name)


def report_directory(config: Config) -> str:
    return os.path.join(config.output_root, "monitoring", config.model_name)


def _as_dicts(findings) -> list[dict]:
    return [dataclasses.asdict(f) for f in findings]


class Monitor:
    def __init__(self, config: Config):
        from google.protobuf import text_format
        from tensorflow_metadata.proto.v0 import schema_pb2

        from monitoring import compare

        self.config = config
        try:
            with open(config.schema_path) as f:
                self.schema = compare.monitoring_schema(text_format.Parse(f.read(), schema_pb2.Schema()),
                                                        config.monitoring.comparators)
        except (OSError, text_format.ParseError) as e:
            raise ConfigError(f"schema_path: cannot read the schema {config.schema_path}: {e}") from None
        self.problems = []
        self._store = None
        self._references: dict[int, object] = {}

    def reference(self, version: int):
        """The version's training statistics and score reference from ML Metadata (None: not found there)."""
        if version not in self._references:
            from monitoring import reference
            from pipeline import metadata

            if self._store is None and metadata.exists(self.config):
                self._store = metadata.open_store(self.config, readonly=True)
            self._references[version] = (reference.load(self._store, self.config.pipeline_name, version)
                                         if self._store is not None else None)
        return self._references[version]

    def summarize(self, paths: list[str]):
        from monitoring import logs
        from monitoring.stats import WindowedStatistics

        windows = WindowedStatistics(self.schema, self.config.monitoring.window_minutes * 60,
                                     self.config.monitoring.batch_size)
        self.file_times = 0
        for request in logs.read(paths, self.problems.append, self.schema):
            windows.add(request)
            self.file_times += request.file_time
        windows.finish()
        return windows

    def compare(self, windows) -> list[tuple[dict, list]]:
        """[(the window's report, its charts)], oldest first."""
        from monitoring import compare, report

        settings = self.config.monitoring
        by_start: dict[int, dict[int, object]] = {}
        for (start, version), slot in sorted(windows.slots.items()):
            by_start.setdefault(start, {})[version] = slot
        results, previous, previous_start = [], None, None
        time_source = ("log_metadata.timestamp_secs" if not self.file_times else
                       f"{self.file_times} requests without log_metadata.timestamp_secs took their file's "
                       "modification time")
        for start, slots in by_start.items():
            stats = {v: s.features.result() for v, s in slots.items()}
            score_stats = {v: s.scores.result() if s.scores.examples else None for v, s in slots.items()}
            first, *rest = slots.values()
            total = stats[next(iter(slots))] if not rest else first.features.merged_with(
                [s.features for s in rest]).result()
            requests = sum(s.requests for s in slots.values())
            compared = requests >= settings.min_requests
            window = {
                "model": self.config.model_name,
                "window": {"start": report.stamp(start), "end": report.stamp(start + windows.window_seconds),
                           "start_seconds": start, "minutes": settings.window_minutes},
                "requests": requests,
                "examples": sum(s.features.examples for s in slots.values()),
                "undecodable": sum(s.undecodable for s in slots.values()),
                "time_source": time_source,
                "versions": {}, "drift": {"previous_window": None, "findings": []}, "anomalies": [],
                "alerts": [], "files_skipped": [dataclasses.asdict(p) for p in self.problems],
            }
            charts = []
            if compared:
                for version, slot in slots.items():
                    ref = self.reference(version)
                    # min_requests holds per comparison: a version's few requests in a busy window are not compared
                    enough = slot.requests >= settings.min_requests
                    skew = (compare.skew(ref.training, stats[version], self.schema)
                            if enough and ref and ref.training else [])
                    scored = (compare.scores(ref.scores, score_stats[version], settings.score_threshold)
                              if enough and ref and ref.scores and score_stats[version] else [])
                    window["versions"][str(version)] = {
                        "requests": slot.requests, "examples": slot.features.examples, "compared": enough,
                        "training_run": ref.run if ref else None,
                        "training_statistics": ref.training_uri if ref else None,
                        "score_reference": ref.evaluation_uri if ref else None,
                        "skew": _as_dicts(skew), "score": _as_dicts(scored)}
                    if ref is None:
                        window["alerts"].append(f"version {version}: not found in ML Metadata (no Pusher pushed it): "
                                                "no skew or score check")
                    for f in skew:
                        if f.alert:
                            window["alerts"].append(f"skew: {f.feature} {f.measure} {f.value:.3f} > {f.threshold:g} "
                                                    f"against version {version}'s training data")
                            charts.append((f"skew: {f.feature} (version {version})", report.chart(
                                f.feature, [(f"serving, version {version}", stats[version]),
                                            ("training", ref.training)])))
                    for f in scored:
                        if f.alert:
                            window["alerts"].append(f"score: {f.measure} {f.value:.3f} > {f.threshold:g} against "
                                                    f"version {version}'s scores on its eval split")
                            charts.append((f"scores (version {version})", report.chart(
                                f.feature, [("serving", score_stats[version]), ("evaluation (eval split)",
                                                                                ref.scores)])))
                findings = compare.drift_and_anomalies(total, previous, self.schema, settings.max_anomaly_share)
                window["drift"] = {"previous_window": report.stamp(previous_start) if previous is not None else None,
                                   "findings": _as_dicts(f for f in findings if f.check == "drift")}
                window["anomalies"] = _as_dicts(f for f in findings if f.check == "anomaly")
                training = next((r.training for v in slots for r in [self.reference(v)] if r and r.training), None)
                for f in findings:
                    if f.alert and f.check == "drift":
                        window["alerts"].append(f"drift: {f.feature} {f.measure} {f.value:.3f} > {f.threshold:g} "
                                                "against the previous window")
                        charts.append((f"drift: {f.feature}", report.chart(
                            f.feature, [("this window", total), ("previous window", previous)])))
                    elif f.alert:
                        share = f"{f.share:.1%}" if f.share is not None else "an unknown share"
                        window["alerts"].append(f"anomaly: {f.feature} {f.kind} in {share} of requests "
                                                f"({f.description})")
                        charts.append((f"anomaly: {f.feature}", report.chart(
                            f.feature, [("serving", total), ("training", training)])))
                previous, previous_start = total, start
            window["status"] = ("ALERT" if window["alerts"] else "OK") if compared else "TOO_FEW_REQUESTS"
            results.append((window, [(title, svg) for title, svg in charts if svg], total))
        return results


def _print_window(window: dict, paths: tuple[str, str]) -> None:
    versions = ", ".join(f"version {v}: {info['requests']}" for v, info in window["versions"].items())
    print(f"{window['window']['start']} +{window['window']['minutes']} min  {window['requests']:>7} requests"
          f"{f' ({versions})' if versions else ''}  {window['status']}")
    for alert in window["alerts"]:
        print(f"    {alert}")
    print(f"    report: {paths[1]}")


def retrain() -> int:
    command = [sys.executable, "-m", "runners.local_runner", "--reason", RETRAIN_REASON]
    print(f"monitoring.on_alert: retrain: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command, cwd=REPO_ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", help="PredictionLog files: a file or a folder, local or gs:// (default: "
                        "monitoring.logs, else the local server's request log folder)")
    parser.add_argument("--window-minutes", type=int, help="the window's length (default monitoring.window_minutes)")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        config = load_config(check_data=False)
        if args.window_minutes is not None:
            if args.window_minutes < 1:
                raise ConfigError(f"--window-minutes: must be at least 1, got {args.window_minutes}")
            config = dataclasses.replace(config, monitoring=dataclasses.replace(
                config.monitoring, window_minutes=args.window_minutes))
        monitor = Monitor(config)
    started = time.monotonic()
    from monitoring import logs, report

    location = args.logs or log_location(config)
    paths = logs.list_files(location)
    if not paths:
        print(f"error: no request log files at {location} (serving.request_log.sampling_rate > 0 writes them)",
              file=sys.stderr)
        return 1
    windows = monitor.summarize(paths)
    for problem in monitor.problems:
        print(f"skipped: {problem.path}: {problem.error} ({problem.records_read} records read before)",
              file=sys.stderr)
    results = monitor.compare(windows)
    if not results:
        print(f"error: no requests in {len(paths)} file(s) at {location}", file=sys.stderr)
        return 1
    directory = report_directory(config)
    for window, charts, statistics in results:
        _print_window(window, report.write_window(directory, window, charts, statistics))
    gauges = report.write_gauges(os.path.join(directory, "monitoring.prom"), config.model_name, results[-1][0])
    alerts = sum(w["status"] == "ALERT" for w, _, _ in results)
    print(f"{sum(w['requests'] for w, _, _ in results)} requests in {len(results)} window(s) from {len(paths)} file(s), "
          f"{len(monitor.problems)} file problem(s), {time.monotonic() - started:.1f} s; gauges: {gauges}")
    if not alerts:
        print("Result: OK")
        return 0
    print(f"Result: ALERT ({alerts} window(s))")
    if config.monitoring.on_alert == "retrain":
        print(f"retraining run exited {retrain()}")
    return ALERT_EXIT


if __name__ == "__main__":
    sys.exit(main())

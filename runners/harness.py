"""What every runner does around its run(): load the configuration, show progress, summarise from ML Metadata.

A runner picks its orchestrator and calls run() once; the exit status is 0 only when
the pipeline completed. TensorFlow and TFX are imported only once a run is needed:
on this kind of machine they take ~15 s to import, longer than an unchanged re-run
takes to detect.
"""
import argparse
import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from pipeline import metadata
from pipeline.config import (
    ENV_ALWAYS_RUN,
    ENV_DATE,
    ENV_RUN_REASON,
    ENV_SPAN,
    REPO_ROOT,
    Config,
    ConfigError,
    exit_on_config_error,
    load_config_or_exit,
    resolve_span,
)
from pipeline.files import write_atomic
from pipeline.fingerprint import files_digest


class _Progress(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished' log lines into progress lines."""

    def __init__(self, node_ids):
        super().__init__(logging.INFO)
        self.node_ids = list(node_ids)
        self.started = {}

    def emit(self, record):
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            print(f"  ! {message.splitlines()[0]}", file=sys.stderr, flush=True)
            return
        for state in ("running", "finished"):
            suffix = f" is {state}."
            if message.startswith("Component ") and message.endswith(suffix):
                node = message[len("Component "):-len(suffix)]
                position = f"[{self.node_ids.index(node) + 1}/{len(self.node_ids)}]" if node in self.node_ids else ""
                if state == "running":
                    self.started[node] = time.monotonic()
                    print(f"▶ {position} {node} ...", flush=True)
                else:
                    elapsed = time.monotonic() - self.started.get(node, time.monotonic())
                    print(f"✓ {position} {node} ({elapsed:.1f} s)", flush=True)


def inputs_fingerprint(config: Config) -> str | None:
    """Everything a run depends on: configuration, data, schema, code, locked dependencies.
    None when the data is not on this machine (then there is no shortcut)."""
    if "://" in config.data_root:
        return None
    code = [*(p for package in ("modules", "pipeline", "runners", "reports")  # the summary is replayed: its code too
              for p in glob.glob(str(REPO_ROOT / package / "*.py"))),
            str(REPO_ROOT / "pipeline" / "config.yaml"), str(REPO_ROOT / "requirements" / "lock.txt")]
    data = [str(p) for p in spans_read_files(config)]
    files = [Path(p) for p in code + data + [config.schema_path] if os.path.exists(p)]
    settings = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()
    return f"{files_digest(files, root=Path('/'))}-{settings}"


def spans_read_files(config: Config) -> list[str]:
    """The data files a run reads, exactly those CsvExampleGen's glob reads (pipeline/spans.py
    example_gen_files): every file of a flat root (new.CSV, part-00001, .hidden too), else the *.csv files of the
    spans it reads (the span and, with continuous.window_spans > 1, the window's older spans), with each span's
    _SUCCESS marker (a span re-published is a new input)."""
    from pipeline import spans
    from pipeline.components import window_spans

    found = spans.discover(config.data_root, config.continuous.settle_seconds)
    if not found or not found[0].name:
        return spans.example_gen_files(config.data_root, spans.FLAT_FILES)
    read = spans.select(found, config.span, window_spans(config))  # the rolling window: its older spans too
    return sorted(f for s in read for f in [*spans.example_gen_files(s.path, spans.SPAN_FILES),
                                            os.path.join(s.path, spans.SUCCESS_MARKER)] if os.path.exists(f))


def _record_path(config: Config) -> str:
    return os.path.join(config.output_root, "runs", f"{config.pipeline_name}.last.json")


def _unchanged_since_last_run(config: Config, fingerprint: str | None) -> dict | None:
    try:
        with open(_record_path(config)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    served = record.get("served_path")
    if (fingerprint is None or record.get("fingerprint") != fingerprint or not metadata.exists(config)
            or (served and not os.path.isdir(served))):
        return None
    return record


def _write_record(config: Config, fingerprint: str, summary_text: str, served_path: str | None) -> None:
    write_atomic(_record_path(config), json.dumps({
        "fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "served_path": served_path,
        "summary": summary_text}, indent=1))


_TFX_CLI_PATCHER = "tfx.tools.cli.handler.dag_runner_patcher"


def load_or_exit(default_profile: str, env=None) -> Config:
    """The configuration for $TFX_E2E_PROFILE (else `default_profile`), or exit 2 with the error."""
    env = os.environ if env is None else env
    return load_config_or_exit(env.get("TFX_E2E_PROFILE") or default_profile, env=env)


def run_parameters(argv) -> dict[str, str]:
    """--span N / --date YYYY-MM-DD as the environment variables they stand for (exit 2 on a usage error)."""
    parser = argparse.ArgumentParser(description="Runs the pipeline once, on one span of the data root.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--span", help=f"the span to read (span-N/ folder; {ENV_SPAN}); default the newest "
                       "complete span")
    which.add_argument("--date", help=f"the daily span to read (YYYY-MM-DD/ folder; {ENV_DATE})")
    from runners.why import REASONS
    parser.add_argument("--reason", choices=sorted(REASONS), help=f"why this run runs, recorded in ML Metadata "
                        f"and the summary ({ENV_RUN_REASON}); default manual")
    args = parser.parse_args(list(argv))
    return {k: v for k, v in ((ENV_SPAN, args.span), (ENV_DATE, args.date), (ENV_RUN_REASON, args.reason))
            if v is not None}


def run(make_runner, default_profile: str, argv=(), services=None) -> None:
    """Runs the pipeline with the runner `make_runner()` returns, under the chosen profile; exits with its status.
    `argv`: the command line's arguments (--span N or --date YYYY-MM-DD), which win over the environment.
    `services(config)`: a context manager of what the run needs running (runners/portable_runner.py's job service
    and worker pools), entered only once the pipeline is going to run and left before the run lock is released."""
    if _TFX_CLI_PATCHER in sys.modules:
        # Inside `tfx pipeline create|update|compile`: the CLI runs this file with the runner's run()
        # patched to read the pipeline's name and root; nothing is orchestrated, so no summary or exit.
        from pipeline.pipeline import create_pipeline
        make_runner().run(create_pipeline(load_or_exit(default_profile)))
        return
    parameters = run_parameters(argv)
    env = dict(os.environ)
    if parameters:
        for variable in (ENV_SPAN, ENV_DATE, ENV_RUN_REASON):
            env.pop(variable, None)
        env.update(parameters)
    config = load_or_exit(default_profile, env)
    from pipeline.spans import SpanError
    try:
        config = resolve_span(config)
    except SpanError as e:
        # The data a run needs is not there (yet): nothing runs and nothing is pushed.
        print(f"error: data: {e}; nothing was run or pushed", file=sys.stderr)
        sys.exit(1)
    from runners import recovery, runlock, why
    reason = env.get(ENV_RUN_REASON) or why.DEFAULT_REASON
    with exit_on_config_error():
        if reason not in why.REASONS:
            raise ConfigError(f"{ENV_RUN_REASON}: expected one of {', '.join(why.REASONS)}, got {reason!r}")
    with recovery.stop_when_disk_full(config):  # one line, not a traceback, wherever the disk fills up
        # One run at a time per output root (runners/runlock.py); a second one is refused, not queued.
        try:
            lock = runlock.acquire_run_lock(config, span=config.span, reason=reason, by=" ".join(["run", *argv]))
        except runlock.LockHeld as e:
            print(f"error: another run is in progress on this output root: {e}; nothing was run. Try again when it "
                  "has finished (a killed run releases the lock at once).", file=sys.stderr)
            sys.exit(1)
        with lock, contextlib.ExitStack() as running:
            _run_locked(make_runner, config, reason, lambda: services and running.enter_context(services(config)))


def _run_locked(make_runner, config: Config, reason: str, start_services) -> None:
    from runners import recovery, why

    if metadata.exists(config):
        # A store that cannot be opened (a server down, a corrupt file) fails here, before TensorFlow is imported,
        # with one line naming it; opening also creates a server's database and ML Metadata's tables.
        try:
            metadata.open_store(config)
        except metadata.MetadataError as e:
            print(f"error: {e}; nothing was run or pushed", file=sys.stderr)
            sys.exit(1)
    recovery.recover(config)  # what a run that died left: unfinished executions in ML Metadata, partial outputs, pushes
    fingerprint = inputs_fingerprint(config)
    record = None if os.environ.get(ENV_ALWAYS_RUN) == "1" else _unchanged_since_last_run(config, fingerprint)
    if record:
        print(f"Unchanged since the run that finished {record['finished']}: same data, schema, code, configuration "
              "and dependencies, so every component would be a cache hit and there is nothing new to push.\n"
              f"(Set {ENV_ALWAYS_RUN}=1 to run the orchestrator anyway.) That run's summary:")
        print(record["summary"])
        sys.exit(0)
    start_services()  # before the backfill, whose ExampleGen runs use the same Beam arguments

    from pipeline.gate import gate_error_of
    from pipeline.pipeline import create_pipeline
    from runners.backfill import BackfillError, backfill

    try:
        backfill(config)  # a rolling window's older spans that ML Metadata has not ingested (runners/backfill.py)
    except BackfillError as e:
        print(f"{e}\nThe run stops: nothing is trained or pushed.", file=sys.stderr)
        sys.exit(1)
    from runners.summary import new_run_id, print_summary, run_pipeline

    tfx_pipeline = create_pipeline(config)
    progress = _Progress([c.id for c in tfx_pipeline.components])
    absl_logger = logging.getLogger("absl")
    # Through absl's verbosity, not the logger's level: TensorFlow saving a SavedModel sets the verbosity to FATAL
    # and back to what absl.logging.get_verbosity() said, which would end the progress lines at Transform.
    import absl.logging
    verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.INFO)
    absl_logger.addHandler(progress)
    # TFX logs every step at INFO; the progress handler shows what a person follows.
    absl_logger.propagate = False
    print(f"tfx-e2e: pipeline '{config.pipeline_name}', profile '{config.profile}', data {config.data_root}"
          + (f", span {config.span}" if config.span else ""))
    print(f"         output {config.output_root}")
    started, run_id = time.time(), new_run_id()
    error = None
    try:
        run_pipeline(make_runner(), tfx_pipeline, run_id)
    except Exception as e:  # the summary below reports which component failed and why
        error = e
    finally:
        absl_logger.removeHandler(progress)
        absl_logger.propagate = True
        absl.logging.set_verbosity(verbosity)
    try:
        why.record(config, run_id, reason)
    except Exception as e:  # the run's outcome stands; say what could not be recorded
        print(f"warning: could not record why the run ran in ML Metadata: {e}", file=sys.stderr)
    text = io.StringIO()
    try:
        outcome = print_summary(config, tfx_pipeline, started, error, run_id, out=text)
    except metadata.MetadataError as e:  # the store went away during the run
        print(f"error: {e}; the run's outcome cannot be read"
              + (f" (it failed: {type(error).__name__}: {error})" if error else ""), file=sys.stderr)
        sys.exit(1)
    except Exception:
        # A full disk that stopped the run also stops its reports: name the file the run failed on, not theirs.
        if error is not None:
            recovery.exit_if_disk_full(config, error)
        raise
    summary_lines = text.getvalue().split("\n")
    rules = [i for i, line in enumerate(summary_lines) if line == "=" * 72]
    summary_lines.insert(rules[1] + 1 if len(rules) > 1 else 0, why.why_line(config, reason))
    text = io.StringIO("\n".join(summary_lines))
    print(text.getvalue(), end="")
    if outcome.ok:
        from registry.model_card import write_after_run

        write_after_run(config, run_id)  # the model cards of the versions this run pushed; a failure is a warning
    if outcome.ok and fingerprint:
        _write_record(config, fingerprint, text.getvalue(), outcome.served_path)
    if outcome.ok:
        from pipeline.retention import prune_after_run

        prune_after_run(config)  # retention.keep_versions / keep_runs, under this run's lock
    if error is not None and gate_error_of(error) is None:
        recovery.exit_if_disk_full(config, error)
        # The whole chain: Beam and TFX wrap the error that matters.
        print("\n" + "".join(traceback.format_exception(error)), file=sys.stderr)
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(0 if outcome.ok else 1)


"""`make watch`: runs the pipeline once for each new complete span of the data root, oldest first, one at a time.

    python -m runners.watcher [--once] [--poll-seconds S]                   (make watch)

Every continuous.poll_seconds it lists the data root's span folders (pipeline/spans.py) and decides, per span:
already run (ML Metadata has a completed run that read it), incomplete (no _SUCCESS marker yet), given up
(continuous.max_attempts failed runs), or to run. A span to run runs as a child process,
`python -m runners.local_runner --span N --reason new_span`, so a run that crashes does not take the watcher
with it; the watcher holds the run lock (runners/runlock.py) and hands it to the child, so a manual run is
refused meanwhile. A failed run is retried on the next poll, up to continuous.max_attempts; the failures are
counted in <output_root>/runs/<pipeline>.watch.json (delete a span's entry to try it again). What has run is read
from ML Metadata, not remembered, so a restarted watcher carries on where the last one stopped. One watcher per
output root: a second one is refused (exit status 1). --once makes a single pass (exit status 1 if a run failed).
A decision that stands is logged once, not on every poll. Ctrl-C or `kill PID` stops the watcher.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from pipeline import spans as spans_lib
from pipeline.config import (
    ENV_CONFIG,
    ENV_DATE,
    ENV_PATHS,
    ENV_PROFILE,
    ENV_RUN_LOCK_FD,
    ENV_RUN_REASON,
    ENV_SPAN,
    Config,
    load_config_or_exit,
)
from pipeline.files import write_atomic
from runners import runlock

REASON = "new_span"
EXAMPLE_GEN, LAST_NODE = "ExampleGen", "Pusher"  # a run is complete when its Pusher execution completed
_DONE_STATES = (3, 5)  # metadata_store_pb2.Execution.COMPLETE, CACHED


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} watch: {message}", flush=True)


def state_path(config: Config) -> str:
    return os.path.join(config.output_root, "runs", f"{config.pipeline_name}.watch.json")


def load_state(config: Config) -> dict:
    """{"failures": {"<span>": {"count": n, "last_status": s, "last_finished": "..."}}}"""
    try:
        with open(state_path(config)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    state.setdefault("failures", {})
    return state


def save_state(config: Config, state: dict) -> None:
    write_atomic(state_path(config), json.dumps(state, indent=1, sort_keys=True))


def done_spans(config: Config) -> set[int]:
    """The spans that a completed run read (ExampleGen's Examples `span` property, in a pipeline run whose last
    node completed), from ML Metadata; empty when there is no store yet."""
    from pipeline import metadata

    if not metadata.exists(config):
        return set()
    from ml_metadata.proto import metadata_store_pb2

    store = metadata.open_store(config, readonly=True)

    def node_executions(node: str) -> dict[int, metadata_store_pb2.Execution]:
        context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{node}")
        return {} if context is None else {e.id: e for e in store.get_executions_by_context(context.id)}

    finished = [e for e in node_executions(LAST_NODE).values() if e.last_known_state in _DONE_STATES]
    example_gens = node_executions(EXAMPLE_GEN)
    done = set()
    for execution in finished:
        for run in store.get_contexts_by_execution(execution.id):
            if run.type_id != store.get_context_type("pipeline_run").id:
                continue
            for sibling in store.get_executions_by_context(run.id):
                if sibling.id not in example_gens or sibling.last_known_state not in _DONE_STATES:
                    continue
                events = [e for e in store.get_events_by_execution_ids([sibling.id])
                          if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
                for artifact in store.get_artifacts_by_id([e.artifact_id for e in events]):
                    if "span" in artifact.custom_properties:
                        done.add(artifact.custom_properties["span"].int_value)
    return done


class Decision(NamedTuple):
    span: spans_lib.Span
    action: str   # done | incomplete | given_up | run
    detail: str


def decide(found: list[spans_lib.Span], done: set[int], state: dict, max_attempts: int) -> list[Decision]:
    """What to do with each span, oldest first."""
    decisions = []
    for span in found:
        failures = state["failures"].get(str(span.number), {})
        count = failures.get("count", 0)
        if span.number in done:
            decisions.append(Decision(span, "done", "already run (ML Metadata)"))
        elif not span.complete:
            decisions.append(Decision(span, "incomplete", f"incomplete ({span.why_incomplete}); not read until it is"))
        elif count >= max_attempts:
            decisions.append(Decision(span, "given_up", f"skipped: its run failed {count} times (exit status "
                                      f"{failures.get('last_status')}), continuous.max_attempts is {max_attempts}; "
                                      f"delete its entry in the watch state file to try again"))
        else:
            decisions.append(Decision(span, "run", f"new, attempt {count + 1} of {max_attempts}"))
    return decisions


def _child_env(config: Config, lock_fd: int) -> dict[str, str]:
    env = dict(os.environ)
    for variable in (ENV_SPAN, ENV_DATE):
        env.pop(variable, None)
    # The child may run elsewhere than the watcher's working directory: absolute paths.
    env.update({variable: getattr(config, key) for variable, key in ENV_PATHS.items()})
    if env.get(ENV_CONFIG):
        env[ENV_CONFIG] = os.path.abspath(env[ENV_CONFIG])
    env[ENV_PROFILE] = config.profile
    env[ENV_RUN_REASON] = REASON
    env[ENV_RUN_LOCK_FD] = str(lock_fd)
    return env


def run_span(config: Config, span: spans_lib.Span, state: dict) -> int | None:
    """Runs the pipeline on `span` as a child process under the run lock; its exit status, or None when another
    run holds the lock (then nothing ran)."""
    try:
        lock = runlock.Lock(runlock.run_lock_path(config)).acquire(
            span=span.number, reason=REASON, by=f"make watch, pid {os.getpid()}")
    except runlock.LockHeld as e:
        log(f"span {span.number} ({span.name}): waiting: another run is in progress ({e}); trying on the next poll")
        return None
    with lock:
        log(f"span {span.number} ({span.name}): started: python -m runners.local_runner --span {span.number} "
            f"--reason {REASON}")
        started = time.monotonic()
        status = subprocess.call([sys.executable, "-m", "runners.local_runner", "--span", str(span.number),
                                  "--reason", REASON], env=_child_env(config, lock.fd), pass_fds=(lock.fd,))
    seconds = time.monotonic() - started
    key = str(span.number)
    if status == 0:
        state["failures"].pop(key, None)
        log(f"span {span.number} ({span.name}): finished: exit status 0 in {seconds:.0f} s")
    else:
        failures = state["failures"].setdefault(key, {"count": 0})
        failures.update(count=failures["count"] + 1, last_status=status,
                        last_finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        more = ("retried on the next poll" if failures["count"] < config.continuous.max_attempts
                else "skipped from now on (continuous.max_attempts)")
        log(f"span {span.number} ({span.name}): finished: FAILED, exit status {status} in {seconds:.0f} s "
            f"(failure {failures['count']} of {config.continuous.max_attempts}; {more})")
    save_state(config, state)
    return status


def poll_once(config: Config, quiet: set[str] | None = None) -> bool:
    """One pass over the data root; True when every run it started succeeded. `quiet`: what the last pass
    logged; a decision that has not changed since is not logged again (the set is updated)."""
    said = set()

    def log_once(message: str) -> None:
        said.add(message)
        if quiet is None or message not in quiet:
            log(message)

    ok = _poll(config, log_once)
    if quiet is not None:
        quiet.clear()
        quiet.update(said)
    return ok


def _poll(config: Config, log_once) -> bool:
    if not os.path.isdir(config.data_root):
        log_once(f"data root {config.data_root} not found; waiting")
        return True
    try:
        found = spans_lib.discover(config.data_root, config.continuous.settle_seconds)
    except spans_lib.SpanError as e:
        log_once(f"data root {config.data_root}: {e}; waiting")
        return True
    if found and not found[0].name:
        log_once(f"data root {config.data_root} holds CSV files, not span folders: one span, nothing new to watch for")
        return True
    if not found:
        log_once(f"data root {config.data_root}: no span folders yet")
        return True
    state = load_state(config)
    decisions = decide(found, done_spans(config), state, config.continuous.max_attempts)
    done = [d.span.number for d in decisions if d.action == "done"]
    if done:
        log_once(f"already run (ML Metadata): span{'s' if len(done) > 1 else ''} {', '.join(map(str, done))}")
    ok = True
    for decision in decisions:
        if decision.action == "done":
            continue
        if decision.action == "run":
            log(f"span {decision.span.number} ({decision.span.name}): {decision.detail}")
            status = run_span(config, decision.span, state)
            if status is None:
                break  # someone else is running: the next poll tries again, oldest first
            ok = ok and status == 0
        else:
            log_once(f"span {decision.span.number} ({decision.span.name}): {decision.detail}")
    return ok


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Runs the pipeline once for each new complete span.")
    parser.add_argument("--once", action="store_true", help="one pass over the data root, then exit")
    parser.add_argument("--poll-seconds", type=float, help="override continuous.poll_seconds")
    args = parser.parse_args(argv)
    # The data root may be empty or missing until the first span lands: checked on every poll instead.
    config = load_config_or_exit(os.environ.get(ENV_PROFILE) or "local", check_data=False)
    poll = args.poll_seconds or config.continuous.poll_seconds
    try:
        watching = runlock.Lock(runlock.watch_lock_path(config)).acquire(
            by="make watch", data_root=config.data_root)
    except runlock.LockHeld as e:
        print(f"error: another watcher is running on this output root ({config.output_root}): {e}",
              file=sys.stderr)
        return 1
    # `kill PID` stops it as Ctrl-C does (a run it started finishes on its own).
    signal.signal(signal.SIGTERM, _interrupt)
    with watching:
        log(f"watching {config.data_root} every {poll:g} s; output {config.output_root}; pid {os.getpid()}")
        quiet = set()  # decisions logged by the last pass, not repeated while they stand
        try:
            while True:
                ok = poll_once(config, quiet)
                if args.once:
                    return 0 if ok else 1
                time.sleep(poll)
        except KeyboardInterrupt:
            log("stopped")
            return 0


if __name__ == "__main__":
    sys.exit(main())

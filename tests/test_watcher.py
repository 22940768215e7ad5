"""Continuous training, local trigger (issue 12): the run lock (runners/runlock.py), why a run ran (runners/why.py)
and `make watch` (runners/watcher.py): one run per new complete span, oldest first, retried up to
continuous.max_attempts, what has run read from ML Metadata."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_DATA

from pipeline import spans
from pipeline.config import load_config
from runners import harness, runlock, watcher, why

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path, data_root, **extra):
    return {"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out"), "TFX_E2E_DATA_ROOT": str(data_root), **extra}


def _span_root(root: Path, *numbers: int) -> Path:
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    for n in numbers:
        (root / f"span-{n}").mkdir(parents=True)
        (root / f"span-{n}" / "data.csv").write_text("".join(lines[:51]))
        (root / f"span-{n}" / "_SUCCESS").write_text("")
    return root


def _use_env(monkeypatch, env):
    for key in [k for k in os.environ if k.startswith("TFX_E2E_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# --- the lock (unit) ---

def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    config = load_config(env=_env(tmp_path, _span_root(tmp_path / "data", 1)))
    path = runlock.run_lock_path(config)
    assert path == str(tmp_path / "out" / "runs" / "chicago-taxi.lock")
    with runlock.Lock(path).acquire(span=3, reason="new_span", by="make watch"):
        with pytest.raises(runlock.LockHeld) as held:
            runlock.Lock(path).acquire(span=1)
        message = str(held.value)
        assert f"is held by pid {os.getpid()}, started 20" in message
        assert "span 3, reason new_span (make watch)" in message
    # Released: the next one takes it.
    with runlock.Lock(path).acquire(span=1):
        pass


def test_a_killed_holder_never_blocks_the_next_run(tmp_path):
    path = str(tmp_path / "runs" / "p.lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from runners.runlock import Lock; Lock(sys.argv[1]).acquire(span=7); "
        "print('held', flush=True); time.sleep(60)"), path], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlock.LockHeld, match=f"pid {holder.pid}, .*span 7"):
            runlock.Lock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with runlock.Lock(path).acquire():  # the kernel dropped the dead process's lock
        pass


def test_a_run_adopts_the_lock_its_parent_passed_down(tmp_path):
    config = load_config(env=_env(tmp_path, _span_root(tmp_path / "data", 1)))
    with runlock.Lock(runlock.run_lock_path(config)).acquire(by="make watch") as parent:
        child = runlock.acquire_run_lock(config, env={"TFX_E2E_RUN_LOCK_FD": str(parent.fd)}, span=1, by="run")
        assert child.fd == parent.fd and not child.owned
        assert runlock.read_holder(child.path)["by"] == "make watch: run"
        child.release()  # the child's release leaves the parent's lock in place
        with pytest.raises(runlock.LockHeld):
            runlock.Lock(runlock.run_lock_path(config)).acquire()
        # A descriptor of another file is not the lock: the run takes (here: is refused) the real one.
        with open(tmp_path / "other", "w") as other, pytest.raises(runlock.LockHeld):
            runlock.acquire_run_lock(config, env={"TFX_E2E_RUN_LOCK_FD": str(other.fileno())})


def _never_run():
    raise AssertionError("the orchestrator must not start")


def test_a_manual_run_is_refused_while_another_runs(tmp_path, monkeypatch, capsys):
    root = _span_root(tmp_path / "data", 1, 2)
    _use_env(monkeypatch, _env(tmp_path, root))
    config = load_config()
    with runlock.Lock(runlock.run_lock_path(config)).acquire(span=2, reason="new_span", by="make watch, pid 1"):
        with pytest.raises(SystemExit) as done:
            harness.run(_never_run, default_profile="local", argv=["--span", "1"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "error: another run is in progress on this output root: " in err
    assert f"held by pid {os.getpid()}, started " in err and "span 2, reason new_span (make watch, pid 1)" in err
    assert "nothing was run" in err
    assert not os.path.exists(config.metadata_path)


# --- why a run ran (unit) ---

def test_the_reason_is_a_run_parameter(tmp_path, monkeypatch, capsys):
    assert harness.run_parameters(["--reason", "new_span"]) == {"TFX_E2E_RUN_REASON": "new_span"}
    with pytest.raises(SystemExit):
        harness.run_parameters(["--reason", "whim"])
    _use_env(monkeypatch, _env(tmp_path, _span_root(tmp_path / "data", 1), TFX_E2E_RUN_REASON="whim"))
    with pytest.raises(SystemExit) as done:
        harness.run(_never_run, default_profile="local")
    assert done.value.code == 2
    assert "error: configuration: TFX_E2E_RUN_REASON: expected one of manual, schedule, new_span" in (
        capsys.readouterr().err)
    config = load_config(env=_env(tmp_path, tmp_path / "data"))
    import dataclasses
    assert why.why_line(dataclasses.replace(config, span=3), "new_span") == "Why: new span (span 3)"
    assert why.why_line(dataclasses.replace(config, span=0), "manual") == "Why: manual (the flat data root, one span)"
    assert why.why_line(dataclasses.replace(config, span=2), "monitoring_alert") == "Why: monitoring alert (span 2)"


# --- the watcher's decisions (unit) ---

def test_the_watcher_decides_per_span_oldest_first(tmp_path):
    root = _span_root(tmp_path / "data", 1, 2, 3, 10)
    (root / "span-4").mkdir()
    (root / "span-4" / "data.csv").write_text("a\n1\n")
    found = spans.discover(str(root))
    state = {"failures": {"3": {"count": 3, "last_status": 1}, "10": {"count": 1, "last_status": 1}}}
    decisions = watcher.decide(found, done={1}, state=state, max_attempts=3)
    assert [(d.span.number, d.action) for d in decisions] == [
        (1, "done"), (2, "run"), (3, "given_up"), (4, "incomplete"), (10, "run")]
    assert decisions[2].detail.startswith("skipped: its run failed 3 times (exit status 1), continuous.max_attempts")
    assert decisions[3].detail == "incomplete (no _SUCCESS marker); not read until it is"
    assert decisions[4].detail == "new, attempt 2 of 3"


def test_the_watch_state_survives_a_restart(tmp_path):
    config = load_config(env=_env(tmp_path, _span_root(tmp_path / "data", 1)))
    assert watcher.load_state(config) == {"failures": {}}
    watcher.save_state(config, {"failures": {"2": {"count": 1, "last_status": 1}}})
    assert watcher.load_state(config)["failures"]["2"]["count"] == 1
    assert watcher.done_spans(config) == set()  # no ML Metadata yet


def test_a_second_watcher_is_refused(tmp_path, monkeypatch, capsys):
    _use_env(monkeypatch, _env(tmp_path, tmp_path / "not-yet"))
    config = load_config(check_data=False)
    with runlock.Lock(runlock.watch_lock_path(config)).acquire(by="make watch"):
        assert watcher.main(["--once"]) == 1
    err = capsys.readouterr().err
    assert f"error: another watcher is running on this output root ({config.output_root}): " in err
    assert f"held by pid {os.getpid()}" in err
    # Alone, it watches a data root that does not exist yet.
    assert watcher.main(["--once"]) == 0
    assert "data root " + str(tmp_path / "not-yet") + " not found; waiting" in capsys.readouterr().out
    # While watching, a decision that stands is logged once, not on every poll.
    quiet = set()
    assert watcher.poll_once(config, quiet) and watcher.poll_once(config, quiet)
    assert capsys.readouterr().out.count("not found; waiting") == 1


# --- the watcher end to end ---

WATCH_OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 30, eval_steps: 5, batch_size: 32}
evaluator: {auc_lower_bound: 0.0}
continuous: {poll_seconds: 1, max_attempts: 2}
"""


def _wait_for(log: Path, text: str, process, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text()
        if text in out:
            return out
        if process.poll() is not None:
            raise AssertionError(f"the watcher exited ({process.returncode}) before {text!r}:\n{out}")
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()}")


def _write_span(root: Path, n: int, rows: list[str], complete=True):
    (root / f"span-{n}").mkdir(parents=True)
    (root / f"span-{n}" / "data.csv").write_text("".join(rows))
    if complete:
        (root / f"span-{n}" / "_SUCCESS").write_text("")


def _runs_in_metadata(config):
    """(reason, spans) of every pipeline run context, oldest first."""
    from runners.summary import open_store

    store = open_store(config)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    return [(c.custom_properties[why.REASON_PROPERTY].string_value,
             c.custom_properties[why.SPANS_PROPERTY].string_value) for c in runs]


@pytest.mark.e2e
def test_the_watcher_runs_each_new_span_once_in_order(tmp_path, monkeypatch, capsys):
    """Spans dropped while the watcher runs: one run each, oldest first; a manual run and a second watcher are
    refused meanwhile; a span the gate stops is retried up to continuous.max_attempts and then skipped; a restarted
    watcher reads what has run from ML Metadata and starts nothing."""
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "overlay.yaml").write_text(WATCH_OVERLAY)
    env = _env(tmp_path, root, TFX_E2E_CONFIG=str(tmp_path / "overlay.yaml"))
    _use_env(monkeypatch, env)
    log = tmp_path / "watch.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "runners.watcher"], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(log, "no span folders yet", process, 60)
        _write_span(root, 1, lines[:301])
        _wait_for(log, "span 1 (span-1): started", process, 60)
        # While span 1 runs: two more spans land (the second one empty: the gate stops it), and one incomplete.
        _write_span(root, 2, lines[:1] + lines[301:601])
        _write_span(root, 3, lines[:1])
        _write_span(root, 4, lines[:101], complete=False)
        # A manual run is refused at once, naming the watcher's run.
        with pytest.raises(SystemExit) as manual:
            harness.run(_never_run, default_profile="local", argv=["--span", "2"])
        assert manual.value.code == 1
        err = capsys.readouterr().err
        assert "error: another run is in progress on this output root" in err
        assert "span 1, reason new_span (make watch, pid " in err
        # So is a second watcher.
        assert watcher.main(["--once"]) == 1
        assert "error: another watcher is running on this output root" in capsys.readouterr().err
        out = _wait_for(log, "span 3 (span-3): finished: FAILED, exit status 1", process, 900)
        out = _wait_for(log, "(failure 2 of 2; skipped from now on (continuous.max_attempts))", process, 600)
        out = _wait_for(log, "span 3 (span-3): skipped: its run failed 2 times", process, 30)
    finally:
        process.terminate()
        process.wait(30)
    started = [line.split("watch: ")[1].split(":")[0] for line in out.splitlines() if "): started:" in line]
    assert started == ["span 1 (span-1)", "span 2 (span-2)", "span 3 (span-3)", "span 3 (span-3)"], out
    assert "span 1 (span-1): finished: exit status 0" in out and "span 2 (span-2): finished: exit status 0" in out
    assert "span 3 (span-3): finished: FAILED, exit status 1 in" in out
    assert "(failure 1 of 2; retried on the next poll)" in out
    assert "span 4 (span-4): incomplete (no _SUCCESS marker); not read until it is" in out
    assert "span 4 (span-4): started" not in out
    assert "Why: new span (span 1)" in out and "Why: new span (span 2)" in out
    assert "Data gate: span 3 has 0 examples" in out

    # ML Metadata: four runs, in order, each with why it ran and its span; spans 1 and 2 completed.
    config = load_config()
    assert _runs_in_metadata(config) == [("new_span", "1"), ("new_span", "2"), ("new_span", "3"), ("new_span", "3")]
    assert watcher.done_spans(config) == {1, 2}

    # A restarted watcher carries on where the last one stopped: nothing to run.
    capsys.readouterr()
    assert watcher.main(["--once"]) == 0
    again = capsys.readouterr().out
    assert "already run (ML Metadata): spans 1, 2" in again
    assert "span 3 (span-3): skipped: its run failed 2 times" in again
    assert "started" not in again

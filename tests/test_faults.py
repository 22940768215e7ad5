"""Faults. Unit: runners/recovery.py on a real ML Metadata SQLite store and real directories, and how a full disk
is recognised. End to end: the pipeline (python -m runners.local_runner, a child process in its own session) killed with
SIGKILL inside Transform, inside Trainer and inside the Pusher's push, each time run again; and a disk that fills
during a run (a tmpfs as the output root). After each: what finished is reused (cache hits in ML Metadata), the dead
run's executions are ended (runners/recovery.py) and what they left is removed, the model server never sees a
partial version, and the version served before stays untouched."""
import dataclasses
import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SMALL_DATA, PipelineRun
from ml_metadata.proto import metadata_store_pb2

from pipeline import metadata, versions
from pipeline.fingerprint import tree_digest
from registry import model_card
from runners import recovery, summary
from serving.source import list_versions

REPO = Path(__file__).resolve().parents[1]
State = metadata_store_pb2.Execution
# No Tuner and few steps: the faults, not the model, are under test.
OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 30, eval_steps: 5, batch_size: 64}
evaluator: {auc_lower_bound: 0.5}
"""
DATA_NODES = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "DataGate"]
RESOLVERS = ["previous_statistics_resolver", "latest_blessed_model_resolver"]


def store_with(config, executions: dict[str, int]):
    """A SQLite ML Metadata store laid out as TFX's local orchestrator leaves it: one pipeline run with an execution
    per node in the given state, each with what TFX writes on disk (output, executor and stateful working
    directories); a COMPLETE execution's output is a published artifact. Returns the store and node -> execution."""
    store = metadata.open_store(config)
    types = {name: store.put_context_type(metadata_store_pb2.ContextType(name=name))
             for name in ("pipeline", "pipeline_run", "node")}
    pipeline = metadata_store_pb2.Context(type_id=types["pipeline"], name=config.pipeline_name)
    run = metadata_store_pb2.Context(type_id=types["pipeline_run"], name="run-1")
    pipeline.id, run.id = store.put_contexts([pipeline, run])
    artifact_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Model"))
    ids = {}
    for node, state in executions.items():
        node_context = metadata_store_pb2.Context(type_id=types["node"], name=f"{config.pipeline_name}.{node}")
        [node_context.id] = store.put_contexts([node_context])
        execution = metadata_store_pb2.Execution(
            type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(name=node)), last_known_state=state)
        contexts = [pipeline, run, node_context]
        ids[node], _, _ = store.put_execution(execution, [], contexts)
        node_dir = os.path.join(config.pipeline_root, node)
        output = os.path.join(node_dir, "model", str(ids[node]))
        for path in (output, os.path.join(node_dir, ".system", "executor_execution", str(ids[node]), ".temp"),
                     os.path.join(node_dir, ".system", "stateful_working_dir", f"uuid-{node}")):
            os.makedirs(path)
            Path(path, "data").write_text("partial" if state != State.COMPLETE else "whole")
        if state == State.COMPLETE:
            execution.id = ids[node]
            store.put_execution(execution, [(metadata_store_pb2.Artifact(type_id=artifact_type, uri=output),
                                             metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT))], contexts)
    return store, ids


def sqlite_config(tmp_path):
    from pipeline.config import load_config

    return load_config(env={"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "output"), "TFX_E2E_DATA_ROOT": str(SMALL_DATA)})


def test_recovery_ends_what_a_dead_run_left_running_and_removes_what_unfinished_executions_wrote(tmp_path):
    config = sqlite_config(tmp_path)
    store, ids = store_with(config, {"Trainer": State.COMPLETE, "Evaluator": State.FAILED,
                                     "Pusher": State.RUNNING})
    dead = subprocess.Popen(["true"])  # a push by a process that is gone
    dead.wait()
    base = config.serving_model_dir
    os.makedirs(os.path.join(base, f"{versions.TMP_PREFIX}7-{dead.pid}", "variables"))
    os.makedirs(os.path.join(base, "7"))

    done = recovery.recover(config)

    assert done.abandoned == [("Pusher", ids["Pusher"])]
    by_node = {node: store.get_executions_by_id([i])[0] for node, i in ids.items()}
    assert {n: e.last_known_state for n, e in by_node.items()} == {
        "Trainer": State.COMPLETE, "Evaluator": State.FAILED, "Pusher": State.CANCELED}
    assert "died" in by_node["Pusher"].custom_properties[recovery.ABANDONED].string_value
    assert recovery.ABANDONED not in by_node["Evaluator"].custom_properties  # it failed on its own
    for node in ("Evaluator", "Pusher"):
        assert leftovers(config, node, ids[node]) == []
        assert os.listdir(os.path.join(config.pipeline_root, node, ".system", "stateful_working_dir")) == []
    assert len(leftovers(config, "Trainer", ids["Trainer"])) == 2  # its published model and executor directory
    assert sorted(os.listdir(base)) == ["7"]
    assert f"serving/{config.model_name}/{versions.TMP_PREFIX}7-{dead.pid}" in done.removed
    assert recovery.recover(config) == ([], [])  # nothing left to do


def test_recovery_keeps_a_directory_an_artifact_points_into(tmp_path):
    config = sqlite_config(tmp_path)
    store, ids = store_with(config, {"Transform": State.FAILED})
    kept = os.path.join(config.pipeline_root, "Transform", "model", str(ids["Transform"]))
    store.put_artifacts([metadata_store_pb2.Artifact(type_id=store.get_artifact_type("Model").id,
                                                     uri=os.path.join(kept, "value"))])
    context = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    [artifact] = store.get_artifacts_by_uri(os.path.join(kept, "value"))
    store.put_attributions_and_associations([metadata_store_pb2.Attribution(artifact_id=artifact.id,
                                                                            context_id=context.id)], [])
    recovery.recover(config)
    assert os.path.isdir(kept)


def test_recovery_leaves_executions_of_airflows_launcher_alone(tmp_path):
    config = sqlite_config(tmp_path)
    store, _ = store_with(config, {})
    # TFX's Airflow launcher files an execution under `pipeline`, `run` and `component_run` contexts, no `node`.
    pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    running = metadata_store_pb2.Execution(last_known_state=State.RUNNING, type_id=store.put_execution_type(
        metadata_store_pb2.ExecutionType(name="Trainer")))
    execution_id, _, _ = store.put_execution(running, [], [pipeline])
    assert recovery.recover(config) == ([], [])
    assert store.get_executions_by_id([execution_id])[0].last_known_state == State.RUNNING


def test_recovery_leaves_a_shared_database_server_alone(tmp_path):
    config = dataclasses.replace(sqlite_config(tmp_path), metadata="mysql")
    assert recovery.recover(config) == ([], [])  # no connection attempted: a RUNNING execution there may be alive


@pytest.mark.parametrize("error, path", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/a"), "/out/a"),
    (shutil.Error([("/m/saved_model.pb", "/s/.tmp-1-2/saved_model.pb", "[Errno 28] No space left on device")]),
     "/s/.tmp-1-2/saved_model.pb"),
    (RuntimeError("Error when executing query: database or disk is full query: INSERT ..."), ""),
    (ValueError("No such file"), None),
])
def test_a_full_disk_is_recognised_inside_what_wraps_it(error, path):
    try:
        try:
            raise error
        except Exception as e:
            raise RuntimeError("Beam and TFX wrap it") from e
    except RuntimeError as wrapped:
        assert recovery.disk_full(wrapped) == path


def test_a_full_disk_exits_1_with_one_line(tmp_path, capsys):
    config = sqlite_config(tmp_path)
    os.makedirs(config.output_root)
    with pytest.raises(SystemExit) as done, recovery.stop_when_disk_full(config):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x")
    assert done.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: no space left on device writing /out/x (output root {config.output_root}: ")
    with pytest.raises(KeyError), recovery.stop_when_disk_full(config):
        raise KeyError("another error goes on")


class Child:
    """One run of the pipeline as a child process; its output is read as it comes (progress lines: ▶ [7/11] ...)."""

    def __init__(self, runner: PipelineRun):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TFX_E2E_")}
        env.update(runner.env, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-m", "runners.local_runner"], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.started: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.match(r"▶ \[\d+/\d+\] (\S+) \.\.\.", line)
            if match:
                self._event(match.group(1)).set()

    def _event(self, node: str) -> threading.Event:
        with self._lock:
            return self.started.setdefault(node, threading.Event())

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_started(self, node: str, timeout: float = 300) -> None:
        if not self._event(node).wait(timeout):
            self.signal(signal.SIGKILL)
            raise AssertionError(f"{node} did not start within {timeout} s:\n{self.output}")

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code


@pytest.fixture
def spawn():
    """Child(runner), each killed at the end if a failed assertion left it running."""
    children = []

    def start(runner: PipelineRun) -> Child:
        children.append(Child(runner))
        return children[-1]
    yield start
    for child in children:
        if child.process.poll() is None:
            child.kill()


def executor_dirs(config, node: str) -> set[str]:
    """The executions of `node` whose executor TFX has started (<node>/.system/executor_execution/<id>/)."""
    path = os.path.join(config.pipeline_root, node, ".system", "executor_execution")
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def kill_inside(spawn, runner: PipelineRun, node: str, seconds: float) -> Child:
    """Runs the pipeline and kills it `seconds` after `node`'s executor started."""
    config = runner.config()
    before = executor_dirs(config, node)
    child = spawn(runner)
    child.wait_started(node)
    deadline = time.monotonic() + 60
    while not executor_dirs(config, node) - before:
        assert time.monotonic() < deadline and child.process.poll() is None, child.output
        time.sleep(0.05)
    time.sleep(seconds)
    child.kill()
    return child


def runs(config) -> list[dict[str, metadata_store_pb2.Execution]]:
    """Each pipeline run in ML Metadata, oldest first: node id -> its execution."""
    store = summary.open_store(config)
    prefix = f"{config.pipeline_name}."
    nodes = {c.id: c.name[len(prefix):] for c in store.get_contexts_by_type("node") if c.name.startswith(prefix)}
    pipeline = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    result = []
    for run in sorted(store.get_children_contexts_by_context(pipeline.id), key=lambda c: c.id):
        executions = {}
        for execution in store.get_executions_by_context(run.id):
            node = [nodes[c.id] for c in store.get_contexts_by_execution(execution.id) if c.id in nodes][0]
            executions[node] = execution
        result.append(executions)
    return result


def states(run: dict[str, metadata_store_pb2.Execution]) -> dict[str, int]:
    return {node: execution.last_known_state for node, execution in run.items()}


def leftovers(config, node: str, execution_id: int) -> list[str]:
    """What an execution wrote under the pipeline root: its output directories and its executor directory."""
    node_dir = os.path.join(config.pipeline_root, node)
    paths = [os.path.join(node_dir, name, str(execution_id)) for name in os.listdir(node_dir) if name != ".system"]
    paths.append(os.path.join(node_dir, ".system", "executor_execution", str(execution_id)))
    return [p for p in paths if os.path.exists(p)]


def write_version(base: str, version: int) -> str:
    """A version served before the runs under test (its bytes must never change)."""
    path = os.path.join(base, str(version))
    os.makedirs(os.path.join(path, "variables"))
    Path(path, "saved_model.pb").write_bytes(b"an older model")
    Path(path, "variables", "variables.index").write_bytes(b"its variables")
    return tree_digest(path)


def assert_served(base: str, previous: str, pushed: list[str] = ()) -> list[int]:
    """The model server's view of `base`: version 1 (`previous`) untouched, every other integer version complete and
    byte-identical to one of the `pushed` models, no partial version. Returns the versions."""
    complete, incomplete = list_versions(base)
    assert incomplete == {}
    assert tree_digest(complete[1]) == previous
    assert sorted(tree_digest(path) for v, path in complete.items() if v != 1) == sorted(map(tree_digest, pushed))
    return sorted(complete)


def assert_pushed(config, pusher: metadata_store_pb2.Execution, previous: str) -> None:
    """`pusher` pushed its model as a new version, beside version 1 (`previous`), and nothing else is served."""
    store = summary.open_store(config)
    [model] = store.get_artifacts_by_id([e.artifact_id for e in store.get_events_by_execution_ids([pusher.id])
                                         if e.type == metadata_store_pb2.Event.OUTPUT])
    assert model.custom_properties["pushed"].int_value == 1
    served = assert_served(config.serving_model_dir, previous, pushed=[model.uri])
    assert served == [1, int(model.custom_properties["pushed_version"].string_value)]


def assert_consistent(config) -> None:
    """No execution of the pipeline left NEW or RUNNING, and nothing left by one that did not succeed."""
    for run in runs(config):
        for node, execution in run.items():
            assert execution.last_known_state not in (State.NEW, State.RUNNING), node
            if execution.last_known_state not in (State.COMPLETE, State.CACHED):
                assert leftovers(config, node, execution.id) == [], node
    assert not [n for n in os.listdir(config.serving_model_dir) if n.startswith(versions.TMP_PREFIX)]


@pytest.mark.e2e
def test_runs_killed_in_transform_trainer_and_push_resume_and_leave_nothing(tmp_path, spawn):
    runner = PipelineRun(tmp_path, SMALL_DATA, OVERLAY)
    config = runner.config()
    base = config.serving_model_dir
    previous = write_version(base, 1)

    # Killed inside Transform: the data components finished, Transform is RUNNING with partial outputs.
    kill_inside(spawn, runner, "Transform", seconds=3)
    [first] = runs(config)
    assert states(first) == {**dict.fromkeys(DATA_NODES + RESOLVERS[:1], State.COMPLETE), "Transform": State.RUNNING}
    partial = leftovers(config, "Transform", first["Transform"].id)
    assert partial
    assert_served(base, previous)

    # Killed inside Trainer: the data components are cache hits, Transform runs again; the dead run's Transform is
    # ended (CANCELED, saying why) and its partial outputs are gone.
    child = kill_inside(spawn, runner, "Trainer", seconds=2)
    assert f"left Transform (execution {first['Transform'].id}) running" in child.output
    first, second = runs(config)
    assert first["Transform"].last_known_state == State.CANCELED
    assert "died" in first["Transform"].custom_properties[recovery.ABANDONED].string_value
    assert [p for p in partial if os.path.exists(p)] == []
    assert states(second) == {**dict.fromkeys(DATA_NODES, State.CACHED), RESOLVERS[0]: State.COMPLETE,
                              "Transform": State.COMPLETE, "Trainer": State.RUNNING}
    assert_served(base, previous)

    # Killed inside the Pusher's push: the test holds the serving directory's lock as a concurrent push would
    # (pipeline/versions.py), so the copy in .tmp-* cannot be renamed into a version before the kill.
    holder = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        child = spawn(runner)
        child.wait_started("Pusher")
        deadline = time.monotonic() + 120
        while not any(n.startswith(versions.TMP_PREFIX) for n in os.listdir(base)):
            assert time.monotonic() < deadline and child.process.poll() is None, child.output
            time.sleep(0.01)
        child.kill()
    finally:
        os.close(holder)
    assert f"left Trainer (execution {second['Trainer'].id}) running" in child.output
    _, second, third = runs(config)
    assert second["Trainer"].last_known_state == State.CANCELED
    assert states(third) == {**dict.fromkeys(DATA_NODES + ["Transform"], State.CACHED),
                             **dict.fromkeys(RESOLVERS, State.COMPLETE), "Trainer": State.COMPLETE,
                             "Evaluator": State.COMPLETE, "Pusher": State.RUNNING}
    assert [n for n in os.listdir(base) if n.startswith(versions.TMP_PREFIX)]  # invisible to the server
    assert_served(base, previous)
    assert not os.path.exists(os.path.dirname(model_card.card_dir(config, 0)))  # no push, no model card

    # The next run completes: everything but the Pusher is a cache hit, the model is pushed as a new version.
    child = spawn(runner)
    assert child.finish() == 0, child.output
    assert f"left Pusher (execution {third['Pusher'].id}) running" in child.output
    *_, third, fourth = runs(config)
    assert third["Pusher"].last_known_state == State.CANCELED
    assert states(fourth) == {**dict.fromkeys(DATA_NODES + ["Transform", "Trainer", "Evaluator"], State.CACHED),
                              **dict.fromkeys(RESOLVERS, State.COMPLETE), "Pusher": State.COMPLETE}
    assert_pushed(config, fourth["Pusher"], previous)
    assert_consistent(config)
    assert os.listdir(os.path.dirname(model_card.card_dir(config, 0))) == [str(max(versions.served_versions(base)))]


def model_bytes(config) -> int:
    """The size of the newest model the Trainer wrote."""
    models = os.path.join(config.pipeline_root, "Trainer", "model")
    newest = max((os.path.join(models, n) for n in os.listdir(models)), key=os.path.getmtime)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(newest) for f in names)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs mounted at tmp_path/output (the output root of PipelineRun(tmp_path, ...))."""
    mount_point = tmp_path / "output"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(child: Child, disk: Path, leave: int) -> None:
    """Fills `disk` but for `leave` bytes while the run is stopped (SIGSTOP), so that it fills up at this point."""
    child.signal(signal.SIGSTOP)
    try:
        free = os.statvfs(disk)
        with open(disk / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free.f_bavail * free.f_frsize - leave)
    finally:
        child.signal(signal.SIGCONT)


def disk_full_line(child: Child, config) -> str:
    """The run's one error line: a full disk, naming the output root and its free space; no traceback."""
    assert child.finish() == 1, child.output
    assert "Traceback" not in child.output, child.output
    [line] = [line for line in child.lines if line.startswith("error: ")]
    assert line.startswith("error: no space left on device")
    assert re.search(rf"\(output root {re.escape(config.output_root)}: [\d.]+ MiB free of 64\.0 MiB\)", line)
    return line


@pytest.mark.e2e
def test_a_full_disk_stops_the_run_with_one_line_and_pushes_nothing(tmp_path, small_disk, spawn):
    runner = PipelineRun(tmp_path, SMALL_DATA, OVERLAY)
    config = runner.config()
    base = config.serving_model_dir
    previous = write_version(base, 1)

    # Full as Trainer starts: not a byte left, not even for ML Metadata's SQLite file beside the outputs.
    child = spawn(runner)
    child.wait_started("Trainer")
    fill(child, small_disk, leave=0)
    disk_full_line(child, config)
    assert_served(base, previous)
    (small_disk / "filler").unlink()

    # Full as the Pusher starts, with one and a half times the model's size left: the PushedModel artifact's copy
    # (made first, as TFX's Pusher does) fits, the copy into .tmp-* fails half-way.
    child = spawn(runner)
    child.wait_started("Pusher")
    fill(child, small_disk, leave=model_bytes(config) * 3 // 2)
    assert f"writing {base}/{versions.TMP_PREFIX}" in disk_full_line(child, config)
    *_, last = runs(config)
    assert last["Trainer"].last_known_state == State.COMPLETE
    assert last["Pusher"].last_known_state == State.FAILED
    assert_served(base, previous)
    assert not [n for n in os.listdir(base) if n.startswith(versions.TMP_PREFIX)]
    assert not os.path.exists(os.path.dirname(model_card.card_dir(config, 0)))  # the failed push wrote no card
    (small_disk / "filler").unlink()

    # With space again, the next run pushes the model, reusing the rest.
    child = spawn(runner)
    assert child.finish() == 0, child.output
    *_, last = runs(config)
    assert states(last)["Trainer"] == State.CACHED and states(last)["Pusher"] == State.COMPLETE
    assert_pushed(config, last["Pusher"], previous)
    assert_consistent(config)
    assert os.listdir(os.path.dirname(model_card.card_dir(config, 0))) == [str(max(versions.served_versions(base)))]

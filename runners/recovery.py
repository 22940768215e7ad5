"""What a run that died (kill -9, the OOM killer, a power loss) left behind, put right at the start of the next run;
and a full disk said in one line.

runners.harness calls recover() under the run lock (runners/runlock.py), before the orchestrator starts. What TFX
1.16's local orchestrator does on its own with a dead run's executions (tfx/orchestration/portable/launcher.py,
cache_utils.py, outputs_utils.py, execution_publish_utils.py):
- it is not blocked by them: a new run registers new executions under its own pipeline_run context, and the cache
  (cache_utils.get_cached_outputs) reuses only COMPLETE or CACHED executions. So what finished before the kill is
  a cache hit and what was running runs again;
- but nothing ever ends them: an execution the dead run left RUNNING stays RUNNING in ML Metadata, and what it
  wrote stays on disk: its output directories <pipeline_root>/<node>/<output>/<execution id>/ (partial, and
  referenced by no artifact: outputs are only registered when an execution succeeds), its executor directory
  <node>/.system/executor_execution/<execution id>/ and its stateful working directory. A FAILED execution (a
  full disk) leaves the same directories.

So recover() marks every execution of this pipeline that is still NEW or RUNNING as CANCELED, with the custom
property tfx_e2e_abandoned saying why, removes the directories of every execution that did not succeed (none that
an artifact in ML Metadata points into) and the Pusher's leftovers in the serving directory (the .tmp-* copies of
dead pushes, pipeline/versions.py).

Only with the SQLite store (metadata: sqlite): it lives under the output root the run lock covers, so no other run
can be running there. A database server is shared with runs on other output roots and machines the lock does not
reach: a RUNNING execution there may be alive, so it is left as it is (it blocks nothing, see above). Only the
executions of TFX's portable orchestrator (LocalDagRunner, BeamDagRunner: those with a `node` context), which
runners.harness runs under the lock; Airflow's tasks take no run lock, so an Airflow deployment must not share
an output root with runs started here.

A full disk (disk_full, stop_when_disk_full): the run stops with exit status 1 and one line naming the file being
written and the output root's free space, not the traceback TFX, Beam or SQLite wrap it in.
"""
import contextlib
import errno
import os
import shutil
import sys
import time
from typing import NamedTuple

from pipeline.config import Config, is_uri

# Custom property on an execution a dead run left unfinished: why it is CANCELED.
ABANDONED = "tfx_e2e_abandoned"


class Recovered(NamedTuple):
    abandoned: list[tuple[str, int]]  # (node id, execution id) marked CANCELED
    removed: list[str]                # leftover paths removed


def recover(config: Config, out=sys.stdout) -> Recovered:
    """Ends the executions dead runs left unfinished and removes their leftovers; says what it did on `out`."""
    abandoned, removed = [], []
    if config.metadata == "sqlite" and os.path.exists(config.metadata_path):
        abandoned, removed = _recover_store(config)
    if not is_uri(config.serving_model_dir):
        from pipeline.versions import clean_leftovers

        removed += [os.path.relpath(os.path.join(config.serving_model_dir, name), config.output_root)
                    for name in clean_leftovers(config.serving_model_dir)]
    if abandoned:
        nodes = ", ".join(f"{node} (execution {execution_id})" for node, execution_id in abandoned)
        print(f"Recovery: a run that died left {nodes} running in ML Metadata; marked CANCELED ({ABANDONED}).",
              file=out)
    if removed:
        print(f"Recovery: removed what unfinished executions and pushes left under {config.output_root}: "
              f"{', '.join(removed)}", file=out)
    return Recovered(abandoned, removed)


def _recover_store(config: Config) -> tuple[list[tuple[str, int]], list[str]]:
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants

    from pipeline import metadata

    state = metadata_store_pb2.Execution
    store = metadata.open_store(config)
    pipeline = store.get_context_by_type_and_name(constants.PIPELINE_CONTEXT_TYPE_NAME, config.pipeline_name)
    if pipeline is None:
        return [], []
    prefix = f"{config.pipeline_name}."
    nodes = {c.id: c.name[len(prefix):] for c in store.get_contexts_by_type(constants.NODE_CONTEXT_TYPE_NAME)
             if c.name.startswith(prefix)}
    unfinished = {}  # execution id -> (node, execution)
    for execution in store.get_executions_by_context(pipeline.id):
        if execution.last_known_state in (state.COMPLETE, state.CACHED):
            continue
        node = next((nodes[c.id] for c in store.get_contexts_by_execution(execution.id) if c.id in nodes), None)
        if node is not None:  # TFX's portable orchestrator (the runs the lock covers), not Airflow's launcher
            unfinished[execution.id] = (node, execution)
    abandoned = []
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for _, execution in unfinished.values():
        if execution.last_known_state in (state.NEW, state.RUNNING, state.UNKNOWN):
            execution.last_known_state = state.CANCELED
            execution.custom_properties[ABANDONED].string_value = (
                f"the run that started it died before it finished: found unfinished at {when} by the next run "
                f"(pid {os.getpid()}), which held the run lock")
            abandoned.append(execution)
    if abandoned:
        store.put_executions(abandoned)
    node_of = {i: node for i, (node, _) in unfinished.items()}
    removed = ([] if is_uri(config.pipeline_root)
               else _remove_leftovers(store, config, pipeline.id, node_of, set(nodes.values())))
    return [(node_of[e.id], e.id) for e in abandoned], removed


def _remove_leftovers(store, config: Config, pipeline_id: int, node_of: dict[int, str], nodes: set[str]
                      ) -> list[str]:
    """Removes the directories of the executions in `node_of` (execution id -> node; none that an artifact points
    into) and every stateful working directory of the `nodes` (TFX removes one when its execution succeeds; under
    the run lock none is in use)."""
    candidates = []
    for execution_id, node in node_of.items():
        node_dir = os.path.join(config.pipeline_root, node)
        if not os.path.isdir(node_dir):
            continue
        candidates += [os.path.join(node_dir, name, str(execution_id)) for name in os.listdir(node_dir)
                       if name != ".system"]
        candidates.append(os.path.join(node_dir, ".system", "executor_execution", str(execution_id)))
    for node in nodes:
        working = os.path.join(config.pipeline_root, node, ".system", "stateful_working_dir")
        if os.path.isdir(working):
            candidates += [os.path.join(working, name) for name in os.listdir(working)]
    uris = [os.path.normpath(a.uri) for a in store.get_artifacts_by_context(pipeline_id) if a.uri]
    removed = []
    for path in candidates:
        if not os.path.lexists(path) or any(u == path or u.startswith(path + os.sep) for u in uris):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(os.path.relpath(path, config.output_root))
    return removed


# How a full disk reads once TensorFlow, Beam or SQLite have wrapped the OS's error.
_FULL = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def disk_full(error: BaseException) -> str | None:
    """None unless `error`, or an error it wraps, says a disk is full; then the file being written ('' if unnamed)."""
    said, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):
            # copytree's list of (source, destination, why) per file it could not copy
            for _, destination, why in (e for e in error.args[0] if len(e) == 3):
                if any(m in str(why) for m in _FULL):
                    return destination
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.filename or ""
        if any(m in str(error) for m in _FULL):
            said = ""
        error = error.__cause__ or error.__context__
    return said


def _mib(size: int) -> str:
    return f"{size / 2 ** 20:.1f} MiB"


def exit_if_disk_full(config: Config, error: BaseException) -> None:
    """Exits with status 1 and one line when `error` is a full disk."""
    path = disk_full(error)
    if path is None:
        return
    try:
        usage = shutil.disk_usage(config.output_root)
        space = f"{_mib(usage.free)} free of {_mib(usage.total)}"
    except OSError:
        space = "its free space unknown"
    print(f"error: no space left on device{f' writing {path}' if path else ''} (output root {config.output_root}: "
          f"{space}); the run stopped. Nothing partial is pushed: a version appears in {config.serving_model_dir} "
          "only whole (copied aside, then renamed). Free some space and run again: what finished is reused, and "
          "what this run left unfinished is removed.", file=sys.stderr)
    sys.exit(1)


@contextlib.contextmanager
def stop_when_disk_full(config: Config):
    """A full disk raised anywhere in the block (the run lock's file, ML Metadata, reports) ends the run with one
    line (exit_if_disk_full); any other error goes on."""
    try:
        yield
    except Exception as e:
        exit_if_disk_full(config, e)
        raise

"""Retention (tfx#2520): pushed versions and pipeline artifacts no longer grow forever.

Versions: the version folders of the model's base path beyond the newest `retention.keep_versions` are removed,
never the rollout's `stable`, `canary` or retiring version (serving/registry.py), the version that serves (the
newest one a rollout did not reject), the newest version, nor one the serving configuration names (labels,
specific versions, the newest `serving.latest_versions`). Each is renamed to a hidden name first
(.prune-<version>-<pid>, which no model server loads) and deleted after, so a server never loads half a version;
a prune killed midway leaves the hidden folder, which the next push or prune removes (pipeline/versions.py).

Artifacts: the artifacts of pipeline runs (the local and Beam runners' `pipeline_run` contexts, Airflow DAG runs'
`run` contexts with their backfill) older than the newest `retention.keep_runs` have their folders deleted
and are marked DELETED in ML Metadata, the way TFX's garbage collection does it (state MARKED_FOR_DELETION,
the folder removed once every artifact with that URI is marked, then DELETED): TFX's cache and its resolvers take
only LIVE artifacts, so no later run reuses or resolves a deleted one. Whatever its run, an artifact stays when
- a kept run used or produced it (a cached execution's outputs included), or a running execution uses it;
- it is the lineage of a version still on disk (the PushedModel, the Pusher's Model and ModelBlessing, back to
  the Examples, the schema and the Transform graph the model was trained on);
- it is the Evaluator's next baseline: the blessed models, newest first, down to the first one no rollout rejected;
- the next run needs it: the newest Examples of the newest `continuous.window_spans` + 1 spans and their
  statistics (the rolling window and the drift check against the previous span), and the newest artifact of
  every type (Transform's analyzer cache, the schema).
Only folders under the pipeline root are deleted.

Reports: the report folders of the same pruned runs go too (<output_root>/reports/<pipeline>/runs/<run id>/,
runners/summary.py, an Airflow DAG's Reports task); the pipeline's top-level copies, the newest run's, stay.

`python -m pipeline.retention` (`make prune`) prunes under the run lock; `--dry-run` prints what would go.
runners/harness.py prunes after every successful run.
"""
import argparse
import collections
import os
import shutil
import sys
from dataclasses import dataclass, field

from pipeline.config import Config, is_uri
from pipeline.versions import PRUNE_PREFIX, clean_leftovers, fsync_path, serving_version
from registry.model_card import remove_card
from serving.registry import read_record, rejected_versions
from serving.source import list_versions

# Inputs that do not make an artifact part of a model's lineage (each would chain back through every earlier run).
_NOT_LINEAGE = {"analyzer_cache", "baseline_model"}


@dataclass
class Plan:
    versions: list[int] = field(default_factory=list)        # version folders to remove
    kept_versions: dict[int, str] = field(default_factory=dict)  # version -> why it stays
    artifacts: list = field(default_factory=list)             # metadata_store_pb2.Artifact to delete
    reports: list[str] = field(default_factory=list)          # report folders of the pruned runs, on disk
    runs: int = 0                                             # this pipeline's runs in ML Metadata
    kept_runs: int = 0


# --- versions ----------------------------------------------------------------------------------------------------
def protected_versions(config: Config, base: str) -> dict[int, str]:
    """version -> why it is never pruned."""
    versions = sorted(list_versions(base)[0])
    rejected = rejected_versions(base)
    why = {}
    record = read_record(base)
    if record is not None:
        why.update({v: label for label, v in record.labels().items()})
        if record.retiring is not None:
            why[record.retiring] = "retiring"
    serving = serving_version(base)
    if serving is not None:
        why.setdefault(serving, "serving")
    if config.serving.version_policy == "latest":
        for v in [v for v in versions if v not in rejected][-config.serving.latest_versions:]:
            why.setdefault(v, "serving")
    elif config.serving.version_policy == "specific":
        why.update({v: "serving.versions" for v in config.serving.versions})
    why.update({v: f"label {label}" for label, v in config.serving.labels.items()})
    on_disk = [int(n) for n in os.listdir(base) if n.isdigit()] if os.path.isdir(base) else []
    if on_disk:
        why.setdefault(max(on_disk), "newest")
    return why


def plan_versions(config: Config, plan: Plan) -> None:
    base, keep = config.serving_model_dir, config.retention.keep_versions
    if keep == 0 or is_uri(base) or not os.path.isdir(base):
        return
    on_disk = sorted(int(n) for n in os.listdir(base) if n.isdigit())
    plan.kept_versions = {v: why for v, why in protected_versions(config, base).items() if v in on_disk}
    for v in on_disk[-keep:]:
        plan.kept_versions.setdefault(v, f"newest {keep}")
    plan.versions = [v for v in on_disk if v not in plan.kept_versions]


def remove_version(base: str, version: int) -> None:
    """Renames the version out of the servers' sight (one atomic step, made durable), then deletes it."""
    hidden = os.path.join(base, f"{PRUNE_PREFIX}{version}-{os.getpid()}")
    os.rename(os.path.join(base, str(version)), hidden)
    fsync_path(base)
    shutil.rmtree(hidden)


# --- artifacts ---------------------------------------------------------------------------------------------------
def _under(uri: str, root: str) -> bool:
    if is_uri(root):
        return uri.startswith(root.rstrip("/") + "/")
    real = os.path.realpath(uri)
    return real.startswith(os.path.realpath(root).rstrip(os.sep) + os.sep)


def plan_artifacts(store, config: Config, plan: Plan) -> None:
    """Fills plan.artifacts: this pipeline's artifacts (LIVE, or marked by a prune that did not finish) that
    nothing keeps (the module's docstring), and plan.reports: the report folders of the runs older than the newest
    `keep_runs`. Call after plan_versions: the versions it keeps keep their lineage."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants
    from tfx.orchestration.portable.mlmd import execution_lib

    from pipeline import baseline
    from pipeline.window import gated
    from registry.graph import RUN_CONTEXT_TYPES, airflow_backfill_parent
    from reports import run_report_dir

    keep_runs = config.retention.keep_runs
    context = store.get_context_by_type_and_name(constants.PIPELINE_CONTEXT_TYPE_NAME, config.pipeline_name)
    if keep_runs == 0 or context is None:
        return
    Artifact, Event = metadata_store_pb2.Artifact, metadata_store_pb2.Event
    executions = {e.id: e for e in store.get_executions_by_context(context.id)}
    found = {}
    for run in (r for kind in RUN_CONTEXT_TYPES for r in store.get_contexts_by_type(kind)):
        ids = {e.id for e in store.get_executions_by_context(run.id)} & executions.keys()
        if ids:
            found[run.name] = (run.create_time_since_epoch, run.id, run.name, ids)
    # A DAG run's backfill (runners/airflow_runner.py) starts after its run: it is part of that run.
    for name in list(found):
        parent = airflow_backfill_parent(name)
        if parent in found:
            created, context_id, _, ids = found[parent]
            found[parent] = (created, context_id, parent, ids | found.pop(name)[3])
    runs = sorted(found.values())
    plan.runs, plan.kept_runs = len(runs), min(len(runs), keep_runs)
    if len(runs) <= keep_runs:
        return
    # Every older run's folder still on disk, not only the runs pruned now: what a killed prune left goes too.
    folders = (run_report_dir(config.output_root, config.pipeline_name, name) for _, _, name, _ in runs[:-keep_runs])
    plan.reports = [d for d in folders if os.path.isdir(d)]
    events = store.get_events_by_execution_ids(list(executions))
    inputs_of, producers_of = collections.defaultdict(list), collections.defaultdict(set)
    for event in events:
        if event.type == Event.OUTPUT:
            producers_of[event.artifact_id].add(event.execution_id)
        elif event.type == Event.INPUT:
            inputs_of[event.execution_id].append((event.artifact_id, event.path.steps[0].key if event.path.steps
                                                  else ""))
    artifacts = {a.id: a for a in store.get_artifacts_by_context(context.id)}
    types = {t.id: t.name for t in store.get_artifact_types()}

    used = set().union(*(ids for _, _, _, ids in runs[-keep_runs:]))
    used |= {x for x, e in executions.items() if execution_lib.is_execution_active(e)}
    keep = {e.artifact_id for e in events if e.execution_id in used}

    def lineage(artifact_id: int) -> None:
        todo = [artifact_id]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            for execution in producers_of.get(current, ()):
                todo += [a for a, key in inputs_of[execution] if key not in _NOT_LINEAGE]
    seen: set[int] = set()
    base = config.serving_model_dir
    # Versions on disk after this prune; with a remote base path (not pruned here), every pushed one.
    if is_uri(base):
        remaining = None
    else:
        remaining = {n for n in (os.listdir(base) if os.path.isdir(base) else []) if n.isdigit()}
        remaining -= {str(v) for v in plan.versions}
    for a in artifacts.values():
        if types.get(a.type_id) == "PushedModel" and a.custom_properties["pushed"].int_value == 1 and (
                remaining is None or a.custom_properties["pushed_version"].string_value in remaining):
            lineage(a.id)
    keep |= seen

    # The next baseline: blessed models, newest first, down to the first one no rollout rejected.
    rejected = rejected_versions(base) if not is_uri(base) and os.path.isdir(base) else set()
    blessings = sorted((a.custom_properties["current_model_id"].int_value, a.id) for a in artifacts.values()
                       if types.get(a.type_id) == "ModelBlessing" and a.custom_properties["blessed"].int_value == 1)
    for model_id, blessing_id in reversed(blessings):
        keep |= {model_id, blessing_id}
        if not rejected & baseline.pushed_versions(store, model_id):
            break

    live = [a for a in artifacts.values() if a.state == Artifact.LIVE]
    newest = {}
    for a in live:
        newest[a.type_id] = max(newest.get(a.type_id, 0), a.id)
    keep |= set(newest.values())

    # The rolling window and the drift check: the newest (and newest gated) Examples of the newest spans, and
    # the statistics computed from them.
    examples = [a for a in live if types.get(a.type_id) == "Examples"]
    passed = gated(store, [a.id for a in examples]) if examples else set()
    by_span = collections.defaultdict(list)
    for a in examples:
        by_span[a.custom_properties["span"].int_value if "span" in a.custom_properties else 0].append(a.id)
    window = max(1, config.continuous.window_spans) + 1
    needed = set()
    for span in sorted(by_span, reverse=True)[:window]:
        ids = sorted(by_span[span])
        needed |= {ids[-1], *[i for i in ids if i in passed][-1:]}
    keep |= needed
    readers = {x for x, pairs in inputs_of.items() if any(a in needed for a, _ in pairs)}
    keep |= {e.artifact_id for e in events if e.type == Event.OUTPUT and e.execution_id in readers
             and types.get(artifacts[e.artifact_id].type_id if e.artifact_id in artifacts else 0) == "ExampleStatistics"}

    plan.artifacts = sorted(
        (a for a in artifacts.values() if a.id not in keep and a.uri and _under(a.uri, config.pipeline_root)
         and a.state in (Artifact.LIVE, Artifact.MARKED_FOR_DELETION)), key=lambda a: a.id)


def delete_artifacts(store, artifacts) -> int:
    """TFX's garbage collection: mark, remove each URI once every artifact with it is marked, mark DELETED.
    Returns the number of artifacts marked DELETED. A crash between the steps leaves MARKED_FOR_DELETION
    artifacts (never used again), which the next prune finishes."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.io import fileio

    Artifact = metadata_store_pb2.Artifact
    for a in artifacts:
        a.state = Artifact.MARKED_FOR_DELETION
    if artifacts:
        store.put_artifacts(artifacts)
    deleted = 0
    for uri in sorted({a.uri for a in artifacts}):
        sharing = store.get_artifacts_by_uri(uri)
        if any(a.state not in (Artifact.MARKED_FOR_DELETION, Artifact.DELETED) for a in sharing):
            continue
        if fileio.exists(uri):
            if fileio.isdir(uri):
                fileio.rmtree(uri)
            else:
                fileio.remove(uri)
        # TFX's executor scratch folder of the execution that wrote it: <node>/.system/executor_execution/<id>.
        node, execution = os.path.dirname(os.path.dirname(uri)), os.path.basename(uri)
        scratch = os.path.join(node, ".system", "executor_execution", execution)
        if execution.isdigit() and fileio.exists(scratch) and all(
                a.state != Artifact.LIVE for a in _outputs_of(store, int(execution))):
            fileio.rmtree(scratch)
        for a in sharing:
            a.state = Artifact.DELETED
        store.put_artifacts(sharing)
        deleted += len(sharing)
    return deleted


def _outputs_of(store, execution_id: int) -> list:
    from ml_metadata.proto import metadata_store_pb2

    ids = [e.artifact_id for e in store.get_events_by_execution_ids([execution_id])
           if e.type == metadata_store_pb2.Event.OUTPUT]
    return store.get_artifacts_by_id(ids) if ids else []


# --- the whole ---------------------------------------------------------------------------------------------------
def enabled(config: Config) -> bool:
    return bool(config.retention.keep_versions or config.retention.keep_runs)


def make_plan(config: Config, store=None) -> Plan:
    plan = Plan()
    plan_versions(config, plan)
    if store is not None:
        plan_artifacts(store, config, plan)
    return plan


def _open_store(config: Config):
    """ML Metadata read-write, or None where there is nothing to prune (no store yet, or the orchestrator's own)."""
    from pipeline import metadata

    if config.metadata == "managed" or not metadata.exists(config):
        return None
    return metadata.open_store(config)


def prune(config: Config, dry_run: bool = False, out=sys.stdout) -> Plan:
    """Prunes versions, then artifacts (whose plan depends on the versions kept); prints what goes."""
    base = config.serving_model_dir
    if not dry_run and not is_uri(base):
        clean_leftovers(base)
    store = _open_store(config)
    plan = make_plan(config, store)
    verb = "would remove" if dry_run else "removed"
    for version in plan.versions:
        if not dry_run:
            remove_version(base, version)
            remove_card(config, version)
    if plan.versions:
        kept = ", ".join(f"{v} ({why})" for v, why in sorted(plan.kept_versions.items()))
        print(f"Retention: {verb} version(s) {', '.join(map(str, plan.versions))} of {base}; kept {kept}", file=out)
    if plan.artifacts:
        if dry_run:
            for a in plan.artifacts:
                print(f"  would remove artifact {a.id}: {os.path.relpath(a.uri, config.pipeline_root)}", file=out)
        else:
            delete_artifacts(store, plan.artifacts)
        print(f"Retention: {verb} {len(plan.artifacts)} artifact(s) of pipeline runs older than the newest "
              f"{plan.kept_runs} (of {plan.runs}), marked DELETED in ML Metadata", file=out)
    for folder in plan.reports:
        if dry_run:
            print(f"  would remove reports {os.path.relpath(folder, config.output_root)}", file=out)
        else:
            shutil.rmtree(folder)
    if plan.reports:
        print(f"Retention: {verb} the report folders of {len(plan.reports)} pipeline run(s) older than the newest "
              f"{plan.kept_runs} (of {plan.runs})", file=out)
    return plan


def prune_after_run(config: Config) -> None:
    """runners/harness.py, after a successful run: a failure here is a warning; the run's result stands."""
    if not enabled(config):
        return
    try:
        prune(config)
    except Exception as e:  # the run succeeded; say what could not be pruned
        print(f"warning: retention: {type(e).__name__}: {e}; nothing more was pruned", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.retention",
        description="Removes pushed versions beyond retention.keep_versions and the artifacts of pipeline runs "
                    "older than the newest retention.keep_runs (ML Metadata marks them DELETED).")
    parser.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    args = parser.parse_args(argv)
    from pipeline.config import load_config_or_exit

    config = load_config_or_exit(check_data=False)
    if not enabled(config):
        print("Retention is off (retention.keep_versions and retention.keep_runs are 0): nothing to prune.")
        return 0
    from runners import runlock

    try:
        lock = runlock.acquire_run_lock(config, reason="prune", by="python -m pipeline.retention")
    except runlock.LockHeld as e:
        print(f"error: a run is in progress on this output root: {e}; nothing was pruned", file=sys.stderr)
        return 1
    with lock:
        try:
            plan = prune(config, dry_run=args.dry_run)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"error: retention: {e}", file=sys.stderr)
            return 1
    if not plan.versions and not plan.artifacts and not plan.reports:
        print(f"Retention: nothing to prune ({len(plan.kept_versions)} version(s), {plan.runs} run(s) kept).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

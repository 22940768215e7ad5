"""Retention (pipeline/retention.py): pushed versions pruned to retention.keep_versions, never stable, canary or the
one serving; the artifacts of old pipeline runs removed and marked DELETED in ML Metadata, and the next run still
cached."""
import io
import os
import shutil
import subprocess
import sys

import pytest
from conftest import SMALL_DATA, PipelineRun

from pipeline import retention
from pipeline.config import ConfigError, load_config
from pipeline.versions import PRUNE_PREFIX
from serving.registry import RolloutRecord, write_record
from serving.source import list_versions

V = [1700000000 + i for i in range(1, 9)]  # eight versions, oldest first


def _config(tmp_path, overlay="retention: {keep_versions: 3, keep_runs: 0}\n"):
    (tmp_path / "overlay.yaml").write_text(overlay)
    return load_config(env={"TFX_E2E_CONFIG": str(tmp_path / "overlay.yaml"),
                            "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "output")}, check_data=False)


def _versions(base, versions):
    for version in versions:
        os.makedirs(os.path.join(base, str(version), "variables"))
        with open(os.path.join(base, str(version), "saved_model.pb"), "wb") as f:
            f.write(b"graph")
        with open(os.path.join(base, str(version), "variables", "variables.index"), "wb") as f:
            f.write(b"index")


def test_versions_are_pruned_to_n_and_stable_canary_retiring_and_serving_are_kept(tmp_path, monkeypatch):
    config = _config(tmp_path)
    base = config.serving_model_dir
    _versions(base, V)
    # A rollout: stable V[1], canary V[2] at 10 %, the previous stable V[3] retiring, and the newest rejected, so
    # V[6] is the version that serves.
    write_record(base, RolloutRecord(stable=V[1], canary=V[2], canary_percent=10, retiring=V[3], retire_at=1.0,
                                     rejected={str(V[7]): {"time": "t", "reason": "errors"}}))
    deleted = []
    rmtree = retention.shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        deleted.append(os.path.basename(path))
        rmtree(path, *args, **kwargs)
    monkeypatch.setattr(retention.shutil, "rmtree", recording_rmtree)
    out = io.StringIO()
    plan = retention.prune(config, out=out)
    assert plan.versions == [V[0], V[4]]
    assert plan.kept_versions == {V[1]: "stable", V[2]: "canary", V[3]: "retiring", V[5]: "newest 3",
                                  V[6]: "serving", V[7]: "newest"}
    assert sorted(os.listdir(base)) == sorted([str(v) for v in (V[1], V[2], V[3], V[5], V[6], V[7])] + ["rollout.json"])
    # Each went out of sight (renamed) before it was deleted: a server never saw a half-deleted version.
    assert deleted == [f"{PRUNE_PREFIX}{V[0]}-{os.getpid()}", f"{PRUNE_PREFIX}{V[4]}-{os.getpid()}"]
    assert f"removed version(s) {V[0]}, {V[4]} of {base}" in out.getvalue()
    # Nothing more to prune the second time.
    assert retention.prune(config, out=io.StringIO()).versions == []


def test_without_a_rollout_the_newest_n_stay_and_a_dry_run_removes_nothing(tmp_path):
    config = _config(tmp_path, f"retention: {{keep_versions: 2, keep_runs: 0}}\nserving: {{labels: {{pinned: {V[0]}}}}}\n")
    base = config.serving_model_dir
    _versions(base, V[:5])
    out = io.StringIO()
    plan = retention.prune(config, dry_run=True, out=out)
    assert plan.versions == [V[1], V[2]]
    assert plan.kept_versions == {V[0]: "label pinned", V[3]: "newest 2", V[4]: "serving"}
    assert f"would remove version(s) {V[1]}, {V[2]}" in out.getvalue()
    assert len(os.listdir(base)) == 5
    retention.prune(config, out=io.StringIO())
    assert sorted(list_versions(base)[0]) == [V[0], V[3], V[4]]


def test_keep_versions_0_keeps_every_version(tmp_path):
    config = _config(tmp_path, "retention: {keep_versions: 0, keep_runs: 0}\n")
    _versions(config.serving_model_dir, V)
    assert not retention.enabled(config)
    assert retention.prune(config, out=io.StringIO()).versions == []
    assert len(os.listdir(config.serving_model_dir)) == len(V)


def test_a_prune_killed_midway_leaves_no_visible_partial_version_and_the_next_one_cleans_up(tmp_path, monkeypatch):
    config = _config(tmp_path, "retention: {keep_versions: 1, keep_runs: 0}\n")
    base = config.serving_model_dir
    _versions(base, V[:2])

    def killed(path, *args, **kwargs):
        os.remove(os.path.join(path, "saved_model.pb"))  # half deleted when the process dies
        raise KeyboardInterrupt
    monkeypatch.setattr(retention.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        retention.prune(config, out=io.StringIO())
    monkeypatch.undo()
    assert list_versions(base) == ({V[1]: os.path.join(base, str(V[1]))}, {})
    hidden = f"{PRUNE_PREFIX}{V[0]}-{os.getpid()}"
    assert sorted(os.listdir(base)) == sorted([str(V[1]), hidden])
    # Left by a process that is gone (here: renamed to a dead pid's name), it is removed by the next prune.
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    os.rename(os.path.join(base, hidden), os.path.join(base, f"{PRUNE_PREFIX}{V[0]}-{child.pid}"))
    retention.prune(config, out=io.StringIO())
    assert os.listdir(base) == [str(V[1])]


def test_retention_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"retention.keep_runs: must be >= 0 \(0 keeps all\), got -1"):
        _config(tmp_path, "retention: {keep_versions: 5, keep_runs: -1}\n")
    with pytest.raises(ConfigError, match="retention.*keep_version"):
        _config(tmp_path, "retention: {keep_version: 5}\n")
    defaults = load_config(env={}, check_data=False).retention
    assert (defaults.keep_versions, defaults.keep_runs) == (5, 10)


def _cli(tmp_path, overlay, *args):
    (tmp_path / "overlay.yaml").write_text(overlay)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFX_E2E_")}
    env.update(TFX_E2E_CONFIG=str(tmp_path / "overlay.yaml"), TFX_E2E_OUTPUT_ROOT=str(tmp_path / "output"))
    return subprocess.run([sys.executable, "-m", "pipeline.retention", *args], env=env, capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)


def test_the_command_line(tmp_path):
    config = _config(tmp_path, "retention: {keep_versions: 1, keep_runs: 10}\n")
    _versions(config.serving_model_dir, V[:3])
    done = _cli(tmp_path, "retention: {keep_versions: 1, keep_runs: 10}\n", "--dry-run")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"Retention: would remove version(s) {V[0]}, {V[1]} of {config.serving_model_dir}; "
                           f"kept {V[2]} (serving)\n")
    assert len(os.listdir(config.serving_model_dir)) == 3
    done = _cli(tmp_path, "retention: {keep_versions: 1, keep_runs: 10}\n")
    assert done.returncode == 0 and os.listdir(config.serving_model_dir) == [str(V[2])]
    done = _cli(tmp_path, "retention: {keep_versions: 1, keep_runs: 10}\n")
    assert done.stdout == "Retention: nothing to prune (1 version(s), 0 run(s) kept).\n"
    done = _cli(tmp_path, "retention: {keep_versions: -1, keep_runs: 10}\n")
    assert done.returncode == 2
    assert done.stderr == "error: configuration: retention.keep_versions: must be >= 0 (0 keeps all), got -1\n"
    # A run in progress on the output root (it holds the run lock): nothing is pruned.
    from runners import runlock
    with runlock.acquire_run_lock(config, env={}, reason="manual"):
        done = _cli(tmp_path, "retention: {keep_versions: 1, keep_runs: 10}\n")
    assert done.returncode == 1
    assert done.stderr.startswith("error: a run is in progress on this output root: ")
    assert done.stderr.endswith("; nothing was pruned\n")


TINY = """
tuner: {enabled: false}
trainer: {train_steps: 20, eval_steps: 5, batch_size: 64}
evaluator: {auc_lower_bound: 0.0, auc_max_drop: 1.0}
retention: {keep_versions: 1, keep_runs: 1}
"""


def _runs(store):
    """[(run context, {execution id: execution})], oldest first."""
    from tfx.dsl.compiler import constants

    runs = sorted(store.get_contexts_by_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME),
                  key=lambda c: (c.create_time_since_epoch, c.id))
    return [(run, {e.id: e for e in store.get_executions_by_context(run.id)}) for run in runs]


def _touched(store, executions):
    return {e.artifact_id for e in store.get_events_by_execution_ids(list(executions))}


@pytest.mark.e2e
def test_artifacts_of_old_runs_are_deleted_in_ml_metadata_and_the_next_run_is_still_cached(tmp_path):
    """keep_runs 1, keep_versions 1: data A, then B, then B again. After B, A's run is pruned: its folders gone and
    its artifacts DELETED in ML Metadata, except what B's run used (the schema, A's model as B's baseline), and its
    report folder gone; the cache of A's ExampleGen no longer hits; B again is cached throughout and deletes
    nothing more (the first B's report folder goes)."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata as tfx_metadata
    from tfx.orchestration.portable import cache_utils

    from pipeline import metadata
    from reports import report_dir, run_report_dir

    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    roots = {}
    for name, rows in (("a", lines[1:401]), ("b", lines[401:801])):
        roots[name] = tmp_path / f"data-{name}"
        roots[name].mkdir()
        (roots[name] / "data.csv").write_text(lines[0] + "".join(rows))
    assert PipelineRun(tmp_path, roots["a"], TINY)() == 0
    run_b = PipelineRun(tmp_path, roots["b"], TINY)
    assert run_b() == 0
    config = run_b.config()
    DELETED, LIVE = metadata_store_pb2.Artifact.DELETED, metadata_store_pb2.Artifact.LIVE

    store = metadata.open_store(config, readonly=True)
    (_, first), (context_b, second) = _runs(store)
    only_a = _touched(store, first) - _touched(store, second)
    artifacts = {a.id: a for a in store.get_artifacts()}
    types = {t.id: t.name for t in store.get_artifact_types()}
    gone = {types[artifacts[i].type_id] for i in only_a}
    assert {"Examples", "ExampleStatistics", "TransformGraph", "ModelRun", "ModelEvaluation",
            "PushedModel"} <= gone, gone
    for artifact_id in only_a:
        assert artifacts[artifact_id].state == DELETED, types[artifacts[artifact_id].type_id]
        assert not os.path.exists(artifacts[artifact_id].uri)
    for artifact_id in _touched(store, second):
        assert artifacts[artifact_id].state == LIVE
        assert os.path.exists(artifacts[artifact_id].uri)
    # A's model was B's baseline: it stays.
    assert any(types[artifacts[i].type_id] == "Model" for i in _touched(store, first) & _touched(store, second))
    assert len(list_versions(config.serving_model_dir)[0]) == 1
    # TFX's cache lookup for A's ExampleGen execution finds nothing to reuse (its output is not LIVE).
    [example_gen] = [e for e in first.values()
                     if any(c.name.endswith(".ExampleGen") for c in store.get_contexts_by_execution(e.id))]
    [cache] = [c for c in store.get_contexts_by_execution(example_gen.id) if c.type_id == store.get_context_type(
        "execution_cache").id]
    with tfx_metadata.Metadata(metadata.connection_config(config, readonly=True)) as handle:
        assert cache_utils.get_cached_outputs(handle, cache) is None
    deleted = sum(a.state == DELETED for a in artifacts.values())
    # A's reports went with its run; B's stay in B's folder and, the newest run's, in the pipeline's.
    reports = report_dir(config.output_root, config.pipeline_name)
    assert os.listdir(os.path.join(reports, "runs")) == [os.path.basename(run_report_dir(
        config.output_root, config.pipeline_name, context_b.name))]
    for name in ("evaluation.html", "statistics.html"):
        with open(os.path.join(run_report_dir(config.output_root, config.pipeline_name, context_b.name), name)) as f, \
                open(os.path.join(reports, name)) as top:
            assert f.read() == top.read(), name

    assert run_b() == 0
    store = metadata.open_store(config, readonly=True)
    (_, _), (_, second), (context_c, third) = _runs(store)
    assert os.listdir(os.path.join(reports, "runs")) == [os.path.basename(run_report_dir(
        config.output_root, config.pipeline_name, context_c.name))]
    states = {}
    for execution in third.values():
        [node] = [c.name.split(".", 1)[1] for c in store.get_contexts_by_execution(execution.id)
                  if c.type_id == store.get_context_type("node").id]
        states[node] = execution.last_known_state
    # Every component cached; the two resolvers resolve again on every run (they have no cache).
    assert states == {node: (metadata_store_pb2.Execution.COMPLETE if node.endswith("_resolver")
                             else metadata_store_pb2.Execution.CACHED) for node in states}
    assert len(states) == 11
    assert _touched(store, third) <= _touched(store, second)
    assert sum(a.state == DELETED for a in store.get_artifacts()) == deleted


class _Store:
    """A real ML Metadata store (in memory) shaped as TFX writes it: pipeline, runs, executions, events."""

    def __init__(self, config):
        from ml_metadata import metadata_store
        from ml_metadata.proto import metadata_store_pb2 as pb

        self.pb, self.config = pb, config
        connection = pb.ConnectionConfig()
        connection.fake_database.SetInParent()
        self.store = metadata_store.MetadataStore(connection)
        self.context_types = {name: self.store.put_context_type(pb.ContextType(name=name))
                              for name in ("pipeline", "pipeline_run")}
        [self.pipeline] = self.store.put_contexts([pb.Context(type_id=self.context_types["pipeline"],
                                                              name=config.pipeline_name)])
        self.execution_type = self.store.put_execution_type(pb.ExecutionType(name="Component"))
        self.artifact_types = {}
        self.run = None

    def new_run(self, name):
        [self.run] = self.store.put_contexts([self.pb.Context(type_id=self.context_types["pipeline_run"], name=name)])

    def execute(self, node, inputs=(), outputs=(), **custom):
        """An execution of `node` in the current run; inputs: [(key, artifact id)]; outputs: [(key, type, props)]."""
        pb = self.pb
        [execution_id] = self.store.put_executions([pb.Execution(type_id=self.execution_type,
                                                                 last_known_state=pb.Execution.COMPLETE)])
        made = []
        for key, type_name, properties in outputs:
            if type_name not in self.artifact_types:
                self.artifact_types[type_name] = self.store.put_artifact_type(pb.ArtifactType(name=type_name))
            uri = os.path.join(self.config.pipeline_root, node, key, str(execution_id))
            os.makedirs(uri)
            artifact = pb.Artifact(type_id=self.artifact_types[type_name], uri=uri, state=pb.Artifact.LIVE)
            for name, value in properties.items():
                if isinstance(value, int):
                    artifact.custom_properties[name].int_value = value
                else:
                    artifact.custom_properties[name].string_value = value
            [artifact_id] = self.store.put_artifacts([artifact])
            made.append(artifact_id)
        events = []
        for kind, pairs in ((pb.Event.INPUT, inputs), (pb.Event.OUTPUT, [(o[0], a) for o, a in zip(outputs, made, strict=True)])):
            for key, artifact_id in pairs:
                event = pb.Event(type=kind, artifact_id=artifact_id, execution_id=execution_id)
                event.path.steps.add().key = key
                events.append(event)
        self.store.put_events(events)
        contexts = [self.pipeline, self.run]
        self.store.put_attributions_and_associations(
            [pb.Attribution(artifact_id=a, context_id=c) for a in made for c in contexts],
            [pb.Association(execution_id=execution_id, context_id=c) for c in contexts])
        return made[0] if len(made) == 1 else made


def _history(tmp_path):
    """Four runs on spans 1-4: 1 and 2 blessed and pushed (versions 100 and 200; only 200 still on disk), 3 not
    blessed, 4 stopped after ExampleGen. Returns (config, store, ids by name)."""
    config = _config(tmp_path, "retention: {keep_versions: 0, keep_runs: 1}\n")
    _versions(config.serving_model_dir, [200])
    s, ids = _Store(config), {}
    for n in (1, 2, 3, 4):
        s.new_run(f"run-{n}")
        ids[f"X{n}"] = s.execute("ExampleGen", outputs=[("examples", "Examples", {"span": n})])
        if n == 4:
            break
        ids[f"S{n}"] = s.execute("StatisticsGen", [("examples", ids[f"X{n}"])],
                                 [("statistics", "ExampleStatistics", {})])
        ids[f"M{n}"] = s.execute("Trainer", [("examples", ids[f"X{n}"])], [("model", "Model", {})])
        baseline = [("baseline_model", ids["M1"])] if n > 1 else []
        ids[f"B{n}"] = s.execute("Evaluator", [("model", ids[f"M{n}"]), *baseline], [("blessing", "ModelBlessing", {
            "blessed": int(n < 3), "current_model_id": ids[f"M{n}"]})])
        if n < 3:
            ids[f"P{n}"] = s.execute("Pusher", [("model", ids[f"M{n}"]), ("model_blessing", ids[f"B{n}"])],
                                     [("pushed_model", "PushedModel", {"pushed": 1, "pushed_version": f"{n}00"})])
    return config, s.store, ids


def test_what_old_runs_leave_is_planned_from_ml_metadata_and_deleted_as_tfx_does(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    config, store, ids = _history(tmp_path)
    plan = retention.make_plan(config, store)
    names = {v: k for k, v in ids.items()}
    # Kept: run 4's Examples; the served version's lineage (P2, M2, B2, X2; not M1 through baseline_model); the
    # next baseline M2/B2; spans 4 and 3 for the window and the drift check (X3, S3); the newest of each type (M3,
    # B3). Deleted: run 1's pushed model, whose version is gone, and everything else of runs 1-3.
    assert sorted(names[a.id] for a in plan.artifacts) == ["B1", "M1", "P1", "S1", "S2", "X1"]
    assert (plan.runs, plan.kept_runs) == (4, 1)
    assert retention.delete_artifacts(store, plan.artifacts) == 6
    states = {names[a.id]: a.state for a in store.get_artifacts() if a.id in names.values()}
    for name, state in states.items():
        deleted = name in ("B1", "M1", "P1", "S1", "S2", "X1")
        assert state == (metadata_store_pb2.Artifact.DELETED if deleted else metadata_store_pb2.Artifact.LIVE), name
    assert {a.id: os.path.exists(a.uri) for a in store.get_artifacts()} == {
        a.id: a.state == metadata_store_pb2.Artifact.LIVE for a in store.get_artifacts()}
    assert retention.make_plan(config, store).artifacts == []


def test_the_report_folders_of_pruned_runs_go_with_their_artifacts(tmp_path, monkeypatch):
    """_history's runs 1-4 with keep_runs 1: the report folders of runs 1-3 (the runs whose artifacts are pruned)
    go, run 4's and the pipeline's top-level copies stay; a dry run and keep_runs 0 remove none."""
    import dataclasses

    from reports import report_dir, run_report_dir

    config, store, _ = _history(tmp_path)
    monkeypatch.setattr(retention, "_open_store", lambda _: store)
    top = report_dir(config.output_root, config.pipeline_name)
    folders = {f"run-{n}": run_report_dir(config.output_root, config.pipeline_name, f"run-{n}") for n in (1, 2, 3, 4)}
    for folder in [*folders.values(), top]:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "statistics.html"), "w") as f:
            f.write("page")
    shutil.rmtree(folders["run-2"])  # a run that wrote no reports: nothing to remove

    keep_all = dataclasses.replace(config, retention=dataclasses.replace(config.retention, keep_runs=0))
    assert retention.prune(keep_all, out=io.StringIO()).reports == []
    out = io.StringIO()
    assert retention.prune(config, dry_run=True, out=out).reports == [folders["run-1"], folders["run-3"]]
    assert ("  would remove reports reports/chicago-taxi/runs/run-1\n  would remove reports reports/chicago-taxi/runs/"
            "run-3\nRetention: would remove the report folders of 2 pipeline run(s) older than the newest 1 (of 4)\n"
            ) in out.getvalue()
    assert sorted(os.listdir(os.path.join(top, "runs"))) == ["run-1", "run-3", "run-4"]

    out = io.StringIO()
    assert retention.prune(config, out=out).reports == [folders["run-1"], folders["run-3"]]
    assert ("Retention: removed the report folders of 2 pipeline run(s) older than the newest 1 (of 4)\n"
            in out.getvalue())
    assert os.listdir(os.path.join(top, "runs")) == ["run-4"]
    assert sorted(os.listdir(top)) == ["runs", "statistics.html"]
    assert retention.prune(config, out=io.StringIO()).reports == []


def test_the_next_baseline_is_kept_past_a_rejected_model(tmp_path):
    config, store, ids = _history(tmp_path)
    write_record(config.serving_model_dir, RolloutRecord(stable=200, rejected={"200": {"time": "t", "reason": "r"}}))
    names = {v: k for k, v in ids.items()}
    # Version 200 (M2) was rolled back: the Evaluator's next baseline is M1, which stays with its blessing.
    assert sorted(names[a.id] for a in retention.make_plan(config, store).artifacts) == ["P1", "S1", "S2", "X1"]


def test_a_marked_artifact_whose_folder_another_artifact_shares_stays_until_both_are_marked(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    config, store, ids = _history(tmp_path)
    [x1, s1] = store.get_artifacts_by_id([ids["X1"], ids["S1"]])
    x1.uri = s1.uri  # two artifacts on one folder (an importer, say)
    store.put_artifacts([x1])
    [s1] = store.get_artifacts_by_id([ids["S1"]])
    assert retention.delete_artifacts(store, [s1]) == 0
    [x1, s1] = store.get_artifacts_by_id([ids["X1"], ids["S1"]])
    assert os.path.isdir(s1.uri)
    assert (x1.state, s1.state) == (metadata_store_pb2.Artifact.LIVE, metadata_store_pb2.Artifact.MARKED_FOR_DELETION)
    assert retention.delete_artifacts(store, [x1]) == 2
    assert not os.path.exists(s1.uri)

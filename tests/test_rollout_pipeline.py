"""A version a canary rollout rejected, seen from the pipeline: never the Evaluator's baseline (pipeline/baseline.py
reads the rollout record through ML Metadata's push lineage), and an identical model is not pushed again
(pipeline/pusher.py)."""
import json
import os

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import standard_artifacts

from pipeline import baseline
from pipeline.pusher import AtomicPushExecutor
from pipeline.versions import push_atomically
from serving.registry import RolloutRecord, write_record


def _store():
    config = metadata_store_pb2.ConnectionConfig()
    config.fake_database.SetInParent()
    return metadata_store.MetadataStore(config)


def _artifact(store, kind, cls, **string_properties):
    artifact = metadata_store_pb2.Artifact(type_id=kind)
    for key, value in string_properties.items():
        artifact.custom_properties[key].string_value = value
    [artifact_id] = store.put_artifacts([artifact])
    tfx_artifact = cls()
    tfx_artifact.id = artifact_id
    return tfx_artifact


def _push(store, pusher_type, pushed_type, model, version):
    """A Pusher execution: the model in, a PushedModel with pushed_version out."""
    pushed = _artifact(store, pushed_type, standard_artifacts.PushedModel, pushed_version=str(version))
    [execution_id] = store.put_executions([metadata_store_pb2.Execution(type_id=pusher_type)])
    store.put_events([
        metadata_store_pb2.Event(artifact_id=model.id, execution_id=execution_id, type=metadata_store_pb2.Event.INPUT),
        metadata_store_pb2.Event(artifact_id=pushed.id, execution_id=execution_id,
                                 type=metadata_store_pb2.Event.OUTPUT)])


def test_a_rejected_version_is_never_the_baseline(tmp_path):
    store = _store()
    model_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Model"))
    pushed_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="PushedModel"))
    blessing_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelBlessing"))
    pusher_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Pusher"))
    good, rejected, candidate = (_artifact(store, model_type, standard_artifacts.Model) for _ in range(3))
    _push(store, pusher_type, pushed_type, good, 1700000100)
    _push(store, pusher_type, pushed_type, rejected, 1700000200)
    blessings = []
    for model in (good, rejected):
        blessing = _artifact(store, blessing_type, standard_artifacts.ModelBlessing)
        blessing.set_int_custom_property("blessed", 1)
        blessing.set_int_custom_property("current_model_id", model.id)
        blessings.append(blessing)
    inputs = {baseline.MODEL: [good, rejected, candidate], baseline.BLESSING: blessings,
              baseline.CANDIDATE: [candidate]}
    assert baseline.pushed_versions(store, rejected.id) == {1700000200}
    serving = str(tmp_path / "serving")

    # No record yet: the newest blessed model other than the candidate.
    chosen = baseline.LatestBlessedBaselineStrategy(serving).resolve_artifacts(store, inputs)
    assert [m.id for m in chosen[baseline.MODEL]] == [rejected.id]
    write_record(serving, RolloutRecord(stable=1700000100, rejected={"1700000200": {"time": "t", "reason": "r"}}))
    chosen = baseline.LatestBlessedBaselineStrategy(serving).resolve_artifacts(store, inputs)
    assert [m.id for m in chosen[baseline.MODEL]] == [good.id]
    assert [b.id for b in chosen[baseline.BLESSING]] == [blessings[0].id]
    assert [m.id for m in chosen[baseline.CANDIDATE]] == [candidate.id]


def _model_dir(path, content=b"graph"):
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(content)
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return path


def _run_pusher(tmp_path, model_path, base, name):
    model = standard_artifacts.Model()
    model.uri = os.path.dirname(model_path)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / f"blessing-{name}")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f"pushed-{name}")
    destination = json.dumps({"filesystem": {"base_directory": base}})
    AtomicPushExecutor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                            {"push_destination": destination})
    return pushed


def test_a_rejected_model_is_not_pushed_again(tmp_path):
    base = str(tmp_path / "serving")
    model = _model_dir(str(tmp_path / "trained" / "Format-Serving"))
    version = push_atomically(model, base)
    write_record(base, RolloutRecord(stable=1, rejected={str(version): {"time": "t", "reason": "r"}}))
    pushed = _run_pusher(tmp_path, model, base, "again")
    assert pushed.get_int_custom_property("pushed") == 0
    assert sorted(os.listdir(base)) == [str(version), "rollout.json"]
    # Another model is pushed as usual.
    other = _model_dir(str(tmp_path / "retrained" / "Format-Serving"), b"other graph")
    pushed = _run_pusher(tmp_path, other, base, "other")
    assert pushed.get_int_custom_property("pushed") == 1
    assert int(pushed.get_string_custom_property("pushed_version")) > version

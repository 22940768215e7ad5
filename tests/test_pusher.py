"""The atomic, durable, deduplicating push (pipeline/pusher.py, pipeline/versions.py) on real directories."""
import json
import os
import stat
import subprocess
import sys
import threading

import pytest
from tfx.types import standard_artifacts

from pipeline import pusher, versions
from pipeline.fingerprint import tree_digest
from serving.registry import RolloutRecord, write_record


def _model(root, content=b"graph"):
    os.makedirs(os.path.join(root, "variables"), exist_ok=True)
    with open(os.path.join(root, "saved_model.pb"), "wb") as f:
        f.write(content)
    with open(os.path.join(root, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return root


def test_push_writes_a_complete_integer_version_and_no_temporary(tmp_path):
    model = _model(str(tmp_path / "model"))
    base = str(tmp_path / "serving" / "taxi")
    version = versions.push_atomically(model, base)
    assert os.listdir(base) == [str(version)]
    assert sorted(os.listdir(os.path.join(base, str(version)))) == ["saved_model.pb", "variables"]
    assert tree_digest(os.path.join(base, str(version))) == tree_digest(model)


def test_versions_always_increase(tmp_path):
    base = str(tmp_path / "serving")
    os.makedirs(os.path.join(base, "9999999999"))  # a version from the future
    version = versions.push_atomically(_model(str(tmp_path / "m")), base)
    assert version == 10000000000
    assert versions.served_versions(base) == [9999999999, 10000000000]


def test_identical_model_is_found_and_changed_model_is_not(tmp_path):
    base = str(tmp_path / "serving")
    version = versions.push_atomically(_model(str(tmp_path / "a")), base)
    assert versions.find_identical_version(base, _model(str(tmp_path / "b"))) == version
    assert versions.find_identical_version(base, _model(str(tmp_path / "c"), b"other graph")) is None


def test_failed_copy_leaves_nothing_behind(tmp_path):
    base = str(tmp_path / "serving")
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        versions.push_atomically(missing, base)
    assert os.listdir(base) == []


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    model = _model(str(tmp_path / "model"))

    def rename(source, target):
        assert os.path.basename(source).startswith(versions.TMP_PREFIX) and os.listdir(source)  # copied in full
        raise OSError("rename failed")
    monkeypatch.setattr(versions.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        versions.push_atomically(model, base)
    assert os.listdir(base) == []


def test_tree_digest_follows_names_and_bytes_not_location(tmp_path):
    a, b = _model(str(tmp_path / "a")), _model(str(tmp_path / "elsewhere" / "b"))
    assert tree_digest(a) == tree_digest(b)
    os.rename(os.path.join(b, "variables", "variables.index"), os.path.join(b, "variables.index"))
    assert tree_digest(a) != tree_digest(b)  # same bytes under another relative path


def _push_through_executor(tmp_path, model_root, base, name):
    """AtomicPushExecutor.Do as the Pusher component calls it: a blessed Model whose Format-Serving is model_root."""
    model = standard_artifacts.Model()
    model.uri = os.path.dirname(model_root)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / f"blessing-{name}")
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f"pushed-{name}")
    pusher.AtomicPushExecutor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                                   {"push_destination": json.dumps({"filesystem": {"base_directory": base}})})
    return pushed


def test_a_rollback_to_earlier_data_is_pushed_again_and_serves(tmp_path):
    """Data A -> B -> A: the third model equals the first, but B serves; it must become a new, highest version."""
    base = str(tmp_path / "serving")
    a = _model(str(tmp_path / "run1" / "Format-Serving"), b"model of A")
    b = _model(str(tmp_path / "run2" / "Format-Serving"), b"model of B")
    a_again = _model(str(tmp_path / "run3" / "Format-Serving"), b"model of A")
    pushed_versions = []
    for name, model in (("1", a), ("2", b), ("3", a_again)):
        pushed = _push_through_executor(tmp_path, model, base, name)
        assert pushed.get_int_custom_property("pushed") == 1
        assert not pushed.has_custom_property(pusher.ALREADY_SERVED)
        pushed_versions.append(int(pushed.get_string_custom_property("pushed_version")))
    assert pushed_versions[0] < pushed_versions[1] < pushed_versions[2]
    assert versions.served_versions(base) == pushed_versions
    assert versions.serving_version(base) == pushed_versions[2]
    assert tree_digest(os.path.join(base, str(pushed_versions[2]))) == tree_digest(a)
    # A fourth run on A: that very model serves now, so nothing new is pushed.
    pushed = _push_through_executor(tmp_path, _model(str(tmp_path / "run4" / "Format-Serving"), b"model of A"),
                                    base, "4")
    assert pushed.get_int_custom_property(pusher.ALREADY_SERVED) == 1
    assert pushed.get_string_custom_property("pushed_version") == str(pushed_versions[2])
    assert versions.served_versions(base) == pushed_versions


def test_a_canary_rollback_to_the_stable_model_is_not_pushed_again(tmp_path):
    """Canary rollout: B was rejected, so A (stable) serves; retraining A finds it serving and pushes nothing."""
    base = str(tmp_path / "serving")
    a = versions.push_atomically(_model(str(tmp_path / "a"), b"model of A"), base)
    b = versions.push_atomically(_model(str(tmp_path / "b"), b"model of B"), base)
    write_record(base, RolloutRecord(stable=a, rejected={str(b): {"time": "t", "reason": "errors"}}))
    assert versions.serving_version(base) == a
    os.mkdir(os.path.join(base, f".tmp-1700000000-{_dead_pid()}"))  # a push killed mid-copy
    pushed = _push_through_executor(tmp_path, _model(str(tmp_path / "run" / "Format-Serving"), b"model of A"),
                                    base, "again")
    assert pushed.get_int_custom_property(pusher.ALREADY_SERVED) == 1
    assert pushed.get_string_custom_property("pushed_version") == str(a)
    assert sorted(os.listdir(base)) == sorted([str(a), str(b), "rollout.json"])  # leftover gone too


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_leftovers_of_dead_pushes_are_removed_and_a_live_one_is_kept(tmp_path):
    base = tmp_path / "serving"
    dead, alive = _dead_pid(), os.getppid()
    for name in (f".tmp-1700000000-{dead}", f".prune-1600000000-{dead}", f".tmp-1700000001-{alive}"):
        (base / name / "variables").mkdir(parents=True)
        (base / name / "saved_model.pb").write_bytes(b"half")
    (base / "rollout.json").write_text("{}")
    version = versions.push_atomically(_model(str(tmp_path / "model")), str(base))
    assert sorted(os.listdir(base)) == sorted([f".tmp-1700000001-{alive}", "rollout.json", str(version)])


def test_two_pushes_racing_get_two_distinct_complete_versions(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    models = [_model(str(tmp_path / f"m{i}"), f"graph {i}".encode()) for i in range(2)]
    monkeypatch.setattr(versions.time, "time", lambda: 1700000000.0)  # both start from the same candidate number
    start = threading.Barrier(2)
    copytree = versions.shutil.copytree

    def copy_together(source, target, *args, **kwargs):
        if source not in models:  # copytree's own recursion
            return copytree(source, target, *args, **kwargs)
        start.wait(timeout=10)
        result = copytree(source, target, *args, **kwargs)
        start.wait(timeout=10)  # both copies are done before either picks its number
        return result
    monkeypatch.setattr(versions.shutil, "copytree", copy_together)
    picked, errors = {}, []

    def push(i):
        try:
            picked[i] = versions.push_atomically(models[i], base)
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(picked.values()) == [1700000000, 1700000001]
    assert sorted(os.listdir(base)) == ["1700000000", "1700000001"]
    for i, version in picked.items():
        assert tree_digest(os.path.join(base, str(version))) == tree_digest(models[i])


def test_a_version_taken_between_check_and_rename_is_never_overwritten(tmp_path, monkeypatch):
    """Another machine (beyond the flock) takes the number after this push looked: the rename fails, next number."""
    base = str(tmp_path / "serving")
    os.makedirs(base)
    monkeypatch.setattr(versions.time, "time", lambda: 1700000000.0)
    listing = versions.served_versions

    def stale_then_taken(directory):
        versions = listing(directory)
        if not os.path.exists(os.path.join(base, "1700000000")):
            _model(os.path.join(base, "1700000000"), b"the other machine's model")
        return versions
    monkeypatch.setattr(versions, "served_versions", stale_then_taken)
    monkeypatch.setattr(versions.os.path, "exists", lambda path: False)
    version = versions.push_atomically(_model(str(tmp_path / "model")), base)
    assert version == 1700000001
    with open(os.path.join(base, "1700000000", "saved_model.pb"), "rb") as f:
        assert f.read() == b"the other machine's model"
    assert tree_digest(os.path.join(base, "1700000001")) == tree_digest(str(tmp_path / "model"))


def test_every_file_and_directory_is_fsynced_before_the_rename_and_the_base_after(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    os.makedirs(base)
    model = _model(str(tmp_path / "model"))
    events = []
    fsync, rename = os.fsync, os.rename

    def recording_fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append(("dir" if stat.S_ISDIR(mode) else "file", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_rename(source, target):
        events.append(("rename", target))
        rename(source, target)
    monkeypatch.setattr(versions.os, "fsync", recording_fsync)
    monkeypatch.setattr(versions.os, "rename", recording_rename)
    version = versions.push_atomically(model, base)
    final = os.path.join(base, str(version))
    [renamed] = [i for i, event in enumerate(events) if event[0] == "rename"]
    before = events[:renamed]
    assert sorted(kind for kind, _ in before) == ["dir", "dir", "file", "file"]
    tmp = [path for kind, path in before if kind == "dir" and not path.endswith("variables")][0]
    assert os.path.basename(tmp).startswith(versions.TMP_PREFIX)
    assert sorted(os.path.relpath(path, tmp) for _, path in before) == [
        ".", "saved_model.pb", "variables", os.path.join("variables", "variables.index")]
    assert events[renamed:] == [("rename", final), ("dir", base)]


def test_a_file_system_without_flock_still_pushes(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(37, "No locks available")
    monkeypatch.setattr(versions.fcntl, "flock", no_flock)
    base = str(tmp_path / "serving")
    version = versions.push_atomically(_model(str(tmp_path / "model")), base)
    assert os.listdir(base) == [str(version)]

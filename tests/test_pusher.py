"""The atomic, deduplicating push (pipeline/pusher.py) on real directories."""
import os

import pytest

from pipeline import pusher
from pipeline.fingerprint import tree_digest


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
    version = pusher.push_atomically(model, base)
    assert os.listdir(base) == [str(version)]
    assert sorted(os.listdir(os.path.join(base, str(version)))) == ["saved_model.pb", "variables"]
    assert tree_digest(os.path.join(base, str(version))) == tree_digest(model)


def test_versions_always_increase(tmp_path):
    base = str(tmp_path / "serving")
    os.makedirs(os.path.join(base, "9999999999"))  # a version from the future
    version = pusher.push_atomically(_model(str(tmp_path / "m")), base)
    assert version == 10000000000
    assert pusher.served_versions(base) == [9999999999, 10000000000]


def test_identical_model_is_found_and_changed_model_is_not(tmp_path):
    base = str(tmp_path / "serving")
    version = pusher.push_atomically(_model(str(tmp_path / "a")), base)
    assert pusher.find_identical_version(base, _model(str(tmp_path / "b"))) == version
    assert pusher.find_identical_version(base, _model(str(tmp_path / "c"), b"other graph")) is None


def test_failed_copy_leaves_nothing_behind(tmp_path):
    base = str(tmp_path / "serving")
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        pusher.push_atomically(missing, base)
    assert os.listdir(base) == []


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    model = _model(str(tmp_path / "model"))

    def rename(source, target):
        assert os.path.basename(source).startswith(pusher.TMP_PREFIX) and os.listdir(source)  # copied in full
        raise OSError("rename failed")
    monkeypatch.setattr(pusher.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        pusher.push_atomically(model, base)
    assert os.listdir(base) == []


def test_tree_digest_follows_names_and_bytes_not_location(tmp_path):
    a, b = _model(str(tmp_path / "a")), _model(str(tmp_path / "elsewhere" / "b"))
    assert tree_digest(a) == tree_digest(b)
    os.rename(os.path.join(b, "variables", "variables.index"), os.path.join(b, "variables.index"))
    assert tree_digest(a) != tree_digest(b)  # same bytes under another relative path

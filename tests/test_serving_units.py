"""The local server's layers without a pipeline or a process: the source, the version policy, the manager's
loads, swaps, retries and unloads (on a small TF1-style SavedModel), the loader (a Keras 3 version TF Serving could
not run, sparse signatures), and the batcher."""
import asyncio
import gc
import os
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import write_toy_model
from tensorflow_serving.apis import get_model_status_pb2

from pipeline.config import BatchingConfig
from serving.batching import Batcher
from serving.errors import ServingError
from serving.loader import load_servable
from serving.manager import ModelManager, Polling
from serving.policy import single_model_config

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "model"
    write_toy_model(str(path))
    return path


def _versions(base, toy, *versions):
    for version in versions:
        shutil.copytree(toy, base / str(version))


def _manager(base, policy="latest", latest=1, versions=(), labels=None, retry_seconds=60.0):
    config = single_model_config("toy", str(base), policy, latest, list(versions), labels or {})
    return ModelManager(config, Polling(file_system_seconds=60, load_retry_seconds=retry_seconds))


def _batching(max_batch_size, max_enqueued_batches, max_enqueued_bytes=1 << 30, timeout=0):
    return BatchingConfig(True, max_batch_size, timeout, max_enqueued_batches, max_enqueued_bytes, 1)


def _states(manager):
    return {s.version: s.state for s in manager.status("toy").model_version_status}


@pytest.mark.parametrize("policy, latest, versions, served", [
    ("latest", 1, (), {3}),
    ("latest", 2, (), {2, 3}),
    ("all", 1, (), {1, 2, 3}),
    ("specific", 1, (1, 3), {1, 3}),
])
def test_version_policies(tmp_path, toy, policy, latest, versions, served):
    _versions(tmp_path, toy, 1, 2, 3)
    manager = _manager(tmp_path, policy, latest, versions)
    manager.poll_once()
    assert {v for v, state in _states(manager).items() if state == AVAILABLE} == served
    assert manager.resolve("toy").version == max(served)


def test_new_version_replaces_the_old_only_once_loaded(tmp_path, toy):
    _versions(tmp_path, toy, 1)
    manager = _manager(tmp_path)
    manager.poll_once()
    (tmp_path / "2").mkdir()  # a version still being copied: no variables yet
    shutil.copy(toy / "saved_model.pb", tmp_path / "2" / "saved_model.pb")
    manager.poll_once()
    assert _states(manager) == {1: AVAILABLE} and manager.resolve("toy").version == 1
    shutil.rmtree(tmp_path / "2")
    _versions(tmp_path, toy, 2)
    manager.poll_once()
    assert _states(manager) == {2: AVAILABLE, 1: END} and manager.resolve("toy").version == 2
    with pytest.raises(ServingError) as error:
        manager.resolve("toy", version=1)
    assert error.value.code == grpc.StatusCode.NOT_FOUND and error.value.http_status == 404


def test_a_broken_version_keeps_the_old_one_serving_until_fixed(tmp_path, toy):
    _versions(tmp_path, toy, 1)
    manager = _manager(tmp_path)
    manager.poll_once()
    (tmp_path / "2" / "variables").mkdir(parents=True)
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"garbage")
    (tmp_path / "2" / "variables" / "variables.index").write_bytes(b"")
    manager.poll_once()
    status = {s.version: s for s in manager.status("toy").model_version_status}
    assert status[2].state == END and status[2].status.error_message
    assert status[1].state == AVAILABLE and manager.resolve("toy").version == 1
    shutil.rmtree(tmp_path / "2")  # fixed: the same version number, good files
    _versions(tmp_path, toy, 2)
    manager.poll_once()
    assert manager.resolve("toy").version == 2


def _keras_version(path, saved_from_model: bool) -> None:
    """A Keras 3 model with an embedding and a warm-up request, saved from the model itself or from a tf.Module
    holding its variables' tf.Variables (as modules/model.py exports)."""
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    ids = keras.Input(shape=(1,), dtype="int64")
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Embedding(4, 2)(ids))))
    serve = tf.function(lambda ids: {"y": model(ids)}, input_signature=[tf.TensorSpec([None, 1], tf.int64, name="ids")])
    root = model
    if not saved_from_model:
        root = tf.Module()
        root.model_variables = [variable.value for variable in model.variables]
    tf.saved_model.save(root, str(path), signatures={"serving_default": serve})
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.inputs["ids"].CopyFrom(tf.make_tensor_proto(np.array([[1]], dtype=np.int64)))
    (path / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def test_a_version_tf_serving_cannot_run_is_refused_at_warm_up(tmp_path):
    """Saved from a Keras 3 model, the variables are missing from the graph TF Serving's session loader restores
    (keras-team/keras#19274): the warm-up request fails there, and here, and the version never serves."""
    _keras_version(tmp_path / "1", saved_from_model=False)
    _keras_version(tmp_path / "2", saved_from_model=True)
    manager = _manager(tmp_path, "all")
    manager.poll_once()
    status = {s.version: s for s in manager.status("toy").model_version_status}
    assert status[1].state == AVAILABLE
    assert status[2].state == END and "Could not find variable" in status[2].status.error_message
    assert manager.resolve("toy").version == 1


def test_a_sparse_signature_is_left_out_and_the_rest_serves(tmp_path):
    """TF Serving's APIs take dense tensors by name: a signature with a SparseTensor input is not served."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        dense = tf.compat.v1.placeholder(tf.float32, [None], name="dense")
        sparse = tf.compat.v1.sparse_placeholder(tf.float32, name="sparse")
        info = tf.compat.v1.saved_model.build_tensor_info
        builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "1"))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "double": tf.compat.v1.saved_model.predict_signature_def({"x": dense}, {"y": dense * 2}),
            "sum": tf.compat.v1.saved_model.build_signature_def(
                {"x": info(sparse)}, {"y": info(tf.sparse.reduce_sum(sparse))}, "tensorflow/serving/predict"),
        })
        builder.save()
    servable = load_servable("toy", 1, str(tmp_path / "1"))
    assert set(servable.signatures) == {"double"}
    assert set(servable.signature_defs) == {"double", "sum"}  # GetModelMetadata still lists it, as TF Serving does
    outputs = servable.run(servable.signature("double"), {"x": np.array([1.5, -2.0], dtype=np.float32)})
    assert outputs["y"].tolist() == [3.0, -4.0]


def test_labels_resolve_and_unknown_ones_are_404(tmp_path, toy):
    _versions(tmp_path, toy, 1, 2)
    manager = _manager(tmp_path, "specific", versions=(1, 2), labels={"stable": 1, "canary": 2})
    manager.poll_once()
    assert manager.resolve("toy", label="stable").version == 1
    assert manager.resolve("toy", label="canary").version == 2
    with pytest.raises(ServingError) as error:
        manager.resolve("toy", label="nope")
    assert error.value.http_status == 404
    bad = single_model_config("toy", str(tmp_path), "specific", 1, [1, 2], {"canary": 7})
    with pytest.raises(ServingError) as error:
        manager.reload(bad)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.resolve("toy", label="canary").version == 2  # unchanged


def test_no_version_yet_is_503(tmp_path):
    manager = _manager(tmp_path)
    manager.poll_once()
    with pytest.raises(ServingError) as error:
        manager.resolve("toy")
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and error.value.http_status == 503


def test_batcher_merges_concurrent_requests_and_isolates_a_bad_one():
    calls = []

    def run(inputs):
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ServingError.invalid("negative input")
        return {"y": inputs["x"] * 2}

    async def main():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(run, executor, _batching(8, 10))
        await batcher.submit({"x": np.array([100.0])})  # idle: runs alone, at once
        results = await asyncio.gather(*[batcher.submit({"x": np.array([float(i)])}) for i in range(6)],
                                       batcher.submit({"x": np.array([-1.0])}), return_exceptions=True)
        executor.shutdown()
        return results

    results = asyncio.run(main())
    assert [r["y"].tolist() for r in results[:6]] == [[0.0], [2.0], [4.0], [6.0], [8.0], [10.0]]
    assert isinstance(results[6], ServingError) and results[6].message == "negative input"
    assert calls[0] == 1 and max(calls) > 1  # the concurrent ones shared a batch


def test_batcher_runs_on_the_loop_only_when_requests_are_sparse_on_average():
    """One long gap after a burst (a loaded server's loop stalling) does not send a request past the batch thread;
    requests that keep arriving far apart run on the event loop at once."""
    threads = []

    def run(inputs):  # 5 ms a batch: the idle shortcut needs gaps over two run times (10 ms)
        threads.append(threading.current_thread() is threading.main_thread())
        threading.Event().wait(0.005)
        return inputs

    async def main():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(run, executor, _batching(64, 10))
        for _ in range(20):  # one at a time: the batcher learns that a run takes 5 ms
            await batcher.submit({"x": np.zeros(1)})
        await asyncio.gather(*(batcher.submit({"x": np.zeros(1)}) for _ in range(40)))  # a burst: mean gap ~0
        await asyncio.sleep(0.03)  # one gap of 30 ms; the mean stays under 10 ms
        threads.clear()
        await batcher.submit({"x": np.zeros(1)})
        after_stall = list(threads)
        for _ in range(12):  # 30 ms apart, one after another: the mean gap grows past two run times
            await asyncio.sleep(0.03)
            threads.clear()
            await batcher.submit({"x": np.zeros(1)})
        executor.shutdown()
        return after_stall, list(threads)

    after_stall, sparse = asyncio.run(main())
    assert after_stall == [False]  # the batch thread
    assert sparse == [True]  # the event loop


def test_batcher_refuses_oversized_tasks_and_a_full_queue():
    release = threading.Event()

    def run(inputs):  # batches on the batch thread wait for `release`, so the queue fills up
        if threading.current_thread() is not threading.main_thread():
            release.wait(10)
        return inputs

    async def main():
        batcher = Batcher(run, ThreadPoolExecutor(1), _batching(2, 1))
        with pytest.raises(ServingError, match="Task size 3 is larger than maximum batch size 2"):
            await batcher.submit({"x": np.zeros(3)})
        await batcher.submit({"x": np.zeros(1)})  # idle: runs at once on the loop
        running = asyncio.ensure_future(batcher.submit({"x": np.zeros(2)}))  # right after: to the batch thread
        queued = asyncio.ensure_future(batcher.submit({"x": np.zeros(2)}))  # waits: the one queue slot
        await asyncio.sleep(0.05)
        with pytest.raises(ServingError) as error:
            await batcher.submit({"x": np.zeros(1)})
        release.set()
        await asyncio.gather(running, queued)
        return error.value

    error = asyncio.run(main())
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.message == "The batch scheduling queue to which this task was submitted is full"


def test_the_source_takes_only_ascii_digit_versions_within_int64(tmp_path, toy):
    _versions(tmp_path, toy, 1)
    for name in ("²", "١٢", str(2**63), "0x10", ".tmp-5-123"):
        shutil.copytree(toy, tmp_path / name)
    manager = _manager(tmp_path, "all")
    manager.poll_once()  # before: int("²") raised ValueError in every poll and at startup
    assert _states(manager) == {1: AVAILABLE}


def test_a_listing_error_keeps_every_loaded_version_serving(tmp_path, toy, monkeypatch, caplog):
    _versions(tmp_path, toy, 1)
    manager = _manager(tmp_path)
    manager.poll_once()

    def emfile(path):
        raise OSError(24, "Too many open files")

    with monkeypatch.context() as patch:
        patch.setattr(os, "listdir", emfile)
        manager.poll_once()
        manager.poll_once()
    assert _states(manager) == {1: AVAILABLE} and manager.resolve("toy").version == 1
    assert caplog.text.count("Too many open files; the loaded versions keep serving") == 1
    _versions(tmp_path, toy, 2)
    manager.poll_once()  # listing works again
    assert manager.resolve("toy").version == 2


def test_a_failed_load_is_retried_with_backoff_without_a_file_change(tmp_path, toy, monkeypatch):
    import serving.manager

    _versions(tmp_path, toy, 1)
    attempts = []

    def flaky(name, version, path):  # a transient failure: the files are fine
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise OSError("Resource temporarily unavailable")
        return load_servable(name, version, path)

    monkeypatch.setattr(serving.manager, "load_servable", flaky)
    manager = _manager(tmp_path, retry_seconds=0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        manager.poll_once()
        if _states(manager)[1] == AVAILABLE:
            break
        time.sleep(0.02)
    assert _states(manager) == {1: AVAILABLE}
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.2 and attempts[2] - attempts[1] >= 0.4  # exponential backoff


def test_an_unloaded_version_is_freed_with_gc_disabled(tmp_path, toy):
    _versions(tmp_path, toy, 1)
    manager = _manager(tmp_path)
    manager.poll_once()
    old = manager.resolve("toy")
    session = old.session
    example = b"\n\x0f\n\r\n\x01x\x12\x08\x12\x06\n\x04\x00\x00\x80?"  # x = 1.0
    assert old.run(old.signature("regress"), {"inputs": np.array([example], dtype=object)})["outputs"].tolist() == [[3.0]]
    reference = weakref.ref(old)
    del old
    gc.disable()
    try:
        _versions(tmp_path, toy, 2)
        manager.poll_once()
        assert manager.resolve("toy").version == 2
        assert reference() is None  # no reference cycle keeps the old version alive
        assert session._closed
    finally:
        gc.enable()


def test_polls_and_reloads_never_overlap_and_load_a_version_once(tmp_path, toy, monkeypatch):
    import serving.manager

    _versions(tmp_path, toy, 1)
    loads, inside, overlaps = [], [0], []

    def slow_load(name, version, path):
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        time.sleep(0.2)
        loads.append(version)
        inside[0] -= 1
        return load_servable(name, version, path)

    monkeypatch.setattr(serving.manager, "load_servable", slow_load)
    manager = _manager(tmp_path)
    config = single_model_config("toy", str(tmp_path), "latest", 1, [], {})
    threads = [threading.Thread(target=manager.poll_once) for _ in range(3)] + \
        [threading.Thread(target=manager.reload, args=(config,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1] and not any(overlaps)
    assert _states(manager) == {1: AVAILABLE}


@pytest.mark.parametrize("name, base, message", [
    ("../x", "models/x", "model name '../x': only letters, digits"),
    ("..", "models/x", "model name '..'"),
    ("a b", "models/x", "model name 'a b'"),
    ("x", "elsewhere/x", "is outside the allowed model roots"),
    ("x", "models/../elsewhere/x", "is outside the allowed model roots"),
])
def test_a_reload_with_a_bad_name_or_a_path_outside_the_roots_changes_nothing(tmp_path, toy, name, base, message):
    (tmp_path / "models").mkdir()
    _versions(tmp_path / "models", toy)
    manager = ModelManager(single_model_config("toy", str(tmp_path / "models" / "toy"), "latest", 1, [], {}))
    bad = single_model_config(name, str(tmp_path / base), "latest", 1, [], {})
    with pytest.raises(ServingError) as error:
        manager.reload(bad, allowed_roots=[str(tmp_path / "models")])
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.message
    assert manager.model_names() == ["toy"]
    manager.reload(single_model_config("x", str(tmp_path / "elsewhere" / "x"), "latest", 1, [], {}))  # no roots: any
    assert manager.model_names() == ["x"]


def test_a_tensorflow_error_in_a_batch_fails_only_the_request_that_causes_it():
    import tensorflow as tf

    def run(inputs):
        if (inputs["x"] > 1000).any():
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return {"y": inputs["x"] + 1}

    async def main():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(run, executor, _batching(8, 10))
        await batcher.submit({"x": np.array([0.0])})
        results = await asyncio.gather(*[batcher.submit({"x": np.array([float(i)])}) for i in range(4)],
                                       batcher.submit({"x": np.array([5000.0])}), return_exceptions=True)
        executor.shutdown()
        return results

    results = asyncio.run(main())
    assert [r["y"].tolist() for r in results[:4]] == [[1.0], [2.0], [3.0], [4.0]]
    assert isinstance(results[4], tf.errors.ResourceExhaustedError)


def test_the_batch_queue_is_bounded_in_bytes():
    release = threading.Event()

    def run(inputs):
        if threading.current_thread() is not threading.main_thread():
            release.wait(10)
        return inputs

    async def main():
        batcher = Batcher(run, ThreadPoolExecutor(1), _batching(64, 100, max_enqueued_bytes=10_000))
        await batcher.submit({"x": np.array([b"idle"], dtype=object)})
        running = asyncio.ensure_future(batcher.submit({"x": np.array([b"a" * 100], dtype=object)}))
        queued = asyncio.ensure_future(batcher.submit({"x": np.array([b"b" * 6000], dtype=object)}))
        await asyncio.sleep(0.05)
        with pytest.raises(ServingError) as error:
            await batcher.submit({"x": np.array([b"c" * 6000], dtype=object)})  # 12,000 bytes would wait
        small = asyncio.ensure_future(batcher.submit({"x": np.array([b"d" * 100], dtype=object)}))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(running, queued, small)
        return error.value

    assert asyncio.run(main()).code == grpc.StatusCode.UNAVAILABLE

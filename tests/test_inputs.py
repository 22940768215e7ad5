"""A run's inputs are identified by their content (issue 14): the unchanged-run shortcut fingerprints exactly the
files CsvExampleGen reads, and ExampleGen's cache key (its driver's input fingerprint) carries a SHA-256 of them, so a
file added under another name or a same-size edit that keeps the mtime is a new input."""
import hashlib
import os
import shutil
import time

import pytest
from conftest import SMALL_DATA

from pipeline.config import REPO_ROOT, load_config, resolve_span
from pipeline.spans import SpanError
from runners import harness

ROWS = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)


def _config(tmp_path, data_root):
    return resolve_span(load_config(env={"TFX_E2E_DATA_ROOT": str(data_root),
                                         "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")}))


def _same_size_edit(path, keep_mtime=True):
    """Swaps two digits of the first fare that has two different ones: same size; the mtime put back (cp -p)."""
    before = os.stat(path)
    text = path.read_text()
    header, first = text.split("\n", 2)[:2]
    fare = first.split(",")[header.split(",").index("fare")]
    swapped = fare[::-1] if fare[::-1] != fare else fare.replace("1", "2", 1)
    assert len(swapped) == len(fare) and swapped != fare
    path.write_text(text.replace(f",{fare},", f",{swapped},", 1))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert after.st_size == before.st_size and (after.st_mtime_ns == before.st_mtime_ns) == keep_mtime
    return fare, swapped


def _shortcut_taken(config) -> bool:
    """What _run_locked decides without TFX_E2E_ALWAYS_RUN: skip (a record of a run with this fingerprint)."""
    return harness._unchanged_since_last_run(config, harness.inputs_fingerprint(config)) is not None


def _record_run(config):
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    open(config.metadata_path, "a").close()  # the store the recorded run wrote
    harness._write_record(config, harness.inputs_fingerprint(config), "summary", None)


def _recorded_flat_root(tmp_path):
    """A flat data root of 40 rows and the record of a successful run on it: (data root, config, fingerprint)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_text("".join(ROWS[:41]))
    config = _config(tmp_path, data)
    _record_run(config)
    return data, config, harness.inputs_fingerprint(config)
    assert _shortcut_taken(config)


@pytest.mark.parametrize("name", ["new.CSV", "part-00001", ".late"])
def test_a_file_example_gen_reads_under_any_name_is_a_new_input(tmp_path, name):
    data, config, before = _recorded_flat_root(tmp_path)
    (data / name).write_text("".join(ROWS[:1] + ROWS[41:61]))
    assert str(data / name) in harness.spans_read_files(config)
    assert harness.inputs_fingerprint(config) != before
    assert not _shortcut_taken(config)


def test_a_same_size_edit_that_keeps_the_mtime_is_a_new_input(tmp_path):
    data, config, before = _recorded_flat_root(tmp_path)
    _same_size_edit(data / "data.csv")  # in place, os.utime back
    edited = harness.inputs_fingerprint(config)
    assert edited != before
    assert not _shortcut_taken(config)
    # cp -p: shutil.copy2 of another same-size file whose mtime is the one recorded.
    _record_run(config)
    stat = os.stat(data / "data.csv")
    other = tmp_path / "other.csv"
    other.write_text((data / "data.csv").read_text().replace("Credit Card", "Credit Cart", 1))
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.copy2(other, data / "data.csv")
    assert os.stat(data / "data.csv").st_mtime_ns == stat.st_mtime_ns
    assert harness.inputs_fingerprint(config) not in (before, edited)
    assert not _shortcut_taken(config)


def test_in_a_span_folder_the_shortcut_reads_what_example_gen_reads(tmp_path):
    root = tmp_path / "data"
    (root / "span-1").mkdir(parents=True)
    (root / "span-1" / "data.csv").write_text("".join(ROWS[:41]))
    (root / "span-1" / "_SUCCESS").write_text("")
    config = _config(tmp_path, root)
    _record_run(config)
    before = harness.inputs_fingerprint(config)
    # span-{SPAN}/*.csv: ExampleGen would read neither, so the span is refused rather than its rows lost unseen.
    for name in ("new.CSV", "part-00001"):
        (root / "span-1" / name).write_text("".join(ROWS[:1] + ROWS[41:61]))
    with pytest.raises(SpanError, match=r"span 1 \(span-1\): new.CSV, part-00001 would not be read"):
        harness.inputs_fingerprint(config)
    for name in ("new.CSV", "part-00001"):
        (root / "span-1" / name).unlink()
    assert harness.inputs_fingerprint(config) == before and _shortcut_taken(config)
    (root / "span-1" / "more.csv").write_text("".join(ROWS[:1] + ROWS[41:61]))
    assert not _shortcut_taken(config)
    _record_run(config)
    _same_size_edit(root / "span-1" / "data.csv")
    assert not _shortcut_taken(config)


def test_the_files_are_those_of_example_gens_glob(tmp_path):
    """pipeline.spans.example_gen_files (no TensorFlow) matches tf.io.gfile.glob, TFX's default pattern is
    FLAT_FILES and a span folder's is SPAN_FILES."""
    from tfx.components.example_gen import utils
    from tfx.dsl.io import fileio

    from pipeline.spans import FLAT_FILES, SPAN_FILES, example_gen_files

    for name in ("data.csv", "new.CSV", "part-00001", ".hidden", "_SUCCESS", "we[ird].csv", "x.csv.gz"):
        (tmp_path / name).write_text("a\n1\n")
    (tmp_path / "folder.csv").mkdir()
    for pattern in (FLAT_FILES, SPAN_FILES, "[!_.]*", "*.[cC][sS][vV]", "?ata.csv"):
        assert example_gen_files(str(tmp_path), pattern) == sorted(
            p for p in fileio.glob(os.path.join(str(tmp_path), pattern)) if not fileio.isdir(p)), pattern
    assert utils.make_default_input_config().splits[0].pattern == FLAT_FILES
    assert example_gen_files(str(tmp_path), SPAN_FILES) == [str(tmp_path / "data.csv"), str(tmp_path / "we[ird].csv")]


# --- ExampleGen's driver ---

def test_the_content_fingerprint_streams_the_bytes_and_counts_the_csv_rows(tmp_path):
    from pipeline.example_gen_driver import BLOCK, content_fingerprint

    sample = REPO_ROOT / "data" / "taxi" / "data.csv"  # 15,002 rows, 1.9 MB: two 1 MiB blocks
    assert os.path.getsize(sample) > BLOCK
    started = time.perf_counter()
    digest, rows = content_fingerprint([("single_split/data.csv", str(sample))])
    seconds = time.perf_counter() - started
    assert rows == 15_002
    assert digest == hashlib.sha256(b"single_split/data.csv\0" + sample.read_bytes() + b"\0").hexdigest()
    assert seconds < 2.0, seconds  # ~0.1 s here: cheap next to ExampleGen itself
    # A file the CSV parser cannot read (a field over its size limit) is still hashed, its rows not counted.
    huge = tmp_path / "huge.csv"
    huge.write_bytes(b"a,b\n1," + b"x" * (200 * 1024) + b"\n")
    digest, rows = content_fingerprint([("s/huge.csv", str(huge))])
    assert rows is None
    assert digest == hashlib.sha256(b"s/huge.csv\0" + huge.read_bytes() + b"\0").hexdigest()


def test_the_pipeline_compiles_example_gen_with_the_content_driver(tmp_path):
    """The IR carries the driver (custom_driver_specs), which LocalDagRunner and BeamDagRunner run."""
    from tfx.dsl.compiler import compiler
    from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

    from pipeline.example_gen_driver import CsvContentDriver
    from pipeline.pipeline import create_pipeline

    config = _config(tmp_path, SMALL_DATA)
    tfx_pipeline = create_pipeline(config)
    example_gen = next(c for c in tfx_pipeline.components if c.id == "ExampleGen")
    assert example_gen.driver_class is CsvContentDriver
    assert type(example_gen).__name__ == "CsvExampleGen"  # TFX's component, only its driver is ours
    ir = compiler.Compiler().compile(tfx_pipeline)
    deployment, spec = pipeline_pb2.IntermediateDeploymentConfig(), executable_spec_pb2.PythonClassExecutableSpec()
    ir.deployment_config.Unpack(deployment)
    deployment.custom_driver_specs["ExampleGen"].Unpack(spec)
    assert spec.class_path == "pipeline.example_gen_driver.CsvContentDriver"


def _example_gen_executions(config):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    store = mlmd.MetadataStore(connection)
    context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.ExampleGen")
    executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
    states = [metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in executions]
    outputs = []
    for execution in executions:
        events = store.get_events_by_execution_ids([execution.id])
        ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        outputs.append(store.get_artifacts_by_id(ids)[0])
    return states, outputs


def _fares(artifact_uri):
    import glob

    import tensorflow as tf

    files = glob.glob(os.path.join(artifact_uri, "Split-*", "*.gz"))
    return {round(tf.train.Example.FromString(r.numpy()).features.feature["fare"].float_list.value[0], 2)
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")}


@pytest.mark.e2e
def test_a_same_size_edit_with_the_mtime_kept_is_no_example_gen_cache_hit(tmp_path):
    """ExampleGen alone (a partial run of the real pipeline, cache on): run; edit a fare keeping size and mtime;
    run: ExampleGen runs again (COMPLETE, not CACHED) and its Examples hold the edited fare; run unchanged: CACHED."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.pipeline import RunOptions

    from pipeline.pipeline import create_pipeline

    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_text("".join(ROWS[:41]))
    config = _config(tmp_path, data)
    assert config.enable_cache

    def run_example_gen():
        LocalDagRunner().run(create_pipeline(config), run_options=RunOptions(from_nodes=["ExampleGen"],
                                                                             to_nodes=["ExampleGen"]))

    run_example_gen()
    fare, edited = _same_size_edit(data / "data.csv")
    run_example_gen()
    run_example_gen()
    states, outputs = _example_gen_executions(config)
    assert states == ["COMPLETE", "COMPLETE", "CACHED"]
    first, second = (o.custom_properties["input_fingerprint"].string_value for o in outputs[:2])
    # TFX's own part (count, bytes, mtime) alone would have been a cache hit; the content digest is not.
    assert first.split("\nsha256:")[0] == second.split("\nsha256:")[0]
    assert first != second and first.endswith(",csv_rows:40") and second.endswith(",csv_rows:40")
    assert outputs[2].id == outputs[1].id
    assert round(float(fare), 2) in _fares(outputs[0].uri) and round(float(edited), 2) not in _fares(outputs[0].uri)
    assert round(float(edited), 2) in _fares(outputs[1].uri) and round(float(fare), 2) not in _fares(outputs[1].uri)

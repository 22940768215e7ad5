"""CSV edge cases (issue 14): each is read correctly or stopped with its reason, never silently fewer rows.

Cheap: the cases are tiny files (a, b, c columns), all read by TFX's CsvExampleGen executor in one Beam pipeline
(one split per case); rows in are the driver's CSV parse (pipeline/example_gen_driver.py), examples out TFDV's
statistics of what the executor wrote (num_examples, as StatisticsGen records it), checked by the gate's own
functions (pipeline/gate.py). One e2e run proves the whole path: driver -> Examples artifact -> DataGate -> summary.
"""
import glob
import os

import pytest
from conftest import SMALL_DATA, PipelineRun

from pipeline import gate

CASES = {
    "header_only": b"a,b,c\n",
    "empty_column": b"a,b,c\n1,,1.5\n2,,2.5\n3,,3.5\n",
    "crlf": b"a,b,c\r\n1,x,1.5\r\n2,y,2.5\r\n3,z,3.5\r\n",
    "bom": "\ufeffa,b,c\n1,x,1.5\n2,y,2.5\n3,z,3.5\n".encode(),
    "quoted_newlines": b'a,b,c\n1,"x\nmore",1.5\n2,"y ""q""\r\nz",2.5\n3,z,3.5\n',
    "bare_cr": b"a,b,c\r1,x,1.5\r2,y,2.5\r3,z,3.5\r",
}
ROWS_IN = {"header_only": 0, "empty_column": 3, "crlf": 3, "bom": 3, "quoted_newlines": 3, "bare_cr": 3}


def _example_gen(base, input_config, out):
    """TFX's CsvExampleGen executor on `base`, the splits of `input_config`; the Examples artifact it wrote."""
    from tfx.components.example_gen.csv_example_gen import executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    executor.Executor().Do({}, {"examples": [examples]}, {
        "input_base": str(base), "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(example_gen_pb2.Output())})
    return examples


def _records(examples_uri, split):
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _statistics(records):
    """TFDV's statistics of serialized examples, in memory (what StatisticsGen computes with Beam)."""
    from tensorflow_data_validation.statistics import stats_impl
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx_bsl.coders import example_coder

    if not records:
        return statistics_pb2.DatasetFeatureStatisticsList(datasets=[statistics_pb2.DatasetFeatureStatistics()])
    return stats_impl.generate_statistics_in_memory(example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records))


@pytest.fixture(scope="module")
def read(tmp_path_factory):
    """case -> (rows in, examples out as tf.Examples, their statistics, the gate's count check)."""
    import tensorflow as tf
    from tfx.proto import example_gen_pb2

    from pipeline.example_gen_driver import content_fingerprint

    base = tmp_path_factory.mktemp("csv")
    for name, data in CASES.items():
        (base / name).mkdir()
        (base / name / "data.csv").write_bytes(data)
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=name, pattern=f"{name}/*")
                                                 for name in CASES])
    examples = _example_gen(base, input_config, base / "out")
    result = {}
    for name in CASES:
        _, rows_in = content_fingerprint([(name, str(base / name / "data.csv"))])
        records = _records(examples.uri, name)
        statistics = _statistics(records)
        counts = {name: sum(d.num_examples for d in statistics.datasets)}
        result[name] = (rows_in, [tf.train.Example.FromString(r) for r in records], statistics,
                        gate.check_example_counts(counts, 7, 1, rows_in))
    return result


def _values(example, feature):
    value = example.features.feature[feature]
    kind = value.WhichOneof("kind")
    return list(getattr(value, kind).value) if kind else []


@pytest.mark.parametrize("name", ["crlf", "quoted_newlines", "empty_column"])
def test_read_correctly_one_example_per_row(read, name):
    rows_in, examples, _, check = read[name]
    assert rows_in == ROWS_IN[name] == len(examples) == 3
    assert check == ""
    assert [_values(e, "a") for e in examples] == [[1], [2], [3]]
    assert [_values(e, "c") for e in examples] == [[1.5], [2.5], [3.5]]  # no CR left on the last column
    expected_b = {"crlf": [[b"x"], [b"y"], [b"z"]],
                  "quoted_newlines": [[b"x\nmore"], [b'y "q"\r\nz'], [b"z"]],
                  "empty_column": [[], [], []]}[name]
    assert [_values(e, "b") for e in examples] == expected_b


def test_an_empty_column_is_read_as_missing_values_and_a_schema_that_requires_it_stops_the_run(read):
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(read["crlf"][2])  # a, b, c, each in every example
    found = gate.anomalies_of(tfdv.validate_statistics(read["empty_column"][2], schema), "train")
    assert [(a.feature, a.kind) for a in found] == [("b", "FEATURE_TYPE_NOT_PRESENT")]


def test_a_header_only_csv_stops_the_run_as_too_few_examples(read):
    rows_in, examples, _, check = read["header_only"]
    assert rows_in == 0 and examples == []
    assert check.startswith("Data gate: span 7 has 0 examples, fewer than continuous.min_examples 1")


def test_bare_cr_line_endings_lose_every_row_and_the_gate_says_so(read):
    """ExampleGen splits at LF only: the file is one header line (TFX's silent loss); the CSV parse counts 3 rows."""
    rows_in, examples, _, check = read["bare_cr"]
    assert (rows_in, len(examples)) == (3, 0)
    assert check.startswith("Data gate: span 7: its CSV files hold 3 rows, but ExampleGen wrote 0 examples (bare_cr 0)")
    assert "bare CR line endings" in check


def test_a_utf8_bom_stops_the_run_naming_the_bom(read):
    import tensorflow_data_validation as tfdv

    rows_in, examples, statistics, check = read["bom"]
    assert rows_in == len(examples) == 3 and check == ""  # no row lost ...
    assert set(examples[0].features.feature) == {"\ufeffa", "b", "c"}  # ... but the first column is renamed
    found = gate.anomalies_of(tfdv.validate_statistics(statistics, tfdv.infer_schema(read["crlf"][2])), "train")
    assert ("\ufeffa", "SCHEMA_NEW_COLUMN") in [(a.feature, a.kind) for a in found]
    message = gate.format_anomalies(found)
    assert "\\ufeffa" in message and "\ufeff" not in message
    assert "the CSV file starts with a UTF-8 byte-order mark (BOM)" in message
    assert message.startswith("Data gate:") and "the run stops before Transform" in message


def test_files_with_another_column_order_stop_example_gen_with_the_reason(tmp_path):
    """TFX maps every file's columns by the first file's header, and refuses a split whose headers differ."""
    from tfx.proto import example_gen_pb2

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1.csv").write_text("a,b,c\n1,x,1.5\n")
    (tmp_path / "data" / "2.csv").write_text("c,b,a\n2.5,y,2\n")
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="s", pattern="data/*")])
    with pytest.raises(RuntimeError, match="Files in same split .*data/\\* have different header"):
        _example_gen(tmp_path, input_config, tmp_path / "out")
    assert not glob.glob(str(tmp_path / "out" / "**" / "*.gz"), recursive=True)


@pytest.mark.e2e
def test_rows_lost_by_example_gen_stop_the_run_in_the_data_gate(tmp_path, capsys):
    """The whole path on 40 taxi rows with bare CR line endings: the driver counts 40 rows, ExampleGen writes 0
    examples, DataGate fails naming both, nothing downstream runs."""
    from runners import summary

    data = tmp_path / "data"
    data.mkdir()
    lines = (SMALL_DATA / "data.csv").read_text().splitlines()[:41]
    (data / "data.csv").write_text("\r".join(lines) + "\r")
    run = PipelineRun(tmp_path, data)
    assert run() == 1
    out = capsys.readouterr().out
    assert "its CSV files hold 40 rows, but ExampleGen wrote 0 examples" in out
    assert "Result: FAILED in DataGate" in out
    config = run.config()
    nodes = summary.latest_run(summary.open_store(config), config)
    assert nodes["ExampleGen"].status == "ran" and nodes["DataGate"].status == "FAILED"
    assert not {"Transform", "Trainer", "Pusher"} & set(nodes)
    assert not os.path.exists(config.serving_model_dir)

"""pipeline/datagen.py (`make data`): generated taxi data is deterministic, chunk-independent, counted exactly, in
the span layout pipeline/spans.py reads, within the sample's bounds, and passes the data gate's schema checks."""
import csv
import datetime
import os

import numpy as np
import pytest

from pipeline import datagen
from pipeline.config import REPO_ROOT
from pipeline.spans import FLAT_FILES, SPAN_FILES, SUCCESS_MARKER, discover, example_gen_files

SCHEMA = REPO_ROOT / "schema" / "schema.pbtxt"


def _bytes(folder):
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def _rows(files):
    """Every data row of the files, in order, and each file's header."""
    rows, headers = [], set()
    for path in files:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            headers.add(tuple(next(reader)))
            rows.extend(reader)
    return rows, headers


def _sample():
    with open(datagen.SAMPLE, newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def test_a_seed_gives_the_same_bytes_whatever_the_chunk_size(tmp_path):
    datagen.generate(tmp_path / "a", 1_000, seed=5, shard_rows=300)
    datagen.generate(tmp_path / "b", 1_000, seed=5, shard_rows=300, chunk_rows=7)
    datagen.generate(tmp_path / "c", 1_000, seed=6, shard_rows=300)
    a = _bytes(tmp_path / "a")
    assert sorted(a) == [f"data-0000{i}-of-00004.csv" for i in range(4)]
    assert a == _bytes(tmp_path / "b")
    assert a != _bytes(tmp_path / "c")
    # Other shard sizes cut the same rows into other files: row i is a function of (seed, i) alone.
    datagen.generate(tmp_path / "d", 1_000, seed=5, shard_rows=1_000, chunk_rows=64)
    assert _rows(example_gen_files(str(tmp_path / "d"), FLAT_FILES)) == _rows(
        example_gen_files(str(tmp_path / "a"), FLAT_FILES))


def test_rows_are_counted_exactly_across_spans_and_shards_and_the_spans_are_readable(tmp_path):
    out = tmp_path / "spans"
    layout = datagen.generate(out, 1_001, spans=3, shard_rows=150)
    spans = discover(str(out))
    assert [(s.number, s.name, s.complete) for s in spans] == [(1, "span-1", True), (2, "span-2", True),
                                                              (3, "span-3", True)]
    header, _ = _sample()
    counts = []
    for span in spans:
        assert os.path.exists(os.path.join(span.path, SUCCESS_MARKER))
        files = example_gen_files(span.path, SPAN_FILES)  # what CsvExampleGen reads: the marker is not among them
        assert [os.path.basename(f) for f in files] == [f"data-0000{i}-of-00003.csv" for i in range(3)]
        rows, headers = _rows(files)
        assert headers == {tuple(header)}
        counts.append([len(_rows([f])[0]) for f in files])
    assert counts == [[112, 111, 111], [112, 111, 111], [111, 111, 111]]
    assert len(layout.files) == 9 and layout.files[-1][2] == 1_001
    with open(os.path.join(spans[0].path, "data-00000-of-00003.csv"), "rb") as f:
        with open(datagen.SAMPLE, "rb") as sample:
            assert f.readline() == sample.readline()  # the header, byte for byte
    assert not [p for p in os.listdir(tmp_path) if p != "spans"]  # no partial folder left behind


def test_values_keep_the_samples_types_bounds_missing_cells_and_label(tmp_path):
    n = 20_000
    datagen.generate(tmp_path / "out", n, seed=3)
    header, sample = _sample()
    rows, _ = _rows(example_gen_files(str(tmp_path / "out"), FLAT_FILES))
    assert len(rows) == n
    col = {name: i for i, name in enumerate(header)}
    source = datagen.load_source()
    generator = datagen.Generator(source, 3)
    drawn = generator.columns(0, n)["row"]
    t_min, t_max = int(source.timestamp.min()), int(source.timestamp.max())
    scale_high = np.exp(datagen.SPREAD)
    for row, origin in zip(rows, drawn, strict=True):
        real = sample[origin]
        for name in header:
            if name not in datagen.PERTURBED:
                assert row[col[name]] == real[col[name]], name  # copied from the drawn row as it was
        assert (row[col["trip_seconds"]] == "") == (real[col["trip_seconds"]] == "")
        fare, real_fare = float(row[col["fare"]]), float(real[col["fare"]])
        assert fare >= 0 and abs(fare - real_fare) <= real_fare * (scale_high - 1) + 0.03
        miles, real_miles = float(row[col["trip_miles"]]), float(real[col["trip_miles"]])
        assert miles >= 0 and abs(miles - real_miles) <= real_miles * (scale_high - 1) + 0.05
        seconds = row[col["trip_seconds"]]
        assert seconds == "" or (int(seconds) >= 0 and int(seconds) % 60 == 0)
        tips, real_tips = float(row[col["tips"]]), float(real[col["tips"]])
        if real_tips == int(real_tips) or real_fare == 0:
            assert tips == real_tips  # a whole-dollar tip stays
        else:
            assert abs(tips - real_tips * fare / real_fare) <= 0.0051  # any other tip keeps its share of the fare
        stamp = int(row[col["trip_start_timestamp"]])
        assert t_min <= stamp <= t_max and stamp % 900 == 0
        assert abs(stamp - int(real[col["trip_start_timestamp"]])) <= datagen.MAX_WEEKS * 7 * 86400 + 3600
        moment = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
        assert (int(row[col["trip_start_hour"]]), int(row[col["trip_start_month"]]),
                int(row[col["trip_start_day"]])) == (moment.hour, moment.month, moment.isoweekday() % 7 + 1)
        # Types as the schema has them: an INT column has no decimal point, a FLOAT column always has one.
        assert "." not in row[col["trip_start_timestamp"]] + seconds + row[col["trip_start_hour"]]
        assert all("." in row[col[name]] for name in ("fare", "tips", "trip_miles"))

    def big_tippers(table):
        return np.mean([float(r[col["tips"]]) > 0.2 * float(r[col["fare"]]) for r in table])

    assert abs(big_tippers(rows) - big_tippers(sample)) < 0.01  # 0.225 in the sample
    for name in ("dropoff_community_area", "company", "trip_seconds"):
        missing = np.mean([r[col[name]] == "" for r in rows])
        assert abs(missing - np.mean([r[col[name]] == "" for r in sample])) < 0.01, name


def test_tfdv_finds_no_anomaly_against_the_schema_nor_drift_between_spans(tmp_path):
    """What the data gate checks (ExampleValidator, then drift against the previous span): nothing to report."""
    import tensorflow_data_validation as tfdv

    datagen.generate(tmp_path / "out", 4_000, spans=2, seed=11)
    schema = tfdv.load_schema_text(str(SCHEMA))
    statistics = [tfdv.generate_statistics_from_csv(os.path.join(tmp_path, "out", span, "*.csv"))
                  for span in ("span-1", "span-2")]
    assert [s.datasets[0].num_examples for s in statistics] == [2_000, 2_000]
    anomalies = tfdv.validate_statistics(statistics[1], schema, previous_statistics=statistics[0])
    assert dict(anomalies.anomaly_info) == {}
    assert {".".join(d.path.step) for d in anomalies.drift_skew_info} >= {"fare", "payment_type", "company"}


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "rows must be at least 1, not 0"),
    (["--rows", "5", "--spans", "6"], "6 spans need at least 6 rows, not 5"),
    (["--rows", "5", "--shard-rows", "0"], "shard rows must be at least 1, not 0"),
    (["--rows", "5", "--chunk-rows", "5000000"], "chunk rows must be at most 4,000,000"),
    (["--rows", "5", "--source", "{tmp}/bad.csv"], "lacks the column(s) tips"),
    (["--rows", "5", "--source", "{tmp}/neg.csv"], "line 3: fare is '-1', not a non-negative number"),
    (["--rows", "5", "--out", "{tmp}/full"], "exists and is not an empty folder"),
])
def test_bad_arguments_exit_2_naming_the_problem_and_write_nothing(tmp_path, capsys, argv, message):
    header, sample = _sample()
    (tmp_path / "bad.csv").write_text(",".join(h for h in header if h != "tips") + "\n")
    negative = [list(sample[0]), list(sample[1])]
    negative[1][header.index("fare")] = "-1"
    (tmp_path / "neg.csv").write_text("\n".join(",".join(r) for r in [header, *negative]) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.csv").write_text("x\n")
    before = _bytes(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "new")]
    assert datagen.main(argv) == 2
    assert message in capsys.readouterr().err
    assert _bytes(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["bad.csv", "full", "neg.csv"]


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(self, start, stop):
        calls.append(start)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, start, stop)

    real = datagen.Generator.text
    monkeypatch.setattr(datagen.Generator, "text", failing)
    assert datagen.main(["--rows", "1000", "--spans", "2", "--chunk-rows", "200", "--out", str(tmp_path / "out")]) == 1
    assert os.listdir(tmp_path) == []  # neither the output nor the hidden partial folder

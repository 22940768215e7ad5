"""pipeline/spans.py: span folders, completeness, which spans a run reads, and the bundled quarterly spans."""
import datetime
import os
import time

import pytest

from pipeline.config import REPO_ROOT
from pipeline.spans import SUCCESS_MARKER, SpanError, discover, select, span_of_date, write_quarterly_spans


def _span(root, name, rows=("a,b", "1,2"), done=True):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    if done:
        (folder / SUCCESS_MARKER).write_text("")
    return folder


def test_a_flat_folder_is_one_complete_span(tmp_path):
    (tmp_path / "data.csv").write_text("a\n1\n")
    (spans,) = [discover(str(tmp_path))]
    assert [(s.number, s.name, s.complete) for s in spans] == [(0, "", True)]
    assert [s.number for s in select(spans, None, 4)] == [0]


def test_integer_and_daily_spans_and_their_completeness(tmp_path):
    for name in ("span-1", "span-2", "span-10"):
        _span(tmp_path, name)
    _span(tmp_path, "span-11", done=False)
    (tmp_path / "notes").mkdir()
    spans = discover(str(tmp_path))
    assert [(s.number, s.complete) for s in spans] == [(1, True), (2, True), (10, True), (11, False)]
    assert spans[-1].why_incomplete == "no _SUCCESS marker"
    daily = tmp_path / "daily"
    _span(daily, "2016-03-31")
    _span(daily, "2016-04-01")
    spans = discover(str(daily))
    assert [s.number for s in spans] == [span_of_date(datetime.date(2016, 3, 31)), 16892]
    assert spans[1].date == datetime.date(2016, 4, 1)


def test_a_settle_time_completes_a_span_whose_files_stopped_changing(tmp_path):
    folder = _span(tmp_path, "span-1", done=False)
    assert discover(str(tmp_path), settle_seconds=60)[0].complete is False
    old = time.time() - 120
    os.utime(folder / "data.csv", (old, old))
    assert discover(str(tmp_path), settle_seconds=60)[0].complete is True
    assert discover(str(tmp_path))[0].complete is False  # no settle time: only the marker counts


def test_select_the_newest_complete_window_or_name_what_is_missing(tmp_path):
    for number in (1, 2, 3, 4):
        _span(tmp_path, f"span-{number}")
    _span(tmp_path, "span-5", done=False)
    spans = discover(str(tmp_path))
    assert [s.number for s in select(spans, None, 2)] == [3, 4]  # the incomplete span 5 is ignored
    assert [s.number for s in select(spans, 2, 4)] == [1, 2]
    assert [s.number for s in select(spans, None, 1)] == [4]
    with pytest.raises(SpanError, match="span 7 is missing: no span-7/ or 1970-01-08/ folder"):
        select(spans, 7, 2)
    with pytest.raises(SpanError, match=r"span 5 \(span-5\) is incomplete: no _SUCCESS marker"):
        select(spans, 5, 2)
    with pytest.raises(SpanError, match="no data"):
        select([], None, 2)


def test_a_span_file_examplegen_would_skip_is_refused_not_lost(tmp_path):
    """ExampleGen reads a span folder's *.csv: a Beam/Hadoop part file or an upper-case .CSV in a span the run reads
    would be dropped unseen, so the run refuses the span and names the files; markers and hidden files are fine."""
    _span(tmp_path, "span-1")
    second = _span(tmp_path, "span-2")
    (second / ".data.csv.crc").write_text("")
    spans = discover(str(tmp_path))
    assert [s.number for s in select(spans, None, 2)] == [1, 2]
    (tmp_path / "span-1" / "part-00001").write_text("a,b\n3,4\n")
    (tmp_path / "span-1" / "more.CSV").write_text("a,b\n5,6\n")
    with pytest.raises(SpanError, match=r"^span 1 \(span-1\): more.CSV, part-00001 would not be read: ExampleGen reads "
                                        r"a span folder's \*.csv files"):
        select(spans, None, 2)
    assert [s.number for s in select(spans, None, 1)] == [2]  # span 1 outside the window: not read, not checked


def test_mixed_span_kinds_with_one_number_are_refused(tmp_path):
    _span(tmp_path, "span-1")
    _span(tmp_path, "1970-01-02")
    with pytest.raises(SpanError, match="span 1 appears twice"):
        discover(str(tmp_path))


def test_the_bundled_sample_as_sixteen_quarterly_spans(tmp_path):
    written = write_quarterly_spans(str(REPO_ROOT / "data" / "taxi" / "data.csv"), str(tmp_path))
    assert len(written) == 16 and sum(rows for _, rows in written) == 15_002
    assert written[0] == (str(tmp_path / "span-1"), 884) and written[-1] == (str(tmp_path / "span-16"), 201)
    first = (tmp_path / "span-1" / "data.csv").read_bytes()
    write_quarterly_spans(str(REPO_ROOT / "data" / "taxi" / "data.csv"), str(tmp_path))
    assert (tmp_path / "span-1" / "data.csv").read_bytes() == first  # reproducible
    assert [s.number for s in select(discover(str(tmp_path)), None, 4)] == [13, 14, 15, 16]

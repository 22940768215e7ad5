"""Data spans: which parts of the data root a run may read, as TFX's span convention has them.

A data root holds either CSV files (one span, number 0: the bundled sample) or span folders:
`span-<N>/` (integer spans) or `<YYYY-MM-DD>/` (daily spans; the span number is the days since 1970-01-01, as
TFX's {YYYY}-{MM}-{DD} date spec counts them). A span is complete when its folder holds a `_SUCCESS` marker (the
Hadoop/Beam convention) or, when a settle time is configured, when none of its files changed for that long.
Incomplete spans are never read.
"""
import datetime
import fnmatch
import os
import re
import time
from dataclasses import dataclass

SUCCESS_MARKER = "_SUCCESS"
# The files CsvExampleGen reads: in a flat data root every file (TFX's default input config, utils.
# make_default_input_config), in a span folder its *.csv files, so the _SUCCESS marker is never read. `*.csv`, not
# `[!_.]*`: ExampleGen turns a span pattern into a regex escaping only . + * ? ( ), so a [!...] class would not negate.
FLAT_FILES, SPAN_FILES = "*", "*.csv"
SPAN_FOLDER = re.compile(r"span-(\d{1,9})")
DATE_FOLDER = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
EPOCH = datetime.date(1970, 1, 1)


class SpanError(ValueError):
    """A span a run needs is missing or incomplete; the message names it."""


@dataclass(frozen=True)
class Span:
    number: int
    path: str              # the span's folder (the data root itself for a flat root)
    name: str              # the folder's name: span-3, 2016-03-31, or "" for a flat root
    complete: bool
    why_incomplete: str = ""

    @property
    def date(self) -> datetime.date | None:
        return EPOCH + datetime.timedelta(days=self.number) if DATE_FOLDER.fullmatch(self.name) else None


def span_of_date(date: datetime.date) -> int:
    return (date - EPOCH).days


def _number(name: str) -> int | None:
    if match := SPAN_FOLDER.fullmatch(name):
        return int(match.group(1))
    if match := DATE_FOLDER.fullmatch(name):
        try:
            return span_of_date(datetime.date(*map(int, match.groups())))
        except ValueError:  # 2016-02-30
            return None
    return None


def data_files(folder: str) -> list[str]:
    """A folder's data files: every file but hidden ones and markers (_SUCCESS)."""
    return sorted(entry.path for entry in os.scandir(folder)
                  if entry.is_file() and not entry.name.startswith((".", "_")))


def example_gen_files(folder: str, pattern: str) -> list[str]:
    """The files of `folder` that CsvExampleGen's glob of folder/`pattern` reads, sorted, without TensorFlow (the
    unchanged-run check must not import it): tf.io.gfile.glob matches names as POSIX fnmatch does, case-sensitive
    (new.CSV is no *.csv), `*` matching a leading dot too (.hidden is read from a flat root)."""
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if fnmatch.fnmatchcase(e.name, pattern) and e.is_file())


def _unread_files(span: Span) -> list[str]:
    """A span's data files that ExampleGen's SPAN_FILES glob would skip (part-00001, data.CSV): rows lost unseen."""
    read = set(example_gen_files(span.path, SPAN_FILES))
    return [os.path.basename(f) for f in data_files(span.path) if f not in read]


def _completeness(folder: str, settle_seconds: float, now: float) -> tuple[bool, str]:
    if os.path.exists(os.path.join(folder, SUCCESS_MARKER)):
        return True, ""
    files = data_files(folder)
    if settle_seconds > 0 and files:
        newest = max(os.stat(f).st_mtime for f in files)
        if now - newest >= settle_seconds:
            return True, ""
        return False, f"files changed {now - newest:.0f} s ago (settle time {settle_seconds:g} s)"
    return False, f"no {SUCCESS_MARKER} marker"


def discover(data_root: str, settle_seconds: float = 0.0) -> list[Span]:
    """Every span under `data_root`, complete or not, in span order; a flat root is span 0."""
    folders = []
    for entry in os.scandir(data_root):
        if entry.is_dir() and (number := _number(entry.name)) is not None:
            folders.append((number, entry))
    if not folders:
        return [Span(0, data_root, "", True)] if data_files(data_root) else []
    numbers = [n for n, _ in folders]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise SpanError(f"data_root {data_root}: span {duplicates[0]} appears twice (span-N and YYYY-MM-DD folders "
                        "cannot be mixed)")
    now = time.time()
    spans = []
    for number, entry in sorted(folders, key=lambda f: f[0]):
        complete, why = _completeness(entry.path, settle_seconds, now)
        spans.append(Span(number, entry.path, entry.name, complete, why))
    return spans


def select(spans: list[Span], wanted: int | None, window: int) -> list[Span]:
    """The spans a run trains and evaluates on: the last `window` complete spans up to `wanted` (default the
    newest complete one). The wanted span must exist and be complete: late data never silently trains on old."""
    if not spans:
        raise SpanError("no data: the data root holds no CSV files and no span folders")
    complete = [s for s in spans if s.complete]
    if wanted is None:
        if not complete:
            raise SpanError("no complete span: " + "; ".join(f"{s.name}: {s.why_incomplete}" for s in spans))
        wanted = complete[-1].number
    by_number = {s.number: s for s in spans}
    if wanted not in by_number:
        raise SpanError(f"span {wanted} is missing: no span-{wanted}/ or {EPOCH + datetime.timedelta(days=wanted)}/ "
                        f"folder (have: {', '.join(s.name for s in spans)})")
    if not by_number[wanted].complete:
        raise SpanError(f"span {wanted} ({by_number[wanted].name}) is incomplete: {by_number[wanted].why_incomplete}")
    selected = [s for s in complete if s.number <= wanted][-window:]
    for span in selected:
        if unread := _unread_files(span):
            raise SpanError(f"span {span.number} ({span.name}): {', '.join(unread)} would not be read: ExampleGen "
                            f"reads a span folder's {SPAN_FILES} files (rename or remove the others)")
    return selected


def write_quarterly_spans(source_csv: str, target_root: str) -> list[tuple[str, int]]:
    """Splits a taxi CSV by the quarter of trip_start_timestamp into span-1/ (the first quarter) ... span-N/, each
    with data.csv (rows in source order) and a _SUCCESS marker; returns [(folder, rows)]. Reproducible: the same
    source gives the same bytes."""
    import csv

    with open(source_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        column = header.index("trip_start_timestamp")
        by_quarter: dict[tuple[int, int], list[list[str]]] = {}
        for row in reader:
            moment = datetime.datetime.fromtimestamp(int(row[column]), datetime.timezone.utc)
            by_quarter.setdefault((moment.year, (moment.month - 1) // 3), []).append(row)
    written = []
    for number, quarter in enumerate(sorted(by_quarter), start=1):
        folder = os.path.join(target_root, f"span-{number}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "data.csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(by_quarter[quarter])
        open(os.path.join(folder, SUCCESS_MARKER), "w").close()  # written last: the span is complete
        written.append((folder, len(by_quarter[quarter])))
    return written


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m pipeline.spans SOURCE.csv TARGET_ROOT  (quarterly span-N/ folders)")
    for folder, rows in write_quarterly_spans(sys.argv[1], sys.argv[2]):
        print(f"{folder}: {rows} rows")

"""Taxi-like data at any size (`make data`): n rows drawn from the bundled sample's joint distribution, as sharded
CSV files in a flat folder or in span folders (span-1/ ... span-k/, each with a _SUCCESS marker: pipeline/spans.py).

Each row is a whole sample row, resampled with replacement (so missing values, categories, coordinates and their
correlations stay as they are), then perturbed where the sample measures something:
- the trip: one factor s (log s uniform-triangular in +-SPREAD) scales fare (to 5 cents), trip_miles (to 0.1) and
  trip_seconds (to the minute), so they stay mutually consistent; zeros stay zero, missing stays missing;
- the tip: a whole-dollar tip (0 included) stays, any other tip keeps its share of the fare. The label
  (tips > 20% of the fare, modules/preprocessing.py) is derived from the written fare and tips, so it follows the
  perturbed fare the way the sample's tippers would: fixed amounts cross the threshold, percentages keep their side;
- the time: trip_start_timestamp moves by up to MAX_WEEKS weeks and MAX_QUARTERS quarter hours (staying a multiple
  of 15 minutes inside the sample's range) and trip_start_hour/day/month are recomputed from it (UTC; day 1 is
  Sunday, as in the sample).
Coordinates, community areas and census tracts are not moved: the public data gives area centroids, not points.

Row i's values depend only on (seed, i): its random numbers are Philox's outputs at counter i, so the bytes do not
depend on chunk or shard sizes, and a chunk is generated and written without the rest of the data in memory.
Numbers are formatted by Arrow's compute kernels, not per row in Python (>= 200,000 rows/s on 2 cores).
"""
import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.spans import SUCCESS_MARKER

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "taxi" / "data.csv"
SPREAD = 0.10          # |log s| <= 0.10: a trip's fare, miles and seconds move together by at most ~10 %
MAX_WEEKS = 4          # the start time moves by whole weeks (keeps weekday and hour) ...
MAX_QUARTERS = 4       # ... and by quarter hours (the sample's timestamps are multiples of 15 minutes)
QUARTER = 900
WEEK = 7 * 86400
DRAWS = 4              # uint64 random numbers per row: one Philox counter step
SHARD_ROWS = 250_000
CHUNK_ROWS = 65_536
MAX_CHUNK_ROWS = 4_000_000

# The columns the generator computes; every other column is copied from the resampled row as it is written there.
PERTURBED = ("fare", "trip_start_month", "trip_start_hour", "trip_start_day", "trip_start_timestamp", "trip_miles",
             "trip_seconds", "tips")


class DataGenError(ValueError):
    """Bad arguments or an unusable source CSV; the message names the problem."""


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def _number(text: str, scale: int, column: str, line: int) -> int:
    """A cell as an integer number of 1/scale units (cents for scale 100); -1 for an empty cell."""
    if text == "":
        return -1
    try:
        value = float(text)
    except ValueError:
        raise DataGenError(f"source line {line}: {column} is {text!r}, not a number") from None
    if not value >= 0:
        raise DataGenError(f"source line {line}: {column} is {text!r}, not a non-negative number")
    return round(value * scale)


@dataclass
class Source:
    """The sample, column-wise: the perturbed columns as integers, the rest as pre-rendered CSV text per row."""
    header: list[str]
    fare: np.ndarray        # cents
    tips: np.ndarray        # cents
    miles: np.ndarray       # hundredths of a mile
    seconds: np.ndarray     # -1: missing
    timestamp: np.ndarray
    # The copied columns between the computed ones, each run joined with commas, one string per source row.
    segments: list[pa.Array]
    layout: list[str]       # the line's parts in order: a PERTURBED column name or "segment"

    @property
    def rows(self) -> int:
        return len(self.fare)


def load_source(path: str | os.PathLike = SAMPLE) -> Source:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataGenError(f"source {path} is empty")
        missing = [c for c in PERTURBED if c not in header]
        if missing:
            raise DataGenError(f"source {path} lacks the column(s) {', '.join(missing)} (a taxi CSV has them)")
        layout, runs = [], []
        for i, name in enumerate(header):
            if name in PERTURBED:
                layout.append(name)
            elif layout and layout[-1] == "segment":
                runs[-1].append(i)
            else:
                layout.append("segment")
                runs.append([i])
        at = {name: header.index(name) for name in PERTURBED}
        columns = {name: [] for name in ("fare", "tips", "trip_miles", "trip_seconds", "trip_start_timestamp")}
        scales = {"fare": 100, "tips": 100, "trip_miles": 100, "trip_seconds": 1, "trip_start_timestamp": 1}
        segments = [[] for _ in runs]
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataGenError(f"source line {line}: {len(row)} fields, the header has {len(header)}")
            for name, values in columns.items():
                values.append(_number(row[at[name]], scales[name], name, line))
            for run, texts in zip(runs, segments, strict=True):
                texts.append(",".join(_quoted(row[i]) for i in run))
    if not columns["fare"]:
        raise DataGenError(f"source {path} has no rows")
    for name in ("fare", "tips", "trip_miles", "trip_start_timestamp"):
        if min(columns[name]) < 0:
            raise DataGenError(f"source {path}: {name} has empty cells (the schema requires it in every row)")
    return Source(header=header,
                  fare=np.array(columns["fare"], np.int64), tips=np.array(columns["tips"], np.int64),
                  miles=np.array(columns["trip_miles"], np.int64), seconds=np.array(columns["trip_seconds"], np.int64),
                  timestamp=np.array(columns["trip_start_timestamp"], np.int64),
                  segments=[pa.array(texts, pa.string()) for texts in segments], layout=layout)


def _uniform(raw: np.ndarray) -> np.ndarray:
    """uint64 -> [0, 1) with 53 bits, as numpy's Generator.random does."""
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


_DIGITS = [pa.array([f"{i:0{width}d}" for i in range(10 ** width)], pa.string()) for width in (1, 2)]


def _decimal(units: np.ndarray, places: int) -> pa.Array:
    """Non-negative integers in 1/10**places units as text with `places` decimals: 1245 -> "12.45"."""
    whole = pc.cast(pa.array(units // 10 ** places), pa.string())
    return pc.binary_join_element_wise(whole, _DIGITS[places - 1].take(pa.array(units % 10 ** places)), ".")


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


class Generator:
    """Rows of the synthetic dataset by global row number: rows(a, b) is the CSV text of rows a..b-1."""

    def __init__(self, source: Source, seed: int):
        self.source = source
        self.key = np.random.SeedSequence(seed).generate_state(2, np.uint64)
        self.t_min, self.t_max = int(source.timestamp.min()), int(source.timestamp.max())
        self.header = ",".join(_quoted(c) for c in source.header)

    def columns(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The computed columns and the resampled source rows (key "row") of rows start..stop-1."""
        src = self.source
        raw = np.random.Philox(key=self.key, counter=[start, 0, 0, 0]).random_raw((stop - start) * DRAWS)
        raw = raw.reshape(-1, DRAWS)
        row = np.minimum((_uniform(raw[:, 0]) * src.rows).astype(np.int64), src.rows - 1)
        scale = np.exp(SPREAD * (_uniform(raw[:, 1]) + _uniform(raw[:, 2]) - 1.0))
        fare0 = src.fare[row]
        fare = np.rint(fare0 * scale / 5).astype(np.int64) * 5
        tips0 = src.tips[row]
        share = np.divide(fare, fare0, out=np.ones(len(row)), where=fare0 > 0)
        tips = np.where(tips0 % 100 == 0, tips0, np.rint(tips0 * share).astype(np.int64))
        miles = np.rint(src.miles[row] * scale / 10).astype(np.int64)  # tenths
        seconds0 = src.seconds[row]
        seconds = np.where(seconds0 < 0, -1, np.rint(seconds0 * scale / 60).astype(np.int64) * 60)
        weeks = (raw[:, 3] % np.uint64(2 * MAX_WEEKS + 1)).astype(np.int64) - MAX_WEEKS
        quarters = ((raw[:, 3] >> np.uint64(32)) % np.uint64(2 * MAX_QUARTERS + 1)).astype(np.int64) - MAX_QUARTERS
        shift = weeks * WEEK + quarters * QUARTER
        timestamp0 = src.timestamp[row]
        timestamp = timestamp0 + shift
        outside = (timestamp < self.t_min) | (timestamp > self.t_max)
        timestamp = np.where(outside, timestamp0 - shift, timestamp)  # mirrored back inside the sample's range
        timestamp = np.clip(timestamp, self.t_min, self.t_max)  # a source spanning less than the largest shift
        months = timestamp.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
        return {"row": row, "fare": fare, "tips": tips, "trip_miles": miles, "trip_seconds": seconds,
                "trip_start_timestamp": timestamp, "trip_start_hour": timestamp // 3600 % 24,
                "trip_start_day": (timestamp // 86400 + 4) % 7 + 1,  # 1970-01-01 was a Thursday (5)
                "trip_start_month": months % 12 + 1}

    def text(self, start: int, stop: int) -> pa.Array:
        """One string per row, each "\\n" + the row's CSV line: a file is the header, these, and a final "\\n"."""
        values = self.columns(start, stop)
        take = pa.array(values["row"])
        seconds = values["trip_seconds"]
        rendered = {
            "fare": _decimal(values["fare"], 2), "tips": _decimal(values["tips"], 2),
            "trip_miles": _decimal(values["trip_miles"], 1),
            "trip_seconds": pc.cast(pa.array(seconds, mask=seconds < 0), pa.string()),
            "trip_start_timestamp": _text(values["trip_start_timestamp"]),
            "trip_start_hour": _text(values["trip_start_hour"]), "trip_start_day": _text(values["trip_start_day"]),
            "trip_start_month": _text(values["trip_start_month"]),
        }
        segments = iter(self.source.segments)
        parts = [next(segments).take(take) if name == "segment" else rendered[name] for name in self.source.layout]
        parts[0] = pc.binary_join_element_wise("\n", parts[0], "")
        return pc.binary_join_element_wise(*parts, ",", null_handling="replace", null_replacement="")


def _write_text(f, lines: pa.Array) -> None:
    """Writes an Arrow string array's characters, all values back to back, without copying them into Python."""
    offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
    f.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])


def split(total: int, parts: int) -> list[int]:
    """`total` rows into `parts` near-equal parts, the larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


@dataclass(frozen=True)
class Plan:
    """What to write: every file's path under the output folder and its global rows [start, stop)."""
    files: list[tuple[str, int, int]]
    spans: list[str]  # span folders to mark complete; empty for a flat folder


def plan(rows: int, spans: int, shard_rows: int) -> Plan:
    files, folders, start = [], [], 0
    for number, span_rows in enumerate(split(rows, spans or 1), start=1):
        folder = f"span-{number}" if spans else ""
        shards = -(-span_rows // shard_rows)
        for index, shard in enumerate(split(span_rows, shards)):
            files.append((os.path.join(folder, f"data-{index:05d}-of-{shards:05d}.csv"), start, start + shard))
            start += shard
        if spans:
            folders.append(folder)
    return Plan(files, folders)


def generate(out: str, rows: int, spans: int = 0, seed: int = 0, shard_rows: int = SHARD_ROWS,
             chunk_rows: int = CHUNK_ROWS, source: str | os.PathLike = SAMPLE, progress=None) -> Plan:
    """Writes the dataset to the new folder `out` (an existing non-empty one is an error), all or nothing: the
    files go to a hidden folder beside it, renamed to `out` when complete (each span's _SUCCESS written last)."""
    for name, value, least in (("rows", rows, 1), ("spans", spans, 0), ("shard rows", shard_rows, 1),
                               ("chunk rows", chunk_rows, 1)):
        if value < least:
            raise DataGenError(f"{name} must be at least {least}, not {value}")
    if chunk_rows > MAX_CHUNK_ROWS:
        raise DataGenError(f"chunk rows must be at most {MAX_CHUNK_ROWS:,} (a chunk's text stays under 2 GiB), "
                           f"not {chunk_rows:,}")
    if spans > rows:
        raise DataGenError(f"{spans} spans need at least {spans} rows, not {rows}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataGenError(f"{out} exists and is not an empty folder: remove it or choose another OUT")
    generator = Generator(load_source(source), seed)
    layout = plan(rows, spans, shard_rows)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        header = generator.header.encode()
        for path, start, stop in layout.files:
            os.makedirs(os.path.join(partial, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(partial, path), "wb") as f:
                f.write(header)
                for a in range(start, stop, chunk_rows):
                    _write_text(f, generator.text(a, min(a + chunk_rows, stop)))
                f.write(b"\n")
            if progress:
                progress(path, stop - start, stop)
        for folder in layout.spans:
            open(os.path.join(partial, folder, SUCCESS_MARKER), "w").close()
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return layout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datagen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="rows in all")
    parser.add_argument("--spans", type=int, default=0, help="span folders span-1/ ... (0: one flat folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the folder to create (must not exist, or be empty)")
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per CSV file at most")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows generated at a time (memory)")
    parser.add_argument("--source", default=str(SAMPLE), help="the sample to draw from")
    args = parser.parse_args(argv)
    began = time.monotonic()

    def progress(path, written, done):
        print(f"  {path}: {written:,} rows ({done:,}/{args.rows:,}, {done / args.rows:.0%})", flush=True)

    try:
        layout = generate(args.out, args.rows, args.spans, args.seed, args.shard_rows, args.chunk_rows,
                          args.source, progress)
    except (DataGenError, OSError) as error:
        print(f"error: data: {error}", file=sys.stderr)
        return 2 if isinstance(error, DataGenError) else 1
    seconds = time.monotonic() - began
    where = f"{len(layout.spans)} spans in " if layout.spans else ""
    print(f"Wrote {args.rows:,} rows, {len(layout.files)} files, {where}{args.out} (seed {args.seed}) in "
          f"{seconds:.1f} s: {args.rows / seconds:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

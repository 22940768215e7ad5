"""make bench-scale: the whole pipeline (tuning off) at growing sizes, local and beam profiles and TFX's reference
taxi pipeline, one after the other on the same generated data (not a test).

    python bench/bench_scale.py [--sizes 15000,150000,1500000] [--epochs 2] [--no-reference] [--keep]
    make bench-scale SIZES=15000,150000
    make bench-scale SIZES=1500000 ARGS=--keep    # re-measure 1.5M only; the other sizes' rows as last measured

Per size: the data is `make data ROWS=<n>`'s (data/taxi_<n>/, generated when missing, kept for the next time). Each
pipeline runs fresh in a temporary output root; measured: wall time and peak memory of the whole process tree
(psutil, RSS summed over the process and every child, sampled every 0.1 s), each component's time from ML Metadata
(its execution's create to last update), rows/s, and the row counts that show no row was lost (pipeline/row_counts.py:
the CSV rows in, ExampleGen's examples out (records of every split), StatisticsGen's num_examples, Transform's
records out against its records in, TFMA's example_count against the eval split). A mismatch fails the benchmark
(exit 1) after the tables.
Ours trains trainer.epochs passes over its train split (--epochs); the reference keeps its own 1,000 steps.
The tables go to stdout and to docs/benchmarks.md, the chart to docs/images/bench-scale.svg, the measurements to
docs/bench-scale.json; with --keep, the sizes not measured in this run are taken from that file with the time they
were measured (the 1.5M size takes most of an hour on 2 cores; ratios within one size are always from one run).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import watch_tree, write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline.row_counts import RowCounts, csv_rows, lost_rows, read_counts  # noqa: E402

PYTHON = sys.executable
RUNNERS = {"local": "runners.local_runner", "beam": "runners.beam_runner"}
# Per-component rows: (label, our component id, the reference's); None where one pipeline has no such component.
COMPONENTS = (("ExampleGen", "ExampleGen", "CsvExampleGen"), ("StatisticsGen", "StatisticsGen", "StatisticsGen"),
              ("SchemaGen", None, "SchemaGen"), ("ExampleValidator", "ExampleValidator", "ExampleValidator"),
              ("DataGate", "DataGate", None), ("Transform", "Transform", "Transform"), ("Trainer", "Trainer", "Trainer"),
              ("Evaluator", "Evaluator", "Evaluator"), ("Pusher", "Pusher", "Pusher"))
OURS = {label: ours for label, ours, _ in COMPONENTS if ours}
REFERENCE = {label: theirs for label, _, theirs in COMPONENTS if theirs}
REFERENCE_NAME = "chicago_taxi_native_keras"
SECTION = "## Scale: `make bench-scale`"
CHART = REPO / "docs" / "images" / "bench-scale.svg"
RESULTS = REPO / "docs" / "bench-scale.json"


def measure(command, env, cwd, log_path, timeout):
    """(wall seconds, peak RSS GiB of the process tree, exit status or None when killed at `timeout`, the RSS
    samples as (epoch seconds, bytes))."""
    started, timeline = time.monotonic(), []
    with open(log_path, "w") as log:
        process = psutil.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        peak, killed = watch_tree(process, timeout, timeline)
    return time.monotonic() - started, peak / 2**30, None if killed else process.returncode, timeline


def data_root(rows: int) -> Path:
    """data/taxi_<rows>/ as `make data ROWS=<rows>` writes it; generated when missing."""
    root = REPO / "data" / f"taxi_{rows}"
    if not root.is_dir():
        subprocess.run([PYTHON, "-m", "pipeline.datagen", "--rows", str(rows), "--out", str(root)], cwd=REPO,
                       check=True)
    return root


def read_run(store, pipeline_name: str, ids: dict[str, str], timeline: list) -> dict:
    """Component seconds, each component's peak memory (the process tree's, over the component's execution) and the
    row counts (pipeline/row_counts.py) of the newest run of `pipeline_name` in `store`."""
    from runners.summary import latest_run

    nodes = latest_run(store, types.SimpleNamespace(pipeline_name=pipeline_name))
    ran = {ours: nodes[theirs] for ours, theirs in ids.items() if theirs in nodes}
    peaks = {}
    for label, node in ran.items():
        during = [rss for at, rss in timeline if node.started <= at <= node.started + node.seconds]
        if during:
            peaks[label] = max(during) / 2**30
    return {"seconds": {label: node.seconds for label, node in ran.items()}, "component_peak": peaks,
            "counts": read_counts(store, nodes, ids)}


def run_ours(profile: str, root: Path, work: Path, epochs: int, timeout: float) -> dict:
    from pipeline.config import load_config
    from pipeline.metadata import open_store

    overlay = work / "overlay.yaml"
    overlay.write_text(f"tuner: {{enabled: false}}\ntrainer: {{epochs: {epochs}}}\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFX_E2E_PROFILE=profile, TFX_E2E_CONFIG=str(overlay),
               TFX_E2E_DATA_ROOT=str(root), TFX_E2E_OUTPUT_ROOT=str(work / "output"), TFX_E2E_ALWAYS_RUN="1")
    wall, peak, status, timeline = measure([PYTHON, "-m", RUNNERS[profile]], env, REPO, work / "run.log", timeout)
    result = {"wall": wall, "peak": peak, "status": status, "log": work / "run.log"}
    if status == 0:
        config = load_config(env={k: v for k, v in env.items() if k.startswith("TFX_E2E_")})
        result.update(read_run(open_store(config, readonly=True), config.pipeline_name, OURS, timeline))
    return result


def run_reference(root: Path, work: Path, timeout: float) -> dict:
    """TFX's taxi_pipeline_native_keras from the installed tfx, its own settings, in a HOME as it expects."""
    import ml_metadata as mlmd
    import tfx
    from ml_metadata.proto import metadata_store_pb2

    example_dir = Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline"
    home = work / "home"
    data = home / "taxi" / "data" / "simple"
    data.mkdir(parents=True)
    for path in root.glob("*.csv"):
        shutil.copy(path, data)
    shutil.copy(example_dir / "taxi_utils_native_keras.py", home / "taxi")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOME=str(home))
    wall, peak, status, timeline = measure([PYTHON, str(example_dir / "taxi_pipeline_native_keras.py")], env, home,
                                           work / "run.log", timeout)
    result = {"wall": wall, "peak": peak, "status": status, "log": work / "run.log"}
    if status == 0:
        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = str(home / "tfx" / "metadata" / REFERENCE_NAME / "metadata.db")
        result.update(read_run(mlmd.MetadataStore(connection), REFERENCE_NAME, REFERENCE, timeline))
    return result


def chart(results: dict) -> str:
    """Wall time and peak memory against rows, one line per pipeline, log-log."""
    from matplotlib import ticker

    from reports.charts import figure, to_svg

    fig = figure(8.0, 3.2)
    time_axis, memory_axis = fig.subplots(1, 2)
    for name, per_size in results.items():
        sizes = sorted(n for n, r in per_size.items() if r["status"] == 0)
        if sizes:
            time_axis.plot(sizes, [per_size[n]["wall"] for n in sizes], marker="o", label=name)
            memory_axis.plot(sizes, [per_size[n]["peak"] for n in sizes], marker="o", label=name)
    # Plain numbers on the log axes: reports/charts.py turns mathtext off, so 10^4 would show as its source.
    plain = ticker.FuncFormatter(lambda value, _: f"{value:,.0f}")
    for axis, label in ((time_axis, "wall time (s)"), (memory_axis, "peak memory, process tree (GiB)")):
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("rows")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    time_axis.set_yscale("log")
    time_axis.yaxis.set_major_formatter(plain)
    time_axis.yaxis.set_minor_formatter(ticker.NullFormatter())
    memory_axis.set_ylim(bottom=0)
    time_axis.legend(fontsize=8)
    return to_svg(fig)


def save_results(results: dict, rows_in: dict[int, int], measured: dict[int, str]) -> None:
    """Every size's figures, for a later --keep run."""
    def plain(r):
        kept = {k: r[k] for k in ("wall", "peak", "status", "seconds", "component_peak") if k in r}
        return {**kept, "counts": r["counts"]._asdict()} if "counts" in r else kept
    RESULTS.write_text(json.dumps({"sizes": {str(n): {"rows_in": rows_in[n], "measured": measured[n],
                                                      "runs": {name: plain(results[name][n]) for name in results
                                                               if n in results[name]}}
                                             for n in sorted(rows_in)}}, indent=1) + "\n")


def load_results(results: dict, rows_in: dict[int, int], measured: dict[int, str]) -> None:
    """The sizes docs/bench-scale.json holds and this run does not measure (--keep)."""
    if not RESULTS.exists():
        return
    for size, saved in json.loads(RESULTS.read_text())["sizes"].items():
        n = int(size)
        if n in rows_in:
            continue
        if set(saved["runs"]) != set(results):
            print(f"--keep: {n:,} rows left out: saved for {', '.join(saved['runs'])}, not this run's "
                  f"{', '.join(results)}", flush=True)
            continue
        rows_in[n], measured[n] = saved["rows_in"], saved["measured"]
        for name, r in saved["runs"].items():
            results[name][n] = {**r, "counts": RowCounts(**r["counts"])} if "counts" in r else r


def targets(results: dict) -> list[str]:
    """Issue 16's targets, per profile of ours, at the largest size run to the end: wall time <= 0.7x the
    reference's, peak memory <= 1.5x the smallest size's, and time growing no faster than rows (from a size
    a tenth as large: <= 10x)."""
    lines = []
    reference = results.get("TFX reference", {})
    for name in ("local", "beam"):
        done = {n: r for n, r in results.get(name, {}).items() if r["status"] == 0}
        if len(done) < 2:
            continue
        small, large = min(done), max(done)
        checks = []
        if reference.get(large, {}).get("status") == 0:
            ratio = done[large]["wall"] / reference[large]["wall"]
            checks.append(f"wall {ratio:.2f}x the reference's at {large:,} rows (target <= 0.7x: "
                          f"{'met' if ratio <= 0.7 else 'not met'})")
        growth = done[large]["peak"] / done[small]["peak"]
        checks.append(f"peak memory {growth:.2f}x that at {small:,} rows (target <= 1.5x: "
                      f"{'met' if growth <= 1.5 else 'not met'})")
        if large // 10 in done:
            step = done[large]["wall"] / done[large // 10]["wall"]
            checks.append(f"time {step:.2f}x from {large // 10:,} to {large:,} rows (target <= 10x: "
                          f"{'met' if step <= 10 else 'not met'})")
        lines.append(f"- {name}: " + "; ".join(checks))
    return lines


def tables(results: dict, rows_in: dict[int, int]) -> tuple[str, list[str]]:
    sizes = sorted(rows_in)
    names = list(results)

    def row(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    def status(r):
        return "" if r["status"] == 0 else (" (did not finish in time)" if r["status"] is None
                                             else f" (FAILED, exit {r['status']})")

    runs = [row(["rows", "pipeline", "wall", "rows/s", "peak memory (tree)"]), row(["---"] * 5)]
    for n in sizes:
        for name in names:
            r = results[name][n]
            runs.append(row([f"{n:,}", name + status(r), f"{r['wall']:.1f} s", f"{n / r['wall']:,.0f}",
                             f"{r['peak']:.2f} GiB"]))
    columns = [(name, n) for n in sizes for name in names]
    per_component = [row(["component (s; rows/s)", *(f"{name} {n:,}" for name, n in columns)]),
                     row(["---"] * (1 + len(columns)))]
    for label, _, _ in COMPONENTS:
        cells = []
        for name, n in columns:
            seconds = results[name][n].get("seconds", {}).get(label)
            rate = f" ({n / seconds:,.0f})" if seconds is not None and seconds >= 0.1 else ""
            cells.append("" if seconds is None else f"{seconds:.1f}{rate}")
        per_component.append(row([label, *cells]))
    memory = [row(["component peak memory (GiB, tree)", *(f"{name} {n:,}" for name, n in columns)]),
              row(["---"] * (1 + len(columns)))]
    for label, _, _ in COMPONENTS:
        cells = [results[name][n].get("component_peak", {}).get(label) for name, n in columns]
        if any(c is not None for c in cells):
            memory.append(row([label, *("" if c is None else f"{c:.2f}" for c in cells)]))
    counts = [row(["rows", "pipeline", "CSV rows in", "ExampleGen out (train + eval)", "statistics num_examples",
                   "Transform in → out", "TFMA example_count", "no row lost"]), row(["---"] * 8)]
    problems = []
    for n in sizes:
        for name in names:
            r = results[name][n]
            if r["status"] != 0:
                counts.append(row([f"{n:,}", name, f"{rows_in[n]:,}", "", "", "", "", "not run to the end"]))
                continue
            c = r["counts"]
            lost = lost_rows(rows_in[n], c)
            problems += [f"{name} at {n:,} rows: {p}" for p in lost]
            gen = c.example_gen
            counts.append(row([
                f"{n:,}", name, f"{rows_in[n]:,}", f"{sum(gen.values()):,} ({gen.get('train', 0):,} + {gen.get('eval', 0):,})",
                f"{sum(c.statistics.values()):,}",
                f"{sum(c.transform_in.values()):,} → {sum(c.transform_out.values()):,}",
                f"{c.tfma:,}" if c.tfma is not None else "not computed (not in its eval config)",
                "yes" if not lost else "NO: " + "; ".join(lost)]))
    goals = targets(results)
    return ("\n".join(runs) + "\n\n" + "\n".join(per_component) + "\n\n"
            + ("\n".join(memory) + "\n\n" if len(memory) > 2 else "") + "\n".join(counts)
            + ("\n\nTargets:\n\n" + "\n".join(goals) if goals else ""), problems)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The pipeline at growing sizes against TFX's reference.")
    parser.add_argument("--sizes", default="15000,150000,1500000", help="rows, comma-separated")
    parser.add_argument("--epochs", type=int, default=2, help="trainer.epochs for our runs (default 2)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="leave out TFX's reference pipeline")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds a run may take (default 2 hours)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the other sizes' figures from docs/bench-scale.json (measured at their own time)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes: row counts separated by commas, got {args.sizes!r}")
    if not sizes or min(sizes) < 1000 or args.epochs < 1:
        parser.error("--sizes: each at least 1,000 rows; --epochs: at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    names = ["local", "beam", *(["TFX reference"] if args.reference else [])]
    results = {name: {} for name in names}
    rows_in, measured = {}, {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for n in sizes:
        measured[n] = started
        root = data_root(n)
        rows_in[n] = csv_rows(root)
        for name in names:
            print(f"{n:,} rows: {name} ...", flush=True)
            run_dir = work / f"{name.split()[-1]}-{n}"
            run_dir.mkdir()
            results[name][n] = (run_reference(root, run_dir, args.timeout) if name == "TFX reference"
                                else run_ours(name, root, run_dir, args.epochs, args.timeout))
            r = results[name][n]
            print(f"  {r['wall']:.1f} s, peak {r['peak']:.2f} GiB, exit {r['status']}", flush=True)
            if r["status"] not in (0, None):
                print(r["log"].read_text()[-3000:], file=sys.stderr)
    if args.keep:
        load_results(results, rows_in, measured)
    save_results(results, rows_in, measured)
    text, problems = tables(results, rows_in)
    machine = (f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
               f"Python {platform.python_version()}")
    print("\n" + text + "\n\n" + machine)
    CHART.parent.mkdir(parents=True, exist_ok=True)
    CHART.write_text(chart(results))
    sizes_text = ", ".join(f"{n:,}" for n in sorted(rows_in))
    when = "; ".join(f"{', '.join(f'{n:,}' for n in sorted(rows_in) if measured[n] == at)} rows {at}"
                     for at in sorted(set(measured.values())))
    section = (f"{SECTION}\n\nMeasured {when} on {machine}; command: `python bench/bench_scale.py --sizes "
               f"{','.join(map(str, sizes))} --epochs {args.epochs}{'' if args.reference else ' --no-reference'}"
               f"{' --keep' if args.keep else ''}` (`make bench-scale`; with --keep, the other sizes as measured "
               f"before, from docs/bench-scale.json). Data: `make data ROWS=<n>` (data/taxi_<n>/) at {sizes_text} "
               f"rows; tuning off; "
               f"ours trains {args.epochs} epoch(s) of its train split (trainer.epochs), the reference its own 1,000 "
               f"steps. Times per component from ML Metadata (rows/s: the run's rows over the component's time); "
               f"peak memory: the process tree's RSS summed, sampled every 0.1 s.\n\n{text}\n\n"
               f"![wall time and peak memory against rows](images/bench-scale.svg)\n\n")
    write_section(REPO / "docs" / "benchmarks.md", SECTION, section)
    shutil.rmtree(work, ignore_errors=True)
    if problems:
        sys.exit("rows lost:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()

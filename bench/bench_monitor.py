"""make bench-monitor: `python -m monitoring.monitor` on 100,000 logged requests (not a test).

Setup (not timed): a pipeline run on the bundled slice (tests/data/taxi_small, tuning off, few steps) into a
temporary output root gives a pushed version and its ML Metadata; the 15,002 rows of data/taxi are scored once by
that SavedModel; then request logs are written as the local server writes them (one example per predict request,
PredictionLog TFRecords, 4 files), spread over 10 hours (10 windows of 60 minutes), at two sizes: 25,000 and
100,000 requests. Timed: the monitor command on each (a subprocess: imports, reading, TFDV statistics per window
and version, skew/drift/score/anomaly checks, reports), with its peak resident memory (wait4's ru_maxrss). The same
10 windows at both sizes, so a flat memory means the same peak for 4x the requests. The results replace the
`## Monitoring: make bench-monitor` section of docs/benchmarks.md.

    make bench-monitor                          # about 4 minutes
    python bench/bench_monitor.py --no-doc      # print only
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "## Monitoring: `make bench-monitor`"
SIZES = (25_000, 100_000)
HOURS = 10
FILES = 4
TARGET_S = 60.0
OVERLAY = ("tuner: {enabled: false}\ntrainer: {train_steps: 150, eval_steps: 10, batch_size: 64}\n"
           "evaluator: {auc_lower_bound: 0.6}\n")


def setup(work: Path) -> tuple[dict, int, str]:
    overlay = work / "overlay.yaml"
    overlay.write_text(OVERLAY)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFX_E2E_CONFIG=str(overlay), TFX_E2E_ALWAYS_RUN="1",
               TFX_E2E_DATA_ROOT=str(REPO / "tests" / "data" / "taxi_small"), TFX_E2E_OUTPUT_ROOT=str(work / "output"))
    for key in ("TFX_E2E_SPAN", "TFX_E2E_DATE", "TFX_E2E_PROFILE"):
        env.pop(key, None)
    print("setup: a pipeline run on tests/data/taxi_small ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "runners.local_runner"], env=env, cwd=REPO, capture_output=True,
                          text=True)
    pushed = re.search(r"^Pushed version (\d+): (\S+)$", done.stdout, re.M)
    if done.returncode != 0 or not pushed:
        sys.exit(f"benchmark: the setup run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return env, int(pushed.group(1)), pushed.group(2)


def write_logs(folder: Path, requests: int, version: int, model_dir: str, examples, scores) -> None:
    import numpy as np

    from monitoring import replay

    folder.mkdir(parents=True)
    start = 1_790_000_000 // 3600 * 3600
    per_file = requests // FILES
    for n in range(FILES):
        index = np.arange(n * per_file, (n + 1) * per_file) % len(examples)
        replay.write(str(folder / f"prediction_log-{n:06d}.tfrecord"), replay.predict_logs(
            "chicago_taxi", version, [examples[i] for i in index], scores[index],
            start + n * HOURS * 3600 / FILES, HOURS * 3600 / FILES))


def measure(env: dict, folder: Path) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS GiB, exit status, the last line before Result)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "monitoring.monitor", "--logs", str(folder)], env=env,
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    summary = next((line for line in out.splitlines() if " requests in " in line), out[-2000:])
    return wall, usage.ru_maxrss / 2**20, process.returncode, summary


def write_section(path: Path, section: str) -> None:
    """Replaces this benchmark's section (from HEADING to the next `## ` heading) or appends it; keeps the rest."""
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == HEADING), None)
    if start is None:
        path.write_text("".join(lines).rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.config import load_config
    from serving.examples import load_schema, read_csv_rows, serialize

    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        work = Path(tmp)
        env, version, model_dir = setup(work)
        from monitoring import replay

        examples = serialize(read_csv_rows(str(REPO / "data" / "taxi" / "data.csv")),
                             load_schema(load_config(check_data=False).schema_path))
        scores = replay.score(model_dir, examples)
        rows = []
        for size in SIZES:
            folder = work / f"logs-{size}"
            write_logs(folder, size, version, model_dir, examples, scores)
            megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            wall, rss, status, summary = measure(env, folder)
            print(f"{size:,} requests ({megabytes:.0f} MiB): {wall:.1f} s, peak {rss:.2f} GiB, exit {status}\n  {summary}",
                  flush=True)
            rows.append((size, megabytes, wall, rss, status, summary))
    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    table = ["| logged requests | log size | `python -m monitoring.monitor` wall | requests/s | peak memory (RSS) "
             "| exit |", "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {size:,} | {mb:.0f} MiB | {wall:.1f} s | {size / wall:,.0f} | {rss:.2f} GiB | {status} |"
              for size, mb, wall, rss, status, _ in rows]
    size, _, wall, rss, _, summary = rows[-1]
    section = (f"{HEADING}\n\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()}: "
               f"{cores} cores, {memory:.0f} GiB, Python {platform.python_version()}; command: `make bench-monitor` "
               f"(bench/bench_monitor.py). Single-example predict requests as the local server logs them, the "
               f"data/taxi rows scored by a version pushed by a pipeline run on tests/data/taxi_small, over {HOURS} "
               f"hours ({HOURS} windows of 60 minutes), {FILES} files; the command's whole wall time (Python and "
               f"TensorFlow imports included), from reading the logs to the reports and gauges.\n\n"
               + "\n".join(table) + "\n\n"
               f"Target: {SIZES[-1]:,} requests within {TARGET_S:.0f} s: "
               f"{'met' if wall <= TARGET_S else 'NOT met'} ({wall:.1f} s). Memory: {rows[0][3]:.2f} GiB at "
               f"{SIZES[0]:,} requests, {rss:.2f} GiB at {size:,} (the same windows; TFDV's accumulators are "
               f"sketches and examples wait in batches of monitoring.batch_size). The monitor's own line: `{summary}`\n")
    print("\n" + section)
    if not args.no_doc:
        write_section(DOC, section)
        print(f"wrote the section to {DOC}")


if __name__ == "__main__":
    main()

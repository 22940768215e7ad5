"""The incremental-run row of `make bench-pipeline` (issue 12): a rolling window of 4 quarterly spans.

  incremental  ML Metadata already holds spans 12 to 15 and a Transform analyzer cache (a run on span 15 with
               the window 12-15); span 16 arrives and a run trains on 13-16: ExampleGen reads span 16 only,
               Transform analyzes span 16 only (the cache covers 13-15).
  fresh        a new output root (empty ML Metadata): the run on span 16 ingests 13-15 first (ExampleGen partial
               runs, runners/backfill.py) and Transform analyzes all four spans.
Both with tuning off, on data/taxi_spans (`make spans`). Wall time of the run command and the Evaluator's AUC
(span 16's eval split, the same rows for both) from the run's summary. Runs alone: `python bench/bench_incremental.py`;
bench_pipeline.py adds incremental_table() to its section of docs/benchmarks.md.
"""
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPANS = REPO / "data" / "taxi_spans"
PYTHON = sys.executable


def _run(env, span):
    started = time.monotonic()
    done = subprocess.run([PYTHON, "-m", "runners.local_runner", "--span", str(span)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"benchmark: run on span {span} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    auc = re.search(r"^\s+auc\s+([0-9.]+)$", done.stdout, re.M)
    transform = re.search(r"^\s+Transform\s+\w+\s+([0-9.]+) s$", done.stdout, re.M)
    return seconds, float(auc.group(1)) if auc else float("nan"), float(transform.group(1)) if transform else 0.0


def rows(work: Path) -> list[tuple[str, str, str, str]]:
    if not (SPANS / "span-16" / "_SUCCESS").exists():
        subprocess.run(["make", "spans"], cwd=REPO, check=True)
    overlay = work / "window4.yaml"
    # drift: warn: the 2016 spans drift over the schema's thresholds (docs/continuous-training.md#drift-between-spans).
    overlay.write_text("tuner: {enabled: false}\ncontinuous: {window_spans: 4, drift: warn}\n")
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFX_E2E_CONFIG=str(overlay), TFX_E2E_DATA_ROOT=str(SPANS),
                TFX_E2E_ALWAYS_RUN="1")
    base.pop("TFX_E2E_SPAN", None), base.pop("TFX_E2E_DATE", None)
    incremental_env = dict(base, TFX_E2E_OUTPUT_ROOT=str(work / "incremental"))
    print("incremental: setting up (window 12-15) ...", flush=True)
    _run(incremental_env, 15)
    print("incremental: span 16 arrives (window 13-16) ...", flush=True)
    inc = _run(incremental_env, 16)
    print("fresh: empty ML Metadata, window 13-16 ...", flush=True)
    fresh = _run(dict(base, TFX_E2E_OUTPUT_ROOT=str(work / "fresh")), 16)
    return [
        ("window of 4 spans (13-16), one new span: incremental run wall (analyzer cache, spans 13-15 in ML Metadata)",
         f"{fresh[0]:.1f} s", f"{inc[0]:.1f} s", f"{inc[0] / fresh[0]:.2f}x"),
        ("window of 4: Transform alone", f"{fresh[2]:.1f} s", f"{inc[2]:.1f} s",
         f"{inc[2] / fresh[2]:.2f}x" if fresh[2] else ""),
        ("window of 4: AUC on span 16's eval split", f"{fresh[1]:.4f}", f"{inc[1]:.4f}",
         f"{inc[1] - fresh[1]:+.4f}"),
    ]


def incremental_table(work: Path) -> str:
    """The rows as a Markdown table, with the line that says what they measure."""
    work.mkdir(parents=True, exist_ok=True)
    header = ("", "fresh run (empty ML Metadata)", "incremental run", "incremental vs fresh")
    table = [header, ("---",) * 4] + rows(work)
    return ("Rolling window (`continuous.window_spans: 4`, tuning off, data/taxi_spans): span 16 arrives; the incremental "
            "run has spans 12-15 and the analyzer cache in ML Metadata, the fresh run first ingests 13-15 "
            "(bench/bench_incremental.py).\n\n" + "\n".join("| " + " | ".join(r) + " |" for r in table))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as work:
        print(incremental_table(Path(work)))

"""The incremental-run row of `make bench-pipeline` (issue 12): a rolling window of 4 quarterly spans.

  incremental  ML Metadata already holds spans 12 to 15 and a Transform analyzer cache (a run on span 15 with
               the window 12-15); span 16 arrives and a run trains on 13-16: ExampleGen reads span 16 only,
               Transform analyzes span 16 only (the cache covers 13-15), and the Trainer starts from the model of
               the run on span 15 (continuous.warm_start, on by default) for continuous.warm_start_steps.
  fresh        a new output root (empty ML Metadata): the run on span 16 ingests 13-15 first (partial runs of
               ExampleGen and the data gate, runners/backfill.py), Transform analyzes all four spans and the
               Trainer trains cold (no model in ML Metadata) for trainer.train_steps; run twice,
               so the AUC's run-to-run noise (training is not seeded) is measured beside the difference.
Both with tuning off, on data/taxi_spans (`make spans`: spans 13-16 hold about 200 rows each, where fixed
costs dominate), then on spans 12-16 that are each a copy of the whole 15,002-row sample. Wall time of the
run command and the Evaluator's AUC (span 16's eval split, the same rows for both) from the run's summary.
Runs alone: `python bench/bench_incremental.py`; bench_pipeline.py adds incremental_table() to its section of
docs/benchmarks.md.
"""
import argparse
import os
import re
import shutil
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
    components = {m.group(1): float(m.group(2))
                  for m in re.finditer(r"^  (\w+)\s+(?:ran|cached|FAILED)\s+([0-9.]+) s$", done.stdout, re.M)}
    print("  " + ", ".join(f"{name} {t:.1f}" for name, t in components.items()) + f"; wall {seconds:.1f} s", flush=True)
    return (seconds, float(auc.group(1)) if auc else float("nan"), components.get("Transform", 0.0),
            components.get("Trainer", 0.0), components.get("Evaluator", 0.0))


def _large_spans(root: Path) -> Path:
    """span-12 to span-16, each the whole bundled sample (15,002 rows): spans where analysis has work to do."""
    source = REPO / "data" / "taxi" / "data.csv"
    for number in range(12, 17):
        folder = root / f"span-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "data.csv")
        (folder / "_SUCCESS").write_text("")
    return root


def _generated_spans(root: Path, span_rows: int) -> Path:
    """span-12 to span-16 of `make data`'s generated rows (pipeline/datagen.py, seed 0), span_rows each: spans
    the size of a day's data of a busy service, where ingesting and analysing the window costs more than a run's
    fixed costs."""
    from pipeline import datagen

    generated = root.parent / f"{root.name}-generated"
    datagen.generate(str(generated), rows=5 * span_rows, spans=5)
    root.mkdir(parents=True)
    for k in range(5):
        (generated / f"span-{k + 1}").rename(root / f"span-{12 + k}")
    return root


def rows(work: Path, spans_root: Path, what: str) -> list[tuple[str, str, str, str]]:
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "window4.yaml"
    # drift: warn: the 2016 spans drift over the schema's thresholds (docs/continuous-training.md#drift-between-spans).
    overlay.write_text("tuner: {enabled: false}\ncontinuous: {window_spans: 4, drift: warn}\n")
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFX_E2E_CONFIG=str(overlay), TFX_E2E_DATA_ROOT=str(spans_root),
                TFX_E2E_ALWAYS_RUN="1")
    base.pop("TFX_E2E_SPAN", None), base.pop("TFX_E2E_DATE", None)
    incremental_env = dict(base, TFX_E2E_OUTPUT_ROOT=str(work / "incremental"))
    print(f"{what}: incremental: setting up (window 12-15) ...", flush=True)
    _run(incremental_env, 15)
    print(f"{what}: incremental: span 16 arrives (window 13-16) ...", flush=True)
    inc = _run(incremental_env, 16)
    print(f"{what}: fresh: empty ML Metadata, window 13-16 ...", flush=True)
    fresh = _run(dict(base, TFX_E2E_OUTPUT_ROOT=str(work / "fresh")), 16)
    # Training is not seeded (weight initialisation, tf.data shuffling): a second fresh run gives the AUC noise.
    print(f"{what}: fresh again (the AUC's run-to-run noise) ...", flush=True)
    again = _run(dict(base, TFX_E2E_OUTPUT_ROOT=str(work / "fresh-again")), 16)
    return [
        (f"{what}: incremental run wall (analyzer cache, spans 13-15 in ML Metadata)",
         f"{fresh[0]:.1f} s", f"{inc[0]:.1f} s", f"{inc[0] / fresh[0]:.2f}x"),
        (f"{what}: Transform alone", f"{fresh[2]:.1f} s", f"{inc[2]:.1f} s",
         f"{inc[2] / fresh[2]:.2f}x" if fresh[2] else ""),
        (f"{what}: Trainer alone (incremental: warm start)", f"{fresh[3]:.1f} s", f"{inc[3]:.1f} s",
         f"{inc[3] / fresh[3]:.2f}x" if fresh[3] else ""),
        (f"{what}: Evaluator alone (incremental: candidate and blessed baseline)", f"{fresh[4]:.1f} s",
         f"{inc[4]:.1f} s", f"{inc[4] / fresh[4]:.2f}x" if fresh[4] else ""),
        (f"{what}: AUC on span 16's eval split", f"{fresh[1]:.4f}", f"{inc[1]:.4f}", f"{inc[1] - fresh[1]:+.4f}"),
        (f"{what}: AUC of a second fresh run (run-to-run noise)", f"{again[1]:.4f}", "",
         f"{again[1] - fresh[1]:+.4f} (fresh vs fresh)"),
    ]


def incremental_table(work: Path, span_rows: int = 0) -> str:
    """The rows as a Markdown table, with the line that says what they measure: the bundled quarterly spans, spans
    the size of the whole sample, and with span_rows, spans of that many generated rows."""
    if not (SPANS / "span-16" / "_SUCCESS").exists():
        subprocess.run(["make", "spans"], cwd=REPO, check=True)
    work.mkdir(parents=True, exist_ok=True)
    header = ("", "fresh run (empty ML Metadata)", "incremental run", "incremental vs fresh")
    table = [header, ("---",) * 4]
    table += rows(work / "bundled", SPANS, "quarterly spans 13-16 (~200 rows each)")
    table += rows(work / "large", _large_spans(work / "large-spans"), "spans of 15,002 rows (copies of the sample)")
    if span_rows:
        table += rows(work / "generated", _generated_spans(work / "generated-spans", span_rows),
                      f"spans of {span_rows:,} generated rows (make data)")
    generated = f", then spans 12-16 of {span_rows:,} rows each from `make data`" if span_rows else ""
    return ("Rolling window (`continuous.window_spans: 4`, tuning off, drift: warn): span 16 arrives; the incremental "
            "run has spans 12-15 and the analyzer cache in ML Metadata, the fresh run first ingests 13-15 through "
            "ExampleGen and the data gate; data/taxi_spans' quarterly spans, then spans 12-16 that are each a copy "
            f"of the bundled sample{generated} (bench/bench_incremental.py"
            f"{f' --span-rows {span_rows}' if span_rows else ''}).\n\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in table))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The incremental-run rows of make bench-pipeline.")
    parser.add_argument("--span-rows", type=int, default=0,
                        help="also spans of this many generated rows (e.g. 150000; about 20 minutes more)")
    parser.add_argument("--only-generated", action="store_true", help="only the generated spans' rows")
    args = parser.parse_args()
    if args.span_rows < 0 or (args.only_generated and not args.span_rows):
        parser.error("--span-rows: a row count (required with --only-generated)")
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as work:
        if args.only_generated:
            print("\n".join("| " + " | ".join(r) + " |" for r in rows(
                Path(work) / "generated", _generated_spans(Path(work) / "generated-spans", args.span_rows),
                f"spans of {args.span_rows:,} generated rows (make data)")))
        else:
            print(incremental_table(Path(work), args.span_rows))

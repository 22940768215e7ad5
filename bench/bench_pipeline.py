"""make bench-pipeline: TFX's reference taxi pipeline vs ours, side by side in one run (not a test).

Both run on the same 15,002 rows (the bundled CSV, identical to the one in the tfx wheel):
  reference  tfx/examples/chicago_taxi_pipeline/taxi_pipeline_native_keras.py from the installed
             tfx package, with its own settings (BeamDagRunner, multi-processing DirectRunner,
             1,000 training steps), in a temporary HOME as it expects;
  ours       `python -m runners.local_runner`, tuning off, then again with the Tuner on.
Each fresh run is followed by an unchanged re-run; for ours both the shortcut (default) and
TFX_E2E_ALWAYS_RUN=1 (LocalDagRunner, everything cached) are timed.
Models are scored on the same held-out rows, two ways: (1) the eval split: both pipelines split with
CsvExampleGen's default hash split (2:1 on the serialized example), so their eval splits are the same
rows and neither model trained on them; (2) a random third (seed 0), as in the issue's reference
figures: both pipelines run again on the other two thirds. The one-line rule and scikit-learn gradient
boosting are scored on the same rows for scale. The table goes to stdout and to docs/benchmarks.md.
"""
import contextlib
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "taxi" / "data.csv"
PYTHON = sys.executable


def watch_tree(process: psutil.Popen, timeout: float | None = None, timeline: list | None = None) -> tuple[int, bool]:
    """Until `process` ends: the peak RSS in bytes summed over its process tree (children included, sampled every
    0.1 s), and whether it was killed, with its tree, for running past `timeout` seconds. `timeline`, when given,
    gets every sample as (epoch seconds, bytes)."""
    started = time.monotonic()
    peak = 0
    while process.poll() is None:
        if timeout is not None and time.monotonic() - started > timeout:
            for member in process.children(recursive=True) + [process]:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            process.wait()
            return peak, True
        try:
            tree = [process] + process.children(recursive=True)
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
            peak = max(peak, rss)
            if timeline is not None:
                timeline.append((time.time(), rss))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return peak, False


def measure(command, env, cwd):
    """Wall seconds and peak RSS (sum over the process tree, sampled every 0.1 s) of a command."""
    started = time.monotonic()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    process = psutil.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    peak, _ = watch_tree(process)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        log.seek(0)
        sys.exit(f"benchmark: {' '.join(command)} failed ({process.returncode}):\n{log.read()[-4000:]}")
    return seconds, peak / 2**30


def ratio(ours, reference):
    value = ours / reference
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def versions(directory):
    return sorted(n for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def split_examples(pipeline_root, split, example_gen_id):
    import tensorflow as tf

    files = glob.glob(os.path.join(pipeline_root, example_gen_id, "examples", "*", f"Split-{split}", "*.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _frame(serialized):
    import pandas as pd
    import tensorflow as tf

    rows = []
    for record in serialized:
        row = {}
        for key, feature in tf.train.Example.FromString(record).features.feature.items():
            values = feature.float_list.value or feature.int64_list.value or feature.bytes_list.value
            row[key] = (values[0].decode() if isinstance(values[0], bytes) else values[0]) if len(values) else None
        rows.append(row)
    return _labelled(pd.DataFrame(rows))


def _labelled(frame):
    frame["label"] = (frame["tips"].fillna(0) > 0.2 * frame["fare"].fillna(0)).astype(int)
    return frame


def random_third(work):
    """Writes two thirds of the CSV lines, verbatim (types must not change), to a data root; returns it
    and the held-out third as raw rows. Seed 0, like the issue's 'random third of the rows'."""
    import csv

    import numpy as np

    with open(DATA, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    held = np.random.RandomState(0).rand(len(rows)) < 1 / 3
    train_dir = work / "two-thirds"
    train_dir.mkdir()
    with open(train_dir / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(r for r, h in zip(rows, held, strict=True) if not h)
    return train_dir, [dict(zip(header, r, strict=True)) for r, h in zip(rows, held, strict=True) if h], \
        [dict(zip(header, r, strict=True)) for r, h in zip(rows, held, strict=True) if not h]


def _rows_frame(rows):
    import pandas as pd

    frame = pd.DataFrame(rows).replace("", None)
    for column in frame.columns:
        if column not in ("payment_type", "company"):
            frame[column] = pd.to_numeric(frame[column])
    return _labelled(frame)


def reference_points(train, test):
    """The scale from the issue, on the same held-out rows (pandas frames with a label column):
    the one-line rule and scikit-learn gradient boosting trained on the same training rows."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    train, test = train.copy(), test.copy()
    rule = (test["payment_type"] == "Credit Card").astype(int)
    features = [c for c in train.columns if c not in ("tips", "label")]
    for column in ("payment_type", "company"):
        categories = pd.Categorical(pd.concat([train[column], test[column]]).fillna("?")).categories
        for frame in (train, test):
            frame[column] = pd.Categorical(frame[column].fillna("?"), categories=categories).codes
    boosting = HistGradientBoostingClassifier(random_state=0).fit(train[features].astype(float), train["label"])
    p = boosting.predict_proba(test[features].astype(float))[:, 1]
    return ((roc_auc_score(test["label"], rule), accuracy_score(test["label"], rule)),
            (roc_auc_score(test["label"], p), accuracy_score(test["label"], p > 0.5)))


def score(model_dir, serialized):
    import numpy as np
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, roc_auc_score

    model = tf.saved_model.load(model_dir)
    predict = model.signatures["serving_default"]
    scores, labels = [], []
    for start in range(0, len(serialized), 1024):
        batch = serialized[start:start + 1024]
        output = predict(examples=tf.constant(batch))
        scores.extend(np.asarray(next(iter(output.values()))).ravel().tolist())
        for record in batch:
            example = tf.train.Example.FromString(record)
            fare = example.features.feature["fare"].float_list.value
            tips = example.features.feature["tips"].float_list.value
            labels.append(int(bool(fare) and bool(tips) and tips[0] > 0.2 * fare[0]))
    scores, labels = np.array(scores), np.array(labels)
    return roc_auc_score(labels, scores), accuracy_score(labels, scores > 0.5)


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    rows = []

    # TFX's reference, as its file expects: ~/taxi/{data/simple/data.csv, taxi_utils_native_keras.py}.
    import tfx
    example_dir = Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline"
    home = work / "home"
    (home / "taxi" / "data" / "simple").mkdir(parents=True)
    shutil.copy(DATA, home / "taxi" / "data" / "simple" / "data.csv")
    shutil.copy(example_dir / "taxi_utils_native_keras.py", home / "taxi")
    ref_env = dict(base_env, HOME=str(home))
    ref_cmd = [PYTHON, str(example_dir / "taxi_pipeline_native_keras.py")]
    ref_serving = home / "taxi" / "serving_model" / "chicago_taxi_native_keras"
    print("reference: fresh run ...", flush=True)
    ref_fresh = measure(ref_cmd, ref_env, home)
    ref_v1 = versions(ref_serving)
    print("reference: unchanged re-run ...", flush=True)
    ref_rerun = measure(ref_cmd, ref_env, home)
    ref_v2 = versions(ref_serving)

    # Ours, tuning off.
    overlay = work / "tuning-off.yaml"
    overlay.write_text("tuner: {enabled: false}\n")
    ours_env = dict(base_env, TFX_E2E_OUTPUT_ROOT=str(work / "ours"), TFX_E2E_CONFIG=str(overlay))
    ours_cmd = [PYTHON, "-m", "runners.local_runner"]
    ours_serving = work / "ours" / "serving" / "chicago_taxi"
    print("ours (tuning off): fresh run ...", flush=True)
    ours_fresh = measure(ours_cmd, ours_env, REPO)
    ours_v1 = versions(ours_serving)
    print("ours: unchanged re-run ...", flush=True)
    ours_rerun = measure(ours_cmd, ours_env, REPO)
    ours_v2 = versions(ours_serving)
    print("ours: unchanged re-run with TFX_E2E_ALWAYS_RUN=1 ...", flush=True)
    ours_rerun_full = measure(ours_cmd, dict(ours_env, TFX_E2E_ALWAYS_RUN="1"), REPO)
    ours_v3 = versions(ours_serving)

    tuned_env = dict(base_env, TFX_E2E_OUTPUT_ROOT=str(work / "ours-tuned"))
    print("ours (tuning on, default local profile): fresh run ...", flush=True)
    tuned_fresh = measure(ours_cmd, tuned_env, REPO)

    # Quality on a random third, as the figures: both pipelines train on the other two thirds.
    from serving.examples import load_schema, serialize
    third_data, third_rows, two_thirds_rows = random_third(work)
    home2 = work / "home2"
    (home2 / "taxi" / "data" / "simple").mkdir(parents=True)
    shutil.copy(third_data / "data.csv", home2 / "taxi" / "data" / "simple" / "data.csv")
    shutil.copy(example_dir / "taxi_utils_native_keras.py", home2 / "taxi")
    print("random third held out: reference and ours (tuning off) on the other two thirds ...", flush=True)
    measure(ref_cmd, dict(ref_env, HOME=str(home2)), home2)
    measure(ours_cmd, dict(ours_env, TFX_E2E_OUTPUT_ROOT=str(work / "ours-third"), TFX_E2E_DATA_ROOT=str(third_data)),
            REPO)
    third = serialize(third_rows, load_schema(str(REPO / "schema" / "schema.pbtxt")), skip=())
    ref2_serving = home2 / "taxi" / "serving_model" / "chicago_taxi_native_keras"
    ours2_serving = work / "ours-third" / "serving" / "chicago_taxi"
    ref3_auc, ref3_acc = score(str(ref2_serving / versions(ref2_serving)[-1]), third)
    ours3_auc, ours3_acc = score(str(ours2_serving / versions(ours2_serving)[-1]), third)
    (rule3_auc, rule3_acc), (gb3_auc, gb3_acc) = reference_points(_rows_frame(two_thirds_rows),
                                                                  _rows_frame(third_rows))

    ref_eval = split_examples(home / "tfx" / "pipelines" / "chicago_taxi_native_keras", "eval", "CsvExampleGen")
    ours_eval = split_examples(work / "ours" / "pipelines" / "chicago-taxi", "eval", "ExampleGen")
    same_rows = sorted(ref_eval) == sorted(ours_eval)
    held_out = ours_eval if same_rows else sorted(set(ref_eval) & set(ours_eval))
    ref_auc, ref_acc = score(str(ref_serving / ref_v1[-1]), held_out)
    ours_auc, ours_acc = score(str(ours_serving / ours_v1[-1]), held_out)
    (rule_auc, rule_acc), (gb_auc, gb_acc) = reference_points(
        _frame(split_examples(work / "ours" / "pipelines" / "chicago-taxi", "train", "ExampleGen")), _frame(held_out))
    tuned_auc, tuned_acc = score(str(work / "ours-tuned" / "serving" / "chicago_taxi" /
                                     versions(work / "ours-tuned" / "serving" / "chicago_taxi")[-1]), held_out)

    def pushed(before, after):
        return "yes (duplicate)" if len(after) > len(before) else "no"

    rows = [
        ("fresh run: wall", f"{ref_fresh[0]:.1f} s", f"{ours_fresh[0]:.1f} s", ratio(ours_fresh[0], ref_fresh[0])),
        ("fresh run: peak memory", f"{ref_fresh[1]:.2f} GiB", f"{ours_fresh[1]:.2f} GiB",
         ratio(ours_fresh[1], ref_fresh[1])),
        ("unchanged re-run: wall", f"{ref_rerun[0]:.1f} s", f"{ours_rerun[0]:.1f} s",
         ratio(ours_rerun[0], ref_rerun[0])),
        ("unchanged re-run: new version pushed", pushed(ref_v1, ref_v2), pushed(ours_v1, ours_v2), ""),
        ("re-run, LocalDagRunner all cached (TFX_E2E_ALWAYS_RUN=1)", "", f"{ours_rerun_full[0]:.1f} s"
         + (", no push" if ours_v3 == ours_v1 else ", PUSHED"), ratio(ours_rerun_full[0], ref_rerun[0])),
        (f"eval split AUC ({len(held_out)} rows, held out by both)", f"{ref_auc:.4f}", f"{ours_auc:.4f}",
         f"{ours_auc - ref_auc:+.4f}"),
        ("eval split binary accuracy", f"{ref_acc:.4f}", f"{ours_acc:.4f}", f"{ours_acc - ref_acc:+.4f}"),
        ("for scale, eval split: rule `payment_type == 'Credit Card'` AUC / accuracy", "",
         f"{rule_auc:.4f} / {rule_acc:.4f}", ""),
        ("for scale, eval split: scikit-learn gradient boosting (same train split)", "", f"{gb_auc:.4f} / {gb_acc:.4f}", ""),
        (f"random third held out ({len(third)} rows; trained on the rest): AUC", f"{ref3_auc:.4f}",
         f"{ours3_auc:.4f}", f"{ours3_auc - ref3_auc:+.4f}"),
        ("random third held out: binary accuracy", f"{ref3_acc:.4f}", f"{ours3_acc:.4f}", f"{ours3_acc - ref3_acc:+.4f}"),
        ("for scale, random third: rule AUC / accuracy", "", f"{rule3_auc:.4f} / {rule3_acc:.4f}", ""),
        ("for scale, random third: gradient boosting AUC / accuracy", "", f"{gb3_auc:.4f} / {gb3_acc:.4f}", ""),
        ("tuning on (3 trials): fresh run wall", "", f"{tuned_fresh[0]:.1f} s", ratio(tuned_fresh[0], ref_fresh[0])),
        ("tuning on: peak memory", "", f"{tuned_fresh[1]:.2f} GiB", ""),
        ("tuning on: eval split AUC / accuracy", "", f"{tuned_auc:.4f} / {tuned_acc:.4f}", ""),
    ]
    header = ("", "TFX reference (taxi_pipeline_native_keras)", "tfx-e2e (tuning off unless noted)", "ours vs ref")
    table = [header, ("---",) * 4] + rows
    text = "\n".join("| " + " | ".join(r) + " |" for r in table)
    note = ("held-out rows: the eval split, identical in both pipelines" if same_rows
            else "held-out rows: eval rows common to both pipelines' splits")
    machine = (f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
               f"Python {platform.python_version()}")
    print("\n" + text + "\n\n" + note + "\n" + machine)

    # The rolling window (issue 12): an incremental run (one new span, window of 4) against a fresh one.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_incremental import incremental_table
    print("rolling window: incremental vs fresh run ...", flush=True)
    window_text = incremental_table(work / "window")
    print("\n" + window_text)

    section = (f"## Pipeline: `make bench-pipeline`\n\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
               f"on {machine}; command: `make bench-pipeline` (bench/bench_pipeline.py).\n"
               f"Data: the 15,002-row bundled sample for both. {note}.\n\n{text}\n\n{window_text}\n")
    write_section(REPO / "docs" / "benchmarks.md", "## Pipeline: `make bench-pipeline`", section)
    shutil.rmtree(work, ignore_errors=True)


def write_section(path: Path, heading: str, section: str) -> None:
    """Replaces (or appends) the section that starts with `heading`, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach table says how it was produced.\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()

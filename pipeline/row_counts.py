"""No row lost: the row counts of a finished run, read back from ML Metadata and its artifacts' files, and their
comparison. The CSV rows in must equal ExampleGen's examples out (every split), StatisticsGen's num_examples must
equal ExampleGen's per split, Transform must write as many records as it reads, and TFMA's example_count must equal
the eval split. Beam's multi-processing DirectRunner is where a silent loss was reported (TFDV, data-validation#247).

The data gate stops a whole run or lets every row through, so there are no row-level rejects to subtract.
Used by bench/bench_scale.py (`make bench-scale`) and tests/test_row_counts.py. TensorFlow and TFMA are imported
only where files are read, so the comparison stays cheap to import.
"""
import glob
import os
from pathlib import Path
from typing import NamedTuple

# What each count is read from -> the component's node id in our pipeline (pipeline/components.py); TFX's reference
# pipeline names its own (bench/bench_scale.py).
COMPONENT_IDS = {"ExampleGen": "ExampleGen", "StatisticsGen": "StatisticsGen", "Transform": "Transform",
                 "Evaluator": "Evaluator"}


class RowCounts(NamedTuple):
    example_gen: dict[str, int]    # split -> examples ExampleGen wrote (TFRecords)
    statistics: dict[str, int]     # split -> StatisticsGen's num_examples
    transform_in: dict[str, int]   # split -> records of the examples Transform read
    transform_out: dict[str, int]  # split -> records of its transformed examples
    tfma: int | None               # TFMA's example_count on the overall slice; None: not in the eval config


def csv_rows(root: str | os.PathLike) -> int:
    """Data rows (lines after each file's header) of every *.csv file of a flat data root, read in 16 MiB blocks: a
    line count, not a CSV parse (fast at millions of rows; a quoted newline would count twice). A last line without
    its newline is a row."""
    total = 0
    for path in sorted(Path(root).glob("*.csv")):
        lines, last = 0, b"\n"
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                lines += block.count(b"\n")
                last = block[-1:]
        total += lines + (last != b"\n") - 1
    return total


def split_records(uri: str) -> dict[str, int]:
    """split -> TFRecords in an Examples artifact (its Split-<name>/ folders), counted as the Trainer counts its
    split (modules/training.py: one streaming pass, nothing parsed)."""
    from modules.training import count_examples

    return {os.path.basename(split)[len("Split-"):]: count_examples([f"{split}/*"])
            for split in sorted(glob.glob(f"{uri}/Split-*"))}


def tfma_example_count(evaluation_uri: str) -> int | None:
    """TFMA's example_count on the overall slice, the candidate model's (not the baseline's, not a diff)."""
    import tensorflow_model_analysis as tfma

    for per_slice in tfma.load_metrics(evaluation_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if entry.key.name == "example_count" and entry.key.model_name != "baseline" and not entry.key.is_diff:
                return int(entry.value.double_value.value)
    return None


def read_counts(store, nodes: dict, ids: dict[str, str] = COMPONENT_IDS) -> RowCounts:
    """The counts of one run: `nodes` is runners.summary.latest_run's (node id -> NodeRun) from `store`, `ids` names
    the four components' node ids."""
    from tfx.types import artifact_utils

    from pipeline.gate import read_example_counts

    gen, transform, evaluator = (nodes[ids[name]] for name in ("ExampleGen", "Transform", "Evaluator"))
    statistics = nodes[ids["StatisticsGen"]].outputs["statistics"][0]
    return RowCounts(
        example_gen=split_records(gen.outputs["examples"][0].uri),
        statistics=read_example_counts(artifact_utils.deserialize_artifact(
            store.get_artifact_types_by_id([statistics.type_id])[0], statistics)),
        transform_in=split_records(transform.inputs["examples"][0].uri),
        transform_out=split_records(transform.outputs["transformed_examples"][0].uri),
        tfma=tfma_example_count(evaluator.outputs["evaluation"][0].uri),
    )


def _splits(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n:,}" for split, n in sorted(counts.items(), key=lambda c: (c[0] != "train", c[0])))


def _differ(what: str, counts: dict[str, int], reference: str, expected: dict[str, int]) -> list[str]:
    """One line per split where `counts` and `expected` differ (a split missing on one side included)."""
    problems = []
    for split in sorted(set(counts) | set(expected)):
        got, want = counts.get(split), expected.get(split)
        if got != want:
            problems.append(f"{what}: split {split!r} has {'no count' if got is None else f'{got:,}'}, "
                            f"{reference} {'no count' if want is None else f'{want:,}'}")
    return problems


def lost_rows(rows_in: int, counts: RowCounts) -> list[str]:
    """What does not add up, one message per mismatch; [] when no row was lost."""
    out = sum(counts.example_gen.values())
    problems = []
    if out != rows_in:
        problems.append(f"ExampleGen wrote {out:,} examples ({_splits(counts.example_gen)}) from {rows_in:,} CSV "
                        f"rows: {abs(rows_in - out):,} {'lost' if out < rows_in else 'too many'}")
    problems += _differ("StatisticsGen num_examples", counts.statistics, "ExampleGen's examples", counts.example_gen)
    problems += _differ("Transform's output records", counts.transform_out, "its input", counts.transform_in)
    evaluated = counts.example_gen.get("eval")
    if counts.tfma is not None and counts.tfma != evaluated:
        problems.append(f"TFMA example_count {counts.tfma:,} != ExampleGen's eval split "
                        f"{'(none)' if evaluated is None else f'{evaluated:,}'}")
    return problems

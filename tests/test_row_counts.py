"""No row lost (pipeline/row_counts.py): the comparison of a run's counts, the CSV row count, and end to end, 150,000
generated rows through the `beam` profile (Beam's multi-process DirectRunner, where TFDV was reported to lose rows
silently: data-validation#247), every count exact."""
import pytest
from conftest import PipelineRun

from pipeline.row_counts import RowCounts, csv_rows, lost_rows

ROWS = 150_000


def _counts(**changes) -> RowCounts:
    """A run of 1,000 rows where every count adds up, with `changes`."""
    split = {"train": 670, "eval": 330}
    return RowCounts(example_gen=dict(split), statistics=dict(split), transform_in=dict(split),
                     transform_out=dict(split), tfma=330)._replace(**changes)


def test_counts_that_add_up_lose_no_row():
    assert lost_rows(1_000, _counts()) == []
    assert lost_rows(1_000, _counts(tfma=None)) == []  # TFX's reference computes no example_count


def test_each_mismatch_is_named_with_its_numbers():
    assert lost_rows(1_012, _counts()) == [
        "ExampleGen wrote 1,000 examples (train 670, eval 330) from 1,012 CSV rows: 12 lost"]
    assert lost_rows(990, _counts()) == [
        "ExampleGen wrote 1,000 examples (train 670, eval 330) from 990 CSV rows: 10 too many"]
    assert lost_rows(1_000, _counts(statistics={"train": 670, "eval": 329})) == [
        "StatisticsGen num_examples: split 'eval' has 329, ExampleGen's examples 330"]
    assert lost_rows(1_000, _counts(statistics={"train": 670})) == [
        "StatisticsGen num_examples: split 'eval' has no count, ExampleGen's examples 330"]
    assert lost_rows(1_000, _counts(transform_out={"train": 600, "eval": 330})) == [
        "Transform's output records: split 'train' has 600, its input 670"]
    assert lost_rows(1_000, _counts(tfma=300)) == ["TFMA example_count 300 != ExampleGen's eval split 330"]
    everything = lost_rows(1_001, _counts(statistics={}, transform_out={"train": 670, "eval": 0}, tfma=0))
    assert len(everything) == 5  # CSV rows, two statistics splits, Transform's eval split, TFMA


def test_csv_rows_counts_the_lines_after_each_header(tmp_path):
    (tmp_path / "a.csv").write_text("fare,tips\n1.0,0.0\n2.0,0.5\n")
    (tmp_path / "b.csv").write_text("fare,tips\r\n3.0,1.0\r\n4.0,0.0")  # CRLF, no newline after the last row
    (tmp_path / "c.csv").write_text("fare,tips\n")  # a header only
    (tmp_path / "notes.txt").write_text("not\ndata\n")  # not a CSV file: ExampleGen's flat root holds only *.csv
    assert csv_rows(tmp_path) == 4


@pytest.mark.e2e
def test_no_row_is_lost_at_150000_rows_with_the_beam_profile(tmp_path):
    from pipeline import datagen
    from pipeline.metadata import open_store
    from pipeline.row_counts import read_counts
    from runners.beam_runner import beam_dag_runner
    from runners.summary import latest_run

    data = tmp_path / "data"
    datagen.generate(str(data), ROWS, seed=16, shard_rows=40_000)  # 4 files: 40,000 × 3 + 30,000
    assert len(list(data.glob("*.csv"))) == 4
    assert csv_rows(data) == ROWS
    # Cheap where the counts do not depend on it: no tuning, 20 training steps, a low AUC threshold.
    run = PipelineRun(tmp_path, data, overlay="tuner: {enabled: false}\n"
                      "trainer: {train_steps: 20, eval_steps: 5, batch_size: 64}\nevaluator: {auc_lower_bound: 0.5}\n")
    run.env["TFX_E2E_PROFILE"] = "beam"
    assert run(make_runner=beam_dag_runner) == 0
    config = run.config()
    assert config.beam_args == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

    store = open_store(config, readonly=True)
    counts = read_counts(store, latest_run(store, config))
    print(counts)
    train, evaluated = counts.example_gen["train"], counts.example_gen["eval"]
    assert sorted(counts.example_gen) == ["eval", "train"]
    assert train + evaluated == ROWS
    assert 0.6 < train / ROWS < 0.73  # hash buckets 2:1
    assert counts.statistics == {"train": train, "eval": evaluated}
    assert counts.transform_in == counts.transform_out == {"train": train, "eval": evaluated}
    assert counts.tfma == evaluated
    assert lost_rows(ROWS, counts) == []

"""trainer.epochs: the Trainer's steps follow the train split's example count (issue 16), capped by max_train_steps."""
import pytest

from modules.training import count_examples, epoch_steps


@pytest.mark.parametrize(("examples", "batch_size", "epochs", "cap", "steps"), [
    (10_000, 128, 1, 100_000, 79),            # a last, partial batch is a step
    (10_000, 128, 6, 100_000, 474),           # about today's fixed 500 steps on the bundled sample's train split
    (1_000_000, 128, 1, 100_000, 7_813),      # 1.5M rows' train split: every example once, not 500 steps
    (1_000_000, 128, 20, 100_000, 100_000),   # capped
    (3, 128, 2, 100_000, 2),
])
def test_epoch_steps(examples, batch_size, epochs, cap, steps):
    assert epoch_steps(examples, batch_size, epochs, cap) == steps


def test_epoch_steps_refuses_an_empty_split():
    with pytest.raises(ValueError, match="the train split has no examples"):
        epoch_steps(0, 128, 1, 100)


def test_count_examples_reads_what_transform_writes(tmp_path):
    """Gzipped TFRecord shards (Transform's transformed_examples) and plain ones, by the Trainer's file patterns."""
    import tensorflow as tf

    split = tmp_path / "Split-train"
    split.mkdir()
    for name, n, options in (("a.gz", 700, "GZIP"), ("b.gz", 301, "GZIP"), ("c", 5, "")):
        with tf.io.TFRecordWriter(str(split / name), options=options) as writer:
            for i in range(n):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString())
    assert count_examples([f"{split}/*"]) == 1_006
    assert count_examples([f"{split}/*.gz"]) == 1_001

"""Peak memory of TFX's CsvExampleGen executor on Beam's in-process DirectRunner, with and without the Reshuffle
that TFX's WriteSplit (tfx/components/example_gen/write_split.py) applies before writing each split.

    python bench/example_gen_memory.py data/taxi_500000 shuffle     # TFX's executor as it is
    python bench/example_gen_memory.py data/taxi_500000 noshuffle   # the Reshuffle replaced by an identity Map

A measurement of where ExampleGen's memory goes (docs/benchmarks.md, notes on the scale benchmark), not a change to
the pipeline: the pipeline always runs TFX's executor unchanged.
"""
import os
import resource
import sys
import tempfile
import time

import apache_beam as beam
from tfx.components.example_gen.csv_example_gen import executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils


def main(data: str, mode: str) -> None:
    if mode == "noshuffle":
        beam.transforms.Reshuffle = lambda *args, **kwargs: beam.Map(lambda x: x)
    elif mode != "shuffle":
        sys.exit(f"mode: shuffle or noshuffle, got {mode!r}")
    examples = standard_artifacts.Examples()
    examples.uri = tempfile.mkdtemp()
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="single_split", pattern="*.csv")])
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=2),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)]))
    context = executor.Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"],
                                        tmp_dir=tempfile.mkdtemp())
    start = time.time()
    executor.Executor(context).Do({}, {"examples": [examples]}, {
        "input_base": os.path.abspath(data),
        "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(output_config),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{mode} {data}: {time.time() - start:.1f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main(*sys.argv[1:3])

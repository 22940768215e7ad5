"""CsvExampleGen's driver: TFX's FileBasedDriver with a fingerprint of the input's content.

TFX fingerprints ExampleGen's input by file count, bytes and mtime in whole seconds (io_utils.generate_fingerprint),
and that fingerprint is an execution property, so part of the cache key: a same-size edit that keeps the mtime
(cp -p, rsync -t, a rewrite within the second) would reuse the old Examples. CsvContentDriver appends to it a SHA-256
of the files ExampleGen reads (each split's glob after span resolution; names and bytes, streamed in 1 MiB blocks)
and, from a CSV parse in the same pass, the rows they hold, which the data gate compares with the examples
ExampleGen wrote (pipeline/gate.py input_rows). The fingerprint reaches the Examples artifact as its
`input_fingerprint` custom property, as TFX's does.

Where it runs: the driver_class of the CsvExampleGen instance (pipeline/components.py). LocalDagRunner and
BeamDagRunner run it from the IR (the compiler packs a component's driver_class into custom_driver_specs; the
portable launcher runs the driver before the cache lookup and keys the cache on the exec_properties it returns);
Airflow's launcher (TFX's legacy one) calls resolve_exec_properties before its own cache lookup. Not on Vertex /
KFP v2: there the compiled ExampleGen step runs TFX's file_based_example_gen driver container (mtime-based) and
driver_class is ignored; on GCS an object's mtime is its upload time, so a rewritten file is a new input there too,
but the gate has no row count to compare.
"""
import csv
import hashlib
import io
import os

from absl import logging
from tfx.components.example_gen import driver, utils
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

BLOCK = 1 << 20
ROWS_KEY = "csv_rows"  # in the fingerprint: csv_rows:<n>


class _Digesting(io.RawIOBase):
    """A binary file as a raw stream that feeds each block it reads to `digest`."""

    def __init__(self, f, digest):
        self._f, self._digest = f, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        block = self._f.read(len(buffer))
        self._digest.update(block)
        buffer[:len(block)] = block
        return len(block)


def content_fingerprint(files: list[tuple[str, str]]) -> tuple[str, int | None]:
    """For [(name, path)]: the SHA-256 of each file's name and bytes, in order, and the CSV records the files hold
    (a CSV parse: quoted newlines stay in their record; each file's header and blank lines not counted; None when a
    file is no CSV the parser reads), in one pass over each file."""
    digest = hashlib.sha256()
    rows, parsed = 0, True
    for name, path in files:
        digest.update(name.encode() + b"\0")
        with fileio.open(path, "rb") as f:
            stream = _Digesting(f, digest)
            text = io.TextIOWrapper(io.BufferedReader(stream, BLOCK), encoding="utf-8", errors="replace", newline="")
            records = csv.reader(text)
            try:
                next(records, None)  # the header
                rows += sum(1 for record in records if record)
            except csv.Error as e:
                logging.warning("%s: its rows are not counted: %s", path, e)
                parsed = False
                while stream.read(BLOCK):  # the digest still covers every byte
                    pass
        digest.update(b"\0")
    return digest.hexdigest(), rows if parsed else None


class CsvContentDriver(driver.FileBasedDriver):
    """FileBasedDriver whose input fingerprint also carries the content's SHA-256 and its CSV row count."""

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        exec_properties = super().resolve_exec_properties(exec_properties, pipeline_info, component_info)
        # The split patterns as the executor reads them: span and version filled in by the parent.
        input_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                                 example_gen_pb2.Input())
        base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        files = [(f"{split.name}/{os.path.relpath(path, base)}", path) for split in input_config.splits
                 for path in sorted(fileio.glob(os.path.join(base, split.pattern))) if not fileio.isdir(path)]
        sha256, rows = content_fingerprint(files)
        exec_properties[utils.FINGERPRINT_PROPERTY_NAME] += f"\nsha256:{sha256}" + (
            f",{ROWS_KEY}:{rows}" if rows is not None else "")
        return exec_properties

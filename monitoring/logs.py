"""PredictionLog files -> requests: every example of every request, with the model version that served it, its time
and the model's score for each example.

Reads what TF Serving's request logging (and serving/request_log.py) writes: TFRecord files of
tensorflow.serving.PredictionLog, local or gs:// (tf.io.gfile). Unlike TFX's prediction_to_example_utils, which
takes the first example of a request, every example counts:
  predict_log          the serialized tf.Examples of the `examples` input (serving_default), or raw-feature tensors
                       (serving_raw: one tensor per feature, one row per instance); scores from `probabilities`
  classify_log         input.example_list / example_list_with_context; scores: the last class's score
  regress_log          the same inputs; scores: the regression values
  multi_inference_log  the same inputs; scores from the first task's result
A file that is not a TFRecord file, or is cut short, is reported with its path and what was read before the damage
is kept; a record that is not a PredictionLog is counted and skipped.
"""
import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from modules.contract import EXAMPLES_INPUT, OUTPUT_KEY


@dataclasses.dataclass
class Request:
    version: int          # 0 when the log does not say
    time: float           # epoch seconds
    examples: list[bytes]  # serialized tf.Examples, one per example of the request
    scores: list[float]   # one per example, or empty when the log holds no usable response
    file_time: bool = False  # the time is the file's (the record has no log_metadata.timestamp_secs)


@dataclasses.dataclass
class FileProblem:
    path: str
    records_read: int     # records read (and kept) before the problem
    error: str


def list_files(location: str) -> list[str]:
    """The log files at `location`: the file itself, or the files of a folder (not hidden), oldest name first."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(location):
        return [location] if tf.io.gfile.exists(location) else []
    return [tf.io.gfile.join(location, name) for name in sorted(tf.io.gfile.listdir(location))
            if not name.startswith(".") and not tf.io.gfile.isdir(tf.io.gfile.join(location, name))]


def read(paths: list[str], on_problem: Callable[[FileProblem], None], schema) -> Iterator[Request]:
    """The requests in `paths`, file by file. A record without log_metadata.timestamp_secs (the local server
    writes none) takes its file's modification time. `schema` types the raw-feature instances."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    for path in paths:
        records = bad = 0
        try:
            file_time = tf.io.gfile.stat(path).mtime_nsec / 1e9
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                records += 1
                record = prediction_log_pb2.PredictionLog()
                try:
                    record.ParseFromString(raw)
                    request = unbatch(record, file_time, schema)
                except (DecodeError, ValueError, IndexError):
                    bad += 1
                    continue
                if request is not None:
                    yield request
        except tf.errors.OpError as error:
            on_problem(FileProblem(path, records - bad, f"{type(error).__name__}: {error.message}"))
            continue
        if bad:
            on_problem(FileProblem(path, records - bad, f"{bad} of {records} records are not PredictionLogs "
                                                        "(skipped)"))


def version_of(record) -> int:
    """The version that answered: log_metadata's model spec, else the request's (0 when neither says)."""
    if record.log_metadata.model_spec.HasField("version"):
        return record.log_metadata.model_spec.version.value
    kind = record.WhichOneof("log_type")
    if kind in ("predict_log", "classify_log", "regress_log"):
        return getattr(record, kind).request.model_spec.version.value
    if kind == "multi_inference_log" and record.multi_inference_log.request.tasks:
        return record.multi_inference_log.request.tasks[0].model_spec.version.value
    return 0


def _input_examples(model_input) -> list[bytes]:
    """An Input's examples, serialized; with a context, each example is the context merged with it (the
    concatenation of two serialized messages parses as their merge: TF Serving's own way)."""
    if model_input.HasField("example_list_with_context"):
        listed = model_input.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + example.SerializeToString() for example in listed.examples]
    return [example.SerializeToString() for example in model_input.example_list.examples]


def _rows_as_examples(inputs, schema) -> list[bytes]:
    """serving_raw's tensors (one per feature, first dimension the instance) as one tf.Example per instance, typed
    by the schema as the signature parses them: numbers come as float64 (NaN: missing), strings ('' missing)."""
    import tensorflow as tf

    from serving.examples import to_example

    arrays = {name: tf.make_ndarray(proto).reshape(-1) for name, proto in inputs.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"raw-feature tensors of different lengths: {sorted(lengths)}")
    examples = []
    for i in range(lengths.pop()):
        row = {}
        for name, array in arrays.items():
            value = array[i]
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, float) or array.dtype.kind == "f":
                value = None if np.isnan(value) else float(value)
            row[name] = value
        examples.append(to_example(row, schema, skip=()).SerializeToString())
    return examples


def _classification_scores(result) -> list[float]:
    return [c.classes[-1].score if c.classes else float("nan") for c in result.classifications]


def unbatch(record, default_time: float, schema) -> Request | None:
    """One PredictionLog as a Request; None for logs with no examples to monitor (session_run, streamed)."""
    import tensorflow as tf

    when = float(record.log_metadata.timestamp_secs) or default_time
    file_time = not record.log_metadata.timestamp_secs
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request, response = record.predict_log.request, record.predict_log.response
        if EXAMPLES_INPUT in request.inputs:
            examples = list(request.inputs[EXAMPLES_INPUT].string_val)
        else:
            examples = _rows_as_examples(request.inputs, schema)
        scores = []
        if OUTPUT_KEY in response.outputs:
            scores = tf.make_ndarray(response.outputs[OUTPUT_KEY]).reshape(len(examples), -1)[:, -1].tolist()
    elif kind in ("classify_log", "regress_log"):
        log = getattr(record, kind)
        examples = _input_examples(log.request.input)
        if kind == "classify_log":
            scores = _classification_scores(log.response.result)
        else:
            scores = [r.value for r in log.response.result.regressions]
    elif kind == "multi_inference_log":
        log = record.multi_inference_log
        examples = _input_examples(log.request.input)
        scores = []
        if log.response.results:
            first = log.response.results[0]
            scores = (_classification_scores(first.classification_result)
                      if first.HasField("classification_result")
                      else [r.value for r in first.regression_result.regressions])
    else:
        return None
    if len(scores) != len(examples):
        scores = []
    return Request(version_of(record), when, examples, [float(s) for s in scores], file_time)

"""TF Serving's JSON and TensorProto formats (serving/tensors.py) without a server: the row and columnar formats,
errors that name the problem, and hostile input refused before anything large is allocated."""
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving import tensors
from serving.errors import ServingError


def test_json_row_and_columnar_formats():
    inputs = {"examples": types_pb2.DT_STRING}
    arrays, row = tensors.parse_predict_json({"instances": [{"b64": "YWJj"}, "plain"]}, inputs)
    assert row and arrays["examples"].tolist() == [b"abc", b"plain"]
    arrays, row = tensors.parse_predict_json({"inputs": {"examples": [{"b64": "YWJj"}]}}, inputs)
    assert not row and arrays["examples"].tolist() == [b"abc"]
    two = {"a": types_pb2.DT_FLOAT, "b": types_pb2.DT_INT64}
    arrays, _ = tensors.parse_predict_json({"instances": [{"a": 1.5, "b": 2}, {"a": 2, "b": 3}]}, two)
    assert arrays["a"].dtype == np.float32 and arrays["b"].tolist() == [2, 3]
    assert tensors.outputs_to_json({"p": np.array([[0.25], [0.5]], np.float32)}, True) == {"predictions": [[0.25], [0.5]]}
    assert tensors.outputs_to_json({"p": np.array([1, 2]), "q": np.array([b"x", b"\xff"], dtype=object)}, True) == {
        "predictions": [{"p": 1, "q": "x"}, {"p": 2, "q": {"b64": "/w=="}}]}
    assert tensors.outputs_to_json({"p": np.array([1, 2])}, False) == {"outputs": [1, 2]}


@pytest.mark.parametrize("body, message", [
    ({"instances": [1], "inputs": [1]}, "exactly one of \"instances\""),
    ({"instances": []}, "non-empty list"),
    ({"instances": [{"a": 1.0, "b": 1}, {"a": 1.0}]}, "every instance must name the same inputs"),
    ({"instances": [{"a": "x", "b": 1}]}, "input 'a': JSON value 'x' is not of expected type: float"),
    ({"instances": [{"a": 1.0, "b": 1.5}]}, "input 'b': JSON value 1.5 is not of expected type: integer"),
    ({"instances": [{"a": [1.0, 2.0], "b": 1}, {"a": [1.0], "b": 1}]}, "ragged"),
    ({"inputs": {"a": [1.0]}}, "missing ['b']"),
    ([1, 2], "must be a JSON object"),
])
def test_json_errors_name_the_problem(body, message):
    with pytest.raises(ServingError) as error:
        tensors.parse_predict_json(body, {"a": types_pb2.DT_FLOAT, "b": types_pb2.DT_INT64})
    assert message in error.value.message and error.value.http_status == 400


def test_tensor_protos_round_trip():
    for array, dtype in ((np.array([[1.5, 2.5]], np.float32), types_pb2.DT_FLOAT),
                         (np.array([3, 4], np.int64), types_pb2.DT_INT64),
                         (np.array([b"a", b"bc"], dtype=object), types_pb2.DT_STRING)):
        back = tensors.to_numpy(tensors.to_proto(array, dtype))
        assert back.shape == array.shape and back.tolist() == array.tolist()
    half = tensors.to_proto(np.array([1.5, -2.25], np.float16), types_pb2.DT_HALF)
    assert list(half.half_val) == [0x3E00, 0xC080]  # float16 bit patterns, as TensorFlow writes them
    assert tensors.to_numpy(half).tolist() == [1.5, -2.25]
    typed = tensors.to_proto(np.array([[1.5], [2.5]], np.float32), types_pb2.DT_FLOAT)
    assert list(typed.float_val) == [1.5, 2.5] and typed.tensor_content == b""
    packed = tensors.to_proto(np.array([[1.5], [2.5]], np.float32), types_pb2.DT_FLOAT, tensor_content=True)
    assert not packed.float_val and tensors.to_numpy(packed).tolist() == [[1.5], [2.5]]


def _proto(text: str) -> tensor_pb2.TensorProto:
    return text_format.Parse(text, tensor_pb2.TensorProto())


@pytest.mark.parametrize("text, message", [
    ("dtype: DT_FLOAT tensor_shape { dim { size: 64 } dim { size: 30000000 } } float_val: 1",
     "is larger than the request limit of 1000000 bytes"),
    ("dtype: DT_FLOAT tensor_shape { dim { size: 3 } } tensor_content: 'abcde'", "not a whole number of DT_FLOAT"),
    ("dtype: DT_INT8 tensor_shape { dim { size: 1 } } int_val: 300", "300 is out of range for DT_INT8"),
    ("dtype: DT_HALF tensor_shape { dim { size: 1 } } half_val: 70000", "not 16-bit patterns"),
    ("dtype: DT_FLOAT tensor_shape { dim { size: -1 } } float_val: 1", "not fully defined"),
    ("dtype: DT_FLOAT tensor_shape { unknown_rank: true } float_val: 1", "not fully defined"),
    ("dtype: DT_FLOAT tensor_shape { dim { size: 3 } } float_val: 1 float_val: 2", "has 2 values for shape [3]"),
    ("dtype: DT_COMPLEX64 tensor_shape { dim { size: 1 } }", "DT_COMPLEX64 is not supported"),
    # Empty, yet NumPy's reshape overflows on it (found by test_serving_fuzz).
    ("dtype: DT_STRING tensor_shape { dim { size: 1065103 } dim { size: 286059915 } dim { size: 0 } "
     "dim { size: 8589934592 } }", "is too large"),
    # Its element count fits int64 but its bytes (8 per string) do not: NumPy's reshape refused that one too.
    ("dtype: DT_STRING tensor_shape { dim { size: 2305843009213693952 } dim { size: 0 } dim { size: 3 } }",
     "is too large"),
])
def test_hostile_tensor_protos_are_refused_before_allocation(text, message):
    with pytest.raises(ServingError) as error:
        tensors.to_numpy(_proto(text), max_bytes=1_000_000)
    assert message in error.value.message and error.value.http_status == 400


@pytest.mark.parametrize("value, dtype, message", [
    (2**40, types_pb2.DT_INT32, "1099511627776 is out of range for DT_INT32"),
    (2**63, types_pb2.DT_INT64, "out of range for DT_INT64"),
    (-129, types_pb2.DT_INT8, "-129 is out of range for DT_INT8"),
    (True, types_pb2.DT_INT64, "is not of expected type: integer"),
    (1.5, types_pb2.DT_INT64, "is not of expected type: integer"),
])
def test_json_integers_that_do_not_fit_are_an_error_not_wrapped(value, dtype, message):
    with pytest.raises(ServingError) as error:
        tensors.to_array([value], dtype, "x")
    assert message in error.value.message


def test_json_shapes_are_walked_not_copied():
    """Many short strings and one long one: np.shape on such a list made a fixed-width copy of len x longest."""
    array = tensors.to_array(["a"] * 100_000 + ["b" * 1_000_000], types_pb2.DT_STRING, "x")
    assert array.dtype == object and array.shape == (100_001,) and array[-1] == b"b" * 1_000_000
    assert tensors.to_array([[1, 2], [3, 4]], types_pb2.DT_INT32, "x").shape == (2, 2)
    deep = "x"
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(ServingError, match="nested deeper than 32 levels"):
        tensors.to_array(deep, types_pb2.DT_STRING, "x")
    for ragged in ([["a", "b"], "c"], ["a", ["b"]], [[1], [1, 2]]):
        with pytest.raises(ServingError, match="ragged"):
            tensors.to_array(ragged, types_pb2.DT_STRING, "x")

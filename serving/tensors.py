"""TF Serving's REST JSON ⇄ NumPy, TensorProto ⇄ NumPy, and JSON examples → tf.Example.

Follows TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest): the row format
(`instances`) and the columnar format (`inputs`), `{"b64": ...}` for binary strings, and the
`predictions` / `outputs` response shapes. Errors are ServingError(INVALID_ARGUMENT) with a message
naming the problem, which the servers turn into 400 / INVALID_ARGUMENT.
"""
import base64
import binascii
import math

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import ServingError

_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
          types_pb2.DT_UINT8: np.uint8, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_HALF: np.float16,
          types_pb2.DT_STRING: object}
_ITEMSIZE = {dtype: 8 if t is object else np.dtype(t).itemsize for dtype, t in _NUMPY.items()}  # 8: a pointer
_JSON_KIND = {types_pb2.DT_STRING: "string", types_pb2.DT_BOOL: "bool"}
# The typed field of a TensorProto that carries each dtype (half_val holds float16 bit patterns).
_VALUE_FIELD = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT64: "int64_val",
                types_pb2.DT_BOOL: "bool_val", types_pb2.DT_HALF: "half_val", types_pb2.DT_STRING: "string_val",
                types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
                types_pb2.DT_UINT8: "int_val"}
MAX_RANK = 32  # deeper JSON nesting is refused before it is walked


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def _expected(dtype: int) -> str:
    if dtype in _JSON_KIND:
        return _JSON_KIND[dtype]
    return "float" if np.issubdtype(_NUMPY[dtype], np.floating) else "integer"


def check_dtype(name: str, array: np.ndarray, dtype: int) -> None:
    """A gRPC input tensor's dtype must suit the signature's (integers may feed a float input)."""
    expected = _expected(dtype)
    if expected == "string":
        ok = array.dtype == object or array.dtype.kind in "SU"
    else:
        ok = array.dtype.kind in {"float": "fiu", "integer": "iu", "bool": "b"}[expected]
    if not ok:
        raise ServingError.invalid(f"input '{name}': expects {dtype_name(dtype)}, got {array.dtype}")


def _shape(value, name: str) -> tuple[tuple[int, ...], list]:
    """The shape of nested JSON lists and their items flattened, walking them level by level (np.shape would copy
    every string into a fixed-width array); ragged or too deeply nested lists are an error. Plain loops, not any()
    over a generator: a single-example request pays no generator frames."""
    shape, level = [], [value]
    while isinstance(level[0], list):
        if len(shape) == MAX_RANK:
            raise ServingError.invalid(f"input '{name}': nested deeper than {MAX_RANK} levels")
        size = len(level[0])
        for v in level:
            if not isinstance(v, list) or len(v) != size:
                raise ServingError.invalid(f"input '{name}': lists of different lengths (a ragged tensor)")
        shape.append(size)
        level = [item for v in level for item in v]
        if not level:
            break
    for v in level:
        if isinstance(v, list):
            raise ServingError.invalid(f"input '{name}': lists of different lengths (a ragged tensor)")
    return tuple(shape), level


def _decode_string(value, name: str) -> bytes:
    """A JSON string or {"b64": ...} as bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ServingError.invalid(f"input '{name}': an object value must be {{\"b64\": \"...\"}}, got {value}")
        try:
            # b64decode(validate=True) without its two Python frames: a non-ASCII str or a bad digit is ValueError
            return binascii.a2b_base64(value["b64"], strict_mode=True)
        except ValueError:
            raise ServingError.invalid(f"input '{name}': the \"b64\" value is not valid base64") from None
    if isinstance(value, str):
        return value.encode()
    raise ServingError.invalid(f"input '{name}': JSON value {value!r} is not of expected type: string")


def to_array(value, dtype: int, name: str) -> np.ndarray:
    """One input's JSON value (any nesting) as an array of the signature's dtype."""
    if dtype not in _NUMPY:
        raise ServingError.invalid(f"input '{name}': dtype {dtype_name(dtype)} is not supported over JSON")
    shape, items = _shape(value, name)
    expected = _expected(dtype)
    if expected == "string":
        array = np.empty(len(items), dtype=object)
        array[:] = [_decode_string(item, name) for item in items]
        return array.reshape(shape)
    accepted = {"bool": (bool,), "integer": (int,), "float": (int, float)}[expected]
    for item in items:
        if not isinstance(item, accepted) or (expected != "bool" and isinstance(item, bool)):
            raise ServingError.invalid(f"input '{name}': JSON value {item!r} is not of expected type: {expected}")
    if expected == "integer":
        return _checked_ints(items, dtype, name).reshape(shape)
    return np.array(items, dtype=_NUMPY[dtype]).reshape(shape)


def _checked_ints(values, dtype: int, name: str) -> np.ndarray:
    """Integers in the dtype's range, never wrapped (2**40 into DT_INT32 is an error, not 0)."""
    info = np.iinfo(_NUMPY[dtype])
    try:
        wide = np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise ServingError.invalid(f"input '{name}': a value is out of range for {dtype_name(dtype)}") from None
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        bad = wide[(wide < info.min) | (wide > info.max)][0]
        raise ServingError.invalid(f"input '{name}': {bad} is out of range for {dtype_name(dtype)}")
    return wide.astype(_NUMPY[dtype], copy=False)


def parse_predict_json(body, inputs: dict[str, int]) -> tuple[dict[str, np.ndarray], bool]:
    """A :predict body → ({input name: array}, row_format). `inputs` maps the signature's input names to dtypes."""
    if not isinstance(body, dict):
        raise ServingError.invalid("the request body must be a JSON object with \"instances\" or \"inputs\"")
    if ("instances" in body) == ("inputs" in body):
        raise ServingError.invalid("the request must have exactly one of \"instances\" (row format) or \"inputs\" "
                                   "(columnar format)")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError.invalid("\"instances\" must be a non-empty list")
        named = isinstance(instances[0], dict) and not (set(instances[0]) == {"b64"} and len(inputs) == 1)
        if named:
            names = set(instances[0])
            for i, instance in enumerate(instances):
                if not isinstance(instance, dict) or set(instance) != names:
                    raise ServingError.invalid(f"instance {i}: every instance must name the same inputs {sorted(names)}")
            columns = {name: [instance[name] for instance in instances] for name in names}
        else:
            if len(inputs) != 1:
                raise ServingError.invalid(f"the signature has {len(inputs)} inputs {sorted(inputs)}: each instance "
                                           "must be an object naming them")
            columns = {next(iter(inputs)): instances}
        return _typed(columns, inputs), True
    columns = body["inputs"]
    if not isinstance(columns, dict) or (len(inputs) == 1 and set(columns) != set(inputs)):
        if len(inputs) != 1:
            raise ServingError.invalid(f"\"inputs\" must be an object naming the signature's inputs {sorted(inputs)}")
        columns = {next(iter(inputs)): columns}
    return _typed(columns, inputs), False


def _typed(columns: dict, inputs: dict[str, int]) -> dict[str, np.ndarray]:
    if columns.keys() != inputs.keys():  # the differences only to word the error
        unknown, missing = sorted(set(columns) - set(inputs)), sorted(set(inputs) - set(columns))
        raise ServingError.invalid(f"inputs do not match the signature: unknown {unknown}, missing {missing} "
                                   f"(expected {sorted(inputs)})")
    return {name: to_array(value, inputs[name], name) for name, value in columns.items()}


def _json_value(array: np.ndarray, binary: bool):
    if array.dtype == object or array.dtype.kind == "S":
        def convert(item):
            if isinstance(item, list):
                return [convert(i) for i in item]
            if binary:
                return {"b64": base64.b64encode(item).decode()}
            try:
                return item.decode()
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode()}
        return convert(array.tolist())
    return array.tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's response: {"predictions": [...]} (row) or {"outputs": ...} (columnar); one output is unnamed."""
    # Output names ending in _bytes are binary by TF Serving's convention.
    if row_format:
        values = {name: _json_value(array, name.endswith("_bytes")) for name, array in outputs.items()}
        sizes = {len(v) if isinstance(v, list) else -1 for v in values.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise ServingError.invalid("the row format needs every output to have the same batch size; use \"inputs\"")
        if len(values) == 1:
            return {"predictions": next(iter(values.values()))}
        names = list(values)
        return {"predictions": [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]}
    values = {name: _json_value(array, name.endswith("_bytes")) for name, array in outputs.items()}
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}


def to_numpy(proto: tensor_pb2.TensorProto, max_bytes: int | None = None) -> np.ndarray:
    """A TensorProto as an array. From a client, pass `max_bytes`: a larger tensor once expanded is refused before
    it is allocated (TF's compact form repeats one value over the whole shape: 20 bytes can ask for gigabytes)."""
    dtype = proto.dtype
    numpy_dtype = _NUMPY.get(dtype)
    if numpy_dtype is None:
        raise ServingError.invalid(f"dtype {dtype_name(dtype)} is not supported")
    tensor_shape = proto.tensor_shape
    shape = [d.size for d in tensor_shape.dim]
    if tensor_shape.unknown_rank or (shape and min(shape) < 0):
        raise ServingError.invalid(f"tensor shape {shape} is not fully defined")
    if len(shape) > MAX_RANK:
        raise ServingError.invalid(f"tensor rank {len(shape)} is above {MAX_RANK}")
    count = math.prod(shape)
    # NumPy cannot even describe it, empty or not: its size in bytes (8 per element at most) must fit int64. With
    # no zero in the shape, that size is the count's.
    if (count or math.prod(size for size in shape if size)) * 8 >= 2**63:
        raise ServingError.invalid(f"tensor shape {shape} is too large")
    itemsize = _ITEMSIZE[dtype]
    if max_bytes is not None and count * itemsize > max_bytes:
        raise ServingError.invalid(f"tensor of shape {shape} ({count} elements) is larger than the request limit "
                                   f"of {max_bytes} bytes")
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(proto.string_val), dtype=object)
        array[:] = list(proto.string_val)
    elif proto.tensor_content:
        if len(proto.tensor_content) % itemsize:
            raise ServingError.invalid(f"tensor_content of {len(proto.tensor_content)} bytes is not a whole number of "
                                       f"{dtype_name(dtype)} values")
        array = np.frombuffer(proto.tensor_content, dtype=numpy_dtype)
    elif dtype == types_pb2.DT_HALF:
        array = np.asarray(proto.half_val, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() > 0xFFFF):
            raise ServingError.invalid("half_val holds values that are not 16-bit patterns")
        array = array.astype(np.uint16).view(np.float16)
    else:
        values = getattr(proto, _VALUE_FIELD[dtype])
        array = _checked_ints(values, dtype, "tensor") if np.dtype(numpy_dtype).kind in "iu" \
            else np.asarray(values, dtype=numpy_dtype)
    if array.size == 1 and count > 1:  # TF's compact form: one value repeated
        array = np.full(count, array[0], dtype=array.dtype)
    if array.size != count:
        raise ServingError.invalid(f"tensor has {array.size} values for shape {shape}")
    return array.reshape(shape)


def to_proto(array: np.ndarray, dtype: int, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """TF Serving's response form: values in the dtype's typed field (float_val, int64_val, string_val...), or packed
    into tensor_content when asked (--enable_serialization_as_tensor_content)."""
    proto = tensor_pb2.TensorProto()
    fill_proto(proto, array, dtype, tensor_content)
    return proto


def fill_proto(proto: tensor_pb2.TensorProto, array: np.ndarray, dtype: int, tensor_content: bool = False) -> None:
    """to_proto into an empty TensorProto in place, such as a response's map entry: half the cost of building one
    and copying it in (2.8 against 5.7 us for a one-float output)."""
    proto.dtype = dtype
    proto.tensor_shape.SetInParent()  # present for a scalar too, as in a TensorProto built with its shape
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(array.reshape(-1).tolist())
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=_NUMPY[dtype]).tobytes()
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(np.asarray(array, dtype=np.float16).reshape(-1).view(np.uint16).tolist())
    else:
        getattr(proto, _VALUE_FIELD[dtype]).extend(np.asarray(array, dtype=_NUMPY[dtype]).reshape(-1).tolist())


def _feature(value, name: str) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if all(isinstance(v, bool) for v in values) or not values:
        raise ServingError.invalid(f"feature '{name}': {value!r} is not a number, a string or a list of them")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        feature.int64_list.value.extend(_checked_ints(values, types_pb2.DT_INT64, name).tolist())
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(values)
    elif all(isinstance(v, (str, dict)) for v in values):
        feature.bytes_list.value.extend(_decode_string(v, name) for v in values)
    else:
        raise ServingError.invalid(f"feature '{name}': mixed types in {value!r}")
    return feature


def json_examples(body) -> list[bytes]:
    """A :classify / :regress body ({"examples": [...], "context": {...}}) as serialized tf.Examples."""
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise ServingError.invalid("the request must have a non-empty \"examples\" list")
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise ServingError.invalid("\"context\" must be an object of features")
    serialized = []
    for i, row in enumerate(body["examples"]):
        if not isinstance(row, dict):
            raise ServingError.invalid(f"example {i}: must be an object of features")
        example = example_pb2.Example()
        for name, value in {**context, **row}.items():
            example.features.feature[name].CopyFrom(_feature(value, name))
        serialized.append(example.SerializeToString())
    return serialized

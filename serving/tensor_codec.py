"""TF Serving's REST JSON <-> numpy, checked against a signature's inputs.

Implements the documented predict request and response shapes
(https://www.tensorflow.org/tfx/serving/api_rest): row format (`instances`,
a list of per-example values or objects) and columnar format (`inputs`, one
value or an object of named tensors), `{"b64": ...}` for binary strings,
`predictions` / `outputs` in the response (the output name is dropped when
the signature has exactly one output), and `_bytes`-suffixed outputs
encoded as `{"b64": ...}`.

Everything a client can get wrong raises `ServingError("INVALID_ARGUMENT", ...)`
with a message that names the input and what was expected. Importing it needs
no TensorFlow (the REST client uses its errors); the dtype table, TensorFlow's
own enum-to-numpy mapping, is built on first use.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# numpy kinds a request tensor can have: bool, (unsigned) integers, floats, complex, and object for DT_STRING
# (bytes). TensorFlow's quantized types and bfloat16 map to numpy record/extension types, resources and
# variants to none; no client can send those as JSON or numpy, so they are left out of the table.
_NUMPY_KINDS = frozenset("biufcO")


@functools.cache
def dtype_table() -> dict[int, tuple[str, np.dtype]]:
    """TensorProto dtype enum (types.proto) -> (enum name, numpy dtype), as TensorFlow itself maps them.

    Built on first use, so that importing this module needs no TensorFlow.
    """
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    table = {}
    for name, enum in types_pb2.DataType.items():
        if enum == types_pb2.DT_INVALID or name.endswith("_REF"):
            continue
        try:
            numpy_dtype = np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)
        except (KeyError, TypeError):  # DT_RESOURCE, DT_VARIANT: no numpy equivalent
            continue
        if numpy_dtype.kind in _NUMPY_KINDS:
            table[enum] = (name, numpy_dtype)
    return table


def dtype_name(dtype: int) -> str:
    """'DT_FLOAT' for 1; 'dtype N' for a value the table does not hold."""
    return dtype_table().get(dtype, (f"dtype {dtype}",))[0]


# TF Serving's mapping of canonical error codes to HTTP status (net_http ToHTTPStatusCode)
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(RuntimeError):
    """A request failure with a canonical error code (gRPC status name)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class InputSpec:
    """One signature input: dtype enum and shape (None = any size; shape None = unknown rank)."""

    name: str
    dtype: int
    shape: tuple[int | None, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return dtype_table()[self.dtype][1]

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def describe(self) -> str:
        dims = (
            "unknown rank"
            if self.shape is None
            else "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"
        )
        return f"{self.dtype_name} {dims}"

    @classmethod
    def from_tensor_info(cls, name: str, info) -> InputSpec:
        """From a TensorInfo proto (a SignatureDef's input)."""
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(None if d.size < 0 else int(d.size) for d in shape.dim)
        return cls(name, int(info.dtype), dims)


def _nested_shape(value, where: str) -> tuple[int, ...]:
    """Shape of a nested JSON list; a {"b64": ...} object is a leaf. Ragged lists are an error."""
    if isinstance(value, list):
        if not value:
            return (0,)
        inner = _nested_shape(value[0], where)
        for item in value[1:]:
            if _nested_shape(item, where) != inner:
                raise invalid(f"{where}: nested lists have different lengths (a tensor must be rectangular)")
        return (len(value), *inner)
    return ()


def _flatten(value, out: list) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _leaf(value, spec: InputSpec, where: str):
    kind = spec.dtype_name
    if kind == "DT_STRING":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError) as err:
                raise invalid(f"{where}: invalid base64 in {{'b64': ...}}: {err}") from err
        raise invalid(f"{where}: expected a string or {{'b64': ...}} for {kind}, got {_json_kind(value)}")
    if kind == "DT_BOOL":
        if isinstance(value, bool):
            return value
        raise invalid(f"{where}: expected true/false for {kind}, got {_json_kind(value)}")
    if spec.numpy_dtype.kind in "iu":
        if isinstance(value, int) and not isinstance(value, bool):
            info = np.iinfo(spec.numpy_dtype)
            if not info.min <= value <= info.max:
                raise invalid(f"{where}: {value} is out of range for {kind}")
            return value
        raise invalid(f"{where}: expected an integer for {kind}, got {_json_kind(value)} {_short(value)}")
    if spec.numpy_dtype.kind == "f":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise invalid(f"{where}: expected a number for {kind}, got {_json_kind(value)} {_short(value)}")
    raise invalid(f"{where}: inputs of type {kind} are not supported")


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_to_array(value, spec: InputSpec, where: str) -> np.ndarray:
    """A nested JSON value -> numpy array of the spec's dtype (shape not yet checked)."""
    shape = _nested_shape(value, where)
    leaves: list = []
    _flatten(value, leaves)
    converted = [_leaf(v, spec, where) for v in leaves]
    array = np.empty(len(converted), dtype=spec.numpy_dtype)
    if converted:
        array[:] = converted
    return array.reshape(shape)


def check_shape(array: np.ndarray, spec: InputSpec, where: str) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape) or any(d is not None and d != n for d, n in zip(spec.shape, array.shape)):
        raise invalid(
            f"{where}: got shape {list(array.shape)}, but input {spec.name!r} expects {spec.describe()}"
            + (" (pad list features to a common length)" if array.ndim < len(spec.shape) else "")
        )


def check_inputs(inputs: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], signature: str) -> None:
    """Names must match the signature exactly; dtypes and shapes must fit."""
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if extra:
            parts.append(f"unknown inputs {extra}")
        raise invalid(f"signature {signature!r}: {'; '.join(parts)}; it takes {sorted(specs)}")
    batch = None
    for name, spec in specs.items():
        array = inputs[name]
        check_shape(array, spec, f"input {name!r}")
        if spec.shape and array.ndim and spec.shape[0] is None:
            if batch is not None and array.shape[0] != batch[1]:
                raise invalid(
                    f"inputs {batch[0]!r} and {name!r} have different batch sizes ({batch[1]} vs {array.shape[0]})"
                )
            batch = batch or (name, array.shape[0])


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def parse_predict_request(
    body, specs: Mapping[str, InputSpec], signature: str, max_instances: int | None = None
) -> tuple[dict[str, np.ndarray], bool]:
    """A predict body -> (named input arrays, row_format)."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with 'instances' or 'inputs'")
    if "instances" in body and "inputs" in body:
        raise invalid("a request can have either 'instances' (row format) or 'inputs' (columnar format), not both")
    if "instances" not in body and "inputs" not in body:
        raise invalid("missing 'instances' or 'inputs' key in the request body")
    names = list(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise invalid("'instances' must be a list (one entry per example)")
        if not instances:
            raise invalid("'instances' is empty")
        if max_instances and len(instances) > max_instances:
            raise invalid(f"{len(instances)} instances in one request; this server allows at most {max_instances}")
        named = all(isinstance(x, dict) and not _is_b64(x) for x in instances)
        if not named and any(isinstance(x, dict) and not _is_b64(x) for x in instances):
            raise invalid("'instances' mixes objects and plain values")
        if not named:
            if len(names) != 1:
                raise invalid(
                    f"signature {signature!r} has {len(names)} inputs {sorted(names)}; "
                    "each instance must be an object keyed by input name"
                )
            columns = {names[0]: instances}
        else:
            keys = set(instances[0])
            for i, instance in enumerate(instances):
                if set(instance) != keys:
                    raise invalid(f"instance {i} has keys {sorted(instance)}, instance 0 has {sorted(keys)}")
            columns = {k: [instance[k] for instance in instances] for k in keys}
        arrays = {}
        for name, values in columns.items():
            if name not in specs:
                arrays[name] = np.zeros(0)  # reported by check_inputs
                continue
            spec = specs[name]
            where = f"instances[*][{name!r}]" if named else "instances"
            # each instance holds one example, so its shape must be the input's shape minus the batch dim
            arrays[name] = json_to_array(values, spec, where)
        check_inputs(arrays, specs, signature)
        return arrays, True
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        columns = inputs
    elif len(names) == 1:
        columns = {names[0]: inputs}
    else:
        raise invalid(f"signature {signature!r} has inputs {sorted(names)}; 'inputs' must be an object keyed by name")
    arrays = {
        name: json_to_array(value, specs[name], f"inputs[{name!r}]") if name in specs else np.zeros(0)
        for name, value in columns.items()
    }
    check_inputs(arrays, specs, signature)
    if max_instances:
        for name, array in arrays.items():
            if array.ndim and array.shape[0] > max_instances:
                raise invalid(f"input {name!r} has {array.shape[0]} rows; this server allows at most {max_instances}")
    return arrays, False


def _jsonable(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind in "SU":
        binary = name.endswith("_bytes")

        def encode(value):
            raw = value if isinstance(value, bytes) else str(value).encode()
            if binary:
                return {"b64": base64.b64encode(raw).decode("ascii")}
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(raw).decode("ascii")}

        return np.vectorize(encode, otypes=[object])(array).tolist()
    if array.dtype.kind == "f":
        array = array.astype(np.float64)
    return array.tolist()


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """Named output arrays -> {"predictions": ...} (row) or {"outputs": ...} (columnar)."""
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]], names[0])}
        return {"outputs": {n: _jsonable(outputs[n], n) for n in names}}
    if len(names) == 1:
        return {"predictions": _jsonable(outputs[names[0]], names[0])}
    sizes = {n: (outputs[n].shape[0] if outputs[n].ndim else None) for n in names}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid(
            f"outputs have different batch sizes {sizes}, which the row format cannot express; "
            "use the columnar format ('inputs')"
        )
    columns = {n: _jsonable(outputs[n], n) for n in names}
    batch = next(iter(sizes.values()))
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch)]}


# -- TensorProto <-> numpy (gRPC) ---------------------------------------------------------------
# tf.make_ndarray / tf.make_tensor_proto resolve TensorFlow's DType objects and walk a type table on every
# call: ~40 us per tensor, ~0.5 ms for the ranker's 16 inputs. These do the cases a PredictRequest and a
# PredictResponse carry (packed numeric content, strings, one value per element) directly and hand every
# other case to TensorFlow, so the arrays are the same (tests/serving/test_codec.py checks them against
# TensorFlow's functions).
_DT_STRING = 7
# dtype enum -> the TensorProto field holding one value per element when tensor_content is empty
_VALUE_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 9: "int64_val"}  # DT_FLOAT/DOUBLE/INT32/INT64
# numpy dtypes tf.make_tensor_proto packs into tensor_content (when there is more than one element)
_CONTENT_ENUMS = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3, np.dtype(np.int64): 9}


def array_from_proto(proto) -> np.ndarray:
    """`tf.make_ndarray(proto)`, faster for the usual request tensors (a new, writable array)."""
    entry = dtype_table().get(proto.dtype)
    if entry is not None and not proto.tensor_shape.unknown_rank:
        shape = [d.size for d in proto.tensor_shape.dim]
        count = math.prod(shape)
        dtype = entry[1]
        if proto.tensor_content:
            if len(proto.tensor_content) == count * dtype.itemsize:
                return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
        elif proto.dtype == _DT_STRING:
            if len(proto.string_val) == count:
                array = np.empty(count, dtype=object)
                array[:] = list(proto.string_val)  # never a nested sequence: bytes stay whole
                return array.reshape(shape)
        elif proto.dtype in _VALUE_FIELDS:
            values = getattr(proto, _VALUE_FIELDS[proto.dtype])
            if len(values) == count and count:
                return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
    import tensorflow as tf

    return tf.make_ndarray(proto)


def array_to_proto(array: np.ndarray):
    """`tf.make_tensor_proto(array)` (the same message), faster for a numeric array of several elements."""
    array = np.asarray(array)
    enum = _CONTENT_ENUMS.get(array.dtype)
    if enum is not None and array.size > 1:
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        return tensor_pb2.TensorProto(
            dtype=enum,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
            tensor_content=np.ascontiguousarray(array).tobytes(),
        )
    import tensorflow as tf

    return tf.make_tensor_proto(array)

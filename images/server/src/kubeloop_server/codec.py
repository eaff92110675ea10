"""Request decoding and response encoding for every API, independent of the transport.

* the record API (``/forward``, ``/forward_batch``): JSON records keyed by feature name;
* OIP v2 over REST: JSON tensors, and the binary tensor data extension (a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by raw tensors, for inputs and outputs);
* OIP v2 over gRPC: the typed ``contents`` and ``raw_input_contents`` of a ``ModelInferRequest``
  (the gRPC layer hands the message's fields to :func:`tensor_from_raw` / :func:`tensor_from_values`).

Every tensor, whatever its encoding, goes through the same checks against the graph input
(:func:`check_header`, then the value checks), so REST and gRPC refuse the same things with the same
message. Every validation error is an :class:`~kubeloop_server.errors.InvalidInputError` (400 /
INVALID_ARGUMENT) or :class:`~kubeloop_server.errors.PayloadTooLargeError` (413 / RESOURCE_EXHAUSTED)
whose message names the offending field.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, Final, TypeVar

import numpy as np
import orjson

from kubeloop.drift import category_key
from kubeloop_server._plainjson import parse_plain
from kubeloop_server.errors import InvalidInputError, PayloadTooLargeError
from kubeloop_server.model import FeatureInput, Feeds, ModelRuntime, Outputs, TensorSpec, nonfinite_rows

# OIP datatype -> numpy dtype (little-endian, as the binary extension and raw gRPC contents are).
OIP_DTYPES: Final[dict[str, Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_NUMERIC_TYPES: Final = (int, float)
_CATEGORY_TYPES: Final = (str, int, float, bool, type(None))
_FLT_MAX: Final = 3.4028234663852886e38
# The largest finite value of each float datatype (values past it become infinite when cast).
_FINITE_MAX: Final = {"FP16": 65504.0, "FP32": _FLT_MAX, "FP64": sys.float_info.max}
_FLOAT_NAMES: Final = {"FP16": "float16", "FP32": "float32", "FP64": "float64"}
# Datatypes converted into one another (with range checks) when a request's differs from the graph input's.
_NUMBER_TYPES: Final = frozenset(OIP_DTYPES) - {"BOOL", "BYTES"}
# Response ids for requests that carry none: unique per process, cheaper than uuid4 on the hot path.
_ID_PREFIX: Final = f"{os.urandom(6).hex()}-"
_ID_COUNTER = itertools.count(1)
# The record API's answer for a row whose probabilities hold a NaN or an infinity (``label`` is null).
NONFINITE_LABEL: Final = (
    "the model's probabilities for this record are not finite (NaN or infinity): no class is predicted"
)
_DUMPS_OPTS: Final = orjson.OPT_SERIALIZE_NUMPY
_dumps = orjson.dumps
_add_reduce = np.add.reduce
# Extensions of the OIP that clients may ask for and this server does not implement: refused by name.
UNSUPPORTED_PARAMETERS: Final = {
    "shared_memory_region": "the shared-memory extension",
    "shared_memory_byte_size": "the shared-memory extension",
    "shared_memory_offset": "the shared-memory extension",
    "classification": "the classification extension",
}

# Values beyond float32 become inf when cast; they are then rejected by name, so numpy's warning is noise.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
# The same for the squares in _plain_request's dot product: an overflow there sends the tensor to the exact check.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


# --- the record API (/forward, /forward_batch) ------------------------------------------------------------


def _bad_value(f: FeatureInput, v: Any, allow_missing: bool) -> str | None:
    """What is wrong with one feature value, or None."""
    if v is None and (not allow_missing or f.integer):
        why = (
            "integer features have no missing value"
            if f.integer
            else "this server does not accept missing values"
        )
        return f"feature {f.name!r} is null and {why}"
    if f.numeric:
        if v is None:
            return None
        if f.integer:
            if type(v) is not int:
                return f"feature {f.name!r} must be an integer ({f.input.datatype}), got {_describe(v)}"
            if not _fits(v, f.input.dtype):
                return f"feature {f.name!r} = {v!r} is out of range for {f.input.datatype}"
            return None
        if type(v) not in _NUMERIC_TYPES:
            return f"feature {f.name!r} must be a number, got {_describe(v)}"
        datatype = f.input.datatype
        if not math.isfinite(float(v)) or abs(float(v)) > _FINITE_MAX.get(datatype, _FLT_MAX):
            return f"feature {f.name!r} = {v!r} is not a finite {_FLOAT_NAMES.get(datatype, datatype)}"
        return None
    if type(v) not in _CATEGORY_TYPES:
        return (
            f"feature {f.name!r} is categorical and must be a string (or a number or boolean, taken as its "
            f"canonical string), got {_describe(v)}"
        )
    return None


def _bad_record(rt: ModelRuntime, rec: Any, where: str, allow_missing: bool) -> InvalidInputError:
    """Find the first problem in a record and describe it (slow path, only on error)."""
    if not isinstance(rec, dict):
        return InvalidInputError(f"{where}must be a JSON object keyed by feature name, got {_describe(rec)}")
    for name in rec:
        if name not in rt.feature_index:
            known = ", ".join(rt.feature_names[:20])
            return InvalidInputError(f"{where}unknown feature {name!r}; the model's features are: {known}")
    for f in rt.features:
        if f.name not in rec:
            return InvalidInputError(f"{where}missing feature {f.name!r}")
        problem = _bad_value(f, rec[f.name], allow_missing)
        if problem:
            return InvalidInputError(where + problem)
    return InvalidInputError(f"{where}invalid record")


def check_numeric(arr: np.ndarray, allow_missing: bool) -> bool:
    """True when every value is finite, or NaN (a JSON null) where missing values are allowed."""
    if math.isfinite(_add_reduce(arr, None)):  # arr.sum() without its Python-level wrapper
        return True
    if allow_missing:
        return not np.isinf(arr).any()
    return bool(np.isfinite(arr).all())


def _bad_values(arr: np.ndarray, allow_missing: bool) -> np.ndarray:
    bad: np.ndarray = np.isinf(arr) if allow_missing else ~np.isfinite(arr)
    return bad


def _category(v: Any) -> str:
    """Canonical string of a categorical value (kubeloop.drift.category_key); null is "" (missing)."""
    if type(v) is str:
        return v
    key = category_key(v)
    return "" if key is None else key


def records_to_feeds(
    rt: ModelRuntime, records: list[Any], single: bool = False, allow_missing: bool = True
) -> Feeds:
    """Validate records (dicts keyed by feature name) and build the graph feeds, batch size len(records).

    Numeric values are JSON numbers (whole numbers for an integer graph input); null is a missing value
    (NaN) when ``allow_missing``. Categorical values are strings; numbers and booleans are taken as their
    canonical string (as the trainer's encoder does) and null as "" (missing).
    """
    rt.record_api_check()
    n = len(records)
    names = rt.feature_names
    n_feat = len(names)

    def bad(i: int) -> InvalidInputError:
        return _bad_record(rt, records[i], "" if single else f"record {i}: ", allow_missing)

    if rt.layout == "packed":
        spec = rt.features[0].input
        integer = spec.is_int
        rows: list[list[Any]] = []
        for i, rec in enumerate(records):
            try:
                if len(rec) != n_feat:
                    raise KeyError
                row = [rec[k] for k in names]
            except (KeyError, TypeError):
                raise bad(i) from None
            for v in row:
                if type(v) not in _NUMERIC_TYPES and (v is not None or not allow_missing):
                    raise bad(i)
                if integer and type(v) is not int:
                    raise bad(i)
            rows.append(row)
        try:
            arr = np.array(rows, dtype=spec.dtype)
        except OverflowError:
            if integer:
                raise bad(
                    next(i for i, r in enumerate(rows) if not all(_fits(v, spec.dtype) for v in r))
                ) from None
            arr = np.full((n, n_feat), np.inf, dtype=spec.dtype)
        if spec.is_float and not check_numeric(arr, allow_missing):
            raise bad(int(np.nonzero(_bad_values(arr, allow_missing).any(axis=1))[0][0]))
        return {spec.name: arr}
    # per-feature layout
    for i, rec in enumerate(records):
        if type(rec) is not dict or len(rec) != n_feat:
            raise bad(i)
    feeds: Feeds = {}
    for f in rt.features:
        spec = f.input
        try:
            col = [rec[f.name] for rec in records]
        except KeyError:
            raise bad(next(i for i, r in enumerate(records) if f.name not in r)) from None
        if f.numeric:
            for i, v in enumerate(col):
                if type(v) not in _NUMERIC_TYPES and (v is not None or not allow_missing):
                    raise bad(i)
                if f.integer and type(v) is not int:
                    raise bad(i)
            try:
                arr = np.array(col, dtype=spec.dtype)
            except (OverflowError, TypeError):
                raise bad(next(i for i, v in enumerate(col) if not _fits(v, spec.dtype))) from None
            if spec.is_float and not check_numeric(arr, allow_missing):
                raise bad(int(np.nonzero(_bad_values(arr, allow_missing))[0][0]))
        else:
            for i, v in enumerate(col):
                if type(v) is not str and (
                    type(v) not in _CATEGORY_TYPES or (v is None and not allow_missing)
                ):
                    raise bad(i)
            arr = np.array([_category(v) for v in col], dtype=np.object_)
        feeds[spec.name] = arr.reshape(n, 1) if len(spec.shape) == 2 else arr
    return feeds


def _fits(v: Any, dtype: Any) -> bool:
    try:
        np.array([v], dtype=dtype)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


def parse_records(body: Any, max_rows: int) -> list[Any]:
    """The /forward_batch body: a JSON array of records (or ``{"records": [...]}``)."""
    if isinstance(body, dict) and "records" in body and len(body) == 1:
        body = body["records"]
    if not isinstance(body, list):
        raise InvalidInputError(f"request body must be a JSON array of records, got {_describe(body)}")
    if not body:
        raise InvalidInputError("request body is an empty list; send at least one record")
    if len(body) > max_rows:
        raise PayloadTooLargeError(f"{len(body)} records exceed the limit of {max_rows} per request")
    return body


def _row_value(arr: np.ndarray, k: int) -> Any:
    row = arr[k]
    if isinstance(row, np.ndarray):
        return row.reshape(-1).tolist() if row.size != 1 else row.reshape(-1)[0].item()
    return row.item() if isinstance(row, np.generic) else row


def record_results(rt: ModelRuntime, outputs: Outputs, rows: int) -> list[dict[str, Any]]:
    """Per-row answers for ``rows`` records: ``{"label", "probabilities"}``, ``{"prediction"}``, or (a foreign
    graph whose outputs do not read as a prediction) ``{"outputs": {name: value}}``, where an output without
    one entry per row (a constant, a scalar) is given whole in every row.

    A row whose probabilities hold a NaN or an infinity gets ``"label": null`` and ``"label_error"`` saying
    why, not the class argmax would pick. JSON has no NaN or infinity: such values are null in the answer."""
    if rt.prediction_output is None:
        whole = {
            name: o.tolist()
            for name, o, per_row in zip(rt.output_names, outputs, rt.row_outputs, strict=True)
            if not (per_row and o.ndim and o.shape[0] == rows)
        }
        return [{"outputs": {name: whole[name] if name in whole else _row_value(o, k)
                             for name, o in zip(rt.output_names, outputs, strict=True)}}
                for k in range(rows)]  # fmt: skip
    pred = outputs[rt.prediction_output]
    if rt.task == "classification":
        classes = rt.classes
        idx = pred.argmax(axis=1).tolist()
        results: list[dict[str, Any]] = [
            {"label": classes[k], "probabilities": dict(zip(classes, row, strict=True))}
            for k, row in zip(idx, pred, strict=True)
        ]
        bad = nonfinite_rows(pred)
        if bad is not None:
            for k in np.flatnonzero(bad).tolist():
                results[k]["label"] = None
                results[k]["label_error"] = NONFINITE_LABEL
        return results
    return [{"prediction": v} for v in pred.reshape(-1)]


# --- OIP v2: one tensor, whatever its encoding ---------------------------------------------------------------


def check_header(
    name: str, datatype: Any, shape: Any, spec: TensorSpec, max_rows: int
) -> tuple[int, list[int]]:
    """Validate a request tensor's datatype and shape against a graph input.

    Returns the element count and the shape to feed (a ``[N]`` tensor is accepted for an ``[N, 1]``
    input). The datatype is the graph input's, or a number type converted with range checks: an integer
    into any number input, a float into a float input (never into an integer one). BOOL and BYTES go only
    to inputs of their own datatype. REST JSON, the binary extension and gRPC all decide it here.
    """
    if type(shape) is not list or (not shape and spec.shape != ()):
        raise InvalidInputError(f"input {name!r}.shape must be a non-empty list of non-negative integers")
    size = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidInputError(
                f"input {name!r}.shape must be a list of non-negative integers, got {shape!r}"
            )
        size *= d
    if datatype != spec.datatype:
        if datatype not in OIP_DTYPES:
            raise InvalidInputError(
                f"input {name!r}.datatype {datatype!r} is not an OIP datatype ({', '.join(OIP_DTYPES)})"
            )
        if datatype not in _NUMBER_TYPES or spec.datatype not in _NUMBER_TYPES:
            raise InvalidInputError(
                f"input {name!r}.datatype is {datatype} but model input {spec.name!r} is {spec.datatype}"
            )
        if spec.is_int and datatype in _FLOAT_NAMES:
            raise InvalidInputError(
                f"input {name!r}.datatype is {datatype} but model input {spec.name!r} is {spec.datatype}: "
                "send whole numbers as an integer datatype"
            )
    want = spec.shape
    if len(shape) == len(want):
        for k in range(1 if want and want[0] == -1 else 0, len(want)):
            if want[k] != -1 and want[k] != shape[k]:
                raise InvalidInputError(
                    f"input {name!r}.shape {shape} does not fit model input {spec.name!r} of shape {list(want)}"
                )
    elif not (len(want) == 2 and want[1] == 1 and len(shape) == 1):
        raise InvalidInputError(
            f"input {name!r}.shape {shape} does not fit model input {spec.name!r} of shape {list(want)}"
        )
    if shape and shape[0] > max_rows:
        raise PayloadTooLargeError(
            f"input {name!r}: batch of {shape[0]} rows exceeds the limit of {max_rows}"
        )
    if len(want) == 2 and len(shape) == 1:
        shape = [shape[0], 1]
    return size, shape


def _check_floats(arr: np.ndarray, name: str, datatype: str, allow_missing: bool) -> None:
    # One reduction instead of isfinite().all(): NaN/inf propagate into the sum; if the sum itself
    # overflowed, the exact check below decides.
    if not check_numeric(arr, allow_missing):
        k = int(np.nonzero(_bad_values(arr.reshape(-1), allow_missing))[0][0])
        raise InvalidInputError(
            f"input {name!r}.data[{k}] is out of range for {datatype}"
            + ("" if allow_missing else " or null/NaN (this server does not accept missing values)")
        )


def _check_ints(arr: np.ndarray, name: str, datatype: str) -> None:
    if arr.size:
        info = np.iinfo(OIP_DTYPES[datatype])
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidInputError(f"input {name!r} has a value out of range for {datatype}")


def _convert(arr: np.ndarray, name: str, datatype: str, spec: TensorSpec, allow_missing: bool) -> np.ndarray:
    """Numbers of one datatype into the graph input's (no silent truncation or wrap-around); which
    datatypes may be converted at all, :func:`check_header` has decided."""
    if datatype == spec.datatype:
        if spec.is_float:
            _check_floats(arr, name, spec.datatype, allow_missing)
        return arr
    if spec.is_int:
        _check_ints(arr, name, spec.datatype)
        return arr.astype(spec.dtype)
    out = arr.astype(spec.dtype)
    _check_floats(out, name, spec.datatype, allow_missing)
    return out


def _whole_numbers(data: list[Any]) -> bool:
    """True when every element of a flat or nested list is a JSON integer (not a boolean)."""
    return all(_whole_numbers(v) if type(v) is list else type(v) is int for v in data)


def _holds_bool(data: list[Any]) -> bool:
    """True when a flat or nested list holds a JSON boolean (which numpy would take as the number 1 or 0)."""
    types = set(map(type, data))
    return bool in types or (list in types and any(_holds_bool(v) for v in data if type(v) is list))


def _no_booleans(name: str, datatype: str, data: list[Any]) -> None:
    """A number datatype holds numbers: a JSON boolean among them is refused, not read as 1 or 0 (the binary
    extension and gRPC cannot carry one: their clients turn it into a number before sending)."""
    if _holds_bool(data):
        flat = list(_flatten(data))
        k = next(i for i, v in enumerate(flat) if type(v) is bool)
        raise InvalidInputError(
            f"input {name!r}.data[{k}] is a boolean ({'true' if flat[k] else 'false'}) but datatype {datatype} "
            "holds numbers only (booleans go as BOOL, to a BOOL input)"
        )


def _flatten(data: list[Any]) -> Iterator[Any]:
    for v in data:
        if type(v) is list:
            yield from _flatten(v)
        else:
            yield v


def _json_values(
    name: str, datatype: str, data: list[Any], spec: TensorSpec, allow_missing: bool
) -> np.ndarray:
    """JSON ``data`` as the declared ``datatype`` holds them, refused as the binary extension and gRPC
    refuse what that datatype cannot hold (``INT8`` 300, ``INT64`` 1.5, ``FP16`` 70000); the conversion into
    the graph input's datatype follows."""
    dtype = OIP_DTYPES[datatype]
    arr: np.ndarray | None
    if datatype in _FLOAT_NAMES:
        try:
            arr = np.array(data, dtype=dtype)
        except OverflowError:
            raise InvalidInputError(f"input {name!r}.data has a value out of range for {datatype}") from None
        except (ValueError, TypeError):
            raise InvalidInputError(
                f"input {name!r}.data must be numbers (flat or nested row-major) for datatype {datatype}"
            ) from None
        _no_booleans(name, datatype, data)
        if datatype != spec.datatype:  # else _convert checks it
            _check_floats(arr, name, datatype, allow_missing)
        return arr
    # Integers and booleans: parsed as JSON gives them, so that 1.5 is refused rather than truncated.
    try:
        parsed: np.ndarray | None = np.array(data)
    except (ValueError, TypeError, OverflowError):
        parsed = None
    kind = "" if parsed is None else parsed.dtype.kind
    arr = None
    if datatype != "BOOL":  # numpy takes [true, 2] as the int64 [1, 2]
        _no_booleans(name, datatype, data)
    if datatype == "BOOL":
        if parsed is not None and (kind == "b" or parsed.size == 0):
            arr = parsed
    elif kind in ("i", "u"):
        arr = parsed
    elif _whole_numbers(data):
        # [] (float64 to numpy), or integers numpy holds in no one integer type: past uint64, or negatives
        # mixed with values past int64 (which numpy makes float64, rounded).
        try:
            arr = np.array(data, dtype=dtype)
        except OverflowError:
            raise InvalidInputError(f"input {name!r} has a value out of range for {datatype}") from None
        except (ValueError, TypeError):  # ragged nesting
            arr = None
    if arr is None:
        what = "true/false" if datatype == "BOOL" else "whole numbers"
        where = (
            f"model input {spec.name!r} ({spec.datatype})"
            if datatype == spec.datatype
            else f"datatype {datatype}"
        )
        raise InvalidInputError(f"input {name!r}.data must be {what} for {where}")
    if datatype != "BOOL":
        _check_ints(arr, name, datatype)
    return arr.astype(dtype, copy=False)


def tensor_from_json(
    name: str, item: dict[str, Any], spec: TensorSpec, max_rows: int, allow_missing: bool
) -> np.ndarray:
    """A JSON tensor (``data`` flat or nested row-major)."""
    datatype = item.get("datatype")
    size, shape = check_header(name, datatype, item.get("shape"), spec, max_rows)
    data = item.get("data")
    if type(data) is not list:
        raise InvalidInputError(f"input {name!r}.data must be a JSON array, got {_describe(data)}")
    if spec.is_string:
        for v in data:
            if type(v) is not str and (v is not None or not allow_missing):
                raise InvalidInputError(
                    f"input {name!r}.data must be a flat array of strings for datatype BYTES"
                )
        if None in data:
            data = ["" if v is None else v for v in data]  # null is the missing category
        arr = np.array(data, dtype=np.object_)
    else:
        # Values as the declared datatype holds them, then into the graph input's: the steps (and checks) of
        # the binary extension and gRPC. check_header has made the datatype one of OIP_DTYPES.
        declared = str(datatype)
        values = _json_values(name, declared, data, spec, allow_missing)
        arr = _convert(values, name, declared, spec, allow_missing)
    if arr.size != size:
        raise InvalidInputError(
            f"input {name!r}.data has {arr.size} elements but shape {item.get('shape')} needs {size}"
        )
    if arr.ndim > 1 and list(arr.shape) != item.get("shape"):
        raise InvalidInputError(
            f"input {name!r}.data is nested as {list(arr.shape)} but shape is {item.get('shape')}"
        )
    return arr.reshape(shape)


def split_bytes(raw: bytes | memoryview, name: str, count: int) -> list[bytes]:
    """BYTES elements of a binary tensor: each a 4-byte little-endian length, then that many bytes."""
    out: list[bytes] = []
    view = memoryview(raw)
    n = len(view)
    off = 0
    while off < n:
        if off + 4 > n:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {len(out)} is cut short: {n - off} bytes left where a 4-byte "
                "length prefix is needed"
            )
        length = int.from_bytes(view[off : off + 4], "little")
        off += 4
        if off + length > n:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {len(out)} declares {length} bytes but only {n - off} remain"
            )
        out.append(bytes(view[off : off + length]))
        off += length
    if len(out) != count:
        raise InvalidInputError(
            f"input {name!r}: binary data holds {len(out)} BYTES elements but the shape needs {count}"
        )
    return out


def _strings(items: Sequence[bytes], name: str) -> np.ndarray:
    try:
        return np.array([b.decode() for b in items], dtype=np.object_)
    except UnicodeDecodeError as e:
        k = next(i for i, b in enumerate(items) if not _utf8(b))
        raise InvalidInputError(
            f"input {name!r}: BYTES element {k} is not valid UTF-8 ({e.reason})"
        ) from None


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def tensor_from_raw(
    name: str,
    datatype: Any,
    shape: Any,
    raw: bytes | memoryview,
    spec: TensorSpec,
    max_rows: int,
    allow_missing: bool,
) -> np.ndarray:
    """A tensor given as raw bytes (binary extension, gRPC ``raw_input_contents``): flattened row-major
    little-endian elements, BYTES elements length-prefixed."""
    size, target = check_header(name, datatype, shape, spec, max_rows)
    if datatype == "BYTES":
        return _strings(split_bytes(raw, name, size), name).reshape(target)
    dtype = OIP_DTYPES[datatype]
    need = size * dtype.itemsize
    if len(raw) != need:
        raise InvalidInputError(
            f"input {name!r}: {len(raw)} bytes of binary data but shape {shape} of {datatype} needs {need} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and arr.size and int(arr.view(np.uint8).max()) > 1:
        raise InvalidInputError(f"input {name!r}: BOOL elements must be bytes 0 or 1")
    return _convert(arr, name, datatype, spec, allow_missing).reshape(target)


# gRPC InferTensorContents field per datatype.
CONTENTS_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def tensor_from_values(
    name: str,
    datatype: Any,
    shape: Any,
    values: Sequence[Any],
    spec: TensorSpec,
    max_rows: int,
    allow_missing: bool,
) -> np.ndarray:
    """A tensor given as a typed list of values (gRPC ``contents.<type>_contents``)."""
    size, target = check_header(name, datatype, shape, spec, max_rows)
    if len(values) != size:
        raise InvalidInputError(
            f"input {name!r}.contents has {len(values)} elements but shape {shape} needs {size}"
        )
    if datatype == "BYTES":
        return _strings(values, name).reshape(target)
    dtype = OIP_DTYPES[datatype]
    try:
        arr = np.array(values, dtype=dtype)
    except OverflowError:
        raise InvalidInputError(f"input {name!r}.contents has a value out of range for {datatype}") from None
    return _convert(arr, name, datatype, spec, allow_missing).reshape(target)


# --- OIP v2: a whole request ------------------------------------------------------------------------------------


class InferRequest:
    """A decoded OIP inference request, whatever its protocol."""

    __slots__ = ("binary", "feeds", "id", "outputs", "rows")

    def __init__(
        self, id_: str, feeds: Feeds, rows: int, outputs: list[int] | None, binary: list[bool] | None = None
    ) -> None:
        self.id = id_
        self.feeds = feeds
        self.rows = rows
        self.outputs = outputs  # indices of the requested outputs, None = all
        self.binary = binary  # REST: per returned output, whether it goes as binary data; None = none


T = TypeVar("T")
Converter = Callable[[str, T, TensorSpec], np.ndarray]


def assemble_feeds(rt: ModelRuntime, given: dict[str, T], convert: Converter[T]) -> tuple[Feeds, int]:
    """The graph feeds from the request's tensors (by name), and the row count they agree on."""
    feeds = _decode_inputs(rt, given, convert)
    rows = -1
    for name, arr in feeds.items():
        r = arr.shape[0] if arr.ndim else 1
        if rows == -1:
            rows = r
        elif r != rows:
            raise InvalidInputError(f"input {name!r} has {r} rows but other inputs have {rows}")
    if rows == 0:
        raise InvalidInputError("inputs have 0 rows; send at least one")
    return feeds, rows


def _decode_inputs(rt: ModelRuntime, given: dict[str, T], convert: Converter[T]) -> Feeds:
    if len(given) == len(rt.inputs):
        try:
            return {spec.name: convert(spec.name, given[spec.name], spec) for spec in rt.inputs}
        except KeyError:
            pass
    names = set(given)
    if rt.layout == "packed" and names == set(rt.feature_names):
        # Convenience: one [N] or [N, 1] tensor per feature, packed into the model's [N, F] input.
        spec = rt.inputs[0]
        col_spec = TensorSpec.of(spec.name, spec.datatype, (-1, 1), spec.dtype)
        cols = [convert(f, given[f], col_spec) for f in rt.feature_names]
        if len({c.shape[0] for c in cols}) != 1:
            raise InvalidInputError("feature inputs have different numbers of rows")
        return {spec.name: np.concatenate(cols, axis=1)}
    unknown = sorted(names - set(rt.input_names))
    if unknown:
        raise InvalidInputError(f"unknown input {unknown[0]!r}; the model's inputs are {rt.input_names}")
    missing = sorted(set(rt.input_names) - names)
    raise InvalidInputError(f"missing input {missing[0]!r}; the model's inputs are {rt.input_names}")


def _flag(params: Any, key: str, where: str) -> bool:
    if params is None:
        return False
    v = params.get(key, False)
    if type(v) is not bool:
        raise InvalidInputError(f"{where}.parameters.{key} must be true or false, got {_describe(v)}")
    return v


def refuse_unsupported(params: Container[str], where: str) -> None:
    """Parameters that ask for an OIP extension this server does not implement get a 400 naming it."""
    for key, what in UNSUPPORTED_PARAMETERS.items():
        if key in params:
            raise InvalidInputError(f"{where}.parameters.{key}: {what} is not supported by this server")


def _check_parameters(params: Any, where: str) -> None:
    if params is None:
        return
    if type(params) is not dict:
        raise InvalidInputError(f"{where}.parameters must be an object")
    refuse_unsupported(params, where)


def requested_outputs(rt: ModelRuntime, req_outputs: Any) -> list[int] | None:
    """Indices of the outputs a request names (None: all of them)."""
    if req_outputs is None:
        return None
    if not isinstance(req_outputs, list):
        raise InvalidInputError("'outputs' must be a list")
    out: list[int] = []
    for k, o in enumerate(req_outputs):
        if type(o) is not dict or type(o.get("name")) is not str:
            raise InvalidInputError(f"outputs[{k}] must be an object with a string 'name'")
        try:
            out.append(rt.output_names.index(o["name"]))
        except ValueError:
            raise InvalidInputError(
                f"outputs[{k}]: unknown output {o['name']!r}; the model's outputs are {rt.output_names}"
            ) from None
    return out


_PLAIN_TENSOR_KEYS: Final = frozenset(("name", "shape", "datatype", "data"))


_JSON_NUMBERS: Final = frozenset((float, int))


def _flat_numbers(data: list[Any]) -> bool:
    """True when a list holds JSON numbers only: no booleans (which numpy would take as 1 and 0), nulls,
    strings (which numpy would parse) or nested lists. The set of element types, built in C, is the cheapest
    exact test: min, max and sum cannot tell True from 1."""
    return set(map(type, data)) <= _JSON_NUMBERS


def _number_rows(data: list[Any], width: int) -> bool:
    """True when a list holds rows (lists) of ``width`` JSON numbers each, as :func:`_flat_numbers`."""
    for row in data:  # noqa: SIM110  (a loop: half the cost of all() over a generator for one row)
        if type(row) is not list or len(row) != width or not _flat_numbers(row):
            return False
    return True


def _plain_request(
    rt: ModelRuntime, body: dict[str, Any], max_rows: int, allow_missing: bool
) -> InferRequest | None:
    """The most common request, decoded with the fewest steps: one JSON float tensor for a model with one
    float ``[N, F]`` input, no parameters, no output selection. None for anything else (or anything
    wrong), which the general path then decodes or refuses with the error naming the problem."""
    spec = rt.single_float_input
    if spec is None or "parameters" in body or "outputs" in body:
        return None
    inputs = body.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    item = inputs[0]
    if type(item) is not dict or item.keys() != _PLAIN_TENSOR_KEYS or item["name"] != spec.name:
        return None
    shape = item["shape"]
    if item["datatype"] != spec.datatype or type(shape) is not list or len(shape) != 2:
        return None
    n, width = shape
    if type(n) is not int or type(width) is not int or not 0 < n <= max_rows or width < 0:
        return None
    if spec.shape[1] not in (-1, width):
        return None
    data = item["data"]
    if type(data) is not list:
        return None
    flat = len(data) == n * width and _flat_numbers(data)
    if flat or (len(data) == n and _number_rows(data, width)):
        try:
            arr = np.array(data, dtype=spec.dtype)
        except OverflowError:  # an integer past float64
            return None
        # Every element is finite when the dot product is: NaN and infinity (values past the float type's
        # range become infinite when cast) make it NaN or inf. Cheaper in place than a reduction; when the
        # squares overflow, the exact check decides.
        vec = arr if flat else arr.reshape(-1)
        if not math.isfinite(vec.dot(vec)) and not check_numeric(arr, allow_missing):
            return None
    else:  # nulls, anything odd: checked on the array
        if _holds_bool(data):
            return None
        try:
            arr = np.array(data, dtype=spec.dtype)
        except (ValueError, TypeError, OverflowError):
            return None
        if (
            arr.size != n * width
            or (arr.ndim > 1 and arr.shape != (n, width))
            or not check_numeric(arr, allow_missing)
        ):
            return None
    req_id = body.get("id")
    if req_id is None:
        req_id = new_request_id()
    elif type(req_id) is not str:
        return None
    return InferRequest(req_id, {spec.name: arr.reshape(n, width)}, n, None, None)


class PlainBodyReader:
    """The most common REST request read straight from its bytes, without orjson or the checks above: one
    JSON float tensor (FP32 or FP64) for a model with one float ``[N, F]`` input, an optional string
    ``id``, nothing else (kubeloop_server._plainjson, in C). It returns None for any other body, which the
    general path then decodes or refuses with the error naming the problem; what it returns is what that
    path would have decoded (images/server/tests/test_plainjson.py)."""

    __slots__ = ("_datatype", "_dtype", "_itemsize", "_max_rows", "_name", "_width", "input")

    def __init__(self, spec: TensorSpec, max_rows: int) -> None:
        self.input = spec.name
        self._name = spec.name.encode()
        self._datatype = spec.datatype.encode()
        self._dtype = np.dtype(spec.dtype)
        self._itemsize = self._dtype.itemsize
        self._width = spec.shape[1]
        self._max_rows = max_rows

    @classmethod
    def for_model(cls, rt: ModelRuntime, max_rows: int) -> PlainBodyReader | None:
        """A reader for the model's one float input, if it has one of a type the reader writes."""
        spec = rt.single_float_input
        if spec is None or spec.datatype not in ("FP32", "FP64"):
            return None
        return cls(spec, max_rows)

    def read(self, body: bytes) -> InferRequest | None:
        got = parse_plain(body, self._name, self._datatype, self._itemsize)
        if got is None:
            return None
        data, n, width, req_id = got
        if n > self._max_rows or self._width not in (-1, width):
            return None
        arr = np.ndarray((n, width), self._dtype, data)  # over the bytearray: writable, no copy
        return InferRequest(new_request_id() if req_id is None else req_id, {self.input: arr}, n, None, None)


def decode_infer_request(
    rt: ModelRuntime,
    body: Any,
    max_rows: int,
    allow_missing: bool = True,
    binary: bytes | memoryview | None = None,
) -> InferRequest:
    """An OIP REST request: the JSON document and, with the binary tensor data extension, the bytes that
    follow its ``Inference-Header-Content-Length`` (``binary``; None without the header). A request
    :class:`PlainBodyReader` read from the bytes comes as its :class:`InferRequest` and is passed on."""
    if type(body) is InferRequest:
        return body
    if binary is None and type(body) is dict and rt.single_float_input is not None:
        plain = _plain_request(rt, body, max_rows, allow_missing)
        if plain is not None:
            return plain
    if type(body) is not dict:
        raise InvalidInputError(f"inference request must be a JSON object, got {_describe(body)}")
    req_id = body.get("id")
    if req_id is None:
        req_id = new_request_id()
    elif type(req_id) is not str:
        raise InvalidInputError(f"'id' must be a string, got {_describe(req_id)}")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInputError("'parameters' must be an object")
    _check_parameters(params, "request")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    given: dict[str, tuple[dict[str, Any], memoryview | None]] = {}
    offset = 0
    view = memoryview(binary) if binary is not None else None
    for k, item in enumerate(inputs):
        if type(item) is not dict:
            raise InvalidInputError(f"inputs[{k}] must be an object, got {_describe(item)}")
        name = item.get("name")
        if type(name) is not str:
            raise InvalidInputError(f"inputs[{k}].name must be a string")
        if name in given:
            raise InvalidInputError(f"input {name!r} is given twice")
        p = item.get("parameters")
        chunk = None
        if p is not None:
            _check_parameters(p, f"input {name!r}")
            if "binary_data_size" in p:
                n = p["binary_data_size"]
                if view is None:
                    raise InvalidInputError(
                        f"input {name!r} has parameters.binary_data_size but the request has no "
                        "Inference-Header-Content-Length header (binary tensor data extension)"
                    )
                if type(n) is not int or n < 0:
                    raise InvalidInputError(
                        f"input {name!r}.parameters.binary_data_size must be a non-negative integer, got {n!r}"
                    )
                if "data" in item:
                    raise InvalidInputError(f"input {name!r} has both 'data' and parameters.binary_data_size")
                if offset + n > len(view):
                    raise InvalidInputError(
                        f"input {name!r}.parameters.binary_data_size {n} runs past the binary data: "
                        f"{len(view) - offset} of {len(view)} bytes are left"
                    )
                chunk = view[offset : offset + n]
                offset += n
        given[name] = (item, chunk)
    if view is not None and offset != len(view):
        raise InvalidInputError(
            f"the request carries {len(view)} bytes of binary data after its JSON header but its inputs' "
            f"binary_data_size add up to {offset}"
        )

    def convert(name: str, g: tuple[dict[str, Any], memoryview | None], spec: TensorSpec) -> np.ndarray:
        item, chunk = g
        if chunk is None:
            return tensor_from_json(name, item, spec, max_rows, allow_missing)
        return tensor_from_raw(
            name, item.get("datatype"), item.get("shape"), chunk, spec, max_rows, allow_missing
        )

    feeds, rows = assemble_feeds(rt, given, convert)
    req_outputs = body.get("outputs")
    outputs = requested_outputs(rt, req_outputs)
    all_binary = _flag(params, "binary_data_output", "request")
    flags: list[bool] | None = None
    if outputs is not None:
        flags = []
        for k, o in enumerate(req_outputs or ()):
            p = o.get("parameters")
            if p is not None:
                _check_parameters(p, f"outputs[{k}]")
            flags.append(_flag(p, "binary_data", f"outputs[{k}]") if p and "binary_data" in p else all_binary)
        if not any(flags):
            flags = None
    elif all_binary:
        flags = [True] * len(rt.outputs)
    return InferRequest(req_id, feeds, rows, outputs, flags)


def _datatype_of(arr: np.ndarray) -> str:
    kind = arr.dtype
    if kind == np.object_ or kind.kind in ("U", "S"):
        return "BYTES"
    for name, dt in OIP_DTYPES.items():
        if name != "BYTES" and kind == dt:
            return name
    return "FP64"


def output_datatype(rt: ModelRuntime, i: int, arr: np.ndarray) -> str:
    return rt.outputs[i].datatype if i < len(rt.outputs) else _datatype_of(arr)


def raw_bytes(arr: np.ndarray, datatype: str) -> bytes:
    """A tensor as the binary extension and gRPC raw contents carry it."""
    if datatype == "BYTES":
        parts = []
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(len(b).to_bytes(4, "little"))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=OIP_DTYPES[datatype]).tobytes()


def encode_infer_response(rt: ModelRuntime, req: InferRequest, outputs: Outputs) -> tuple[bytes, int | None]:
    """The REST answer: JSON, or (when the request asked for binary outputs) a JSON header followed by the
    binary outputs; returns the body and the JSON header's length (None for plain JSON)."""
    chosen = range(len(outputs)) if req.outputs is None else req.outputs
    out = []
    tail: list[bytes] = []
    binary = req.binary
    for k, i in enumerate(chosen):
        arr = outputs[i]
        datatype = output_datatype(rt, i, arr)
        entry: dict[str, Any] = {"name": rt.output_names[i], "datatype": datatype, "shape": list(arr.shape)}
        if binary is not None and binary[k]:
            raw = raw_bytes(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()]
        else:
            entry["data"] = arr.ravel()  # a view for ONNX Runtime's (contiguous) outputs
        out.append(entry)
    header = _dumps(
        {"model_name": rt.name, "model_version": rt.version, "id": req.id, "outputs": out}, option=_DUMPS_OPTS
    )
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)

"""Request decoding and response encoding for both APIs (records and OIP v2), protocol-agnostic of HTTP.

Every validation error is an :class:`~kubeloop_server.errors.InvalidInputError` (400) or
:class:`~kubeloop_server.errors.PayloadTooLargeError` (413) whose message names the offending field.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from typing import Any, Final

import numpy as np

from kubeloop.drift import category_key
from kubeloop_server.errors import InvalidInputError, PayloadTooLargeError
from kubeloop_server.model import Feeds, ModelRuntime, Outputs, TensorSpec

# OIP datatype -> numpy dtype, for request tensors.
OIP_DTYPES: Final[dict[str, Any]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_NUMERIC_TYPES: Final = (int, float)
_CATEGORY_TYPES: Final = (str, int, float, bool, type(None))
_FLT_MAX: Final = 3.4028234663852886e38
# Response ids for requests that carry none: unique per process, cheaper than uuid4 on the hot path.
_ID_PREFIX: Final = f"{os.urandom(6).hex()}-"
_ID_COUNTER = itertools.count(1)

# Values beyond float32 become inf when cast; they are then rejected by name, so numpy's warning is noise.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)


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


# --- the record API (/forward, /forward_batch) ------------------------------------------------------------


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
        v = rec[f.name]
        if v is None and not allow_missing:
            return InvalidInputError(
                f"{where}feature {f.name!r} is null and this server does not accept missing values"
            )
        if f.numeric:
            if v is None:
                continue
            if type(v) not in _NUMERIC_TYPES:
                return InvalidInputError(f"{where}feature {f.name!r} must be a number, got {_describe(v)}")
            if not math.isfinite(float(v)) or abs(float(v)) > _FLT_MAX:
                return InvalidInputError(f"{where}feature {f.name!r} = {v!r} is not a finite float32")
        elif type(v) not in _CATEGORY_TYPES and v is not None:
            return InvalidInputError(
                f"{where}feature {f.name!r} is categorical and must be a string (or a number or boolean, "
                f"taken as its canonical string), got {_describe(v)}"
            )
    return InvalidInputError(f"{where}invalid record")


def _check_numeric(arr: np.ndarray, allow_missing: bool) -> bool:
    """True when every value is finite, or NaN (a JSON null) where missing values are allowed."""
    if math.isfinite(arr.sum()):
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

    Numeric values are JSON numbers; null is a missing value (NaN) when ``allow_missing``. Categorical
    values are strings; numbers and booleans are taken as their canonical string (as the trainer's
    encoder does) and null as "" (missing).
    """
    n = len(records)
    names = rt.feature_names
    n_feat = len(names)

    def bad(i: int) -> InvalidInputError:
        return _bad_record(rt, records[i], "" if single else f"record {i}: ", allow_missing)

    if rt.layout == "packed":
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
            rows.append(row)
        try:
            arr = np.array(rows, dtype=rt.inputs[0].dtype)
        except OverflowError:
            arr = np.full((n, n_feat), np.inf, dtype=rt.inputs[0].dtype)
        if not _check_numeric(arr, allow_missing):
            raise bad(int(np.nonzero(_bad_values(arr, allow_missing).any(axis=1))[0][0]))
        return {rt.inputs[0].name: arr}
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
            try:
                arr = np.array(col, dtype=spec.dtype)
            except (OverflowError, TypeError):
                raise bad(next(i for i, v in enumerate(col) if not _fits(v, spec.dtype))) from None
            if spec.is_float and not _check_numeric(arr, allow_missing):
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
    except (OverflowError, TypeError):
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


def record_results(rt: ModelRuntime, outputs: Outputs) -> list[dict[str, Any]]:
    """Per-row answers: ``{"label", "probabilities"}`` or ``{"prediction"}``."""
    pred = outputs[rt.prediction_output]
    if rt.task == "classification":
        classes = rt.classes
        idx = pred.argmax(axis=1).tolist()
        return [
            {"label": classes[k], "probabilities": dict(zip(classes, row, strict=True))}
            for k, row in zip(idx, pred, strict=True)
        ]
    return [{"prediction": v} for v in pred.reshape(-1)]


# --- the Open Inference Protocol v2 --------------------------------------------------------------------------


def _tensor(
    item: dict[str, Any], spec: TensorSpec, name: str, max_rows: int, allow_missing: bool
) -> np.ndarray:
    """Validate one request tensor against a graph input and return it as an array of the graph's shape."""
    shape = item.get("shape")
    if type(shape) is not list or not shape:
        raise InvalidInputError(f"input {name!r}.shape must be a non-empty list of non-negative integers")
    size = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidInputError(
                f"input {name!r}.shape must be a list of non-negative integers, got {shape!r}"
            )
        size *= d
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        if datatype not in OIP_DTYPES:
            raise InvalidInputError(
                f"input {name!r}.datatype {datatype!r} is not an OIP datatype ({', '.join(OIP_DTYPES)})"
            )
        if spec.is_string or datatype == "BYTES":
            raise InvalidInputError(
                f"input {name!r}.datatype is {datatype} but model input {spec.name!r} is {spec.datatype}"
            )
    params = item.get("parameters")
    if params is not None:
        if type(params) is not dict:
            raise InvalidInputError(f"input {name!r}.parameters must be an object")
        if "binary_data_size" in params:
            raise InvalidInputError(
                f"input {name!r}: the binary tensor data extension is not supported; send JSON data"
            )
    # Shape: same rank as the graph input (a [N] tensor is accepted for a [N, 1] input), fixed dims equal.
    want = spec.shape
    if len(shape) == len(want):
        for k in range(1, len(want)):
            if want[k] != -1 and want[k] != shape[k]:
                raise InvalidInputError(
                    f"input {name!r}.shape {shape} does not fit model input {spec.name!r} of shape {list(want)}"
                )
    elif not (len(want) == 2 and want[1] == 1 and len(shape) == 1):
        raise InvalidInputError(
            f"input {name!r}.shape {shape} does not fit model input {spec.name!r} of shape {list(want)}"
        )
    if shape[0] > max_rows:
        raise PayloadTooLargeError(
            f"input {name!r}: batch of {shape[0]} rows exceeds the limit of {max_rows}"
        )
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
        try:
            arr = np.array(data, dtype=spec.dtype)
        except OverflowError:
            raise InvalidInputError(
                f"input {name!r}.data has a value out of range for {spec.datatype}"
            ) from None
        except (ValueError, TypeError):
            raise InvalidInputError(
                f"input {name!r}.data must be numbers (flat or nested row-major) for datatype {datatype}"
            ) from None
        # One reduction instead of isfinite().all(): NaN/inf propagate into the sum; if the sum itself
        # overflowed, the exact check below decides.
        if spec.is_float and not _check_numeric(arr, allow_missing):
            k = int(np.nonzero(_bad_values(arr.reshape(-1), allow_missing))[0][0])
            raise InvalidInputError(
                f"input {name!r}.data[{k}] is out of range for {spec.datatype}"
                + ("" if allow_missing else " or null (this server does not accept missing values)")
            )
    if arr.size != size:
        raise InvalidInputError(f"input {name!r}.data has {arr.size} elements but shape {shape} needs {size}")
    if arr.ndim > 1 and list(arr.shape) != shape:
        raise InvalidInputError(f"input {name!r}.data is nested as {list(arr.shape)} but shape is {shape}")
    if len(want) == 2 and len(shape) == 1:
        shape = [shape[0], 1]
    return arr.reshape(shape)


class InferRequest:
    """A decoded OIP inference request."""

    __slots__ = ("feeds", "id", "outputs", "rows")

    def __init__(self, id_: str, feeds: Feeds, rows: int, outputs: list[int] | None) -> None:
        self.id = id_
        self.feeds = feeds
        self.rows = rows
        self.outputs = outputs


def decode_infer_request(
    rt: ModelRuntime, body: Any, max_rows: int, allow_missing: bool = True
) -> InferRequest:
    if type(body) is not dict:
        raise InvalidInputError(f"inference request must be a JSON object, got {_describe(body)}")
    req_id = body.get("id")
    if req_id is None:
        req_id = f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
    elif type(req_id) is not str:
        raise InvalidInputError(f"'id' must be a string, got {_describe(req_id)}")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInputError("'parameters' must be an object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    given: dict[str, Any] = {}
    for k, item in enumerate(inputs):
        if type(item) is not dict:
            raise InvalidInputError(f"inputs[{k}] must be an object, got {_describe(item)}")
        name = item.get("name")
        if type(name) is not str:
            raise InvalidInputError(f"inputs[{k}].name must be a string")
        if name in given:
            raise InvalidInputError(f"input {name!r} is given twice")
        given[name] = item
    feeds = _decode_inputs(rt, given, max_rows, allow_missing)
    rows = -1
    for name, arr in feeds.items():
        if rows == -1:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise InvalidInputError(f"input {name!r} has {arr.shape[0]} rows but other inputs have {rows}")
    if rows == 0:
        raise InvalidInputError("inputs have 0 rows; send at least one")
    outputs: list[int] | None = None
    req_outputs = body.get("outputs")
    if req_outputs is not None:
        if not isinstance(req_outputs, list):
            raise InvalidInputError("'outputs' must be a list")
        outputs = []
        for k, o in enumerate(req_outputs):
            if type(o) is not dict or type(o.get("name")) is not str:
                raise InvalidInputError(f"outputs[{k}] must be an object with a string 'name'")
            try:
                outputs.append(rt.output_names.index(o["name"]))
            except ValueError:
                raise InvalidInputError(
                    f"outputs[{k}]: unknown output {o['name']!r}; the model's outputs are {rt.output_names}"
                ) from None
            p = o.get("parameters")
            if isinstance(p, dict) and p.get("binary_data"):
                raise InvalidInputError(f"outputs[{k}]: the binary tensor data extension is not supported")
    return InferRequest(req_id, feeds, rows, outputs)


def _decode_inputs(rt: ModelRuntime, given: dict[str, Any], max_rows: int, allow_missing: bool) -> Feeds:
    if len(given) == len(rt.inputs):
        try:
            return {
                spec.name: _tensor(given[spec.name], spec, spec.name, max_rows, allow_missing)
                for spec in rt.inputs
            }
        except KeyError:
            pass
    names = set(given)
    if rt.layout == "packed" and names == set(rt.feature_names):
        # Convenience: one [N] or [N, 1] tensor per feature, packed into the model's [N, F] input.
        spec = rt.inputs[0]
        col_spec = TensorSpec.of(spec.name, spec.datatype, (-1, 1), spec.dtype)
        cols = [_tensor(given[f], col_spec, f, max_rows, allow_missing) for f in rt.feature_names]
        rows = {c.shape[0] for c in cols}
        if len(rows) != 1:
            raise InvalidInputError("feature inputs have different numbers of rows")
        return {spec.name: np.concatenate(cols, axis=1)}
    unknown = sorted(names - set(rt.input_names))
    if unknown:
        raise InvalidInputError(f"unknown input {unknown[0]!r}; the model's inputs are {rt.input_names}")
    missing = sorted(set(rt.input_names) - names)
    raise InvalidInputError(f"missing input {missing[0]!r}; the model's inputs are {rt.input_names}")


def _datatype_of(arr: np.ndarray) -> str:
    kind = arr.dtype
    if kind == np.object_ or kind.kind in ("U", "S"):
        return "BYTES"
    for name, dt in OIP_DTYPES.items():
        if dt is not np.object_ and kind == dt:
            return name
    return "FP64"


def encode_infer_response(rt: ModelRuntime, req: InferRequest, outputs: Outputs) -> dict[str, Any]:
    chosen = range(len(outputs)) if req.outputs is None else req.outputs
    out = []
    for i in chosen:
        arr = outputs[i]
        datatype = rt.outputs[i].datatype if i < len(rt.outputs) else _datatype_of(arr)
        if datatype == "BYTES":
            data: Any = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()]
        else:
            data = np.ascontiguousarray(arr).reshape(-1)
        out.append({"name": rt.output_names[i], "datatype": datatype, "shape": list(arr.shape), "data": data})
    return {"model_name": rt.name, "model_version": rt.version, "id": req.id, "outputs": out}

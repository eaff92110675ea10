"""Column access and the vectorised counting kernels.

Input tables may be a mapping of column name to a 1-D array-like (numpy arrays, lists), a pandas
DataFrame or a pyarrow Table/RecordBatch. pandas and pyarrow are never imported here: their
objects are recognised by the module their type comes from and used through their public methods
(``to_numpy``, ``value_counts``), so the core depends on numpy only.
"""

from __future__ import annotations

import decimal
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kubeloop.drift.errors import DriftInputError, MissingFeatureError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Above this many edges a binary search (searchsorted + bincount) beats one comparison pass per edge.
_MAX_EDGES_FOR_COMPARISON_PASSES = 24


def _origin(obj: object) -> str:
    """Top-level package of an object's type ("pandas", "pyarrow", "numpy", "builtins", ...)."""
    return type(obj).__module__.partition(".")[0]


class Table:
    """Uniform, read-only access to the columns of a supported table-like object."""

    def __init__(self, data: object) -> None:
        origin = _origin(data)
        self._getter: Callable[[str], object]
        if origin == "pandas" and hasattr(data, "columns"):
            frame: Any = data
            labels = {str(c): c for c in frame.columns}
            _refuse_duplicates([str(c) for c in frame.columns])
            self.names: tuple[str, ...] = tuple(labels)
            self._getter = lambda name: frame[labels[name]]
        elif origin == "pyarrow" and hasattr(data, "column_names"):
            arrow: Any = data
            names = [str(c) for c in arrow.column_names]
            _refuse_duplicates(names)
            self.names = tuple(names)
            self._getter = lambda name: arrow.column(name)
        elif isinstance(data, Mapping):
            mapping: Mapping[Any, object] = data
            for key in mapping:
                if not isinstance(key, str):
                    raise TypeError(f"column names must be strings, got {key!r} ({type(key).__name__})")
            self.names = tuple(mapping)
            self._getter = mapping.__getitem__
        else:
            raise TypeError(
                "expected a mapping of column name to 1-D array, a pandas DataFrame or a pyarrow "
                f"Table, got {type(data).__name__}"
            )
        self._present = frozenset(self.names)

    def require(self, features: Sequence[str], where: str = "the current data") -> None:
        missing = [f for f in features if f not in self._present]
        if missing:
            raise MissingFeatureError(missing, where)

    def get(self, name: str) -> object:
        return self._getter(name)


def _refuse_duplicates(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DriftInputError(name, "the table has more than one column with this name")
        seen.add(name)


def _length(name: str, column: object) -> int:
    """Number of rows of a column; refuses scalars and multi-dimensional arrays."""
    shape = getattr(column, "shape", None)
    if shape is not None and _origin(column) != "pyarrow":
        if len(shape) != 1:
            raise DriftInputError(name, f"expected a 1-D column, got an array of shape {tuple(shape)}")
        return int(shape[0])
    if isinstance(column, str | bytes) or not hasattr(column, "__len__"):
        raise DriftInputError(name, f"expected a 1-D column of values, got {type(column).__name__}")
    return len(column)


def check_lengths(lengths: Mapping[str, int]) -> int:
    """All columns of one table must have the same number of rows; returns it (0 if no columns)."""
    first_name, first = next(iter(lengths.items()), ("", 0))
    for name, n in lengths.items():
        if n != first:
            raise DriftInputError(name, f"has {n} rows but feature {first_name!r} has {first}")
    return first


def _is_missing_scalar(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    # pandas.NA / pandas.NaT without importing pandas
    return type(value).__name__ in ("NAType", "NaTType")


def category_key(value: object) -> str | None:
    """Canonical string form of a categorical value; ``None`` means missing.

    Strings are kept as they are; integers (and integral floats, so that ``3`` and ``3.0`` are the
    same category) become their decimal form; other floats their shortest repr; booleans
    ``"True"``/``"False"``; bytes are decoded as UTF-8; anything else its ``str()``.
    """
    if isinstance(value, str):
        return value
    if _is_missing_scalar(value):
        return None
    if isinstance(value, bool | np.bool_):
        return "True" if value else "False"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------------------------
# numeric columns


def _object_to_float(name: str, values: Sequence[object]) -> FloatArray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, float | int | decimal.Decimal | np.number) and not isinstance(v, np.complexfloating):
            out[i] = float(v)
        elif _is_missing_scalar(v):
            out[i] = np.nan
        else:
            raise DriftInputError(
                name,
                f"expected numeric values, found {type(v).__name__} {v!r} at row {i} "
                "(declare the feature categorical if it holds categories)",
            )
    return out


def _numpy_to_float(name: str, arr: npt.NDArray[Any]) -> FloatArray:
    if arr.ndim != 1:
        raise DriftInputError(name, f"expected a 1-D column, got an array of shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "f":
        return arr.astype(np.float64, copy=False)
    if kind in "iub":
        return arr.astype(np.float64)
    if kind == "O":
        return _object_to_float(name, arr.tolist())
    raise DriftInputError(
        name,
        f"expected numeric values, got dtype {arr.dtype} "
        "(declare the feature categorical if it holds categories)",
    )


def numeric_values(name: str, column: object) -> FloatArray:
    """A column as a float64 array, missing values (None, NaN, pandas NA, null) as NaN."""
    origin = _origin(column)
    col: Any = column
    if origin == "pandas":
        if getattr(col, "ndim", 1) != 1:
            raise DriftInputError(name, "expected a single column, got a DataFrame")
        if col.dtype.kind in "iufb":
            out: FloatArray = col.to_numpy(dtype=np.float64, na_value=np.nan)
            return out
        return _numpy_to_float(name, np.asarray(col.to_numpy()))
    if origin == "pyarrow":
        try:
            arr = np.asarray(col.to_numpy(zero_copy_only=False))
        except Exception as exc:  # pyarrow raises its own error types for unsupported conversions
            raise DriftInputError(name, f"cannot read column of type {col.type}: {exc}") from exc
        return _numpy_to_float(name, arr)
    if isinstance(column, np.ndarray):
        return _numpy_to_float(name, column)
    if isinstance(column, str | bytes) or not hasattr(column, "__len__"):
        raise DriftInputError(name, f"expected a 1-D column of values, got {type(column).__name__}")
    try:
        arr = np.asarray(column)
    except (ValueError, TypeError) as exc:
        raise DriftInputError(name, f"cannot convert to an array: {exc}") from exc
    if arr.dtype.kind == "O" and arr.ndim != 1:
        raise DriftInputError(name, f"expected a 1-D column, got nested values of shape {arr.shape}")
    return _numpy_to_float(name, arr)


def numeric_counts(x: FloatArray, edges: FloatArray) -> IntArray:
    """Bucket counts of ``x`` for right-closed bins between ``edges``, then a missing (NaN) bucket.

    Bucket ``i`` (``0 <= i <= len(edges)``) holds the values with ``edges[i-1] < v <= edges[i]``,
    taking ``edges[-1] = -inf`` and ``edges[len(edges)] = +inf``; the last bucket counts NaN.
    Counts are exact integers, so counts of chunks add up to the counts of the whole.
    """
    k = int(edges.shape[0])
    out = np.empty(k + 2, dtype=np.int64)
    missing = int(np.count_nonzero(np.isnan(x)))
    valid = int(x.shape[0]) - missing
    if k <= _MAX_EDGES_FOR_COMPARISON_PASSES:
        # one SIMD-friendly pass per edge: cumulative counts of v <= edge (NaN compares False)
        below = np.fromiter((np.count_nonzero(x <= e) for e in edges.tolist()), dtype=np.int64, count=k)
    else:
        # searchsorted(side="left") gives i with edges[i-1] < v <= edges[i]; NaN sorts last
        below = np.cumsum(np.bincount(np.searchsorted(edges, x, side="left"), minlength=k + 1)[:k])
    if k:
        out[0] = below[0]
        out[1:k] = np.diff(below)
        out[k] = valid - below[-1]
    else:
        out[0] = valid
    out[k + 1] = missing
    return out


# --------------------------------------------------------------------------------------------
# categorical columns


def value_counts(name: str, column: object) -> tuple[list[object], list[int]]:
    """Distinct raw values of a column and how often each occurs (hash- or sort-based, vectorised)."""
    origin = _origin(column)
    col: Any = column
    if origin == "pandas":
        if getattr(col, "ndim", 1) != 1:
            raise DriftInputError(name, "expected a single column, got a DataFrame")
        try:
            vc = col.value_counts(dropna=False, sort=False)
        except TypeError as exc:
            raise DriftInputError(name, f"values are not hashable: {exc}") from exc
        return list(vc.index.tolist()), [int(c) for c in vc.to_numpy().tolist()]
    if origin == "pyarrow":
        try:
            vc = col.value_counts()
        except Exception as exc:  # pyarrow.lib.ArrowNotImplementedError etc.
            raise DriftInputError(name, f"cannot count values of type {col.type}: {exc}") from exc
        return list(vc.field("values").to_pylist()), [int(c) for c in vc.field("counts").to_pylist()]
    arr = column if isinstance(column, np.ndarray) else None
    if arr is None:
        if isinstance(column, str | bytes) or not hasattr(column, "__len__"):
            raise DriftInputError(name, f"expected a 1-D column of values, got {type(column).__name__}")
        try:
            arr = np.asarray(column, dtype=object)
        except (ValueError, TypeError) as exc:
            raise DriftInputError(name, f"cannot convert to an array: {exc}") from exc
    if arr.ndim != 1:
        raise DriftInputError(name, f"expected a 1-D column, got an array of shape {arr.shape}")
    kind = arr.dtype.kind
    if kind in "iubfUS":
        uniq, counts = np.unique(arr, return_counts=True)  # NaNs collapse into one entry
        return list(uniq.tolist()), [int(c) for c in counts.tolist()]
    if kind == "O":
        try:
            counter = Counter(arr.tolist())
        except TypeError as exc:
            raise DriftInputError(name, f"values are not hashable: {exc}") from exc
        return list(counter), list(counter.values())
    raise DriftInputError(name, f"unsupported dtype {arr.dtype} for a categorical feature")


def categorical_counts(
    name: str, column: object, index: Mapping[str, int], sorted_categories: npt.NDArray[np.str_] | None
) -> IntArray:
    """Counts per category (in ``index`` order), then an unseen-category bucket, then missing.

    ``sorted_categories`` is either the categories as a numpy string array in ``index`` order (which
    must be sorted) -- enabling a binary-search fast path for numpy string columns -- or ``None``.
    """
    k = len(index)
    out = np.zeros(k + 2, dtype=np.int64)
    if (
        sorted_categories is not None
        and isinstance(column, np.ndarray)
        and column.dtype.kind == "U"
        and column.ndim == 1
    ):
        # fast path for numpy string arrays: binary search in the sorted category list
        n = int(column.shape[0])
        if k and n:
            pos = np.searchsorted(sorted_categories, column, side="left")
            np.minimum(pos, k - 1, out=pos)
            found = sorted_categories[pos] == column
            out[:k] = np.bincount(pos[found], minlength=k)
        out[k] = n - int(out[:k].sum())
        return out
    keys, counts = value_counts(name, column)
    for raw, count in zip(keys, counts, strict=True):
        key = category_key(raw)
        if key is None:
            out[k + 1] += count
        else:
            out[index.get(key, k)] += count
    return out


def column_length(name: str, column: object) -> int:
    return _length(name, column)

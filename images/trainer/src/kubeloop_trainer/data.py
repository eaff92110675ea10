"""Loading, checking and encoding the training table.

Every check runs before any training and raises a :class:`~kubeloop_trainer.errors.DataError`
subclass whose message names the column and the problem.

Encoding (the same one the ONNX graph applies, see :mod:`kubeloop_trainer.export`): the model
matrix is ``[numeric features (raw float32, NaN = missing) ..., one-hot blocks of the categorical
features ...]``. Imputation and scaling of the numeric part happen inside the torch model; missing
categorical values are replaced by the training mode and unseen categories encode as all zeros.
Categorical values are canonicalised with :func:`kubeloop.drift.category_key` (the drift checker
uses the same form). A missing value is an empty CSV field or a Parquet null (or ``""``); the text
spellings of a missing number (:data:`MISSING_TEXT`, ``NA``) are missing in numeric columns only,
elsewhere categories, as the server reads them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from kubeloop import csvrows
from kubeloop.contracts import FeatureSpec
from kubeloop.drift import category_key
from kubeloop.resources import DatasetSpec, Task
from kubeloop_trainer import errors

FloatArray = npt.NDArray[np.float32]
TaskName = Literal["classification", "regression"]


MODEL_OUTPUTS: dict[TaskName, tuple[str, ...]] = {
    "classification": ("probabilities", "label"),
    "regression": ("prediction",),
}
"""The ONNX graph's output names (the serving contract). Inputs are named like the features, and
inputs and outputs share one namespace, so no feature may have these names."""


def task_name(task: Task) -> TaskName:
    """The spec's task as the plain name the data and export code use."""
    return "classification" if task is Task.CLASSIFICATION else "regression"


# A non-categorical text column whose values are at least this share numbers is taken to be a
# numeric column with bad values (NonNumericValuesError) rather than a categorical one.
NUMERIC_SHARE = 0.9

FLOAT32_MAX = float(np.finfo(np.float32).max)

MISSING_TEXT = (
    "NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>", "NULL", "null", "None", "NaN", "nan", "-NaN",
    "-nan", "1.#IND", "-1.#IND", "1.#QNAN", "-1.#QNAN",
)  # fmt: skip
"""How R, Excel, databases and pandas write a missing number in a CSV (pandas' default ``na_values``,
the empty field aside). Missing in a numeric column only: in a text column each is a category
(``NA`` is Namibia), as the server reads the JSON string "NA"; there only an empty field is missing."""

_TRUE_TEXT = ("True", "TRUE", "true")
_FALSE_TEXT = ("False", "FALSE", "false")


def _format(uri: str, fmt: str, data: bytes) -> str:
    if fmt != "auto":
        return fmt
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    return "parquet" if data[:4] == b"PAR1" else "csv"


def read_table(data: bytes, uri: str, fmt: str = "auto") -> pd.DataFrame:
    """Parse CSV or Parquet bytes; raises EmptyDatasetError, DuplicateColumnsError or UnreadableDatasetError."""
    if not data.strip():
        raise errors.EmptyDatasetError(f"dataset {uri} is empty (no data)")
    kind = _format(uri, fmt, data)
    if kind == "parquet":
        import pyarrow.parquet as pq

        # The names come from the footer first: pyarrow's reader refuses repeated names itself
        # ("Multiple matches for FieldRef"), which would say UnreadableDataset instead of naming them.
        try:
            names = pq.read_schema(io.BytesIO(data)).names
        except Exception as e:
            raise errors.UnreadableDatasetError(f"dataset {uri} is not a readable Parquet file: {e}") from e
        unnamed = csvrows.unnamed_column(names)
        if unnamed is not None:
            raise errors.UnreadableDatasetError(f"dataset {uri} has a column without a name: {unnamed}")
        _check_unique(names, uri)
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:
            raise errors.UnreadableDatasetError(f"dataset {uri} is not a readable Parquet file: {e}") from e
        df = table.to_pandas()
    else:
        header: list[str] | None = None
        try:
            header = _csv_header(data)
            unnamed = csvrows.unnamed_column(header)
            if unnamed is not None:
                raise errors.UnreadableDatasetError(f"dataset {uri} is a malformed CSV: {unnamed}")
            _check_unique(header, uri)
            df = _read_csv_rows(data, uri, len(header))
        except pd.errors.EmptyDataError as e:
            raise errors.EmptyDatasetError(f"dataset {uri} has no columns") from e
        except pd.errors.ParserError as e:
            # no header: its reading failed, as where a quote opens in it and never closes
            n_fields = None if header is None else len(header)
            fault = _csv_fault(data, n_fields)
            if fault is not None:
                raise errors.UnreadableDatasetError(_fault_message(uri, fault, n_fields)) from e
            raise errors.UnreadableDatasetError(
                f"dataset {uri} is not a readable CSV file: {str(e).strip()}"
            ) from e
        except (UnicodeDecodeError, ValueError) as e:
            raise errors.UnreadableDatasetError(
                f"dataset {uri} is not a readable CSV file: {str(e).strip()}"
            ) from e
    if df.shape[1] == 0:
        raise errors.EmptyDatasetError(f"dataset {uri} has no columns")
    if df.shape[0] == 0:
        raise errors.EmptyDatasetError(f"dataset {uri} has a header but no rows")
    df.columns = [str(c) for c in df.columns]
    return df


TABLE_SUFFIXES = (".csv", ".txt", ".parquet", ".pq")
"""What a dataset prefix reads: objects with these suffixes (anything else under it is left alone)."""


def is_prefix(uri: str) -> bool:
    """A dataset URI ending in ``/`` names every CSV/Parquet object under it."""
    return uri.endswith("/")


def is_table_key(key: str) -> bool:
    return PurePosixPath(key).suffix.lower() in TABLE_SUFFIXES


def read_tables(parts: Sequence[tuple[str, bytes]], uri: str, fmt: str = "auto") -> pd.DataFrame:
    """The table of ``uri``: one object, or every object of a prefix (``parts``: their URIs and bytes,
    in key order) concatenated. The parts of a prefix must have the same columns (any order); each is
    checked as a single table is, so an error names the part."""
    if not parts:
        raise errors.DatasetNotFoundError(f"dataset prefix {uri} holds no CSV or Parquet object")
    frames = [read_table(data, part_uri, fmt) for part_uri, data in parts]
    first_uri, first = parts[0][0], frames[0]
    for (part_uri, _), df in zip(parts[1:], frames[1:], strict=True):
        if set(df.columns) != set(first.columns):
            extra = sorted(set(df.columns) - set(first.columns))
            lacking = sorted(set(first.columns) - set(df.columns))
            raise errors.UnreadableDatasetError(
                f"dataset {part_uri} does not have the columns of {first_uri} "
                f"(extra: {_names(extra) or 'none'}; missing: {_names(lacking) or 'none'}); every object "
                f"under the prefix {uri} must have the same columns"
            )
    if len(frames) == 1:
        return first
    return pd.concat([df[list(first.columns)] for df in frames], ignore_index=True)


def _csv_header(data: bytes) -> list[str]:
    """The column names ``pd.read_csv(data)`` gives, before it renames repeats (``a``, ``a.1``).

    The first record is read by the same parser with the same options, so a name is what the reader
    makes of it (the whole record however long; blank lines before it skipped; a byte-order mark
    dropped; quotes removed; surrounding whitespace kept); an empty name is ``""`` (the reader's
    ``Unnamed: <position>``, refused before it is read: :func:`kubeloop.csvrows.unnamed_column`)."""
    first = pd.read_csv(io.BytesIO(data), header=None, nrows=1, dtype=str, na_filter=False)
    return [str(v) for v in first.iloc[0].tolist()]


def _read_csv_rows(data: bytes, uri: str, n_fields: int) -> pd.DataFrame:
    """``pd.read_csv`` that refuses a row with another number of fields than the header's.

    pandas (default options) reads a first data row longer than the header by making the first column
    the index: every value moves one column left and the first column is lost. With ``index_col=False``
    it drops the extra field instead, with a ParserWarning, or with none at all when that field is empty
    (``1,2,`` under ``a,b``). A longer row later is a ParserError; a short row anywhere is padded with
    NaN, silently. So the file is scanned (:func:`_csv_fault`) only where it may be ragged: pandas
    warned, the first data row is longer than the header, or the last column holds a missing value,
    which every short row leaves there. A well-formed file with a complete last column is read at the
    cost of the plain read; the scan runs otherwise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        # index_col=False: never a data column as the index, whatever the check below decides.
        # Only the empty field is missing here: MISSING_TEXT is read as text, then made missing in the
        # columns that are numbers (_missing_numbers).
        df = pd.read_csv(io.BytesIO(data), index_col=False, keep_default_na=False, na_values=[""])
    warned = False
    for w in caught:
        if issubclass(w.category, pd.errors.ParserWarning):
            warned = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if warned or _first_row_is_long(data, n_fields) or (df.shape[1] and bool(df.iloc[:, -1].isna().any())):
        fault = _csv_fault(data, n_fields)
        if fault is not None:
            raise errors.UnreadableDatasetError(_fault_message(uri, fault, n_fields))
        if warned:
            raise errors.UnreadableDatasetError(
                f"dataset {uri} is a malformed CSV: a row has more fields than the header's {n_fields}"
            )
    return _missing_numbers(df)


def _missing_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (a CSV read with only empty fields missing) with :data:`MISSING_TEXT` made missing in the
    text columns that are numbers: at least :data:`NUMERIC_SHARE` of their other values numbers or
    booleans (the rule :func:`prepare` takes numeric columns by), or nothing but such spellings. Such a
    column becomes what pandas' default reading gives (float64, the same numbers; booleans as
    objects); any other text column keeps every value as written.

    Column-wise in Arrow (pandas' text columns are Arrow arrays): a lookup per text column; where a
    spelling is found, a cast, and where that fails the share counted over the distinct values. A
    Python pass per value cost several times the read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    spellings = pa.array(MISSING_TEXT, type=pa.large_string())
    flags = pa.array(_TRUE_TEXT + _FALSE_TEXT, type=pa.large_string())
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            continue
        try:
            text = pa.array(col, type=pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # not text (no CSV column is)
            continue
        spelled = pc.is_in(text, value_set=spellings)
        if not pc.any(spelled).as_py():
            continue
        try:  # every other value a number (an R export): correctly rounded, as pandas' reader
            # text fails on its first rows, before the whole column is copied and cast
            pc.cast(pc.filter(text.slice(0, 1000), pc.invert(spelled.slice(0, 1000))), pa.float64())
            cast = pc.cast(pc.if_else(spelled, pa.scalar(None, pa.large_string()), text), pa.float64())
            parsed: npt.NDArray[np.float64] = np.asarray(cast, dtype=np.float64)  # null: NaN
            df[name] = pd.Series(parsed, index=col.index)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        # the share counted over distinct values (most text columns repeat theirs)
        distinct = pc.value_counts(text)
        values, counts = distinct.field("values"), distinct.field("counts")
        kept = pc.and_not(pc.is_valid(values), pc.is_in(values, value_set=spellings))
        numbers = pc.and_(
            kept, pc.or_(pc.match_substring_regex(values, _NUMBER), pc.is_in(values, value_set=flags))
        )
        n_kept = pc.sum(pc.if_else(kept, counts, 0)).as_py() or 0
        if n_kept and (pc.sum(pc.if_else(numbers, counts, 0)).as_py() or 0) < NUMERIC_SHARE * n_kept:
            continue  # text: NA is a category
        df[name] = _as_numbers(col.mask(np.asarray(spelled.to_numpy(zero_copy_only=False), dtype=bool)))
    return df


# What pd.to_numeric takes for a number: it decides numeric or text only (the values come from the
# cast in _as_numbers)
_NUMBER = r"^\s*[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[iI]nf(?:inity)?|INF)\s*$"


def _as_numbers(col: pd.Series) -> pd.Series:
    """A text column of numbers (or booleans) and missing values that Arrow's cast refused, as pandas'
    default reading types it; text where some values are neither (NonNumericValuesError names them)."""
    try:  # what Arrow's cast refuses and pandas takes (" 1.5", integers past 64 bits)
        parsed = pd.to_numeric(col)
        return parsed if pd.api.types.is_numeric_dtype(parsed.dtype) else col.astype("float64")
    except (ValueError, TypeError):
        pass
    present = col.notna()
    if bool(col[present].isin(_TRUE_TEXT + _FALSE_TEXT).all()):
        out = np.where(present.to_numpy(), col.isin(_TRUE_TEXT).to_numpy().astype(object), np.nan)
        return pd.Series(out, index=col.index, dtype=object)
    return col


_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CsvFault:
    """The first record of a CSV that is not a row of the table: ``line`` is the physical line where it
    starts (1-based), ``row`` its data row (1-based; 0 is the header), ``fields`` its number of fields,
    or None where a quoted field opens there and never closes."""

    line: int
    row: int
    fields: int | None


def _csv_fault(data: bytes, n_fields: int | None) -> CsvFault | None:
    """The first record whose number of fields is not the header's ``n_fields`` (None: the header is
    unknown, and only a quote that never closes is a fault), read as pandas reads it (default options;
    :mod:`kubeloop.csvrows`): lines of only spaces and tabs are skipped, a byte-order mark is dropped,
    LF, CRLF and lone CR end a line.

    A Python scan, line by line: ~0.5 s per 50 MB of plain CSV, ~2 s where most lines hold quotes. It
    runs only where the file may be ragged (see :func:`_read_csv_rows`), so a well-formed file does not
    pay for it, and next to training it is small either way."""
    # bytes split at LF, CRLF and CR only; record 0 is the header
    for row, rec in enumerate(csvrows.table_records(_body(data).splitlines())):
        if rec.fields is None or (row and n_fields is not None and rec.fields != n_fields):
            return CsvFault(line=rec.line, row=row, fields=rec.fields)
    return None


def _first_row_is_long(data: bytes, n_fields: int) -> bool:
    """Whether the first data row has more fields than the header (read lazily: two records only)."""
    first = list(itertools.islice(csvrows.table_records(_lines(_body(data))), 2))
    return len(first) == 2 and (first[1].fields or 0) > n_fields


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)?")


def _lines(data: bytes) -> Iterator[bytes]:
    """``data.splitlines()`` one at a time."""
    pos, size = 0, len(data)
    while pos < size:
        m = _LINE.match(data, pos)
        assert m is not None  # the pattern matches at any position
        yield m.group().rstrip(b"\r\n")
        pos = m.end()


def _body(data: bytes) -> bytes:
    return data[len(_BOM) :] if data.startswith(_BOM) else data


def _fault_message(uri: str, fault: CsvFault, n_fields: int | None) -> str:
    what = (
        csvrows.unterminated_quote(fault.line, fault.row)
        if fault.fields is None or n_fields is None
        else csvrows.wrong_field_count(fault.line, fault.row, fault.fields, n_fields)
    )
    return f"dataset {uri} is a malformed CSV: {what}"


def _check_unique(names: list[str], uri: str) -> None:
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:
        raise errors.DuplicateColumnsError(f"dataset {uri} has duplicate column names: {', '.join(dups)}")


@dataclass(frozen=True)
class NumericStats:
    name: str
    median: float
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalStats:
    name: str
    categories: list[str]
    mode: str


@dataclass
class Encoder:
    """Frozen preprocessing statistics (computed on the training split only)."""

    features: list[FeatureSpec]
    numeric: list[NumericStats]
    categorical: list[CategoricalStats]

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(c.categories) for c in self.categorical)

    def encode(self, columns: dict[str, np.ndarray[Any, Any]]) -> FloatArray:
        """Model matrix from canonical columns (numeric float64 with NaN; categorical str|None)."""
        n = len(next(iter(columns.values())))
        out = np.zeros((n, self.width), dtype=np.float32)
        for j, s in enumerate(self.numeric):
            out[:, j] = columns[s.name].astype(np.float32)
        j = len(self.numeric)
        for c in self.categorical:
            values = np.array([c.mode if v is None else v for v in columns[c.name]], dtype=object)
            for k, cat in enumerate(c.categories):
                out[:, j + k] = values == cat
            j += len(c.categories)
        return out


@dataclass
class Dataset:
    """The checked, split and encoded table."""

    task: TaskName
    target: str
    encoder: Encoder
    x_train: FloatArray
    y_train: np.ndarray[Any, Any]
    x_val: FloatArray
    y_val: np.ndarray[Any, Any]
    raw_train: dict[str, np.ndarray[Any, Any]]
    raw_val: dict[str, np.ndarray[Any, Any]]
    classes: list[str] = field(default_factory=list)
    ignored_columns: dict[str, str] = field(default_factory=dict)
    """Temporal columns left out of features picked by default: name -> kind (see temporal_kind)."""
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1


def _is_missing_col(col: pd.Series) -> npt.NDArray[np.bool_]:
    return np.asarray(col.isna().to_numpy(), dtype=bool)


def _numeric_column(name: str, col: pd.Series, what: str) -> npt.NDArray[np.float64]:
    """float64 values (NaN = missing); raises NonNumericValuesError or NonFiniteValuesError naming the column."""
    values: npt.NDArray[np.float64]
    if pd.api.types.is_bool_dtype(col.dtype):
        values = np.asarray(
            col.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64
        )
    elif pd.api.types.is_numeric_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        parsed = pd.to_numeric(col, errors="coerce")
        bad = parsed.isna() & ~col.isna()
        if bool(bad.any()):
            example = col[bad].iloc[0]
            raise errors.NonNumericValuesError(
                f"{what} {name!r} has {int(bad.sum())} non-numeric value(s), e.g. {example!r}"
            )
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(values).any():
        raise errors.NonFiniteValuesError(
            f"{what} {name!r} has {int(np.isinf(values).sum())} infinite value(s)"
        )
    beyond = np.abs(values) > FLOAT32_MAX  # the model's inputs and target are float32; NaN is False
    if beyond.any():
        raise errors.NonFiniteValuesError(
            f"{what} {name!r} has {int(beyond.sum())} value(s) beyond the float32 range "
            f"(|v| > {FLOAT32_MAX:.4g}), e.g. {float(values[beyond][0]):g}"
        )
    return values


_NESTED = (list, tuple, dict, set, np.ndarray)


def _check_not_nested(name: str, col: pd.Series, what: str) -> None:
    """Refuse a column of lists, structs or maps (Parquet): pandas gives arrays and dicts, whose text
    (numpy's repr, ``['b' 'c']``) no request to the server produces, so as categories they would never
    match when serving."""
    if not pd.api.types.is_object_dtype(col.dtype):
        return
    nested = next((v for v in col.tolist() if isinstance(v, _NESTED)), None)
    if nested is not None:
        raise errors.DataError(
            f"{what} {name!r} holds nested values (lists, structs or maps, e.g. {_short(nested)}), which are "
            f"not model inputs or labels: flatten it into columns of numbers or text first"
            + (", or list dataset.features without it" if what.startswith("feature") else "")
        )


def _short(value: object) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_numeric(col: pd.Series) -> bool:
    """A text column whose non-missing values are mostly numbers."""
    present = col.dropna()
    if len(present) == 0:
        return False
    parsed = pd.to_numeric(present, errors="coerce")
    return float(parsed.notna().mean()) >= NUMERIC_SHARE


# Text that a CSV reader leaves as text but that is a point or span in time: ISO 8601 dates, and
# dates with a time of day (a space or "T", optional seconds, fraction and offset), and pandas'
# duration form ("3 days 04:05:06"): what pandas writes for dates, timestamps and timedeltas. The
# shape is not enough (a product code 1234-56-78 has it): every value must also be a real date, time
# of day and offset (see _real_times).
_CLOCK = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
_TEMPORAL_TEXT = (
    # "dates" where no value has a time of day
    ("timestamps", re.compile(rf"\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]{_CLOCK}(?:Z|[+-]\d{{2}}(?::?\d{{2}})?)?)?")),
    ("durations", re.compile(r"-?\d+ days? [+-]?\d{2}:\d{2}:\d{2}(?:\.\d+)?")),
)
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int32)


def _real_times(text: pd.Series, kind: str, pattern: re.Pattern[str]) -> npt.NDArray[np.bool_] | None:
    """Whether each value of ``text`` has a time of day, where every value matches ``pattern`` whole
    and is a real date and time (a year 1-9999, a month 1-12, a day its month has, hours 0-23, minutes
    0-59, seconds 0-60, an offset under a day); else None.

    Column-wise: one RE2 match of the shape in Arrow, then the fields read as digits at their places in
    Arrow's character buffer (ASCII, as the match proves) with numpy (~0.3 s per million values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(text, type=pa.large_string())  # pandas' str columns are Arrow arrays already
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pc.all(pc.match_substring_regex(values, f"^(?:{pattern.pattern})$")).as_py():
        return None
    _, bounds_buffer, chars_buffer = values.buffers()
    assert bounds_buffer is not None
    assert chars_buffer is not None  # every value matched: none is empty
    bounds = np.frombuffer(memoryview(bounds_buffer), dtype=np.int64)[
        values.offset : values.offset + len(values) + 1
    ]
    chars = np.frombuffer(memoryview(chars_buffer), dtype=np.uint8)
    starts, ends = bounds[:-1], bounds[1:]

    def number(at: npt.NDArray[np.int64], width: int = 2) -> npt.NDArray[np.int32]:
        out = np.zeros(len(at), dtype=np.int32)
        for k in range(width):
            out = out * 10 + (chars[at + k].astype(np.int32) - ord("0"))
        return out

    def real_clock(at: npt.NDArray[np.int64], end: npt.NDArray[np.int64]) -> bool:
        """``HH:MM[:SS[.f]]`` at ``at``, then up to ``end`` ``Z``, ``+HH``, ``+HHMM``, ``+HH:MM`` or nothing."""
        if bool((number(at) > 23).any() | (number(at + 3) > 59).any()):
            return False
        long = at[end - at > 5]
        seconds = long[chars[long + 5] == ord(":")]
        if bool((number(seconds + 6) > 60).any()):  # 60: a leap second
            return False
        for sign_at, minutes_at in ((end - 3, None), (end - 5, end - 2), (end - 6, end - 2)):
            signed = np.isin(chars[sign_at], (ord("+"), ord("-"))) & (sign_at >= at + 5)
            if bool((number(sign_at[signed] + 1) > 23).any()):
                return False
            if minutes_at is not None and bool((number(minutes_at[signed]) > 59).any()):
                return False
        return True

    if kind == "durations":  # "-1 days +23:59:59.5": the clock follows "day(s) " and its sign
        at = starts + np.asarray(pc.find_substring(values, "day").to_numpy(zero_copy_only=False)) + 3
        at += (chars[at] == ord("s")) + 1
        at += np.isin(chars[at], (ord("+"), ord("-")))
        return np.ones(len(values), dtype=bool) if real_clock(at, at + 8) else None
    year, month, day = number(starts, 4), number(starts + 5), number(starts + 8)
    if bool((year < 1).any() | (month < 1).any() | (month > 12).any() | (day < 1).any()):
        return None
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    if bool((day > _MONTH_DAYS[month] + (leap & (month == 2))).any()):
        return None
    timed: npt.NDArray[np.bool_] = ends - starts > 10
    if timed.any() and not real_clock(starts[timed] + 11, ends[timed]):
        return None
    return timed


def _object_kind(value: object) -> str | None:
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return "timestamps"
    if isinstance(value, dt.date):
        return "dates"
    if isinstance(value, dt.timedelta):
        return "durations"
    return None


def temporal_kind(col: pd.Series) -> str | None:
    """``"timestamps"``, ``"dates"`` or ``"durations"`` for a column of points or spans in time, typed
    (Parquet timestamp, date, duration) or as text in which every value is one (CSV); else None.

    Such a column is no model input: as a number it would be a count since the epoch in a unit the
    reader chose, rounded in float32 (a nanosecond timestamp to ~2 minutes); as categories, one per
    distinct value, none of them seen again when serving. A time of day (Parquet time64, "12:30")
    is not one: it repeats, so its values make categories."""
    if pd.api.types.is_datetime64_any_dtype(col.dtype) or isinstance(col.dtype, pd.PeriodDtype):
        return "timestamps"
    if pd.api.types.is_timedelta64_dtype(col.dtype):
        return "durations"
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        return None
    present = col.dropna()
    present = present[~present.isin(MISSING_TEXT)]  # a date column from R writes NA where it has none
    if len(present) == 0:
        return None
    first = present.iloc[0]
    if _object_kind(first) is not None:
        # Parquet date32 (Python dates), or the parts of a prefix concatenated: dates in one part and
        # timestamps or text in another make one object column mixing date, Timestamp and str
        values = present.tolist()
        kinds = {_object_kind(v) for v in values if not isinstance(v, str)}
        texts = [v for v in values if isinstance(v, str)]
        if texts:
            kinds.add(temporal_kind(pd.Series(texts, dtype=str)))
        if kinds == {"dates", "timestamps"}:  # a date is a timestamp at midnight (as pandas writes it)
            return "timestamps"
        return kinds.pop() if len(kinds) == 1 else None
    if not isinstance(first, str):
        return None
    # text; or text first, then dates or timestamps of other parts, which astype(str) writes as ISO text
    for kind, pattern in _TEMPORAL_TEXT:
        if not pattern.fullmatch(first):  # most text columns: decided by their first value
            continue
        timed = _real_times(present.astype(str), kind, pattern)
        if timed is None:
            return None
        return "dates" if kind == "timestamps" and not bool(timed.any()) else kind
    return None


_CONVERT = "convert it to numbers first (e.g. hour of day, day of week, days since an event)"


def _categorical_column(col: pd.Series) -> npt.NDArray[np.object_]:
    """Canonical category strings; None for missing (the empty string counts as missing).

    A float32 (or float16) value is taken as its shortest text (``0.1``), not as the float64 it widens
    to (``0.10000000149011612``): requests to the server carry the number as written."""
    if col.dtype in (np.float32, np.float16):
        return np.array([category_key(float(str(v))) or None for v in col.to_numpy()], dtype=object)
    return np.array([category_key(v) or None for v in col.tolist()], dtype=object)


def prepare(
    df: pd.DataFrame,
    spec: DatasetSpec,
    task: TaskName,
    seed: int,
    *,
    min_rows: int = 10,
    max_classes: int = 1000,
    max_categories: int = 10000,
) -> Dataset:
    """Check the table, split it (stratified for classification) and fit the encoder."""
    target = spec.target
    if target not in df.columns:
        raise errors.MissingTargetColumnError(
            f"target column {target!r} is not in the dataset (columns: {_names(df.columns)})"
        )
    names = list(spec.features) if spec.features is not None else [c for c in df.columns if c != target]
    unknown = [n for n in names if n not in df.columns]
    if unknown:
        raise errors.UnknownFeatureError(
            f"feature(s) {', '.join(map(repr, unknown))} not in the dataset (columns: {_names(df.columns)})"
        )
    declared = list(spec.categorical_features or [])
    bad_decl = [n for n in declared if n not in names]
    if bad_decl:
        raise errors.UnknownFeatureError(
            f"categorical feature(s) {', '.join(map(repr, bad_decl))} are not among the features"
        )
    # Temporal columns: declared categorical, their values are categories (on purpose); listed, they
    # are refused; picked by default ("every column but the target"), they are left out and reported.
    ignored: dict[str, str] = {}
    for name in names:
        kind = None if name in declared else temporal_kind(df[name])
        if kind is None:
            continue
        if spec.features is not None:
            raise errors.TemporalColumnError(
                f"feature column {name!r} holds {kind}, which are not model inputs: drop it from "
                f"dataset.features, or {_CONVERT}, or list it in dataset.categoricalFeatures to take "
                "its values as categories"
            )
        ignored[name] = kind
    names = [n for n in names if n not in ignored]
    if not names and ignored:
        raise errors.TemporalColumnError(
            f"the dataset has no feature columns besides the target but {', '.join(map(repr, ignored))} "
            f"({', '.join(ignored.values())}), which are not model inputs: {_CONVERT}, or list them "
            "in dataset.categoricalFeatures to take their values as categories"
        )
    if not names:
        raise errors.EmptyDatasetError("the dataset has no feature columns besides the target")
    clash = [n for n in names if n in MODEL_OUTPUTS[task]]
    if clash:
        raise errors.DataError(
            f"feature column {clash[0]!r} is named like an output of the {task} model "
            f"({', '.join(MODEL_OUTPUTS[task])}): rename the column or leave it out of dataset.features"
        )
    if len(df) < min_rows:
        raise errors.TooFewRowsError(f"the dataset has {len(df)} row(s); at least {min_rows} are needed")

    y_col = df[target]
    _check_not_nested(target, y_col, "target column")
    n_missing = int(y_col.isna().sum())
    if task == "classification":  # "" is the missing category, not a class (as for the features)
        n_missing = sum(k is None for k in _categorical_column(y_col).tolist())
    if n_missing:
        raise errors.MissingTargetValuesError(f"target column {target!r} has {n_missing} missing value(s)")

    # --- features ------------------------------------------------------------------------------
    raw: dict[str, np.ndarray[Any, Any]] = {}
    specs: list[FeatureSpec] = []
    for name in names:
        col = df[name]
        _check_not_nested(name, col, "feature column")
        if bool(col.isna().all()):
            raise errors.AllMissingColumnError(f"feature column {name!r} has no values (all missing)")
        numeric_dtype = pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype)
        if name in declared or (not numeric_dtype and not _looks_numeric(col)):
            raw[name] = _categorical_column(col)
            distinct = len(set(raw[name].tolist()) - {None})
            if distinct > max_categories:
                raise errors.TooManyCategoriesError(
                    f"categorical feature column {name!r} has {distinct} distinct values; at most "
                    f"{max_categories} categories are allowed, one model input each (an identifier? "
                    "leave it out of dataset.features)"
                )
            specs.append(FeatureSpec(name=name, type="categorical"))
        else:
            raw[name] = _numeric_column(name, col, "feature column")
            specs.append(FeatureSpec(name=name, type="numeric"))

    # --- target --------------------------------------------------------------------------------
    classes: list[str] = []
    if task == "classification":
        keys = _categorical_column(y_col)
        classes = sorted(set(keys.tolist()), key=_class_sort_key)
        if len(classes) < 2:
            raise errors.SingleClassError(
                f"target column {target!r} has a single class ({classes[0]!r}); classification needs two or more"
            )
        if len(classes) > max_classes:
            raise errors.TooManyClassesError(
                f"target column {target!r} has {len(classes)} distinct values; at most {max_classes} "
                "classes are allowed (is this a regression target?)"
            )
        index = {c: i for i, c in enumerate(classes)}
        y: np.ndarray[Any, Any] = np.array([index[k] for k in keys], dtype=np.int64)
    else:
        kind = temporal_kind(y_col)
        if kind is not None:
            raise errors.TemporalColumnError(
                f"target column {target!r} holds {kind}; a regression target must be numbers: "
                "convert it first (e.g. to seconds or days)"
            )
        yv = _numeric_column(target, y_col, "target column")
        y = yv.astype(np.float32)
        if float(y.min()) == float(y.max()):  # as the model sees it: float32 (1 and 1 + 1e-12 are one)
            raise errors.ConstantTargetError(
                f"target column {target!r} is constant ({float(y[0]):g} in float32); nothing to learn"
            )

    # --- split ---------------------------------------------------------------------------------
    train_idx, val_idx = split_indices(
        y if task == "classification" else None, len(df), spec.validation_split, seed
    )
    if task == "classification" and len(val_idx) == 0:  # a class of one row stays in training
        raise errors.TooFewRowsError(
            f"every class of target column {target!r} has a single row, so none can be held out for "
            "validation (the split is stratified by class); each class needs two rows or more"
        )
    if len(train_idx) < 2 or len(val_idx) < 1:
        raise errors.TooFewRowsError(
            f"the dataset has {len(df)} row(s): too few for a validation split of {spec.validation_split}"
        )
    raw_train = {k: v[train_idx] for k, v in raw.items()}
    raw_val = {k: v[val_idx] for k, v in raw.items()}

    # --- encoder (training rows only) ----------------------------------------------------------
    nums: list[NumericStats] = []
    cats: list[CategoricalStats] = []
    for f in specs:
        v = raw_train[f.name]
        if f.type == "numeric":
            present = v[~np.isnan(v)]
            median = float(np.median(present)) if len(present) else 0.0
            filled = np.where(np.isnan(v), median, v).astype(np.float32)
            mean, std = _scale(filled)
            nums.append(NumericStats(f.name, median, mean, std))
        else:
            present_keys = [k for k in v.tolist() if k is not None]
            uniq, counts = np.unique(np.array(present_keys, dtype=object).astype(str), return_counts=True)
            if len(uniq) == 0:
                uniq, counts = np.array([""]), np.array([1])
            mode = str(uniq[int(np.argmax(counts))])
            cats.append(CategoricalStats(f.name, [str(u) for u in uniq], mode))
    encoder = Encoder(features=specs, numeric=nums, categorical=cats)

    ds = Dataset(
        task=task,
        target=target,
        encoder=encoder,
        x_train=encoder.encode(raw_train),
        y_train=y[train_idx],
        x_val=encoder.encode(raw_val),
        y_val=y[val_idx],
        raw_train=raw_train,
        raw_val=raw_val,
        classes=classes,
        ignored_columns=ignored,
    )
    if task == "regression":
        ds.target_mean, ds.target_std = _scale(ds.y_train)
    return ds


def _scale(values: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Mean and standard deviation to standardise float32 ``values`` with (std 1 when constant).

    In float64: float32 sums of squares overflow from |v| ~ 1e19 (std inf: the column scaled to
    zeros). Constant means equal as the model sees them (float32), not std below an absolute floor,
    which took columns of small values (~1e-13) for constants and left them unscaled (~zeros)."""
    x = values.astype(np.float64)
    if x.size == 0 or float(x.max()) == float(x.min()):
        return (float(x[0]) if x.size else 0.0), 1.0
    return float(x.mean()), float(x.std())


def data_fingerprint(ds: Dataset) -> str:
    """Identity of what a model trained on ``ds`` is shaped and scaled by (features, encoding, scaling
    statistics, classes, target scaling): a checkpoint resumes only on the same."""
    doc = repr((ds.task, ds.target, ds.encoder, ds.classes, ds.target_mean, ds.target_std))
    return hashlib.sha256(doc.encode()).hexdigest()


def split_indices(
    y: np.ndarray[Any, Any] | None, n: int, fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Deterministic train/validation split; stratified by class when ``y`` is given."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    train: list[npt.NDArray[np.int64]] = []
    val: list[npt.NDArray[np.int64]] = []
    for g in groups:
        perm = g[rng.permutation(len(g))]
        k = round(len(g) * fraction)
        k = min(max(k, 1), len(g) - 1) if len(g) >= 2 else 0
        val.append(perm[:k])
        train.append(perm[k:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def _class_sort_key(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 < 10), then text labels alphabetically. "NaN" is text: it
    compares with nothing, and the order would follow the set's, i.e. the process's hash seed."""
    try:
        value = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (1, 0.0, label) if math.isnan(value) else (0, value, label)


def _names(cols: Any) -> str:
    names = [str(c) for c in cols]
    shown = ", ".join(names[:12])
    return shown + (f", … ({len(names)} in all)" if len(names) > 12 else "")

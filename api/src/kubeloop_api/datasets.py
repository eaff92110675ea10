"""Validation of uploaded training tables (CSV or Parquet), on a local spooled copy, before anything is
written to object storage. Pure functions over a file: no network, no storage.

A table is accepted when it is non-empty, parses (CSV: UTF-8, comma-separated, a header naming every
column, one field per column in every row; Parquet: a readable file with columns), has at least
``min_rows`` data rows and two columns, at most ``max_empty_ratio`` empty cells, and contains the target
column when one is named. The report lists every column with its type and number of empty cells. Every
refusal is a 422 whose field says what is wrong (``file``, ``header``, ``rows``, ``columns``, ``cells``,
``target``).

Blank lines (empty, or only spaces and tabs) are no rows, as for the trainer's reader; the rules both
share live in :mod:`kubeloop.csvrows`. A CSV is read whole, every row, not a sample (column types are
inferred from the first block and widened when a later value does not fit). The trainer checks the rows
again when it reads the object, so a file written to the store some other way is refused there the
same way.
"""

from __future__ import annotations

import codecs
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from kubeloop.csvrows import (
    CsvRecord,
    is_blank,
    table_records,
    unnamed_column,
    unterminated_quote,
    wrong_field_count,
)
from kubeloop_api.errors import InvalidError

if TYPE_CHECKING:
    from pyarrow.csv import InvalidRow

Format = Literal["csv", "parquet"]
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.(csv|parquet)$"
_CSV_BLOCK: Final = 8 * 1024 * 1024
_SNIFF: Final = 64 * 1024
_MAX_WIDENED: Final = 8
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class ColumnReport:
    name: str
    type: str
    empty_cells: int = 0


@dataclass
class DatasetReport:
    format: Format
    rows: int
    columns: list[ColumnReport]
    size_bytes: int
    target: str | None = None
    empty_cell_ratio: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "rows": self.rows,
            "sizeBytes": self.size_bytes,
            "target": self.target,
            "emptyCellRatio": round(self.empty_cell_ratio, 6),
            "columns": [{"name": c.name, "type": c.type, "emptyCells": c.empty_cells} for c in self.columns],
        }


@dataclass(frozen=True)
class Limits:
    min_rows: int = 2
    max_empty_ratio: float = 0.5
    max_columns: int = 4096


def format_of(name: str) -> Format:
    return "parquet" if name.lower().endswith(".parquet") else "csv"


def _type_name(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_null(t):
        return "empty"
    return str(t)


def _refuse(field_name: str, message: str) -> InvalidError:
    return InvalidError(message, field=field_name)


def _check_text(path: Path) -> None:
    """UTF-8 text without NUL bytes (binary junk named .csv is refused here)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise _refuse(
                    "file", f"not a text file (NUL byte at offset {offset + nul}); expected UTF-8 CSV"
                )
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise _refuse(
                    "file", f"not UTF-8 text (invalid byte at offset {offset + e.start}); expected UTF-8 CSV"
                ) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _refuse("file", "not UTF-8 text (truncated character at the end)") from None


def _quote_count_is_odd(path: Path) -> bool:
    odd = False
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            odd ^= chunk.count(b'"') % 2 == 1
    return odd


def _csv_records(path: Path) -> Iterator[CsvRecord]:
    """The header and data rows of the file (:func:`kubeloop.csvrows.table_records`): empty lines and
    lines of only spaces or tabs are none, as for the trainer's reader (pandas); Arrow is told to skip
    them (:func:`_open_csv`)."""
    # text mode with newline="": lines end at LF, CRLF or a lone CR, as Arrow's do; the file is UTF-8
    # (checked before)
    with path.open("r", encoding="utf-8", newline="") as f:
        yield from table_records(raw.rstrip("\r\n").encode() for raw in f)


def _header_line(path: Path) -> int:
    """The physical line (1-based) where the header starts: blank lines before it are no header."""
    first = next(_csv_records(path), None)
    return 1 if first is None else first.line


def _unterminated_quote(path: Path) -> tuple[int, int] | None:
    """``(line, record)`` where a quoted field opens and never closes (record 0 is the header)."""
    for record, rec in enumerate(_csv_records(path)):
        if rec.fields is None:
            return rec.line, record
    return None


_RAGGED: Final = re.compile(r"Expected \d+ columns, got \d+")


def _ragged_row(path: Path, arrow_message: str) -> InvalidError | None:
    """The refusal naming the first row whose number of fields is not the header's, where Arrow's error
    says there is one (its message names the row's text, not its line). Arrow reads every row of the
    file, not a sample, and refuses any such row; the trainer refuses the same rows (pandas, its reader,
    would take the first column for the index when a row is longer, and pad a short row with NaN)."""
    if not _RAGGED.search(arrow_message):
        return None
    header = 0
    for record, rec in enumerate(_csv_records(path)):
        if rec.fields is None:
            return None
        if record == 0:
            header = rec.fields
        elif rec.fields != header:
            return _refuse(
                "file", f"malformed CSV: {wrong_field_count(rec.line, record, rec.fields, header)}"
            )
    return None


def _check_quotes(path: Path) -> None:
    """An unterminated quoted field runs to the end of the file: Arrow reads it as one long value (rows
    silently lost) or, in the header, as an empty file. The pass costs seconds on a large file full of
    quotes, so only a file with an odd number of them is read through: an even count leaves a field open
    only when a stray literal quote sits inside an unquoted field as well (``a"b,"c``), which is not
    caught here."""
    if not _quote_count_is_odd(path):
        return
    found = _unterminated_quote(path)
    if found is None:
        return
    line, record = found
    raise _refuse("file", f"malformed CSV: {unterminated_quote(line, record)}")


def _check_header(names: list[str], first_line: str) -> None:
    if len(names) == 1:
        for sep, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in first_line:
                raise _refuse(
                    "file", f"looks delimited by {label}, not commas; upload comma-separated values"
                )
    unnamed = unnamed_column(names)
    if unnamed is not None:
        raise _refuse("header", unnamed)
    if all(_NUMBER.match(n.strip()) for n in names):
        raise _refuse("header", "the first row holds only numbers; it must name the columns (no header row?)")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise _refuse("header", f"duplicate column name {n!r}")
        seen.add(n)


def _conversion_column(message: str, names: list[str]) -> str:
    m = re.search(r"column #(\d+)", message)
    if m and int(m[1]) < len(names):
        return f"column {names[int(m[1])]!r}: "
    return ""


def _scan_csv(path: Path) -> tuple[list[ColumnReport], int]:
    import pyarrow as pa

    header_line = _header_line(path)
    with path.open("rb") as f:
        head = f.read(_SNIFF).splitlines()
    first = head[header_line - 1].decode("utf-8", errors="replace") if len(head) >= header_line else ""
    # Types are inferred from the first block; a column whose later values do not fit (integers that
    # turn into decimals or words) is widened (integer -> float -> string) and the file read again.
    column_types: dict[str, Any] = {}
    for passes in itertools.count(1):
        reader = _open_csv(path, column_types, header_line - 1)
        names = [str(n) for n in reader.schema.names]
        if not column_types:
            _check_header(names, first)
        cols = [ColumnReport(n, _type_name(t)) for n, t in zip(names, reader.schema.types, strict=True)]
        rows = 0
        try:
            for batch in reader:
                rows += batch.num_rows
                for c, arr in zip(cols, batch.columns, strict=True):
                    c.empty_cells += arr.null_count
        except pa.ArrowInvalid as e:
            msg = str(e).splitlines()[0][:300]
            m = re.search(r"column #(\d+): CSV conversion error", msg)
            if m and int(m[1]) < len(names):
                t = reader.schema.types[int(m[1])]
                if not pa.types.is_string(t):
                    column_types[names[int(m[1])]] = pa.float64() if pa.types.is_integer(t) else pa.string()
                    if passes > _MAX_WIDENED:  # each widening is a pass over the file: bounded
                        column_types = {n: pa.string() for n in names}
                    continue
            ragged = _ragged_row(path, msg)
            if ragged is not None:
                raise ragged from None
            where = _conversion_column(msg, names)
            raise _refuse("file", f"not a consistent CSV table: {where}{msg}") from None
        return cols, rows
    raise AssertionError("unreachable")


def _skip_blank(row: InvalidRow) -> Literal["skip", "error"]:
    """Arrow's invalid-row handler: a line of only spaces or tabs (a row of one field to Arrow) is
    skipped, as pandas skips it; any other row of the wrong width is an error."""
    return "skip" if is_blank(row.text) else "error"


def _open_csv(path: Path, column_types: dict[str, Any], blank_lines: int = 0) -> Any:
    """Arrow's streaming reader, ``blank_lines`` lines of only spaces or tabs (or nothing) skipped before
    the header (Arrow would take the first for it)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK, skip_rows=blank_lines),
            # newlines_in_values: a block must not end at a line break inside a quoted value (Arrow's
            # default chunker cuts at any line break, and the next block reads out of sync)
            parse_options=pacsv.ParseOptions(
                delimiter=",", newlines_in_values=True, invalid_row_handler=_skip_blank
            ),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types),
        )
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "Empty CSV file" in msg:
            raise _refuse("file", "empty: no header and no rows") from None
        ragged = _ragged_row(path, msg)
        if ragged is not None:
            raise ragged from None
        raise _refuse("file", f"not a valid CSV file: {msg.splitlines()[0][:300]}") from None


def _scan_parquet(path: Path) -> tuple[list[ColumnReport], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise _refuse("file", "not a Parquet file (no PAR1 magic at its start and end)")
    try:
        pf = pq.ParquetFile(str(path))
        schema = pf.schema_arrow
        names = [str(n) for n in schema.names]
        if not names:
            raise _refuse("columns", "the Parquet file has no columns")
        unnamed = unnamed_column(names)
        if unnamed is not None:
            raise _refuse("header", unnamed)
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise _refuse("header", f"duplicate column name {dup!r}")
        cols = [ColumnReport(n, _type_name(t)) for n, t in zip(names, schema.types, strict=True)]
        rows = 0
        for batch in pf.iter_batches(batch_size=65536):
            rows += batch.num_rows
            for c, arr in zip(cols, batch.columns, strict=True):
                c.empty_cells += arr.null_count
                if c.type == "string":
                    c.empty_cells += _blank_strings(arr)
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, InvalidError):
            raise
        raise _refuse("file", f"not a readable Parquet file: {str(e).splitlines()[0][:300]}") from None
    return cols, rows


def _blank_strings(arr: Any) -> int:
    """Cells of a string column that hold only whitespace (Parquet keeps them as values, CSV as nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        trimmed: Any = pc.utf8_trim_whitespace(arr.cast("string"))
        blank: Any = pc.equal(trimmed, pa.scalar(""))
        return int(pc.sum(blank).as_py() or 0)
    except Exception:  # an exotic string type: count nulls only
        return 0


def validate_file(path: Path, name: str, target: str | None, limits: Limits) -> DatasetReport:
    """Check the spooled upload at ``path``; returns the report or raises :class:`InvalidError`."""
    size = path.stat().st_size
    if size == 0:
        raise _refuse("file", "empty: 0 bytes")
    fmt = format_of(name)
    if fmt == "csv":
        with path.open("rb") as f:
            if f.read(4) == b"PAR1":
                raise _refuse("file", "is a Parquet file; name it <name>.parquet")
        _check_text(path)
        _check_quotes(path)
        cols, rows = _scan_csv(path)
    else:
        cols, rows = _scan_parquet(path)
    if len(cols) > limits.max_columns:
        raise _refuse("columns", f"{len(cols)} columns; at most {limits.max_columns} are accepted")
    if len(cols) < 2:
        raise _refuse("columns", f"{len(cols)} column; at least 2 are needed (features and a target)")
    if rows < limits.min_rows:
        what = "only a header" if rows == 0 and fmt == "csv" else f"{rows} data row{'s' if rows != 1 else ''}"
        raise _refuse("rows", f"{what}; at least {limits.min_rows} data rows are needed")
    cells = rows * len(cols)
    empty = sum(c.empty_cells for c in cols)
    ratio = empty / cells if cells else 1.0
    if ratio > limits.max_empty_ratio:
        raise _refuse(
            "cells", f"{ratio:.0%} of the cells are empty; at most {limits.max_empty_ratio:.0%} may be"
        )
    if target is not None:
        by_name = {c.name: c for c in cols}
        if target not in by_name:
            shown = ", ".join(c.name for c in cols[:20]) + (", …" if len(cols) > 20 else "")
            raise _refuse("target", f"column {target!r} is not in the file (columns: {shown})")
        if by_name[target].empty_cells >= rows:
            raise _refuse("target", f"column {target!r} has no values")
    return DatasetReport(
        format=fmt, rows=rows, columns=cols, size_bytes=size, target=target, empty_cell_ratio=ratio
    )

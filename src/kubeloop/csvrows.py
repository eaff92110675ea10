"""The records of a CSV file as its readers split them, to name the line of a malformed one.

pandas (the trainer's reader) and Arrow (the REST facade's upload check) read quotes the same way: a
quote is special only at the start of a field, ``""`` inside a quoted field is a quote, anything after
the closing quote up to the next comma belongs to the field, and a quoted field may span lines. Neither
says on which line a row has the wrong number of fields or a quote never closes; this module does, for
both, with one wording.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CsvRecord:
    """A record: ``line`` is the physical line where it starts (1-based); ``fields`` its number of
    fields, or None where a quoted field opens on ``line`` and never closes (always the last record);
    ``blank`` when the line holds only spaces or tabs (pandas skips such a line, Arrow reads it as a
    record; see :func:`table_records`). Empty lines are never records."""

    line: int
    fields: int | None
    blank: bool = False


def csv_records(lines: Iterable[bytes]) -> Iterator[CsvRecord]:
    """The records of a CSV given its physical lines, line ends removed (``bytes.splitlines()``)."""
    in_quote = False
    opened = start = fields = 0
    for line_no, line in enumerate(lines, 1):
        if not in_quote:
            start, fields = line_no, 1
            if b'"' not in line:
                if line:
                    yield CsvRecord(line_no, fields + line.count(b","), is_blank(line))
                continue
        pos = 0
        while True:
            if in_quote:
                q = line.find(b'"', pos)
                if q < 0:
                    break  # the quoted field goes on over the line end
                if line.startswith(b'"', q + 1):
                    pos = q + 2
                    continue
                in_quote, pos = False, q + 1
            elif line.startswith(b'"', pos):
                in_quote, opened, pos = True, line_no, pos + 1
                continue
            comma = line.find(b",", pos)
            if comma < 0:
                break
            fields, pos = fields + 1, comma + 1
        if not in_quote:
            yield CsvRecord(start, fields)
    if in_quote:
        yield CsvRecord(opened, None)


def is_blank(line: bytes | str) -> bool:
    """A line of only spaces and tabs (or nothing). pandas skips it as it skips an empty line, so it is
    no row of the table: the trainer reads the file so, and the upload check (Arrow, which would read
    it as a row of one field) skips it to agree."""
    return not (line.strip(b" \t\r") if isinstance(line, bytes) else line.strip(" \t\r"))


def table_records(lines: Iterable[bytes]) -> Iterator[CsvRecord]:
    """The header and the data rows, in order (:func:`csv_records` without blank lines): the record
    numbered 0 is the header, ``n`` data row ``n``, for both readers."""
    return (rec for rec in csv_records(lines) if not rec.blank)


def unnamed_column(names: Sequence[str]) -> str | None:
    """The refusal of a header where a column has no name (empty, or only whitespace), naming the first
    (1-based); None when every column has one. pandas would name it ``Unnamed: <position>``, a name
    nobody chose, and a trailing comma on every line would add such a column of missing values."""
    for i, name in enumerate(names, 1):
        if not name.strip():
            return f"column {i} has no name; every column needs one"
    return None


def where(line: int, row: int) -> str:
    """``line 7 (data row 5)``; row 0 is the header."""
    return f"line {line} (the header)" if row == 0 else f"line {line} (data row {row})"


def unterminated_quote(line: int, row: int) -> str:
    return (
        f"unterminated quoted field starting at {where(line, row)}; a field that opens with a quote must "
        'close with one (write "" for a quote inside it)'
    )


def wrong_field_count(line: int, row: int, fields: int, header: int) -> str:
    return (
        f"{where(line, row)} has {fields} field{'s' if fields != 1 else ''} but the header has {header}; "
        "every row needs one value per column (an empty value is written as nothing between two commas)"
    )

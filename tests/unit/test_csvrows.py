"""kubeloop.csvrows: records as pandas and Arrow split a CSV, for naming a malformed row's line."""

from __future__ import annotations

import pytest

from kubeloop.csvrows import (
    CsvRecord,
    csv_records,
    is_blank,
    table_records,
    unnamed_column,
    unterminated_quote,
    wrong_field_count,
)


def records(text: bytes) -> list[CsvRecord]:
    return list(csv_records(text.splitlines()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"a,b\n1,2\n", [CsvRecord(1, 2), CsvRecord(2, 2)]),
        # a quoted field holds commas and line breaks; the record starts on the line it opens
        (b'a,b\n"x,\ny",2\n3,4\n', [CsvRecord(1, 2), CsvRecord(2, 2), CsvRecord(4, 2)]),
        # "" inside a quoted field is a quote; text after the closing quote belongs to the field
        (b'a,b\n"say ""hi""",2\n"x"y,3\n', [CsvRecord(1, 2), CsvRecord(2, 2), CsvRecord(3, 2)]),
        # a quote inside an unquoted field is a literal character
        (b'a,b\n5" x,2\n', [CsvRecord(1, 2), CsvRecord(2, 2)]),
        # empty lines are no records; a line of spaces or tabs is one, marked blank
        (b"a,b\n\n \t\n1,2,3\n", [CsvRecord(1, 2), CsvRecord(3, 1, blank=True), CsvRecord(4, 3)]),
        # a quote that never closes ends the records, naming the line it opened on
        (b'a,b\n1,2\n3,"4\n5,6\n', [CsvRecord(1, 2), CsvRecord(2, 2), CsvRecord(3, None)]),
    ],
)
def test_records(text: bytes, expected: list[CsvRecord]) -> None:
    assert records(text) == expected


def test_messages_name_the_line_and_row() -> None:
    assert wrong_field_count(4, 3, 1, 2).startswith("line 4 (data row 3) has 1 field but the header has 2;")
    assert unterminated_quote(1, 0).startswith("unterminated quoted field starting at line 1 (the header);")


def test_table_records_leave_out_lines_of_only_spaces_and_tabs() -> None:
    # what pandas reads as the header and data rows: a blank line is no row, and the rows after it keep
    # their physical line numbers
    lines = b" \na,b\n1,2\n\t \r\n3,4\n".splitlines()
    assert list(table_records(lines)) == [CsvRecord(2, 2), CsvRecord(3, 2), CsvRecord(5, 2)]
    assert [is_blank(x) for x in (b"", b" \t", " \t\r", b" x", "\u00a0")] == [True, True, True, False, False]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a", "b"], None),
        (["a", " b ", "y"], None),
        (["a", "", "y"], "column 2 has no name; every column needs one"),
        ([" ", "\t"], "column 1 has no name; every column needs one"),
    ],
)
def test_unnamed_column_names_the_first_column_without_a_name(names: list[str], expected: str | None) -> None:
    assert unnamed_column(names) == expected

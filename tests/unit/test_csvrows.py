"""kubeloop.csvrows: records as pandas and Arrow split a CSV, for naming a malformed row's line."""

from __future__ import annotations

import pytest

from kubeloop.csvrows import CsvRecord, csv_records, unterminated_quote, wrong_field_count


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

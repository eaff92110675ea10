"""CSV files that the REST facade's upload check and the trainer must judge alike: a file refused by
``POST /datasets`` must not train when written to the store directly, and one that trains must not be
refused at upload. Each case: accepted with its columns and number of data rows, or refused with the
words both refusals share (the trainer's UnreadableDataset message, the facade's 422)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CsvCase:
    id: str
    data: bytes
    columns: tuple[str, ...] = ()
    rows: int = 0
    refused: str = ""
    """Words of the refusal; empty where the file is accepted."""


_ABY = ("a", "b", "y")

CSV_PARITY: tuple[CsvCase, ...] = (
    # pandas skips a line of only spaces or tabs, as it skips an empty line: no row, no value lost
    CsvCase("whitespace-only line between rows", b"a,b,y\n1,2,0\n \t\n3,4,1\n", _ABY, 2),
    CsvCase("whitespace-only lines before the header", b" \n\n\t\na,b,y\n1,2,0\n3,4,1\n", _ABY, 2),
    CsvCase("whitespace-only last line, no line end", b"a,b,y\n1,2,0\n3,4,1\n  ", _ABY, 2),
    CsvCase("whitespace-only line, CRLF", b"a,b,y\r\n1,2,0\r\n  \r\n3,4,1\r\n", _ABY, 2),
    CsvCase("spaces inside a quoted value", b'a,b,y\n"x\n  \ny",2,0\n3,4,1\n', _ABY, 2),
    # a skipped line is no data row: the ragged row after one is data row 2
    CsvCase(
        "ragged row after a whitespace-only line",
        b"a,b,y\n1,2,0\n  \n3,4\n",
        refused="line 4 (data row 2) has 2 fields but the header has 3",
    ),
    # a column without a name is refused (pandas would call it "Unnamed: <position>", a name nobody chose)
    CsvCase("empty last header name", b"a,y,\n1,0,\n2,1,\n", refused="column 3 has no name"),
    CsvCase("empty first header name", b",a,y\n1,2,0\n3,4,1\n", refused="column 1 has no name"),
    CsvCase("whitespace header name", b"a, ,y\n1,2,0\n3,4,1\n", refused="column 2 has no name"),
    CsvCase("quoted empty header name", b'a,"",y\n1,2,0\n3,4,1\n', refused="column 2 has no name"),
    CsvCase("header names padded with spaces", b"a , b,y\n1,2,0\n3,4,1\n", ("a ", " b", "y"), 2),
)

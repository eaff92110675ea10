"""Dataset validation on files (no storage): good tables pass with a column report; bad ones are refused
naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_testdata import bad_files, good_csv, good_parquet
from kubeloop_api.datasets import Limits, validate_file
from kubeloop_api.errors import InvalidError
from kubeloop_testing.csv_cases import CSV_PARITY, CsvCase

LIMIT = 64 * 1024
LIMITS = Limits(min_rows=2, max_empty_ratio=0.5)
BAD = [b for b in bad_files(LIMIT) if b.status == 422]


def test_good_csv_and_parquet_pass_with_a_report(tmp_path: Path) -> None:
    for name, data in (("bc.csv", good_csv()), ("bc.parquet", good_parquet())):
        p = tmp_path / name
        p.write_bytes(data)
        report = validate_file(p, name, "target", LIMITS)
        assert report.rows == 80
        assert len(report.columns) == 31
        types = {c.name: c.type for c in report.columns}
        assert types["mean radius"] == "float"
        assert types["target"] == "integer"
        assert report.empty_cell_ratio == 0.0
        assert report.as_dict()["columns"][0] == {"name": "mean radius", "type": "float", "emptyCells": 0}


def test_mixed_types_and_some_empty_cells_are_reported(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_bytes(b"x,colour,flag,y\n1.5,red,true,0\n,blue,false,1\n2.5,,true,0\n")
    report = validate_file(p, "m.csv", "y", LIMITS)
    assert {c.name: (c.type, c.empty_cells) for c in report.columns} == {
        "x": ("float", 1), "colour": ("string", 1), "flag": ("boolean", 0), "y": ("integer", 0)
    }  # fmt: skip
    assert report.rows == 3


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_file_refused_naming_the_field(bad: object, tmp_path: Path) -> None:
    from api_testdata import BadFile

    assert isinstance(bad, BadFile)
    p = tmp_path / bad.name
    p.write_bytes(bad.data)
    with pytest.raises(InvalidError) as exc:
        validate_file(p, bad.name, bad.target, LIMITS)
    assert exc.value.message.startswith(f"{bad.field}: "), exc.value.message
    assert bad.words.lower() in exc.value.message.lower(), exc.value.message
    assert exc.value.causes[0]["field"] == bad.field


def test_a_column_whose_type_changes_after_the_first_block_is_widened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader infers types from its first block (8 MiB); a consistent table whose integers turn into
    # decimals or words later (pandas, which the trainer reads with, takes it) must not be refused.
    import kubeloop_api.datasets as ds

    monkeypatch.setattr(ds, "_CSV_BLOCK", 64 * 1024)
    rows = [f"{i},{i},{i % 2},{i}" for i in range(20000)] + ["2.5,x,0,", "3.5,7,1,"]
    p = tmp_path / "wide.csv"
    p.write_text("ints_then_floats,ints_then_words,y,ints_then_empty\n" + "\n".join(rows) + "\n")
    report = validate_file(p, "wide.csv", "y", LIMITS)
    assert report.rows == 20002
    assert {c.name: (c.type, c.empty_cells) for c in report.columns} == {
        "ints_then_floats": ("float", 0), "ints_then_words": ("string", 0), "y": ("integer", 0),
        "ints_then_empty": ("integer", 2),
    }  # fmt: skip
    # A ragged row is still refused, wherever it is.
    p.write_text("a,b\n" + "1,2\n" * 20000 + "3\n")
    with pytest.raises(InvalidError, match=r"^file: "):
        validate_file(p, "wide.csv", None, LIMITS)


def test_widening_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each widening is another pass over the file; past a few, every column is read as text at once.
    import kubeloop_api.datasets as ds

    monkeypatch.setattr(ds, "_CSV_BLOCK", 64 * 1024)
    opened: list[object] = []
    real_open = ds._open_csv
    monkeypatch.setattr(ds, "_open_csv", lambda *a: opened.append(1) or real_open(*a))
    names = [f"c{i}" for i in range(30)]
    p = tmp_path / "many.csv"
    p.write_text(",".join(names) + "\n" + ("1," * 29 + "1\n") * 10000 + ("x," * 29 + "x\n"))
    report = validate_file(p, "many.csv", None, LIMITS)
    assert report.rows == 10001
    assert {c.type for c in report.columns} == {"string"}
    assert len(opened) == ds._MAX_WIDENED + 2


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'a,"b,y\n1,2,0\n3,4,1\n', "line 1 (the header)"),
        (b'a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,"8,1\n9,10,0\n', "line 5 (data row 4)"),
        (b'a,b,y\r\n1,"two\r\nlines",0\r\n3,4,1\r\n5,"6,0\r\n', "line 5 (data row 3)"),
        (b'a,b,y\n1,"x""y,0\n3,4,1\n5,6,0\n', "line 2 (data row 1)"),
    ],
)
def test_an_unterminated_quote_is_refused_naming_where_it_starts(
    data: bytes, where: str, tmp_path: Path
) -> None:
    p = tmp_path / "q.csv"
    p.write_bytes(data)
    with pytest.raises(InvalidError) as exc:
        validate_file(p, "q.csv", None, LIMITS)
    assert exc.value.status_code == 422
    assert exc.value.message.startswith("file: malformed CSV: unterminated quoted field"), exc.value.message
    assert where in exc.value.message, exc.value.message


def test_quotes_that_pair_up_or_sit_inside_a_field_are_accepted(tmp_path: Path) -> None:
    # An odd number of quote characters is not by itself malformed: a quote inside an unquoted field is
    # a literal character, "" inside a quoted one is an escaped quote.
    p = tmp_path / "q.csv"
    p.write_bytes(b'size,label,y\n5" screen,"a ""big"" one",0\n7,"multi\nline",1\n9,plain,0\n')
    report = validate_file(p, "q.csv", "y", LIMITS)
    assert report.rows == 3


# Rows with another number of fields than the header: refused naming the physical line, the data row
# and both counts, as the trainer refuses them (pandas, its reader, would take the first column for the
# index when a row is longer, or pad a short row with NaN).
RAGGED = {
    "a short row": (b"a,b,y\n1,2,0\n4,5\n6,7,1\n", 3, 2, 2, 3),
    "a long first row": (b"a,y\n1,2,0\n4,5\n6,7\n", 2, 1, 3, 2),
    "a long row later": (b"a,b,y\n1,2,0\n3,4,1\n5,6,7,0\n", 4, 3, 4, 3),
    "a trailing empty field": (b"a,y\n1,0\n2,1,\n3,0\n", 3, 2, 3, 2),
    "after a quoted value over two lines": (b'a,b,y\n"x,\ny",2,0\n3,4\n', 4, 2, 2, 3),
    "after blank lines": (b"a,b,y\n\n1,2,0\n\n3,4\n", 5, 2, 2, 3),
    "CRLF line ends": (b"a,b,y\r\n1,2,0\r\n3,4,5,1\r\n", 3, 2, 4, 3),
    "a quote after a space is literal": (b'a,y\n1,0\n "3,4",1\n', 3, 2, 3, 2),
    "no line end after the last row": (b"a,b,y\n1,2,0\n3,4", 3, 2, 2, 3),
}


@pytest.mark.parametrize("case", RAGGED, ids=list(RAGGED))
def test_a_row_with_another_number_of_fields_is_refused_naming_its_line(case: str, tmp_path: Path) -> None:
    data, line, row, fields, header = RAGGED[case]
    p = tmp_path / "r.csv"
    p.write_bytes(data)
    with pytest.raises(InvalidError) as exc:
        validate_file(p, "r.csv", None, LIMITS)
    assert exc.value.status_code == 422
    assert exc.value.message == (
        f"file: malformed CSV: line {line} (data row {row}) has {fields} fields but the header has "
        f"{header}; every row needs one value per column (an empty value is written as nothing between "
        "two commas)"
    )


def test_a_ragged_row_past_the_first_block_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubeloop_api.datasets as ds

    monkeypatch.setattr(ds, "_CSV_BLOCK", 4096)
    p = tmp_path / "r.csv"
    p.write_bytes(b"a,b,y\n" + b'1,"x,y",0\n' * 3000 + b"2,3\n" + b"4,5,1\n" * 10)
    with pytest.raises(InvalidError, match=r"line 3002 \(data row 3001\) has 2 fields but the header has 3"):
        validate_file(p, "r.csv", None, LIMITS)


def test_quoted_commas_and_line_breaks_are_not_ragged(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_bytes(b'a,b,y\n"x, and\nmore, lines",2,0\n"p,q","r\r\ns",1\n"say ""hi"", ok",,0\n')
    report = validate_file(p, "q.csv", "y", LIMITS)
    assert report.rows == 3
    assert [c.name for c in report.columns] == ["a", "b", "y"]


def test_quoted_line_breaks_across_blocks_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrow cuts the file into blocks at line breaks; one inside a quoted value must not be taken for the
    # end of a row (files over 8 MiB with such values were refused as out of sync or ragged).
    import kubeloop_api.datasets as ds

    monkeypatch.setattr(ds, "_CSV_BLOCK", 4096)
    p = tmp_path / "nl.csv"
    p.write_bytes(b"a,b,y\n" + b'1,"x\ny, z",0\n' * 3000 + b"4,5,1\n" * 10)
    report = validate_file(p, "nl.csv", "y", LIMITS)
    assert report.rows == 3010


@pytest.mark.parametrize("case", CSV_PARITY, ids=[c.id for c in CSV_PARITY])
def test_csv_files_are_judged_as_the_trainer_judges_them(case: CsvCase, tmp_path: Path) -> None:
    # the same table as images/trainer/tests/test_data.py: the four ways in agree
    p = tmp_path / "p.csv"
    p.write_bytes(case.data)
    if case.refused:
        with pytest.raises(InvalidError) as exc:
            validate_file(p, "p.csv", None, LIMITS)
        assert exc.value.status_code == 422
        assert case.refused in exc.value.message, exc.value.message
    else:
        report = validate_file(p, "p.csv", None, LIMITS)
        assert (tuple(c.name for c in report.columns), report.rows) == (case.columns, case.rows)

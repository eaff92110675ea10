"""Dataset validation on files (no storage): good tables pass with a column report; bad ones are refused
naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_testdata import bad_files, good_csv, good_parquet
from kubeloop_api.datasets import Limits, validate_file
from kubeloop_api.errors import InvalidError

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

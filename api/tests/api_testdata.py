"""Dataset files for the tests: a good CSV and Parquet from scikit-learn's bundled breast-cancer table,
and the bad files the facade must refuse (each with the field its refusal names)."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import cache

import pyarrow as pa
import pyarrow.parquet as pq


@cache
def good_csv(rows: int = 80) -> bytes:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.head(rows)
    return frame.to_csv(index=False).encode()


@cache
def good_parquet(rows: int = 80) -> bytes:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.head(rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return buf.getvalue()


@dataclass(frozen=True)
class BadFile:
    id: str
    name: str
    data: bytes
    field: str
    """The field the refusal must name."""
    status: int = 422
    target: str | None = None
    words: str = ""
    """A word the message must contain (case-insensitive)."""


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def bad_files(size_limit: int) -> list[BadFile]:
    rnd = random.Random(7)
    junk = bytes(rnd.getrandbits(8) for _ in range(4096))
    mostly_empty = "a,b,c,d\n" + "".join(f"{i},,,\n" for i in range(50))
    return [
        BadFile("empty", "empty.csv", b"", "file", words="empty"),
        BadFile("header-only", "header.csv", b"a,b,target\n", "rows", words="header"),
        BadFile("one-row", "one.csv", b"a,b,target\n1,2,0\n", "rows", words="2 data rows"),
        BadFile("binary-junk", "junk.csv", junk, "file", words="text"),
        BadFile("nul-bytes", "nul.csv", b"a,b\n1,\x002\n3,4\n", "file", words="NUL"),
        BadFile("semicolons", "semi.csv", b"a;b;target\n1;2;0\n3;4;1\n5;6;0\n", "file", words="semicolons"),
        BadFile("tabs", "tabs.csv", b"a\tb\ttarget\n1\t2\t0\n3\t4\t1\n", "file", words="tabs"),
        BadFile("mostly-empty", "sparse.csv", mostly_empty.encode(), "cells", words="empty"),
        BadFile(
            "too-large",
            "big.csv",
            b"a,b\n" + b"1,2\n" * (size_limit // 4 + 1),
            "file",
            status=413,
            words="limit",
        ),
        BadFile(
            "parquet-no-columns", "nocols.parquet", _parquet(pa.table({})), "columns", words="no columns"
        ),
        BadFile(
            "missing-target",
            "notarget.csv",
            b"a,b,c\n1,2,3\n4,5,6\n",
            "target",
            target="label",
            words="not in the file",
        ),
        BadFile("no-header", "noheader.csv", b"1,2,3\n4,5,6\n7,8,9\n", "header", words="header"),
        # An unterminated quote swallows the rest of the file into one field: refused, not read as
        # one long value or as an empty file.
        BadFile(
            "unterminated-quote-header",
            "uq-head.csv",
            b'a,"b,target\n1,2,0\n3,4,1\n',
            "file",
            words="unterminated quoted field",
        ),
        BadFile(
            "unterminated-quote-row",
            "uq-row.csv",
            b'a,b,target\n1,2,0\n3,"4,1\n5,6,0\n',
            "file",
            words="unterminated quoted field",
        ),
        BadFile(
            "ragged-rows",
            "ragged.csv",
            b"a,b,c\n1,2,3\n4,5\n6,7,8\n",
            "file",
            words="line 3 (data row 2) has 2 fields but the header has 3",
        ),
        # A trailing empty field: pandas (the trainer's reader) would take the first column for the index.
        BadFile(
            "trailing-empty-field",
            "trailing.csv",
            b"a,target\n1,0,\n2,1,\n3,0,\n",
            "file",
            words="line 2 (data row 1) has 3 fields but the header has 2",
        ),
        BadFile("duplicate-columns", "dup.csv", b"a,a,b\n1,2,3\n4,5,6\n", "header", words="duplicate"),
        BadFile("blank-column-name", "blank.csv", b"a,,b\n1,2,3\n4,5,6\n", "header", words="no name"),
        BadFile("one-column", "single.csv", b"a\n1\n2\n3\n", "columns", words="at least 2"),
        BadFile("not-parquet", "fake.parquet", b"a,b\n1,2\n3,4\n", "file", words="Parquet"),
        BadFile(
            "truncated-parquet",
            "cut.parquet",
            good_parquet()[: len(good_parquet()) // 2] + b"PAR1",
            "file",
            words="Parquet",
        ),
        BadFile("parquet-as-csv", "pq.csv", good_parquet(), "file", words="Parquet"),
        BadFile(
            "target-all-empty",
            "emptytarget.csv",
            b"a,b,target\n1,2,\n3,4,\n5,6,\n",
            "target",
            target="target",
            words="no values",
        ),
        BadFile("latin1", "latin.csv", "a,b\ncafé,1\nthé,2\n".encode("latin-1"), "file", words="UTF-8"),
    ]

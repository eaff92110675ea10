"""A dataset URI ending in '/' names every CSV/Parquet object under it (labelled feedback can be added
beside the original table without editing the TrainingJob): read in key order, concatenated, each
part checked like a single table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kubeloop_trainer import errors
from kubeloop_trainer.data import read_tables
from kubeloop_trainer.storage import read_dataset_parts

from kubeloop.contracts import ObjectRef
from kubeloop.storage.local import LocalStore


def frame(n: int, seed: int, cols: tuple[str, ...] = ("a", "b", "y")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {c: rng.normal(size=n) for c in cols if c != "y"}
    if "y" in cols:
        data["y"] = np.arange(n) % 2
    return pd.DataFrame(data)[list(cols)]


def parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "store")
    s.ensure_bucket("kubeloop")
    return s


def test_a_prefix_reads_every_table_under_it_in_key_order(store: LocalStore) -> None:
    base, feedback = frame(50, 1), frame(20, 2, ("y", "b", "a"))  # same columns, another order
    store.put(ObjectRef("kubeloop", "datasets/bc/base.csv"), csv(base))
    store.put(ObjectRef("kubeloop", "datasets/bc/feedback/2025-03-04.parquet"), parquet(feedback))
    store.put(ObjectRef("kubeloop", "datasets/bc/README.md"), b"not a table")
    store.put(ObjectRef("kubeloop", "datasets/bcx/other.csv"), csv(frame(5, 3)))  # beside, not under
    parts = read_dataset_parts("s3://kubeloop/datasets/bc/", store)
    assert [u for u, _ in parts] == [
        "s3://kubeloop/datasets/bc/base.csv",
        "s3://kubeloop/datasets/bc/feedback/2025-03-04.parquet",
    ]
    df = read_tables(parts, "s3://kubeloop/datasets/bc/")
    assert len(df) == 70
    assert list(df.columns) == ["a", "b", "y"]
    np.testing.assert_allclose(df["a"].to_numpy()[50:], feedback["a"].to_numpy())
    # appending feedback changes what the next run reads; the spec stays the same
    store.put(ObjectRef("kubeloop", "datasets/bc/feedback/2025-03-05.csv"), csv(frame(7, 4)))
    assert len(read_tables(read_dataset_parts("s3://kubeloop/datasets/bc/", store), "x/")) == 77


def test_a_single_object_is_read_as_before(store: LocalStore) -> None:
    store.put(ObjectRef("kubeloop", "datasets/one.csv"), csv(frame(30, 1)))
    parts = read_dataset_parts("s3://kubeloop/datasets/one.csv", store)
    assert len(parts) == 1
    assert len(read_tables(parts, "s3://kubeloop/datasets/one.csv")) == 30


def test_a_local_directory_prefix(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "more").mkdir(parents=True)
    (d / "a.csv").write_bytes(csv(frame(10, 1)))
    (d / "more" / "b.parquet").write_bytes(parquet(frame(5, 2)))
    parts = read_dataset_parts(f"{d}/", None)
    assert len(read_tables(parts, f"{d}/")) == 15
    with pytest.raises(errors.DatasetNotFoundError, match="not a directory"):
        read_dataset_parts(f"{tmp_path}/absent/", None)


def test_an_empty_prefix_is_a_missing_dataset(store: LocalStore) -> None:
    store.put(ObjectRef("kubeloop", "datasets/empty/notes.txt.bak"), b"x")
    parts = read_dataset_parts("s3://kubeloop/datasets/empty/", store)
    with pytest.raises(errors.DatasetNotFoundError, match="holds no CSV or Parquet object") as e:
        read_tables(parts, "s3://kubeloop/datasets/empty/")
    assert e.value.exit_code == 11
    with pytest.raises(errors.DatasetNotFoundError, match="does not exist"):
        read_dataset_parts("s3://nobucket/datasets/x/", store)
    with pytest.raises(errors.ConfigError, match="no S3 endpoint"):
        read_dataset_parts("s3://kubeloop/datasets/x/", None)


def test_parts_with_other_columns_are_refused_naming_the_part(store: LocalStore) -> None:
    store.put(ObjectRef("kubeloop", "datasets/bc/a.csv"), csv(frame(10, 1)))
    store.put(ObjectRef("kubeloop", "datasets/bc/b.csv"), csv(frame(10, 2, ("a", "c", "y"))))
    parts = read_dataset_parts("s3://kubeloop/datasets/bc/", store)
    with pytest.raises(errors.UnreadableDatasetError) as e:
        read_tables(parts, "s3://kubeloop/datasets/bc/")
    msg = str(e.value)
    assert "s3://kubeloop/datasets/bc/b.csv" in msg
    assert "extra: c" in msg
    assert "missing: b" in msg


def test_a_bad_part_is_named(store: LocalStore) -> None:
    store.put(ObjectRef("kubeloop", "datasets/bc/a.csv"), csv(frame(10, 1)))
    store.put(ObjectRef("kubeloop", "datasets/bc/b.parquet"), b"PAR1 broken")
    parts = read_dataset_parts("s3://kubeloop/datasets/bc/", store)
    with pytest.raises(
        errors.UnreadableDatasetError, match=r"datasets/bc/b\.parquet is not a readable Parquet"
    ):
        read_tables(parts, "s3://kubeloop/datasets/bc/")


def test_a_single_parquet_file_cannot_hold_dates_and_timestamps_in_one_column() -> None:
    # Parquet types a column once: pyarrow writes pandas' object column of dates then datetimes as
    # date32 (the times dropped) and refuses datetimes then dates; either way one type reaches pandas.
    import datetime as dt

    import pyarrow as pa

    mixed = [dt.date(2024, 1, 1), dt.datetime(2024, 1, 2, 3, 4)]
    read = pd.read_parquet(io.BytesIO(parquet(pd.DataFrame({"when": mixed}))))
    assert read["when"].tolist() == [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    with pytest.raises(pa.ArrowTypeError):
        parquet(pd.DataFrame({"when": mixed[::-1]}))


# Parts of a prefix whose column holds dates in one and timestamps in another (or the same dates as a
# typed Parquet column and as CSV text) concatenate to one object column mixing datetime.date,
# pandas.Timestamp and str: still a column of points in time, left out of default features.
MIXED_TEMPORAL_PARTS = {
    "Parquet dates, then Parquet timestamps": (("parquet", "date"), ("parquet", "timestamp"), "timestamps"),
    "Parquet timestamps, then Parquet dates": (("parquet", "timestamp"), ("parquet", "date"), "timestamps"),
    "Parquet dates, then CSV dates": (("parquet", "date"), ("csv", "date"), "dates"),
    "Parquet dates, then CSV timestamps": (("parquet", "date"), ("csv", "timestamp"), "timestamps"),
    "CSV dates, then Parquet timestamps": (("csv", "date"), ("parquet", "timestamp"), "timestamps"),
}


@pytest.mark.parametrize("case", MIXED_TEMPORAL_PARTS, ids=list(MIXED_TEMPORAL_PARTS))
def test_a_column_mixing_dates_and_timestamps_across_parts_is_temporal(case: str) -> None:
    from kubeloop_trainer.data import prepare, temporal_kind

    from kubeloop.resources import DatasetSpec

    first, second, kind = MIXED_TEMPORAL_PARTS[case]
    parts = []
    for i, (fmt, values) in enumerate((first, second)):
        df = frame(20, i)
        when = pd.date_range(f"2024-0{i + 1}-01 06:30", periods=20, freq="D")
        df["when"] = [d.date() for d in when] if values == "date" else when
        parts.append((f"s3://bkt/d/{i}.{fmt}", parquet(df) if fmt == "parquet" else csv(df)))
    table = read_tables(parts, "s3://bkt/d/")
    assert temporal_kind(table["when"]) == kind
    spec = DatasetSpec.model_validate({"uri": "s3://bkt/d/", "target": "y"})
    ds = prepare(table, spec, "classification", seed=1)
    assert ds.ignored_columns == {"when": kind}
    listed = DatasetSpec.model_validate({"uri": "s3://bkt/d/", "target": "y", "features": ["a", "when"]})
    with pytest.raises(errors.TemporalColumnError, match=f"feature column 'when' holds {kind}"):
        prepare(table, listed, "classification", seed=1)

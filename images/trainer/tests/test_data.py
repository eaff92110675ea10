"""Data loading and the checks that run before any training (no I/O)."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import re

import numpy as np
import pandas as pd
import pytest
import torch
from kubeloop_testing.csv_cases import CSV_PARITY, CsvCase
from kubeloop_trainer import errors
from kubeloop_trainer.data import _class_sort_key, prepare, read_table, split_indices
from kubeloop_trainer.model import build_model

from kubeloop.resources import DatasetSpec


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def good_frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "y": np.arange(n) % 2})


def check(
    df_or_bytes: pd.DataFrame | bytes, task: str = "classification", uri: str = "/d.csv", **spec: object
):
    data = df_or_bytes if isinstance(df_or_bytes, bytes) else csv_bytes(df_or_bytes)
    df = read_table(data, uri)
    ds_spec = DatasetSpec.model_validate({"uri": uri, "target": "y", **spec})
    return prepare(df, ds_spec, task, seed=1)  # type: ignore[arg-type]


def test_csv_and_parquet_read_the_same(breast_cancer: pd.DataFrame) -> None:
    a = read_table(csv_bytes(breast_cancer), "s3://b/d.csv")
    b = read_table(parquet_bytes(breast_cancer), "s3://b/d.parquet")
    c = read_table(parquet_bytes(breast_cancer), "s3://b/no-extension")  # sniffed by magic bytes
    assert list(a.columns) == list(b.columns) == list(c.columns)
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-12)


BAD = {
    "empty file": (b"", errors.EmptyDatasetError, "empty"),
    "header only": (b"a,b,y\n", errors.EmptyDatasetError, "no rows"),
    "duplicate columns": (b"a,a,y\n1,2,0\n", errors.DuplicateColumnsError, "duplicate column names: a"),
    # pandas drops the byte-order mark and would rename the second "a" to "a.1"
    "duplicate columns after a BOM": (
        "\ufeffa,a,y\n1,2,0\n".encode(),
        errors.DuplicateColumnsError,
        "duplicate column names: a",
    ),
    "garbage parquet": (b"PAR1 not really", errors.UnreadableDatasetError, "Parquet"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_unreadable_inputs(case: str) -> None:
    data, exc, text = BAD[case]
    uri = "/d.parquet" if "parquet" in case else "/d.csv"
    with pytest.raises(exc, match=text):
        check(data, uri=uri)


def test_parquet_duplicate_columns_are_duplicate_columns() -> None:
    # Parquet allows repeated column names; pyarrow's reader refuses them with "Multiple matches for
    # FieldRef", which came out as UnreadableDataset (12) where the same table as CSV gives 24.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        [pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array([5.0, 6.0]), pa.array([0, 1])],
        names=["b", "a", "b", "y"],
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with pytest.raises(errors.DuplicateColumnsError, match=r"duplicate column names: b$") as e:
        read_table(buf.getvalue(), "/d.parquet")
    assert e.value.exit_code == 24
    assert "/d.parquet" in e.value.message


# The header check names columns exactly as the reader (pandas) does: surrounding whitespace is part
# of a name, quotes are not, blank lines before the header are skipped (an empty name is refused: see
# CSV_PARITY). Each case: the file, then the columns it reads as, or the duplicated names it is refused for.
CSV_HEADERS: dict[str, tuple[bytes, list[str] | str]] = {
    "whitespace makes a name distinct": (b"a, a,a ,y\n1,2,3,0\n", ["a", " a", "a ", "y"]),
    "quotes are not part of a name": (b'a,"a",y\n1,2,0\n', "a"),
    "quoted whitespace is": (b'"a"," a",y\n1,2,0\n', ["a", " a", "y"]),
    "blank lines before the header": (b"\n\na,b,a,y\n1,2,3,0\n", "a"),
    "CRLF line ends": (b"a,b,a\r\n1,2,3\r\n", "a"),
}


@pytest.mark.parametrize("case", CSV_HEADERS, ids=list(CSV_HEADERS))
def test_csv_header_check_names_columns_as_the_reader_does(case: str) -> None:
    data, expected = CSV_HEADERS[case]
    if isinstance(expected, str):
        with pytest.raises(
            errors.DuplicateColumnsError, match=f"duplicate column names: {re.escape(expected)}$"
        ):
            read_table(data, "/d.csv")
    else:
        assert list(read_table(data, "/d.csv").columns) == expected


def _wide_header(names: list[str]) -> bytes:
    return (",".join(names) + "\n" + ",".join("1" for _ in names) + "\n").encode()


def test_csv_header_longer_than_64_kib() -> None:
    # wide tables: the header check once read only the first 64 KiB of the file
    names = [f"feature_{i:06d}_{'x' * 80}" for i in range(750)]  # ~71 KB of header
    assert len(",".join(names)) > 65536
    cols = list(read_table(_wide_header([*names, "y"]), "/d.csv").columns)
    assert cols == [*names, "y"]
    # a repeat past 64 KiB was missed (pandas renamed it <name>.1)
    with pytest.raises(errors.DuplicateColumnsError, match=rf"duplicate column names: {names[1]}$"):
        read_table(_wide_header([*names, names[1], "y"]), "/d.csv")
    # a name cut at 64 KiB was compared in part: "abcdef" cut to "abc" was a repeat of "abc"
    head = ",".join(["abc", *names[:600]]) + ","
    pad = 65536 - 3 - len(head) - 1
    assert pad > 0
    header = [*head.rstrip(",").split(","), "p" * pad, "abcdef", "y"]
    assert (",".join(header)).index("abcdef") == 65536 - 3
    assert list(read_table(_wide_header(header), "/d.csv").columns) == header


def test_missing_target() -> None:
    df = good_frame().rename(columns={"y": "label"})
    with pytest.raises(errors.MissingTargetColumnError, match="target column 'y' is not in the dataset"):
        check(df)


def test_unknown_feature() -> None:
    with pytest.raises(errors.UnknownFeatureError, match="'nope'"):
        check(good_frame(), features=["a", "nope"])


def test_too_few_rows() -> None:
    with pytest.raises(errors.TooFewRowsError, match="5 row"):
        check(good_frame(5))


def test_all_missing_column() -> None:
    df = good_frame()
    df["b"] = np.nan
    with pytest.raises(errors.AllMissingColumnError, match="'b'"):
        check(df)


def test_non_numeric_value_in_numeric_column() -> None:
    df = good_frame().astype({"a": object})
    df.loc[3, "a"] = "twelve"
    with pytest.raises(errors.NonNumericValuesError, match=r"'a' has 1 non-numeric value.*twelve"):
        check(df)


def test_infinite_values() -> None:
    df = good_frame()
    df.loc[0, "b"] = np.inf
    with pytest.raises(errors.NonFiniteValuesError, match="'b'"):
        check(parquet_bytes(df), uri="/d.parquet")


def test_single_class() -> None:
    df = good_frame()
    df["y"] = 1
    with pytest.raises(errors.SingleClassError, match="single class"):
        check(df)


def test_missing_target_values() -> None:
    df = good_frame()
    df.loc[[1, 2], "y"] = np.nan
    with pytest.raises(errors.MissingTargetValuesError, match="2 missing"):
        check(df)


def test_regression_target_must_be_numeric_and_vary() -> None:
    df = good_frame().astype({"y": object})
    df.loc[0, "y"] = "high"
    with pytest.raises(errors.NonNumericValuesError, match="target column 'y'"):
        check(df, task="regression")
    df = good_frame()
    df["y"] = 3.0
    with pytest.raises(errors.ConstantTargetError, match="constant"):
        check(df, task="regression")


def test_a_target_constant_in_float32_is_constant() -> None:
    # The model learns float32 targets: values that differ only beyond float32's precision (1 and
    # 1 + 1e-12) are one value to it. The check looked at float64 and let it train a constant,
    # reported with r2 0 (and promotable on mse).
    df = good_frame(40)
    df["y"] = 1.0 + np.arange(40) * 1e-12
    assert float(np.std(df["y"])) > 0
    with pytest.raises(errors.ConstantTargetError, match="'y' is constant"):
        prepare(df, DatasetSpec(uri="/d.csv", target="y"), "regression", 1)


def test_too_many_classes() -> None:
    df = good_frame(40)
    df["y"] = np.arange(40) * 0.5
    with pytest.raises(errors.TooManyClassesError, match="40 distinct"):
        prepare(
            read_table(csv_bytes(df), "/d.csv"),
            DatasetSpec(uri="/d.csv", target="y"),
            "classification",
            1,
            max_classes=20,
        )


def test_too_many_categories() -> None:
    # An identifier column (text, one value per row) is a categorical feature by default: its one-hot
    # block made the model matrix rows x rows float32 (100,000 rows: 32 GB), and the pod died
    # out of memory with no reason given.
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "id": [f"c{i:03d}" for i in range(60)],
            "few": rng.choice(["a", "b"], 60),
            "y": np.arange(60) % 2,
        }
    )
    spec = DatasetSpec(uri="/d.csv", target="y")
    with pytest.raises(errors.TooManyCategoriesError, match="'id' has 60 distinct values") as e:
        prepare(df, spec, "classification", 1, max_categories=50)
    assert e.value.exit_code == 26
    assert "dataset.features" in e.value.message
    ds = prepare(df, spec, "classification", 1, max_categories=60)
    assert [len(c.categories) for c in ds.encoder.categorical] == [48, 2]


@pytest.mark.parametrize(
    ("task", "column"),
    [("classification", "label"), ("classification", "probabilities"), ("regression", "prediction")],
)
def test_a_feature_named_like_a_model_output_is_refused_before_training(task: str, column: str) -> None:
    # ONNX inputs and outputs share one namespace: such a column (a previous model's "prediction",
    # say) was refused only at export, ExportError (32, an infrastructure error, retried) after the
    # whole training.
    rng = np.random.default_rng(0)
    df = pd.DataFrame({column: rng.normal(size=40), "a": rng.normal(size=40), "y": np.arange(40) % 2})
    with pytest.raises(errors.DataError, match=f"'{column}' is named like an output") as e:
        prepare(df, DatasetSpec(uri="/d.csv", target="y"), task, 1)  # type: ignore[arg-type]
    assert e.value.exit_code == 10
    # the other task's output names are free
    other = "regression" if task == "classification" else "classification"
    prepare(df, DatasetSpec(uri="/d.csv", target="y"), other, 1)  # type: ignore[arg-type]


def test_classes_of_one_row_each_leave_no_validation_rows() -> None:
    # The split is stratified: a class of one row stays in training. With no class of two rows there
    # is nothing to validate on, and the message blamed the row count and the split ("12 rows: too
    # few for a validation split of 0.2"), which neither more of such rows nor another split fixes.
    df = pd.DataFrame({"a": np.arange(12.0), "y": [f"k{i}" for i in range(12)]})
    with pytest.raises(errors.TooFewRowsError, match="every class of target column 'y' has a single row"):
        prepare(df, DatasetSpec(uri="/d.csv", target="y"), "classification", 1)


NESTED = {
    "list": [[1, 2], [3]],
    "list of text": [["a"], ["b", "c"]],
    "struct": [{"a": 1}, {"a": 2}],
    "map": [[("k", 1)], [("k", 2)]],
}


@pytest.mark.parametrize("kind", NESTED, ids=list(NESTED))
@pytest.mark.parametrize("role", ["feature", "target"])
def test_nested_parquet_values_are_refused(kind: str, role: str) -> None:
    # Parquet lists, structs and maps came out of pandas as arrays and dicts that became categories
    # named by numpy's repr ("['b' 'c']"), which no request to the server ever produces (a JSON list
    # is "['b', 'c']" there): a feature that never matches when serving, or such class labels.
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 40
    values = NESTED[kind] * (n // 2)
    arr = pa.array(values, type=pa.map_(pa.string(), pa.int64())) if kind == "map" else pa.array(values)
    cols = {"x": pa.array(np.arange(n, dtype=float)), "y": pa.array([i % 2 for i in range(n)])}
    cols["nested" if role == "feature" else "y"] = arr
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    column = "nested" if role == "feature" else "y"
    for task in ("classification", "regression"):
        with pytest.raises(errors.DataError, match=f"column '{column}' holds nested values") as e:
            prepare(
                read_table(buf.getvalue(), "/d.parquet"), DatasetSpec(uri="/d.parquet", target="y"), task, 1
            )  # type: ignore[arg-type]
        assert e.value.exit_code == 10


def test_float32_categories_are_named_as_written() -> None:
    # A Parquet float32 column declared categorical (or a float32 class label): 0.1 is stored as the
    # float32 nearest to it, whose float64 repr named the category "0.10000000149011612"; a request
    # to the server sends 0.1, "0.1", so the category never matched (and the label read oddly).
    df = pd.DataFrame(
        {
            "rate": np.array([0.1, 0.2, 0.7, np.nan] * 10, dtype=np.float32),
            "a": np.arange(40.0),
            "y": np.array([0.1, 2.5] * 20, dtype=np.float32),
        }
    )
    data = parquet_bytes(df)
    spec = DatasetSpec(uri="/d.parquet", target="y", categorical_features=["rate"])
    ds = prepare(read_table(data, "/d.parquet"), spec, "classification", 1)
    assert ds.encoder.categorical[0].categories == ["0.1", "0.2", "0.7"]
    assert ds.classes == ["0.1", "2.5"]


def test_every_error_has_its_own_exit_code() -> None:
    codes = [e.exit_code for e in errors.ALL_ERRORS]
    assert len(codes) == len(set(codes))
    reasons = [e.reason for e in errors.ALL_ERRORS]
    assert len(reasons) == len(set(reasons))
    f = errors.SingleClassError("target 'y'\nhas one class").failure()
    assert f.message == "target 'y' has one class"  # one line
    assert f.model_dump(by_alias=True) == {"reason": "SingleClass", "message": f.message, "exitCode": 21}


def test_encoding_and_split(mixed_frame: pd.DataFrame) -> None:
    ds = check(csv_bytes(mixed_frame), categorical_features=["size"])
    kinds = {f.name: f.type for f in ds.encoder.features}
    assert kinds == {"x1": "numeric", "x2": "numeric", "color": "categorical", "size": "categorical"}
    assert ds.classes == ["hi", "lo", "mid"]
    cats = {c.name: c.categories for c in ds.encoder.categorical}
    assert cats == {"color": ["blue", "green", "red"], "size": ["1", "2", "3"]}
    assert ds.x_train.shape[1] == 2 + 3 + 3
    assert np.isnan(ds.x_train[:, 0]).any()  # raw numerics keep NaN; the model imputes
    onehot = ds.x_train[:, 2:]
    assert set(np.unique(onehot.sum(axis=1))) == {2.0}  # missing colour -> the mode
    assert len(ds.y_val) == 60
    # stratified: every class in both splits
    assert set(ds.y_val) == set(ds.y_train) == {0, 1, 2}


def test_split_is_deterministic() -> None:
    y = np.arange(100) % 3
    a = split_indices(y, 100, 0.25, seed=5)
    b = split_indices(y, 100, 0.25, seed=5)
    c = split_indices(y, 100, 0.25, seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    assert len(np.intersect1d(a[0], a[1])) == 0
    assert len(a[0]) + len(a[1]) == 100


def test_empty_string_class_labels_are_missing_target_values() -> None:
    # "" is the missing category everywhere else (features, the ONNX graph); a Parquet string
    # target can carry it where a CSV reader would have given NaN.
    df = good_frame().astype({"y": str})
    df.loc[[3, 7], "y"] = ""
    with pytest.raises(errors.MissingTargetValuesError, match="2 missing"):
        check(parquet_bytes(df), uri="/d.parquet")


@pytest.mark.parametrize("column", ["a", "y"])
def test_values_beyond_the_float32_range_are_refused(column: str) -> None:
    # finite in float64 but infinite as the model's float32 input (or target): refused naming the
    # column, instead of NaN statistics and a TrainingDiverged failure after the first epoch
    df = good_frame()
    df["y"] = df["y"].astype(float) + np.arange(len(df))
    df.loc[4, column] = 1e39
    with pytest.raises(errors.NonFiniteValuesError, match=f"'{column}'.*float32"):
        check(df, task="regression")


@pytest.mark.parametrize("scale", [1e-13, 1e20])
def test_scaling_statistics_fit_tiny_and_huge_values(scale: float) -> None:
    # what the model sees after its (exported) imputation and scaling: standardised numerics, and a
    # standardised regression target; neither all zeros (silently ignored) nor inf/NaN
    rng = np.random.default_rng(4)
    n = 200
    df = pd.DataFrame({"a": rng.normal(3.0, 1.0, n) * scale, "b": rng.normal(size=n)})
    df["y"] = df["a"] + rng.normal(0.0, 0.1, n) * scale
    ds = check(df, task="regression")
    with torch.no_grad():
        x = build_model(ds, [4], 0.0).preprocess(torch.from_numpy(ds.x_train)).numpy()
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.std(axis=0), [1.0, 1.0], rtol=1e-3)
    z = (ds.y_train - ds.target_mean) / ds.target_std
    assert np.all(np.isfinite(z))
    assert abs(float(z.std()) - 1.0) < 1e-3


def test_class_order_is_total_with_a_nan_label() -> None:
    # classes come from a set, whose order follows the process's hash seed: the sort must not depend
    # on it, or DDP ranks (and reruns) give the same label different class indices
    labels = ["NaN", "b", "10", "2", "a", "1", "inf"]
    orders = {tuple(sorted(p, key=_class_sort_key)) for p in itertools.permutations(labels)}
    assert orders == {("1", "2", "10", "inf", "NaN", "a", "b")}


def temporal_frame(n: int = 40) -> pd.DataFrame:
    """good_frame plus one column of each temporal kind (hourly from 2024-01-01)."""
    df = good_frame(n)
    ts = pd.date_range("2024-01-01", periods=n, freq="h")
    df["ts"] = ts
    df["ts_utc"] = ts.tz_localize("UTC")
    df["day"] = [d.date() for d in ts]
    df["took"] = pd.to_timedelta(np.arange(n), unit="s")
    return df


TEMPORAL = ["ts", "ts_utc", "day", "took"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("column", TEMPORAL)
def test_a_listed_temporal_feature_is_refused(fmt: str, column: str) -> None:
    # A Parquet timestamp or duration became a numeric feature (its integer count since the epoch, in
    # float32: ~2 minutes resolution, in a unit the reader chose); a date, or any of them as CSV
    # text, a categorical one with a category per distinct value. Either way a client could not feed it.
    df = temporal_frame()
    data = parquet_bytes(df) if fmt == "parquet" else csv_bytes(df)
    with pytest.raises(errors.TemporalColumnError, match=f"feature column '{column}' holds") as e:
        check(data, uri=f"/d.{fmt}", features=["a", column])
    assert e.value.exit_code == 25
    assert e.value.reason == "TemporalColumn"
    assert "dataset.features" in e.value.message
    assert "convert" in e.value.message


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_temporal_columns_are_left_out_of_inferred_features(fmt: str) -> None:
    df = temporal_frame()
    data = parquet_bytes(df) if fmt == "parquet" else csv_bytes(df)
    ds = check(data, uri=f"/d.{fmt}")
    assert [f.name for f in ds.encoder.features] == ["a", "b"]
    assert ds.x_train.shape[1] == 2
    assert list(ds.ignored_columns) == TEMPORAL
    assert ds.ignored_columns["ts"] == "timestamps"
    assert ds.ignored_columns["day"] == "dates"
    assert ds.ignored_columns["took"] == "durations"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_only_temporal_features_is_a_temporal_column_error(fmt: str) -> None:
    df = temporal_frame()[["ts", "day", "y"]]
    data = parquet_bytes(df) if fmt == "parquet" else csv_bytes(df)
    with pytest.raises(
        errors.TemporalColumnError, match="no feature columns besides the target but 'ts', 'day'"
    ):
        check(data, uri=f"/d.{fmt}")


def test_a_temporal_column_declared_categorical_is_a_categorical_feature() -> None:
    # the way to use a date's values as categories, on purpose; the same categories from either format
    df = temporal_frame()
    df["day"] = [dt.date(2024, 1, 1 + i % 3) for i in range(len(df))]
    cats = {}
    for fmt, data in (("parquet", parquet_bytes(df)), ("csv", csv_bytes(df))):
        ds = check(data, uri=f"/d.{fmt}", categorical_features=["day", "ts"])
        assert {f.name: f.type for f in ds.encoder.features} == {
            "a": "numeric",
            "b": "numeric",
            "day": "categorical",
            "ts": "categorical",
        }
        assert list(ds.ignored_columns) == ["ts_utc", "took"]
        cats[fmt] = {c.name: c.categories for c in ds.encoder.categorical}
    assert cats["parquet"]["day"] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert cats["parquet"] == cats["csv"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_temporal_regression_target_is_refused(fmt: str) -> None:
    df = temporal_frame().drop(columns=["y"]).rename(columns={"ts": "y"})
    data = parquet_bytes(df) if fmt == "parquet" else csv_bytes(df)
    with pytest.raises(errors.TemporalColumnError, match="target column 'y' holds timestamps"):
        check(data, uri=f"/d.{fmt}", task="regression", features=["a", "b"])


def test_text_that_only_partly_looks_like_dates_stays_categorical() -> None:
    df = good_frame()
    df["when"] = ["2024-01-01", "2024-01-02", "soon", "later"] * 10
    df["code"] = ["12:30", "08:00"] * 20  # a time of day is not a timestamp (as a Parquet time64)
    df["t"] = [dt.time(12, 30), dt.time(8, 0)] * 20
    for fmt, data in (("parquet", parquet_bytes(df)), ("csv", csv_bytes(df))):
        ds = check(data, uri=f"/d.{fmt}")
        kinds = {f.name: f.type for f in ds.encoder.features}
        assert kinds == {
            "a": "numeric",
            "b": "numeric",
            "when": "categorical",
            "code": "categorical",
            "t": "categorical",
        }
        assert ds.ignored_columns == {}


def test_csv_timestamps_written_by_pandas_are_temporal_text() -> None:
    # pandas writes midnight-only timestamps as bare dates, and a mix of the two forms is still time
    df = good_frame()
    df["at"] = ["2024-01-01", "2024-01-01 12:00", "2024-01-02T08:30:00.5Z", "2024-01-03 09:00:00+01:00"] * 10
    df["d"] = pd.date_range("2024-01-01", periods=len(df), freq="D")
    ds = check(csv_bytes(df))
    assert ds.ignored_columns == {"at": "timestamps", "d": "dates"}


# Text shaped like an ISO date or timestamp is temporal only when every value is a real one (a month
# 1-12, a day that month has, a time of day, an offset within a day): product codes such as 1234-56-78
# stay categorical features, whether picked by default or listed.
NOT_DATES: dict[str, list[str]] = {
    "month 56": ["1234-56-78", "2024-01-05"],
    "month 00": ["2024-00-10", "2024-01-05"],
    "day 32": ["2024-01-32", "2024-01-05"],
    "February 30": ["2024-02-30", "2024-01-05"],
    "February 29 of a common year": ["2023-02-29", "2023-01-05"],
    "day 00": ["2024-03-00", "2024-01-05"],
    "year 0000": ["0000-01-01", "2024-01-05"],
    "hour 24": ["2024-01-01 24:00", "2024-01-02 08:00"],
    "minute 60": ["2024-01-01 12:60", "2024-01-02 08:00"],
    "second 61": ["2024-01-01 12:00:61", "2024-01-02 08:00:00"],
    "offset hour 25": ["2024-01-01T12:00+25:00", "2024-01-02T08:00+01:00"],
    "offset minute 75": ["2024-01-01T12:00+01:75", "2024-01-02T08:00+01:00"],
    "duration of 25 hours": ["1 days 25:00:00", "0 days 01:00:00"],
}


@pytest.mark.parametrize("case", NOT_DATES, ids=list(NOT_DATES))
def test_codes_shaped_like_dates_are_categorical_features(case: str) -> None:
    df = good_frame()
    # the invalid value last: a check of the first values only would not see it
    df["code"] = [NOT_DATES[case][1]] * (len(df) - 1) + [NOT_DATES[case][0]]
    for fmt, data in (("parquet", parquet_bytes(df)), ("csv", csv_bytes(df))):
        ds = check(data, uri=f"/d.{fmt}")
        assert ds.ignored_columns == {}, (fmt, case)
        assert {f.name: f.type for f in ds.encoder.features}["code"] == "categorical"
        listed = check(data, uri=f"/d.{fmt}", features=["a", "code"])
        assert [f.type for f in listed.encoder.features] == ["numeric", "categorical"]


def test_real_dates_at_the_edges_are_temporal() -> None:
    # leap days, the last day of year 9999 (an open end), midnight, second 60, offsets up to 23:59
    df = good_frame()
    df["day"] = ["2024-02-29", "2000-02-29", "9999-12-31", "0001-01-01"] * 10
    df["at"] = [
        "2024-02-29 00:00",
        "2016-12-31T23:59:60Z",
        "2024-01-01T12:00-23:59",
        "2024-01-01 12:00+0530",
    ] * 10
    df["took"] = ["-1 days 23:59:59.5", "10 days 00:00:00"] * 20
    ds = check(csv_bytes(df))
    assert ds.ignored_columns == {"day": "dates", "at": "timestamps", "took": "durations"}


# Rows whose number of fields differs from the header's. pandas (default options) reads a row one
# field longer than the header by turning the first column into the index (every value moves one
# column left; the first column is lost without an error), pads a short row with NaN, and with
# index_col=False drops the extra field. Each is refused, naming the physical line, the data row and
# the counts. Each case: the file, then (line, data row, fields, header fields).
RAGGED_CSV: dict[str, tuple[bytes, tuple[int, int, int, int]]] = {
    "a short row": (b"a,b,y\n1,2,0\n4,5\n6,7,1\n", (3, 2, 2, 3)),
    "a long first row (read as the index)": (b"a,y\n1,2,0\n4,5\n6,7\n", (2, 1, 3, 2)),
    "every row long (read as the index)": (b"a,y\n1,2,0\n4,5,1\n6,7,0\n", (2, 1, 3, 2)),
    "a long row later": (b"a,b,y\n1,2,0\n3,4,1\n5,6,7,0\n", (4, 3, 4, 3)),
    "a trailing empty field": (b"a,y\n1,0\n2,1,\n3,0\n", (3, 2, 3, 2)),
    "a trailing empty field on every row": (b"a,y\n1,0,\n2,1,\n", (2, 1, 3, 2)),
    "after a quoted value over two lines": (b'a,b,y\n"x,\ny",2,0\n3,4\n', (4, 2, 2, 3)),
    "after blank lines": (b"\na,b,y\n\n1,2,0\n\n3,4\n", (6, 2, 2, 3)),
    "CRLF line ends": (b"a,b,y\r\n1,2,0\r\n3,4,5,1\r\n", (3, 2, 4, 3)),
    "lone CR line ends": (b"a,b,y\r1,2,0\r3,4\r", (3, 2, 2, 3)),
    "a literal quote in a short row": (b'a,b,y\n5" x,2,0\n6" y,1\n', (3, 2, 2, 3)),
    "a quote after a space is literal": (b'a,y\n1,0\n "3,4",1\n', (3, 2, 3, 2)),
    "no line end after the last row": (b"a,b,y\n1,2,0\n3,4", (3, 2, 2, 3)),
    "a single-column header": (b"y\n1\n2,3\n", (3, 2, 2, 1)),
}


@pytest.mark.parametrize("case", RAGGED_CSV, ids=list(RAGGED_CSV))
def test_csv_rows_with_another_number_of_fields_are_refused_naming_the_line(case: str) -> None:
    data, (line, row, fields, header) = RAGGED_CSV[case]
    with pytest.raises(errors.UnreadableDatasetError) as e:
        read_table(data, "/d.csv")
    assert e.value.exit_code == 12
    assert e.value.message == (
        f"dataset /d.csv is a malformed CSV: line {line} (data row {row}) has {fields} "
        f"field{'s' if fields != 1 else ''} but the header has {header}; every row needs one value per "
        "column (an empty value is written as nothing between two commas)"
    )


def test_an_unterminated_quote_is_named() -> None:
    with pytest.raises(errors.UnreadableDatasetError) as e:
        read_table(b'a,b,y\n1,2,0\n3,"4,1\n5,6,0\n', "/d.csv")
    assert "unterminated quoted field starting at line 3 (data row 2)" in e.value.message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'a,"b,y\n1,2,0\n3,4,1\n', "line 1 (the header)"),
        (b'"a,b,y\n', "line 1 (the header)"),
        (b'\n\na,b,"y\n1,2,0\n', "line 3 (the header)"),  # blank lines before the header are skipped
        (b'\xef\xbb\xbfa,"b\r\n1,2\r\n', "line 1 (the header)"),
    ],
)
def test_an_unterminated_quote_in_the_header_is_named(data: bytes, where: str) -> None:
    # pandas says only "EOF inside string starting at row 0"; a data row's was already named
    with pytest.raises(errors.UnreadableDatasetError) as e:
        read_table(data, "/d.csv")
    assert e.value.exit_code == 12
    assert e.value.message == (
        f"dataset /d.csv is a malformed CSV: unterminated quoted field starting at {where}; a field that "
        'opens with a quote must close with one (write "" for a quote inside it)'
    )


# Files whose rows all have the header's number of fields, however they are written: quoted commas,
# quoted line breaks, "" escapes, quotes inside unquoted fields, blank and whitespace-only lines (pandas
# skips both), a byte-order mark, CRLF. Each case: the file, then the rows as pandas reads them.
WELL_FORMED_CSV: dict[str, tuple[bytes, list[list[object]]]] = {
    "quoted commas and line breaks": (
        b'a,b,y\n"x, and\nmore, lines",2,0\n"p,q","r\r\ns",1\n',
        [["x, and\nmore, lines", "2", 0], ["p,q", "r\r\ns", 1]],
    ),
    "escaped quotes": (b'a,b,y\n"say ""hi"", ok",2,0\n"""",3,1\n', [['say "hi", ok', 2, 0], ['"', 3, 1]]),
    "quotes inside an unquoted field": (b'a,b,y\n5" x,2,0\n6",3,1\n', [['5" x', 2, 0], ['6"', 3, 1]]),
    "text after a closing quote": (b'a,b,y\n"x"y,2,0\n"p",3,1\n', [["xy", 2, 0], ["p", 3, 1]]),
    "blank and whitespace-only lines": (b"a,b,y\n1,2,0\n\n  \n\t\n3,4,1\n\n", [[1, 2, 0], [3, 4, 1]]),
    "BOM and CRLF": (b'\xef\xbb\xbf"a",b,y\r\n1,2,0\r\n\r\n3,4,1\r\n', [[1, 2, 0], [3, 4, 1]]),
    "empty values": (b"a,b,y\n,,0\n1,,1\n", [[None, None, 0], [1, None, 1]]),
}


@pytest.mark.parametrize("case", WELL_FORMED_CSV, ids=list(WELL_FORMED_CSV))
def test_well_formed_csv_rows_are_not_ragged(case: str) -> None:
    data, rows = WELL_FORMED_CSV[case]
    df = read_table(data, "/d.csv")
    assert isinstance(df.index, pd.RangeIndex)
    got = df.astype(object).where(df.notna(), None).to_numpy().tolist()
    assert got == rows


def test_the_row_scan_agrees_with_the_reader_on_generated_files() -> None:
    # Random tables with quoted commas, line breaks, "" escapes, blank lines and CRLF, a third of them
    # with one row a field short or long: the scan finds that row, a file it passes is read with
    # exactly its rows, and one it fails is refused naming the row.
    from kubeloop_trainer.data import _csv_fault

    rng = np.random.default_rng(7)
    pieces = ["1", "2.5", "", "x", '"a,b"', '"line\nbreak"', '"say ""hi"""', '"\r\n,"']
    for _ in range(200):
        ncol, nrow = int(rng.integers(1, 5)), int(rng.integers(1, 12))
        rows = [[str(rng.choice(pieces)) for _ in range(ncol)] for _ in range(nrow)]
        bad = int(rng.integers(0, nrow)) if rng.random() < 1 / 3 else -1
        if bad >= 0:
            rows[bad] = rows[bad][:-1] if ncol > 1 and rng.random() < 0.5 else [*rows[bad], "9"]
        end = "\r\n" if rng.random() < 0.5 else "\n"
        lines = [",".join(f"c{i}" for i in range(ncol))]
        for r in rows:
            lines.append(",".join(r) or '""')  # a lone empty field would be a blank line
            if rng.random() < 0.1:
                lines.append("")
        data = (end.join(lines) + end).encode()
        exact = _csv_fault(data, ncol)
        if bad < 0:
            assert exact is None, data
            assert len(read_table(data, "/d.csv")) == nrow, data
        else:
            assert exact is not None, data
            assert exact.row == bad + 1, data
            with pytest.raises(errors.UnreadableDatasetError, match=f"data row {bad + 1}\\)"):
                read_table(data, "/d.csv")


@pytest.mark.parametrize("case", CSV_PARITY, ids=[c.id for c in CSV_PARITY])
def test_csv_files_are_judged_as_the_upload_check_judges_them(case: CsvCase) -> None:
    # the same table as api/tests/test_datasets_validation.py: the four ways in agree
    if case.refused:
        with pytest.raises(errors.UnreadableDatasetError) as e:
            read_table(case.data, "/d.csv")
        assert e.value.exit_code == 12
        assert e.value.message.startswith("dataset /d.csv is a malformed CSV: "), e.value.message
        assert case.refused in e.value.message
    else:
        df = read_table(case.data, "/d.csv")
        assert (tuple(df.columns), len(df)) == (case.columns, case.rows)


@pytest.mark.parametrize("name", ["", "  "])
def test_a_parquet_column_without_a_name_is_refused(name: str) -> None:
    # as the upload check refuses it, and as a CSV header's empty name is refused
    df = good_frame()
    df[name] = 1.0
    with pytest.raises(errors.UnreadableDatasetError) as e:
        read_table(parquet_bytes(df), "/d.parquet")
    assert e.value.exit_code == 12
    assert e.value.message == (
        "dataset /d.parquet has a column without a name: column 4 has no name; every column needs one"
    )

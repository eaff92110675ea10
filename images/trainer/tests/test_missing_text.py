"""Which CSV cells are missing values: the same inputs at training, in the ONNX graph, in the drift
baseline and when serving (no I/O)."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from kubeloop_trainer import errors
from kubeloop_trainer.baseline import baseline_json
from kubeloop_trainer.data import prepare, read_table
from kubeloop_trainer.export import export_onnx
from kubeloop_trainer.model import InferenceHead, build_model

from kubeloop.contracts import ModelMetadata
from kubeloop.resources import DatasetSpec

# pandas' default missing-value strings (read_csv's na_values), the empty field aside
SPELLINGS = [
    "NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>", "NULL", "null", "None", "NaN", "nan", "-NaN",
    "-nan", "1.#IND", "-1.#IND", "1.#QNAN", "-1.#QNAN",
]  # fmt: skip


def _prepare(data: bytes, task: str = "classification", uri: str = "/d.csv", **spec: object):  # type: ignore[no-untyped-def]
    ds_spec = DatasetSpec.model_validate({"uri": uri, "target": "y", **spec})
    return prepare(read_table(data, uri), ds_spec, task, seed=1)  # type: ignore[arg-type]


def _csv(rows: list[tuple[object, ...]], header: str) -> bytes:
    return (header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n").encode()


def test_the_spellings_are_pandas_defaults() -> None:
    from kubeloop_trainer.data import MISSING_TEXT

    assert set(MISSING_TEXT) == set(SPELLINGS)


def test_text_spellings_are_categories_in_training_graph_and_baseline() -> None:
    # NA is Namibia: the server reads the JSON string "NA" as that category, so training must too
    values = [*SPELLINGS, "DE", "FR", ""]  # "" (an empty field) is the one missing value
    rows = [(values[i % len(values)], i % 7 * 0.5, i % 2) for i in range(4 * len(values))]
    ds = _prepare(_csv(rows, "country,x,y"))
    (stats,) = ds.encoder.categorical
    assert stats.name == "country"
    assert sorted(stats.categories) == sorted(v for v in values if v)
    raw = ds.raw_train["country"].tolist()
    assert set(raw) == {*(v for v in values if v), None}

    baseline = json.loads(baseline_json(ds, {}))["features"]["country"]
    assert sorted(baseline["categories"]) == sorted(stats.categories)
    assert baseline["missingCount"] == raw.count(None)

    # The graph: "NA" is a category of its own, not the training mode and not an unseen value
    torch.manual_seed(0)
    head = InferenceHead(build_model(ds, [8], 0.0).eval(), ds.task, 0.0, 1.0).eval()
    meta = ModelMetadata(
        features=ds.encoder.features, task=ds.task, classes=ds.classes, target="y", model_name="m"
    )
    sess = ort.InferenceSession(
        export_onnx(head, ds, meta).SerializeToString(), providers=["CPUExecutionProvider"]
    )

    def served(country: str) -> list[float]:
        feed = {"country": np.array([[country]], dtype=object), "x": np.array([[0.5]], dtype=np.float32)}
        return [float(p) for p in sess.run(["probabilities"], feed)[0][0]]

    def trained(country: str | None) -> list[float]:
        x = ds.encoder.encode({"country": np.array([country], dtype=object), "x": np.array([0.5])})
        with torch.no_grad():
            return [float(p) for p in head(torch.from_numpy(x))[0]]

    for v in ("NA", "None", "null", "#N/A"):
        assert served(v) == pytest.approx(trained(v), abs=1e-5), v
        assert served(v) != pytest.approx(served("ZZ"), abs=1e-6), v  # not unseen
        assert served(v) != pytest.approx(served(stats.mode), abs=1e-6) or v == stats.mode, v
    assert served("") == pytest.approx(trained(None), abs=1e-5)  # JSON null: missing, the mode


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_spellings_in_a_numeric_column_are_missing(spelling: str) -> None:
    # R and Excel exports write NA, #N/A, null for a missing number; they do not count against the
    # 90 % rule (half the column here)
    rows = [(spelling if i % 2 else i * 0.25, "a" if i % 3 else "b", i % 2) for i in range(40)]
    ds = _prepare(_csv(rows, "x,c,y"))
    assert [(f.name, f.type) for f in ds.encoder.features] == [("x", "numeric"), ("c", "categorical")]
    x = np.concatenate([ds.raw_train["x"], ds.raw_val["x"]])
    assert int(np.isnan(x).sum()) == 20
    train = ds.raw_train["x"]
    assert ds.encoder.numeric[0].median == float(np.median(train[~np.isnan(train)]))


def test_a_numeric_column_keeps_the_numbers_pandas_reads() -> None:
    values = ["1", "NA", "0.1", "12573022109.339329", "-1.3210486329130188e-22", "", "#N/A", "7"]
    data = _csv([(v, i % 2) for i, v in enumerate(values * 3)], "x,y")
    got = read_table(data, "/d.csv")["x"]
    assert got.dtype == np.float64
    plain = pd.read_csv(io.BytesIO(data))["x"]  # pandas' defaults: the same numbers, bit for bit
    assert got.tolist()[:3] == [1.0, pytest.approx(float("nan"), nan_ok=True), 0.1]
    np.testing.assert_array_equal(got.to_numpy(), plain.to_numpy())


def test_booleans_with_spellings_stay_a_numeric_column() -> None:
    rows = [("NA" if i % 5 == 0 else ("True" if i % 2 else "False"), i % 2) for i in range(40)]
    ds = _prepare(_csv(rows, "flag,y"))
    assert [(f.name, f.type) for f in ds.encoder.features] == [("flag", "numeric")]
    assert int(np.isnan(np.concatenate([ds.raw_train["flag"], ds.raw_val["flag"]])).sum()) == 8


def test_a_mostly_numeric_column_names_its_real_bad_value() -> None:
    rows = [("oops" if i == 3 else ("NA" if i % 4 == 0 else i), i % 2) for i in range(40)]
    with pytest.raises(errors.NonNumericValuesError, match=r"1 non-numeric value\(s\), e.g. 'oops'"):
        _prepare(_csv(rows, "x,y"))


def test_a_column_of_spellings_only_is_all_missing() -> None:
    rows = [(("NA", "", "#N/A")[i % 3], i, i % 2) for i in range(30)]
    with pytest.raises(errors.AllMissingColumnError, match="'x'"):
        _prepare(_csv(rows, "x,z,y"))


def test_target_spellings() -> None:
    # a text label "NA" is a class; a numeric label written NA is a missing label
    rows = [(i * 0.5, ("NA", "DE", "FR")[i % 3]) for i in range(30)]
    assert _prepare(_csv(rows, "x,y")).classes == ["DE", "FR", "NA"]
    rows = [(i * 0.5, "NA" if i == 4 else i % 2) for i in range(30)]
    with pytest.raises(errors.MissingTargetValuesError, match="1 missing"):
        _prepare(_csv(rows, "x,y"))
    with pytest.raises(errors.MissingTargetValuesError, match="1 missing"):
        _prepare(_csv(rows, "x,y"), task="regression")


def test_a_date_column_with_spellings_is_still_dates() -> None:
    rows = [(i * 0.5, "NA" if i % 4 == 0 else f"2024-01-{i % 28 + 1:02d}", i % 2) for i in range(30)]
    ds = _prepare(_csv(rows, "x,when,y"))
    assert ds.ignored_columns == {"when": "dates"}
    # declared categorical, its values are categories, NA among them
    ds = _prepare(_csv(rows, "x,when,y"), categoricalFeatures=["when"])
    assert "NA" in ds.encoder.categorical[0].categories


def test_parquet_strings_are_literal_and_nulls_missing() -> None:
    df = pd.DataFrame(
        {
            "country": pd.Series([("NA", "DE", None, "null", "")[i % 5] for i in range(40)], dtype=object),
            "x": [np.nan if i % 4 == 0 else i * 0.5 for i in range(40)],
            "y": [i % 2 for i in range(40)],
        }
    )
    buf = io.BytesIO()
    df.to_parquet(buf)
    ds = _prepare(buf.getvalue(), uri="/d.parquet")
    assert sorted(ds.encoder.categorical[0].categories) == ["DE", "NA", "null"]
    raw = np.concatenate([ds.raw_train["country"], ds.raw_val["country"]]).tolist()
    assert raw.count(None) == 16  # null and ""

    # a string column of numbers is text too: NA there is named, not taken for a missing number
    df["x"] = ["NA" if i == 3 else str(i) for i in range(40)]
    buf = io.BytesIO()
    df.to_parquet(buf)
    with pytest.raises(errors.NonNumericValuesError, match=r"e\.g\. 'NA'"):
        _prepare(buf.getvalue(), uri="/d.parquet")

"""Drift engine: input handling -- errors that name the feature, and the table formats accepted."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from kubeloop.drift import (
    Baseline,
    CategoricalFeature,
    DriftAccumulator,
    DriftInputError,
    MissingFeatureError,
    NumericFeature,
    build_baseline,
    category_key,
    score,
)


@pytest.fixture
def baseline() -> Baseline:
    rng = np.random.default_rng(0)
    return build_baseline(
        {
            "age": rng.normal(40, 10, 500),
            "income": rng.lognormal(10, 1, 500),
            "city": rng.choice(["a", "b"], 500),
        }
    )


def _current(n: int = 200) -> dict[str, object]:
    rng = np.random.default_rng(1)
    return {
        "age": rng.normal(40, 10, n),
        "income": rng.lognormal(10, 1, n),
        "city": rng.choice(["a", "b"], n),
    }


def test_missing_feature_is_an_error_naming_it(baseline: Baseline) -> None:
    current = _current()
    del current["income"]
    with pytest.raises(MissingFeatureError, match="'income'") as info:
        score(baseline, current)
    assert info.value.features == ("income",)
    del current["city"]
    with pytest.raises(MissingFeatureError, match="'income', 'city'"):
        score(baseline, current)


def test_extra_columns_are_ignored(baseline: Baseline) -> None:
    current = _current()
    plain = score(baseline, current)
    current["prediction"] = np.ones(200)
    assert score(baseline, current) == plain


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array(["1.5", "x"] * 100), "expected numeric values, got dtype <U3"),
        (np.array([1.0, "abc"] * 100, dtype=object), "found str 'abc' at row 1"),
        (np.zeros((200, 2)), "1-D"),
        (np.zeros(199), "has 199 rows"),
        (np.array(["2024-01-01"] * 200, dtype="datetime64[D]"), "datetime64"),
        (np.array([1 + 2j] * 200), "complex128"),
        (5.0, "expected a 1-D column"),
        ("text", "expected a 1-D column"),
    ],
)
def test_bad_numeric_input_names_the_feature(baseline: Baseline, value: object, match: str) -> None:
    current = _current()
    current["income"] = value
    with pytest.raises(DriftInputError, match=match) as info:
        score(baseline, current)
    assert info.value.feature == "income"
    assert "feature 'income'" in str(info.value)


def test_bad_categorical_input_names_the_feature(baseline: Baseline) -> None:
    current = _current()
    current["city"] = np.array([[1, 2]] * 200)
    with pytest.raises(DriftInputError, match=r"feature 'city'.*1-D"):
        score(baseline, current)
    current["city"] = np.array([{"a": 1}] * 200, dtype=object)
    with pytest.raises(DriftInputError, match=r"feature 'city'.*hashable"):
        score(baseline, current)


def test_failed_update_leaves_the_accumulator_unchanged(baseline: Baseline) -> None:
    acc = DriftAccumulator(baseline)
    acc.update(_current())
    before = acc.counts()
    bad = _current()
    bad["city"] = np.zeros((200, 2))
    with pytest.raises(DriftInputError):
        acc.update(bad)
    assert acc.counts() == before
    assert acc.rows == 200


def test_build_errors() -> None:
    with pytest.raises(MissingFeatureError, match="'nope'"):
        build_baseline({"x": [1.0, 2.0]}, categorical={"nope"})
    with pytest.raises(MissingFeatureError, match="'y'"):
        build_baseline({"x": [1.0, 2.0]}, features=["x", "y"])
    with pytest.raises(DriftInputError, match=r"feature 'x'.*no rows"):
        build_baseline({"x": np.array([])})
    with pytest.raises(DriftInputError, match=r"feature 'x'.*expected numeric"):
        build_baseline({"x": ["a", "b"]}, categorical=set())
    with pytest.raises(ValueError, match="bins"):
        build_baseline({"x": [1.0, 2.0]}, bins=1)
    with pytest.raises(TypeError, match="mapping of column name"):
        build_baseline([[1.0, 2.0]])
    with pytest.raises(TypeError, match="column names must be strings"):
        build_baseline({1: [1.0]})


def test_result_argument_errors(baseline: Baseline) -> None:
    acc = DriftAccumulator(baseline)
    with pytest.raises(ValueError, match="psi_threshold"):
        acc.result(psi_threshold=0)
    with pytest.raises(ValueError, match="js_threshold"):
        acc.result(js_threshold=-1)
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="drift_share"):
            acc.result(drift_share=share)
    with pytest.raises(ValueError, match="min_samples"):
        acc.result(min_samples=0)


def test_kinds_are_inferred_or_declared() -> None:
    cols = {
        "f": np.array([1.5, 2.5, 3.5]),
        "i": np.array([1, 2, 3]),
        "s": np.array(["a", "b", "c"]),
        "b": np.array([True, False, True]),
        "o": np.array(["a", None, "c"], dtype=object),
    }
    kinds = {n: f.kind for n, f in build_baseline(cols).features.items()}
    assert kinds == {
        "f": "numeric",
        "i": "numeric",
        "s": "categorical",
        "b": "categorical",
        "o": "categorical",
    }
    declared = build_baseline(cols, categorical={"i", "s", "o"}, features=["f", "i", "s", "b", "o"])
    kinds = {n: f.kind for n, f in declared.features.items()}
    assert kinds == {
        "f": "numeric",
        "i": "categorical",
        "s": "categorical",
        "b": "numeric",
        "o": "categorical",
    }
    i = declared.features["i"]
    assert isinstance(i, CategoricalFeature)
    assert i.categories == ["1", "2", "3"]


def test_category_keys_are_canonical() -> None:
    assert category_key("x") == "x"
    assert category_key(3) == "3"
    assert category_key(np.int64(3)) == "3"
    assert category_key(3.0) == "3"
    assert category_key(2.5) == "2.5"
    assert category_key(True) == "True"
    assert category_key(b"x") == "x"
    assert category_key(None) is None
    assert category_key(float("nan")) is None
    assert category_key(dt.date(2024, 1, 2)) == "2024-01-02"
    # ints seen in training match floats of the same value at check time
    baseline = build_baseline({"code": np.array([1, 2, 2, 3] * 50)}, categorical={"code"})
    result = score(baseline, {"code": np.array([1.0, 2.0, 2.0, 3.0] * 50)})
    assert result.features["code"].psi == 0.0
    assert result.features["code"].unseen == 0


def test_missing_values_in_every_form() -> None:
    x = np.array([1.0, 2.0, np.nan, 4.0] * 50)
    baseline = build_baseline({"x": x, "c": np.array(["a", None, "b", float("nan")] * 50, dtype=object)})
    fx = baseline.features["x"]
    fc = baseline.features["c"]
    assert isinstance(fx, NumericFeature)
    assert isinstance(fc, CategoricalFeature)
    assert fx.missing_count == 50
    assert fc.missing_count == 100
    assert fc.categories == ["a", "b"]
    # numeric given as objects with None is the same as NaN
    obj = np.array([1.0, 2.0, None, 4] * 50, dtype=object)
    result = score(baseline, {"x": obj, "c": np.array(["a", "b", None, "a"] * 50, dtype=object)})
    assert result.features["x"].psi == 0.0
    assert result.features["x"].missing == 50


def test_pandas_and_pyarrow_tables_score_like_numpy() -> None:
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    rng = np.random.default_rng(3)
    n = 1000
    ref = {
        "x": rng.normal(size=n),
        "k": rng.integers(0, 5, n),
        "c": rng.choice(np.array(["a", "b", "c"]), n),
    }
    cur_x = rng.normal(0.3, 1.0, n)
    cur_x[::10] = np.nan
    cur_c = rng.choice(np.array(["a", "b", "d"]), n).astype(object)
    cur_c[::7] = None
    cur = {"x": cur_x, "k": rng.integers(0, 6, n), "c": cur_c}
    baseline = build_baseline(ref, categorical={"c"})
    assert build_baseline(pd.DataFrame(ref), categorical={"c"}) == baseline
    assert build_baseline(pa.table(ref), categorical={"c"}) == baseline
    expected = score(baseline, cur)
    assert score(baseline, pd.DataFrame(cur)) == expected
    assert score(baseline, pa.table(cur)) == expected
    # chunked pyarrow columns and dictionary-encoded strings
    table = pa.concat_tables([pa.table(cur).slice(0, 400), pa.table(cur).slice(400)])
    table = table.set_column(2, "c", table.column("c").dictionary_encode())
    assert score(baseline, table) == expected
    # pandas nullable dtypes
    frame = pd.DataFrame(cur)
    frame["k"] = frame["k"].astype("Int64")
    frame.loc[0, "k"] = pd.NA
    result = score(baseline, frame)
    assert result.features["k"].missing == 1
    # a DataFrame with text in a numeric column names the feature
    frame = pd.DataFrame(cur)
    frame["x"] = "oops"
    with pytest.raises(DriftInputError, match="feature 'x'"):
        score(baseline, frame)
    with pytest.raises(MissingFeatureError, match="'k'"):
        score(baseline, pd.DataFrame(cur).drop(columns=["k"]))

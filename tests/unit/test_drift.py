"""Drift engine: scores against a plain loop-over-bins reference, determinism, JSON round trip,
chunked accumulation, and statistical behaviour (issue #6, acceptance 1-4)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from kubeloop.drift import (
    PSI_EPSILON,
    Baseline,
    BaselineError,
    CategoricalFeature,
    DriftAccumulator,
    NumericFeature,
    build_baseline,
    js_distance,
    psi,
    score,
)

# --------------------------------------------------------------------------------------------
# reference implementation: plain Python loops over values and buckets, written from the
# documented definitions (right-closed bins, missing bucket, unseen bucket, PSI with a 1e-4 floor
# on proportions and natural log, Jensen-Shannon distance with base-2 logs).


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def loop_numeric_counts(values: Sequence[Any], edges: Sequence[float]) -> list[int]:
    k = len(edges)
    counts = [0] * (k + 2)
    for v in values:
        if _is_missing(v):
            counts[k + 1] += 1
            continue
        for i in range(k + 1):
            below_upper = i == k or v <= edges[i]
            above_lower = i == 0 or v > edges[i - 1]
            if below_upper and above_lower:
                counts[i] += 1
                break
        else:  # pragma: no cover - every value lands in exactly one bucket
            raise AssertionError(v)
    return counts


def loop_categorical_counts(values: Sequence[Any], categories: Sequence[str]) -> list[int]:
    k = len(categories)
    counts = [0] * (k + 2)
    for v in values:
        if _is_missing(v):
            counts[k + 1] += 1
            continue
        for i, c in enumerate(categories):
            if v == c:
                counts[i] += 1
                break
        else:
            counts[k] += 1
    return counts


def loop_psi(ref: Sequence[int], cur: Sequence[int]) -> float:
    rt, ct = sum(ref), sum(cur)
    total = 0.0
    for r, c in zip(ref, cur, strict=True):
        p = max(r / rt, 1e-4)
        q = max(c / ct, 1e-4)
        total += (q - p) * math.log(q / p)
    return total


def loop_js(ref: Sequence[int], cur: Sequence[int]) -> float:
    rt, ct = sum(ref), sum(cur)
    jsd = 0.0
    for r, c in zip(ref, cur, strict=True):
        p, q = r / rt, c / ct
        m = (p + q) / 2
        if p > 0:
            jsd += 0.5 * p * math.log2(p / m)
        if q > 0:
            jsd += 0.5 * q * math.log2(q / m)
    return math.sqrt(max(jsd, 0.0))


def loop_check(
    baseline: Baseline, reference: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[list[int], list[int], float, float]]:
    """Reference counts (recomputed from raw data), current counts, psi, js -- per feature."""
    out = {}
    for name, feature in baseline.features.items():
        ref_vals, cur_vals = list(reference[name]), list(current[name])
        if isinstance(feature, NumericFeature):
            ref = loop_numeric_counts(ref_vals, feature.edges)
            cur = loop_numeric_counts(cur_vals, feature.edges)
        else:
            ref = loop_categorical_counts(ref_vals, feature.categories)
            cur = loop_categorical_counts(cur_vals, feature.categories)
        out[name] = (ref, cur, loop_psi(ref, cur), loop_js(ref, cur))
    return out


# --------------------------------------------------------------------------------------------
# random cases


def _with_missing(rng: np.random.Generator, x: np.ndarray, rate: float) -> np.ndarray:
    if rate <= 0:
        return x
    mask = rng.random(x.shape[0]) < rate
    if x.dtype.kind == "f":
        x = x.copy()
        x[mask] = np.nan
        return x
    obj = x.astype(object)
    obj[mask] = None
    return obj


def random_case(seed: int) -> tuple[dict[str, Any], dict[str, Any], set[str], int]:
    """Reference and current tables mixing every kind of column the engine must handle."""
    rng = np.random.default_rng(seed)
    n_ref = int(rng.integers(50, 3000))
    n_cur = int(rng.integers(1, 3000))
    bins = int(rng.choice([2, 3, 5, 10, 20, 40]))
    shift = float(rng.choice([0.0, 0.1, 0.5, 2.0]))
    miss_ref = float(rng.choice([0.0, 0.0, 0.05, 0.3]))
    miss_cur = float(rng.choice([0.0, 0.05, 0.5]))
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    # continuous
    ref["normal"] = _with_missing(rng, rng.normal(0, 1, n_ref), miss_ref)
    cur["normal"] = _with_missing(rng, rng.normal(shift, 1 + shift / 2, n_cur), miss_cur)
    ref["lognormal"] = rng.lognormal(0, 1.5, n_ref)
    cur["lognormal"] = rng.lognormal(shift, 1.5, n_cur)
    # heavy ties: small integer support (as float and as int), current may leave the range
    ref["ties"] = _with_missing(rng, rng.integers(0, 4, n_ref).astype(np.float64), miss_ref)
    cur["ties"] = rng.integers(-1, 6, n_cur).astype(np.float64)
    ref["int_counts"] = rng.poisson(3, n_ref)
    cur["int_counts"] = rng.poisson(3 + shift, n_cur)
    # constant column; current mostly the same constant, sometimes below/above it
    c = float(rng.normal())
    ref["constant"] = np.full(n_ref, c)
    cur["constant"] = np.where(rng.random(n_cur) < shift / 4, c + rng.choice([-1.0, 1.0], n_cur), c)
    # all missing in training
    ref["all_missing"] = np.full(n_ref, np.nan)
    cur["all_missing"] = _with_missing(rng, rng.normal(size=n_cur), 0.9)
    # categorical: strings with skewed frequencies, unseen categories and missing values in current
    cats = np.array([f"cat{i}" for i in range(int(rng.integers(1, 12)))])
    w = rng.dirichlet(np.ones(cats.size))
    ref["colour"] = _with_missing(rng, rng.choice(cats, n_ref, p=w), miss_ref)
    cur_cats = np.concatenate([cats, ["new1", "new2"]])
    w2 = np.concatenate([w, [0.02 + shift / 10, 0.01]])
    cur["colour"] = _with_missing(rng, rng.choice(cur_cats, n_cur, p=w2 / w2.sum()), miss_cur)
    ref["unicode"] = rng.choice(np.array(["é", "ß", "東京", "a b", ""]), n_ref)
    cur["unicode"] = rng.choice(np.array(["é", "ß", "東京", "zz"]), n_cur)
    categorical = {"colour", "unicode"}
    return ref, cur, categorical, bins


@pytest.mark.parametrize("seed", range(24))
def test_scores_match_loop_reference(seed: int) -> None:
    ref, cur, categorical, bins = random_case(seed)
    baseline = build_baseline(ref, categorical=categorical, bins=bins)
    result = score(baseline, cur, min_samples=1)
    expected = loop_check(baseline, ref, cur)
    assert set(result.features) == set(expected)
    drifted = []
    for name, (ref_counts, cur_counts, e_psi, e_js) in expected.items():
        feature = baseline.features[name]
        got = result.features[name]
        assert feature.reference_counts() == ref_counts, name  # baseline counts: exact
        assert got.counts == cur_counts, name  # current counts: exact
        assert got.psi is not None
        assert got.jensen_shannon is not None
        assert got.psi == pytest.approx(e_psi, abs=1e-9, rel=0), name
        assert got.jensen_shannon == pytest.approx(e_js, abs=1e-9, rel=0), name
        assert 0.0 <= got.jensen_shannon <= 1.0
        # the public metric functions on the same counts agree exactly
        assert got.psi == psi(ref_counts, cur_counts)
        assert got.jensen_shannon == js_distance(ref_counts, cur_counts)
        assert got.drifted == (e_psi >= 0.2 or e_js >= 0.1), name
        if got.drifted:
            drifted.append(name)
        assert got.missing == cur_counts[-1]
        assert got.unseen == (cur_counts[-2] if isinstance(feature, CategoricalFeature) else 0)
    assert result.drifted_features == drifted
    assert result.share == len(drifted) / len(expected)
    assert result.drifted == (result.share >= 0.5)
    assert result.samples == len(cur["normal"])


def test_random_cases_cover_every_situation() -> None:
    """The randomised cases really exercise unseen categories, missing values, constants, shifts."""
    seen = {"unseen": 0, "missing": 0, "drift": 0, "no_drift": 0, "out_of_range_constant": 0}
    for seed in range(24):
        ref, cur, categorical, bins = random_case(seed)
        result = score(build_baseline(ref, categorical=categorical, bins=bins), cur, min_samples=1)
        seen["unseen"] += result.features["colour"].unseen > 0
        seen["missing"] += result.features["normal"].missing > 0
        seen["drift"] += result.features["normal"].drifted
        seen["no_drift"] += not result.features["normal"].drifted
        counts = result.features["constant"].counts
        seen["out_of_range_constant"] += counts[0] + counts[2] > 0
    assert all(v > 0 for v in seen.values()), seen


def test_numeric_edges_are_quantiles_with_range_buckets() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=10_000)
    feature = build_baseline({"x": x}, bins=10).features["x"]
    assert isinstance(feature, NumericFeature)
    assert len(feature.edges) == 11
    assert feature.edges[-1] == x.max()
    assert feature.edges[0] < x.min()
    assert feature.counts[0] == 0  # below the training range
    assert feature.counts[-1] == 0  # above the training range
    for c in feature.counts[1:-1]:  # ten equally filled quantile bins
        assert abs(c - 1000) <= 1
    assert feature.frequencies[1] == feature.counts[1] / 10_000
    assert feature.missing_count == 0


def test_constant_and_tied_columns() -> None:
    baseline = build_baseline({"c": np.full(100, 5.0), "t": np.repeat([0.0, 1.0], [90, 10])}, bins=10)
    c = baseline.features["c"]
    assert isinstance(c, NumericFeature)
    assert c.edges == [np.nextafter(5.0, -np.inf), 5.0]
    assert c.counts == [0, 100, 0]
    t = baseline.features["t"]
    assert isinstance(t, NumericFeature)
    assert sum(t.counts) == 100
    assert len(t.edges) == len(set(t.edges))
    # a shift of a constant column in either direction is detected; the same constant is not
    for value, drifted in ((5.0, False), (4.0, True), (6.0, True)):
        result = score(
            baseline, {"c": np.full(200, value), "t": np.repeat([0.0, 1.0], [180, 20])}, min_samples=100
        )
        assert result.features["c"].drifted is drifted, value
        assert result.features["t"].drifted is False


def test_metric_functions() -> None:
    assert psi([1, 2, 3], [2, 4, 6]) == 0.0
    assert js_distance([1, 2, 3], [2, 4, 6]) == 0.0
    assert js_distance([1, 0], [0, 1]) == 1.0  # disjoint supports: maximal distance, base 2
    # the documented epsilon floors empty buckets
    expected = (1.0 - PSI_EPSILON) * math.log(1.0 / PSI_EPSILON) + (PSI_EPSILON - 1.0) * math.log(PSI_EPSILON)
    assert psi([1, 0], [0, 1]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="buckets"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="zero"):
        js_distance([0, 0], [1, 1])


# --------------------------------------------------------------------------------------------
# acceptance 2: determinism and exact JSON round trip


def test_same_data_same_result() -> None:
    ref, cur, categorical, bins = random_case(3)
    b1 = build_baseline(ref, categorical=categorical, bins=bins)
    b2 = build_baseline(ref, categorical=categorical, bins=bins)
    assert b1 == b2
    assert b1.to_json() == b2.to_json()
    r1 = score(b1, cur)
    r2 = score(b2, cur)
    assert r1 == r2
    assert r1.to_json() == r2.to_json()
    # row order does not matter either (counts are order-free; quantiles sort)
    perm = np.random.default_rng(0).permutation(len(ref["normal"]))
    shuffled = {k: np.asarray(v)[perm] for k, v in ref.items()}
    assert build_baseline(shuffled, categorical=categorical, bins=bins) == b1


@pytest.mark.parametrize("seed", range(6))
def test_baseline_json_round_trip_is_exact(seed: int) -> None:
    ref, _, categorical, bins = random_case(seed)
    rng = np.random.default_rng(seed)
    # awkward floats: tiny, huge, negative, many significant digits
    ref["awkward"] = rng.normal(size=len(ref["normal"])) * 10.0 ** rng.integers(-300, 300, len(ref["normal"]))
    baseline = build_baseline(
        ref, categorical=categorical, bins=bins, metadata={"model": "m", "version": "3"}
    )
    text = baseline.to_json()
    again = Baseline.from_json(text)
    assert again == baseline
    assert again.to_json() == text
    assert Baseline.from_json(text.encode()) == baseline


def test_baseline_json_is_camel_case_and_versioned() -> None:
    import json

    doc = json.loads(build_baseline({"x": [1.0, 2.0, 3.0], "c": ["a", None, "b"]}).to_json())
    assert doc["schemaVersion"] == 1
    assert doc["rowCount"] == 3
    assert doc["features"]["x"]["kind"] == "numeric"
    assert doc["features"]["c"] == {
        "kind": "categorical",
        "categories": ["a", "b"],
        "counts": [1, 1],
        "frequencies": [1 / 3, 1 / 3],
        "unseenCount": 0,
        "missingCount": 1,
        "missingFrequency": 1 / 3,
    }


def test_invalid_baseline_documents_are_refused() -> None:
    import json

    good = json.loads(build_baseline({"x": [1.0, 2.0, 3.0]}).to_json())
    with pytest.raises(BaselineError, match="schemaVersion 2"):
        Baseline.from_json(json.dumps({**good, "schemaVersion": 2}))
    for version in (True, "1", 1.5, None):  # not a version number, even where Python says True == 1
        with pytest.raises(BaselineError, match="schemaVersion"):
            Baseline.from_json(json.dumps({**good, "schemaVersion": version}))
    bad = json.loads(json.dumps(good))
    bad["features"]["x"]["counts"][1] += 1
    with pytest.raises(BaselineError, match="add up"):
        Baseline.from_json(json.dumps(bad))
    bad = json.loads(json.dumps(good))
    bad["features"]["x"]["edges"].reverse()
    with pytest.raises(BaselineError, match="increasing"):
        Baseline.from_json(json.dumps(bad))
    with pytest.raises(BaselineError):
        Baseline.from_json("{not json")


def test_a_baseline_whose_counts_do_not_fit_64_bits_is_refused_not_a_crash_when_scoring() -> None:
    """Counts are int64 when scored: a (corrupt, hand-edited) document beyond that is invalid, named."""
    import json

    doc = json.loads(build_baseline({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "b"]}).to_json())
    scale = 10**20
    doc["rowCount"] *= scale
    for feature in doc["features"].values():
        feature["counts"] = [c * scale for c in feature["counts"]]
        feature["missingCount"] *= scale
    with pytest.raises(BaselineError, match="rowCount"):
        DriftAccumulator(Baseline.from_json(json.dumps(doc)))


# --------------------------------------------------------------------------------------------
# acceptance 3: chunked accumulation is exact


@pytest.mark.parametrize("seed", range(4))
def test_ten_chunks_equal_one_go_exactly(seed: int) -> None:
    ref, cur, categorical, bins = random_case(seed + 100)
    baseline = build_baseline(ref, categorical=categorical, bins=bins)
    one_go = score(baseline, cur, min_samples=1)
    acc = DriftAccumulator(baseline)
    n = len(cur["normal"])
    bounds = np.linspace(0, n, 11).astype(int)
    for lo, hi in itertools.pairwise(bounds):
        acc.update({k: np.asarray(v)[lo:hi] for k, v in cur.items()})
    chunked = acc.result(min_samples=1)
    assert acc.rows == n
    assert chunked == one_go
    assert chunked.to_json() == one_go.to_json()
    # merging accumulators of halves is exact too
    left, right = DriftAccumulator(baseline), DriftAccumulator(baseline)
    left.update({k: np.asarray(v)[: n // 2] for k, v in cur.items()})
    right.update({k: np.asarray(v)[n // 2 :] for k, v in cur.items()})
    left.merge(right)
    assert left.result(min_samples=1) == one_go


# --------------------------------------------------------------------------------------------
# acceptance 4: statistics at default thresholds


def _table(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    cats = np.array(["a", "b", "c", "d", "e"])
    return {
        "x": rng.normal(shift, 1.0, n),
        "y": rng.exponential(2.0, n) + shift * 2.0,
        "z": rng.integers(0, 20, n).astype(np.float64) + shift * 5.0,
        "colour": rng.choice(cats, n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
    }


def test_same_distribution_not_flagged_95_of_100() -> None:
    rng = np.random.default_rng(20261122)
    flagged = 0
    feature_alarms = 0
    for _ in range(100):
        baseline = build_baseline(_table(rng, 10_000))
        result = score(baseline, _table(rng, 10_000))
        flagged += result.drifted
        feature_alarms += len(result.drifted_features)
    assert flagged <= 5
    assert feature_alarms <= 5 * 4


def test_half_std_mean_shift_is_flagged() -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        baseline = build_baseline({"x": rng.normal(0.0, 1.0, 10_000)})
        result = score(baseline, {"x": rng.normal(0.5, 1.0, 10_000)})
        assert result.drifted
        assert result.drifted_features == ["x"]
    # also across a table: all numeric features shifted by 0.5 std drift the dataset
    baseline = build_baseline(_table(rng, 10_000))
    std = {k: float(np.std(v)) for k, v in _table(rng, 10_000).items() if k != "colour"}
    current = _table(rng, 10_000)
    for k, s in std.items():
        current[k] = current[k] + 0.5 * s
    result = score(baseline, current)
    assert result.drifted
    assert {"x", "y", "z"} <= set(result.drifted_features)
    assert "colour" not in result.drifted_features


def test_insufficient_data_is_not_drift() -> None:
    rng = np.random.default_rng(1)
    baseline = build_baseline({"x": rng.normal(size=1000), "c": rng.choice(["a", "b"], 1000)})
    few = {"x": rng.normal(10.0, 1.0, 50), "c": np.array(["z"] * 50)}
    result = score(baseline, few, min_samples=100)
    assert result.insufficient_data
    assert not result.drifted
    assert result.drifted_features == []
    assert result.samples == 50
    x_psi = result.features["x"].psi
    assert x_psi is not None
    assert x_psi > 1  # still reported
    assert not result.features["x"].drifted
    # the same rows with a lower bar are drift
    assert score(baseline, few, min_samples=50).drifted
    # nothing at all
    empty = DriftAccumulator(baseline).result()
    assert empty.insufficient_data
    assert not empty.drifted
    assert empty.samples == 0
    assert empty.features["x"].psi is None
    assert empty.features["x"].jensen_shannon is None


def test_a_disabled_metric_is_neither_computed_nor_used() -> None:
    rng = np.random.default_rng(11)
    baseline = build_baseline({"x": rng.normal(size=5000)})
    current = {"x": rng.normal(0.5, 1.0, 5000)}
    both = score(baseline, current)
    assert both.features["x"].psi is not None
    assert both.features["x"].jensen_shannon is not None
    js_only = score(baseline, current, psi_threshold=None)
    assert js_only.features["x"].psi is None
    assert js_only.features["x"].jensen_shannon == both.features["x"].jensen_shannon
    # with PSI alone and a PSI threshold above the observed value, the feature does not drift
    psi_value = both.features["x"].psi
    assert psi_value is not None
    high = score(baseline, current, js_threshold=None, psi_threshold=psi_value * 1.01)
    assert high.features["x"].jensen_shannon is None
    assert not high.drifted
    assert score(baseline, current, js_threshold=None, psi_threshold=psi_value).drifted  # "reaches"
    with pytest.raises(ValueError, match="at least one"):
        score(baseline, current, psi_threshold=None, js_threshold=None)


def test_engine_defaults_are_the_drift_monitor_spec_defaults() -> None:
    import inspect

    from kubeloop.drift import DriftAccumulator
    from kubeloop.resources import DriftMonitorSpec

    spec = DriftMonitorSpec(deployment="md", schedule="@hourly")
    params = inspect.signature(DriftAccumulator.result).parameters
    assert params["psi_threshold"].default == spec.metrics.psi.threshold
    assert params["js_threshold"].default == spec.metrics.jensen_shannon.threshold
    assert params["drift_share"].default == spec.drift_share
    assert params["min_samples"].default == spec.window.min_samples


def test_summary_is_what_the_status_keeps() -> None:
    from kubeloop.resources import SUMMARY_FEATURE_LIMIT, DriftMonitorStatus

    rng = np.random.default_rng(7)
    ref = {"a": rng.normal(0, 1, 2000), "b": rng.normal(0, 1, 2000), "c": rng.choice(["x", "y"], 2000)}
    cur = {"a": rng.normal(3, 1, 800), "b": rng.normal(0, 1, 800), "c": rng.choice(["x", "y"], 800)}
    result = score(build_baseline(ref, categorical={"c"}), cur)
    s = result.summary(model_version="3", report_uri="s3://kubeloop/drift/ns/dm/20260101T000000Z.json")
    assert (s.drifted, s.share, s.samples, s.insufficient_data) == (
        result.drifted,
        result.share,
        800,
        False,
    )
    assert [f.name for f in s.features] == ["a", "b", "c"]
    assert [f.drifted for f in s.features] == [True, False, False]
    assert s.features[0].psi == result.features["a"].psi
    status = DriftMonitorStatus.model_validate({"lastResult": s.model_dump(mode="json", by_alias=True)})
    assert status.last_result == s

    many = {f"f{i}": rng.normal(0, 1, 50) for i in range(SUMMARY_FEATURE_LIMIT + 5)}
    wide = score(build_baseline(many, bins=2), {**many, "f4100": rng.normal(9, 1, 50)}, min_samples=1)
    kept = wide.summary().features
    assert len(kept) == SUMMARY_FEATURE_LIMIT
    assert "f4100" in {f.name for f in kept}  # the drifted feature survives the bound


def test_a_fresh_accumulator_counts_from_zero_apart_from_the_one_it_came_from() -> None:
    rng = np.random.default_rng(3)
    baseline = build_baseline(
        {"x": rng.normal(0, 1, 500), "c": rng.choice(["a", "b", "c"], 500)}, categorical={"c"}
    )
    first = DriftAccumulator(baseline)
    first.update({"x": rng.normal(0, 1, 50), "c": rng.choice(["a", "b"], 50)})
    before = first.counts()
    chunk = {"x": rng.normal(1, 1, 70), "c": rng.choice(["a", "zz"], 70)}
    part = first.fresh()
    assert part.rows == 0
    assert all(sum(v) == 0 for v in part.counts().values())
    part.update(chunk)
    assert first.counts() == before  # counting in the fresh one leaves the first alone
    alone = DriftAccumulator(baseline)
    alone.update(chunk)
    assert part.counts() == alone.counts()
    first.merge(part)
    assert first.rows == 120


@pytest.mark.parametrize("categories", [3, 7, 13])
def test_completely_disjoint_data_reaches_the_largest_jensen_shannon_threshold(categories: int) -> None:
    """Disjoint distributions are at distance exactly 1, the largest threshold a DriftMonitor takes;
    the proportions' rounding (7 x 1/7 sums to 0.9999999999999999) must not put them below it."""
    baseline = build_baseline({"c": np.array([f"v{i}" for i in range(categories)] * 7)}, categorical={"c"})
    result = score(
        baseline, {"c": np.array(["new"] * 100)}, psi_threshold=None, js_threshold=1.0, min_samples=1
    )
    assert result.features["c"].jensen_shannon == pytest.approx(1.0, abs=1e-12)
    assert result.features["c"].drifted
    assert result.drifted

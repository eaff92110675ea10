"""Scoring current data against a baseline, chunk by chunk.

:class:`DriftAccumulator` keeps one integer count per bucket and feature, so memory does not grow
with the data and counts of chunks add up exactly: scoring ten chunks gives exactly the result of
scoring their concatenation. :meth:`DriftAccumulator.result` turns the counts into PSI and
Jensen-Shannon distances and drift decisions.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from kubeloop.contracts import DRIFT_JS_THRESHOLD, DRIFT_MIN_SAMPLES, DRIFT_PSI_THRESHOLD, DRIFT_SHARE
from kubeloop.drift import _columns
from kubeloop.drift.baseline import Baseline, CategoricalFeature, _Model
from kubeloop.drift.metrics import js_from_proportions, psi_from_proportions
from kubeloop.resources import SUMMARY_FEATURE_LIMIT, DriftSummary, FeatureDriftSummary

THRESHOLD_RTOL = 1e-10
"""A score reaches its threshold up to this relative difference: the scores are sums of rounded
proportions (seven buckets of 1/7 add up to 0.9999999999999999), so data exactly at a threshold,
e.g. disjoint distributions at the Jensen-Shannon threshold 1.0, must not fall just below it."""


def _reaches(value: float | None, threshold: float | None) -> bool:
    return value is not None and threshold is not None and value >= threshold * (1.0 - THRESHOLD_RTOL)


class FeatureDrift(_Model):
    """Drift of one feature."""

    kind: Literal["numeric", "categorical"]
    psi: float | None = Field(
        description="Population Stability Index (natural log); None without samples or when disabled."
    )
    jensen_shannon: float | None = Field(
        description="Jensen-Shannon distance (base 2, in [0, 1]); None without samples or when disabled."
    )
    drifted: bool = Field(
        description="psi >= psiThreshold or jensenShannon >= jsThreshold (never with insufficient data)."
    )
    counts: list[int] = Field(description="Current rows per bucket, in the baseline's bucket layout.")
    missing: int = Field(description="Current rows with a missing value.")
    unseen: int = Field(description="Current rows with a category unseen in training (0 for numeric).")


class DriftResult(_Model):
    """Outcome of a drift check."""

    drifted: bool = Field(
        description="Whether the dataset drifted: share >= driftShare (never with insufficient data)."
    )
    share: float = Field(description="Fraction of features that drifted.")
    drifted_features: list[str] = Field(description="Names of the drifted features, in baseline order.")
    samples: int = Field(description="Current rows scored.")
    insufficient_data: bool = Field(description="samples < minSamples: nothing is flagged.")
    psi_threshold: float | None = Field(description="PSI threshold; None: PSI disabled.")
    js_threshold: float | None = Field(description="Jensen-Shannon distance threshold; None: disabled.")
    drift_share: float
    min_samples: int
    features: dict[str, FeatureDrift]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    def summary(self, *, model_version: str | None = None, report_uri: str | None = None) -> DriftSummary:
        """What a DriftMonitor's ``status.lastResult`` keeps of this result (this full result is the
        report at ``report_uri``). Past the status's bound on features, drifted ones are kept first."""
        ranked = sorted(self.features.items(), key=lambda kv: not kv[1].drifted)[:SUMMARY_FEATURE_LIMIT]
        keep = {name for name, _ in ranked}
        return DriftSummary(
            drifted=self.drifted,
            share=self.share,
            samples=self.samples,
            insufficient_data=self.insufficient_data,
            model_version=model_version,
            features=[
                FeatureDriftSummary(name=name, psi=f.psi, jensen_shannon=f.jensen_shannon, drifted=f.drifted)
                for name, f in self.features.items()
                if name in keep
            ],
            report_uri=report_uri,
        )


class DriftAccumulator:
    """Accumulates bucket counts of current data, in any number of chunks, against a baseline.

    >>> acc = DriftAccumulator(baseline)
    >>> for chunk in chunks:          # mapping of column -> array, DataFrame or pyarrow Table
    ...     acc.update(chunk)
    >>> result = acc.result()         # or psi_threshold=, js_threshold=, drift_share=, min_samples=
    """

    def __init__(self, baseline: Baseline) -> None:
        if not isinstance(baseline, Baseline):
            raise TypeError(f"expected a Baseline, got {type(baseline).__name__}")
        self.baseline = baseline
        self._names = tuple(baseline.features)
        self._reference = {
            n: np.asarray(f.reference_counts(), dtype=np.int64) for n, f in baseline.features.items()
        }
        self._counts = {n: np.zeros_like(ref) for n, ref in self._reference.items()}
        self._reference_p = {n: ref / baseline.row_count for n, ref in self._reference.items()}
        self._edges: dict[str, _columns.FloatArray] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._sorted: dict[str, npt.NDArray[np.str_] | None] = {}
        for name, feature in baseline.features.items():
            if isinstance(feature, CategoricalFeature):
                self._index[name] = {c: i for i, c in enumerate(feature.categories)}
                arr = np.array(feature.categories, dtype=np.str_)
                # the numpy fast path needs numpy's order and values to equal the baseline's
                self._sorted[name] = arr if arr.tolist() == feature.categories else None
            else:
                self._edges[name] = np.asarray(feature.edges, dtype=np.float64)
        self._rows = 0

    def fresh(self) -> DriftAccumulator:
        """An empty accumulator over the same baseline, sharing its read-only lookup tables (bin
        edges, category index): for a baseline with many categories, building them costs far more
        than counting a small chunk, so per-part accumulators are made with this."""
        new = copy.copy(self)
        new._counts = {n: np.zeros_like(ref) for n, ref in self._reference.items()}
        new._rows = 0
        return new

    @property
    def rows(self) -> int:
        """Rows accumulated so far."""
        return self._rows

    def counts(self) -> dict[str, list[int]]:
        """Current bucket counts per feature (a copy)."""
        return {n: [int(c) for c in v.tolist()] for n, v in self._counts.items()}

    def update(self, chunk: object) -> None:
        """Add a chunk of current data (extra columns are ignored).

        The chunk is validated and counted as a whole before anything is added, so a chunk that
        raises leaves the accumulator unchanged.

        Raises:
            MissingFeatureError: a baseline feature is not a column of the chunk (names it).
            DriftInputError: a column is unusable, e.g. text in a numeric feature (names it).
        """
        table = _columns.Table(chunk)
        table.require(self._names)
        data = {name: table.get(name) for name in self._names}
        rows = _columns.check_lengths({n: _columns.column_length(n, c) for n, c in data.items()})
        if rows == 0:
            return
        added: dict[str, _columns.IntArray] = {}
        for name, column in data.items():
            if name in self._edges:
                added[name] = _columns.numeric_counts(
                    _columns.numeric_values(name, column), self._edges[name]
                )
            else:
                added[name] = _columns.categorical_counts(name, column, self._index[name], self._sorted[name])
        for name, delta in added.items():
            self._counts[name] += delta
        self._rows += rows

    def merge(self, other: DriftAccumulator) -> None:
        """Add the counts of another accumulator over the same baseline (e.g. from another worker)."""
        if other.baseline != self.baseline:
            raise ValueError("cannot merge accumulators of different baselines")
        for name, counts in other._counts.items():
            self._counts[name] += counts
        self._rows += other._rows

    def result(
        self,
        psi_threshold: float | None = DRIFT_PSI_THRESHOLD,
        js_threshold: float | None = DRIFT_JS_THRESHOLD,
        drift_share: float = DRIFT_SHARE,
        min_samples: int = DRIFT_MIN_SAMPLES,
    ) -> DriftResult:
        """Scores and drift decisions for everything accumulated so far.

        A feature drifts when ``psi >= psi_threshold`` or ``jensen_shannon >= js_threshold`` (up to
        float rounding, :data:`THRESHOLD_RTOL`); the
        dataset drifts when the share of drifted features is ``>= drift_share``. A threshold of
        ``None`` disables that metric (not computed, not used; at least one must stay enabled). With
        fewer than ``min_samples`` rows the result has ``insufficient_data=True`` and flags nothing
        (scores are still reported when there is at least one row).
        """
        for label, value in (("psi_threshold", psi_threshold), ("js_threshold", js_threshold)):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be > 0 (or None to disable the metric), got {value!r}")
        if psi_threshold is None and js_threshold is None:
            raise ValueError("at least one of psi_threshold and js_threshold must be set")
        if not 0 < drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1], got {drift_share!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
        insufficient = self._rows < min_samples
        features: dict[str, FeatureDrift] = {}
        drifted_names: list[str] = []
        for name, feature in self.baseline.features.items():
            cur = self._counts[name]
            p: float | None = None
            j: float | None = None
            if self._rows:
                q = cur / self._rows
                if psi_threshold is not None:
                    p = psi_from_proportions(self._reference_p[name], q)
                if js_threshold is not None:
                    j = js_from_proportions(self._reference_p[name], q)
            drifted = not insufficient and (_reaches(p, psi_threshold) or _reaches(j, js_threshold))
            if drifted:
                drifted_names.append(name)
            categorical = isinstance(feature, CategoricalFeature)
            features[name] = FeatureDrift(
                kind=feature.kind,
                psi=p,
                jensen_shannon=j,
                drifted=drifted,
                counts=[int(c) for c in cur.tolist()],
                missing=int(cur[-1]),
                unseen=int(cur[-2]) if categorical else 0,
            )
        share = len(drifted_names) / len(features)
        return DriftResult(
            drifted=not insufficient and share >= drift_share,
            share=share,
            drifted_features=drifted_names,
            samples=self._rows,
            insufficient_data=insufficient,
            psi_threshold=psi_threshold,
            js_threshold=js_threshold,
            drift_share=drift_share,
            min_samples=min_samples,
            features=features,
        )


def score(
    baseline: Baseline,
    current: object,
    *,
    psi_threshold: float | None = DRIFT_PSI_THRESHOLD,
    js_threshold: float | None = DRIFT_JS_THRESHOLD,
    drift_share: float = DRIFT_SHARE,
    min_samples: int = DRIFT_MIN_SAMPLES,
) -> DriftResult:
    """Score one table against a baseline (a one-chunk :class:`DriftAccumulator`)."""
    acc = DriftAccumulator(baseline)
    acc.update(current)
    return acc.result(psi_threshold, js_threshold, drift_share, min_samples)


__all__ = [
    "THRESHOLD_RTOL",
    "DriftAccumulator",
    "DriftResult",
    "FeatureDrift",
    "score",
]

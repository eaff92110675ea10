"""Drift engine: a frozen training baseline, and PSI / Jensen-Shannon scoring against it.

Used by the trainer (writes the baseline at training time) and by the drift-check job (scores
logged predictions against it); see DESIGN section 2 (DriftMonitor) and section 3 (baseline).

Typical use::

    # trainer
    baseline = build_baseline(train_columns, categorical={"country"}, bins=10)
    blob = baseline.to_json()                       # -> models/<name>/<version>/baseline.json

    # drift check
    acc = DriftAccumulator(Baseline.from_json(blob))
    for chunk in prediction_log_chunks:             # bounded memory: only counts are kept
        acc.update(chunk)
    result = acc.result()                           # thresholds: the DriftMonitor defaults

Buckets. Numeric features are binned by frozen quantile edges of the training data (``bins``
quantile bins, default 10, plus one bucket below and one above the training range; ties and
constant columns collapse into fewer bins); categorical features have one bucket per training
category plus an *unseen-category* bucket; every feature has a *missing* bucket (NaN, None, null).
Counts are integers, so counts of chunks add up exactly.

Metrics, per feature, over the bucket proportions ``p`` (reference) and ``q`` (current):

* **PSI** ``= sum (q_i - p_i) ln(q_i / p_i)`` (natural log). Empty buckets: every proportion is
  floored at ``PSI_EPSILON = 1e-4`` (``max(p_i, 1e-4)``, same for ``q_i``, no renormalisation)
  before the formula; buckets empty on both sides contribute 0.
* **Jensen-Shannon distance** ``= sqrt(JSD)`` with ``JSD`` computed with **base-2** logarithms
  (``m = (p + q) / 2``, ``JSD = (KL(p||m) + KL(q||m)) / 2``, zero terms contribute 0), so both the
  divergence and the reported distance lie in ``[0, 1]``.

A feature drifts when ``psi >= psi_threshold`` or ``jensen_shannon >= js_threshold``, up to float
rounding (a relative ``THRESHOLD_RTOL = 1e-10``: disjoint distributions, at distance exactly 1, reach
the Jensen-Shannon threshold 1.0 even when their proportions sum to 0.9999999999999999); a threshold
of ``None`` disables that metric. The dataset drifts when the share of drifted features
``>= drift_share``. With fewer than ``min_samples`` current rows the result says
``insufficient_data`` and flags nothing. The defaults are the DriftMonitor spec's
(:data:`kubeloop.contracts.DRIFT_PSI_THRESHOLD` and its neighbours).
A baseline feature missing from the current data raises :class:`MissingFeatureError` naming it.
"""

from kubeloop.drift._columns import category_key
from kubeloop.drift.accumulator import (
    THRESHOLD_RTOL,
    DriftAccumulator,
    DriftResult,
    FeatureDrift,
    score,
)
from kubeloop.drift.baseline import (
    DEFAULT_BINS,
    SCHEMA_VERSION,
    Baseline,
    CategoricalFeature,
    FeatureKind,
    NumericFeature,
    build_baseline,
)
from kubeloop.drift.errors import BaselineError, DriftError, DriftInputError, MissingFeatureError
from kubeloop.drift.metrics import JS_LOG_BASE, PSI_EPSILON, js_distance, psi

__all__ = [
    "DEFAULT_BINS",
    "JS_LOG_BASE",
    "PSI_EPSILON",
    "SCHEMA_VERSION",
    "THRESHOLD_RTOL",
    "Baseline",
    "BaselineError",
    "CategoricalFeature",
    "DriftAccumulator",
    "DriftError",
    "DriftInputError",
    "DriftResult",
    "FeatureDrift",
    "FeatureKind",
    "MissingFeatureError",
    "NumericFeature",
    "build_baseline",
    "category_key",
    "js_distance",
    "psi",
    "score",
]

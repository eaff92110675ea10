"""Population Stability Index and Jensen-Shannon distance between two bucket-count vectors.

Both functions take the reference and current *counts* over the same buckets (value bins or
categories, plus the unseen-category and missing buckets) and turn them into proportions
``p = ref / ref.sum()`` and ``q = cur / cur.sum()``.

PSI
    ``sum_i (q_i - p_i) * ln(q_i / p_i)`` with the natural logarithm. An empty bucket would make
    the logarithm infinite, so every proportion is first floored at :data:`PSI_EPSILON` (``1e-4``,
    i.e. ``p_i := max(p_i, 1e-4)``, same for ``q_i``, no renormalisation). A bucket empty on both
    sides therefore contributes exactly 0. PSI is >= 0 and unbounded above.

Jensen-Shannon
    With ``m = (p + q) / 2``, the divergence is
    ``JSD = 1/2 sum_i p_i log2(p_i / m_i) + 1/2 sum_i q_i log2(q_i / m_i)`` using **base-2**
    logarithms (terms with a zero proportion contribute 0; no epsilon is needed), so that
    ``0 <= JSD <= 1``. We report the Jensen-Shannon **distance** ``sqrt(JSD)``, also in
    ``[0, 1]``; thresholds (``jensenShannon``) apply to the distance.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

PSI_EPSILON = 1e-4
"""Floor applied to each bucket proportion (reference and current) before computing PSI."""

JS_LOG_BASE = 2
"""Logarithm base of the Jensen-Shannon divergence; the distance is then in [0, 1]."""


def _proportions(counts: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} counts must be a non-empty 1-D array")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} counts must be finite and non-negative")
    total = float(arr.sum())
    if total <= 0:
        raise ValueError(f"{what} counts sum to zero")
    out: npt.NDArray[np.float64] = arr / total
    return out


def _pair(
    reference: npt.ArrayLike, current: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p = _proportions(reference, "reference")
    q = _proportions(current, "current")
    if p.shape != q.shape:
        raise ValueError(f"reference has {p.size} buckets but current has {q.size}")
    return p, q


def psi_from_proportions(
    p: npt.NDArray[np.float64], q: npt.NDArray[np.float64], epsilon: float = PSI_EPSILON
) -> float:
    """PSI of proportions ``q`` against ``p`` (same buckets, each summing to 1; not validated)."""
    p = np.maximum(p, epsilon)
    q = np.maximum(q, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def js_from_proportions(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64]) -> float:
    """Jensen-Shannon distance (base 2) of proportions ``p`` and ``q`` (not validated)."""
    m = (p + q) * 0.5
    jsd = 0.0
    for a in (p, q):
        nz = a > 0
        jsd += 0.5 * float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))
    return math.sqrt(min(max(jsd, 0.0), 1.0))


def psi(reference: npt.ArrayLike, current: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index of ``current`` against ``reference`` (bucket counts)."""
    p, q = _pair(reference, current)
    return psi_from_proportions(p, q, epsilon)


def js_distance(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two bucket-count vectors."""
    p, q = _pair(reference, current)
    return js_from_proportions(p, q)

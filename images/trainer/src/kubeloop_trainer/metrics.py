"""Final validation metrics in numpy (no scikit-learn in the image).

Classification: accuracy; precision, recall and F1 of the positive class (the second class) for
binary tasks and macro-averaged for multiclass; ROC-AUC (binary) or macro one-vs-rest ROC-AUC.
Regression: R², MSE, MAE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kubeloop.resources import LOWER_IS_BETTER


def better(metric: str, new: float, old: float) -> bool:
    return new < old if metric in LOWER_IS_BETTER else new > old


def clears(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def _binary_auc(y: npt.NDArray[np.bool_], score: npt.NDArray[np.floating[Any]]) -> float:
    """Mann-Whitney U with average ranks for ties."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(
    y: npt.NDArray[np.int64], proba: npt.NDArray[np.floating[Any]]
) -> dict[str, float]:
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    out = {"accuracy": float((pred == y).mean())}
    precisions, recalls, f1s, aucs = [], [], [], []
    classes = [1] if n_classes == 2 else list(range(n_classes))
    for c in classes:
        tp = float(((pred == c) & (y == c)).sum())
        fp = float(((pred == c) & (y != c)).sum())
        fn = float(((pred != c) & (y == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        auc = _binary_auc(y == c, proba[:, c])
        if not np.isnan(auc):
            aucs.append(auc)
    out["precision"] = float(np.mean(precisions))
    out["recall"] = float(np.mean(recalls))
    out["f1"] = float(np.mean(f1s))
    out["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def regression_metrics(
    y: npt.NDArray[np.floating[Any]], pred: npt.NDArray[np.floating[Any]]
) -> dict[str, float]:
    y = y.astype(np.float64).ravel()
    pred = pred.astype(np.float64).ravel()
    err = pred - y
    mse = float(np.mean(err**2))
    var = float(np.mean((y - y.mean()) ** 2))
    return {
        "r2": 1.0 - mse / var if var > 0 else 0.0,
        "mse": mse,
        "mae": float(np.mean(np.abs(err))),
    }

"""Final metrics agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from kubeloop_trainer.metrics import better, classification_metrics, clears, regression_metrics
from sklearn import metrics as skm


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 200)
    logits = rng.normal(size=(200, n_classes)) + np.eye(n_classes)[y] * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba[:5] = np.round(proba[:5], 1)  # ties
    proba /= proba.sum(axis=1, keepdims=True)
    got = classification_metrics(y, proba)
    pred = proba.argmax(axis=1)
    avg = "binary" if n_classes == 2 else "macro"
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average=avg, zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average=avg))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average=avg))
    want_auc = (
        skm.roc_auc_score(y, proba[:, 1])
        if n_classes == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    assert got["roc_auc"] == pytest.approx(want_auc)


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    p = y + rng.normal(scale=0.3, size=100)
    got = regression_metrics(y, p)
    assert got["r2"] == pytest.approx(skm.r2_score(y, p))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, p))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, p))


def test_direction_of_metrics() -> None:
    assert better("accuracy", 0.9, 0.8)
    assert not better("accuracy", 0.8, 0.9)
    assert better("mse", 1.0, 2.0)
    assert not better("mae", 2.0, 1.0)
    assert clears("f1", 0.9, 0.9)
    assert not clears("r2", 0.5, 0.6)
    assert clears("mse", 10.0, 12.0)
    assert not clears("mse", 13.0, 12.0)

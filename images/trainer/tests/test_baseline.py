"""The drift baseline the trainer writes, against what the server logs for the same rows (no I/O)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from kubeloop_trainer.baseline import baseline_json
from kubeloop_trainer.data import prepare
from kubeloop_trainer.export import onnx_feed

from kubeloop.drift import Baseline, score
from kubeloop.resources import DatasetSpec


def _as_logged(feed: dict[str, np.ndarray[Any, Any]]) -> dict[str, list[Any] | np.ndarray[Any, Any]]:
    """What the server's prediction log keeps of a feed: the float32 inputs widened to float64, and
    the missing category ("") as null."""
    return {
        k: v.ravel().astype(np.float64) if v.dtype == np.float32 else [x or None for x in v.ravel()]
        for k, v in feed.items()
    }


def test_the_training_rows_served_back_do_not_drift() -> None:
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame(
        {
            "ratio": rng.choice([0.1, 0.2, 0.3, 0.7, 0.9], n),  # decimals: not exact in float32
            "x": rng.normal(0.0, 1.0, n).round(2),
            "color": rng.choice(["red", "green", ""], n),
            "y": rng.choice(["a", "b"], n),
        }
    )
    ds = prepare(df, DatasetSpec(uri="/d.parquet", target="y"), "classification", 1)
    baseline = Baseline.from_json(baseline_json(ds, {}))

    result = score(baseline, _as_logged(onnx_feed(ds, ds.raw_train)), min_samples=1)

    for name, feature in result.features.items():
        assert feature.counts == baseline.features[name].reference_counts(), name
        assert feature.psi == 0.0, name
        assert feature.jensen_shannon == 0.0, name
    assert not result.drifted

"""The frozen drift baseline written next to the model (format and math: :mod:`kubeloop.drift`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kubeloop.drift import build_baseline
from kubeloop_trainer.data import Dataset


def baseline_json(ds: Dataset, metadata: Mapping[str, str], bins: int = 10) -> str:
    """Quantile bin edges and reference frequencies of the training rows, category sets, row count.

    Numeric values are counted as the model takes them, float32 (the prediction logs hold those):
    counted in float64, a training value on a bin edge that float32 rounds up (0.1, 0.2, the
    maximum, ...) moves one bucket up when served, and the very training rows read as drift."""
    features = [f.name for f in ds.encoder.features]
    categorical = {f.name for f in ds.encoder.features if f.type == "categorical"}
    columns: dict[str, np.ndarray[Any, Any]] = {
        name: v if name in categorical else v.astype(np.float32).astype(np.float64)
        for name, v in ds.raw_train.items()
    }
    return build_baseline(
        columns, categorical=categorical, bins=bins, features=features, metadata=dict(metadata)
    ).to_json()

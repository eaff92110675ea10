"""The frozen drift baseline written next to the model (format and math: :mod:`kubeloop.drift`)."""

from __future__ import annotations

from collections.abc import Mapping

from kubeloop.drift import build_baseline
from kubeloop_trainer.data import Dataset


def baseline_json(ds: Dataset, metadata: Mapping[str, str], bins: int = 10) -> str:
    """Quantile bin edges and reference frequencies of the training rows, category sets, row count."""
    features = [f.name for f in ds.encoder.features]
    categorical = {f.name for f in ds.encoder.features if f.type == "categorical"}
    return build_baseline(
        ds.raw_train, categorical=categorical, bins=bins, features=features, metadata=dict(metadata)
    ).to_json()

"""The tabular MLP: numeric imputation and scaling are layers of the model, so they are exported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from kubeloop_trainer.data import Dataset

MAX_STANDARDISED = 1e6
"""Bound of a standardised numeric input (standard deviations from the training mean)."""


class TabularMLP(nn.Module):
    """``x = [raw numerics (NaN = missing) | one-hot categoricals]`` -> logits or a scaled prediction.

    ``forward`` returns what the loss needs (class logits, or the standardised regression target);
    :class:`InferenceHead` turns it into probabilities or target units for evaluation and export.
    """

    # Registered buffers (saved in the state dict and exported), declared for the type checker.
    median: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        n_numeric: int,
        width: int,
        hidden: Sequence[int],
        n_outputs: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.register_buffer("median", torch.zeros(n_numeric))
        self.register_buffer("mean", torch.zeros(n_numeric))
        self.register_buffer("std", torch.ones(n_numeric))
        layers: list[nn.Module] = []
        prev = width
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, n_outputs))
        self.net = nn.Sequential(*layers)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Impute, standardise and bound the numeric columns.

        ``(x - mean) / std`` overflowed float32 for a column spanning +-3e38 (which float32 holds), and for
        a value far beyond the training range; the network then saw inf and gave NaN. Halving every term
        first (exact in float32's normal range, so the result is the same to the bit) keeps the
        difference finite, and the bound (+-:data:`MAX_STANDARDISED`; training rows never come near it:
        |z| <= sqrt(rows)) the quotient, so a value beyond it, or inf, when serving gets the prediction of
        the bound instead of NaN. (float64 did the same at up to 9 times the cost of a CPU step's
        preprocessing.)"""
        if self.n_numeric == 0:
            return x
        num = x[:, : self.n_numeric]
        num = torch.where(torch.isnan(num), self.median.float(), num)
        num = (num * 0.5 - self.mean.float() * 0.5) / (self.std.float() * 0.5)
        num = num.clamp(-MAX_STANDARDISED, MAX_STANDARDISED)
        return torch.cat([num, x[:, self.n_numeric :]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # preprocessing in float32 even when the layers run in bf16/fp16 (DeepSpeed)
        h = self.preprocess(x.float())
        dtype = cast(nn.Linear, self.net[0]).weight.dtype
        out: torch.Tensor = self.net(h if dtype == torch.float32 else h.to(dtype))
        return out


class InferenceHead(nn.Module):
    """Probabilities (classification) or the prediction in target units (regression)."""

    def __init__(
        self, model: TabularMLP, task: str, target_mean: float = 0.0, target_std: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.target_std + self.target_mean


def build_model(ds: Dataset, hidden: Sequence[int], dropout: float) -> TabularMLP:
    enc = ds.encoder
    model = TabularMLP(len(enc.numeric), enc.width, hidden, ds.n_outputs, dropout)
    if enc.numeric:
        model.median.copy_(torch.tensor([s.median for s in enc.numeric], dtype=torch.float32))
        model.mean.copy_(torch.tensor([s.mean for s in enc.numeric], dtype=torch.float32))
        model.std.copy_(torch.tensor([s.std for s in enc.numeric], dtype=torch.float32))
    return model

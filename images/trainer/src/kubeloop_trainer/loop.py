"""The training loop: in-memory tensors, a seeded shuffle per epoch, early stopping on validation loss.

One loop serves a single process, DDP and DeepSpeed: the spec's ``batchSize`` is the *global*
batch; each rank takes its share of every batch and scales its summed loss by
``world_size / batch`` so that the averaged gradient equals the single-process one. That is why
DDP on two processes reaches the same metrics as one process.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F  # noqa: N812

from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.errors import TrainingDivergedError
from kubeloop_trainer.graphs import GraphedStep

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    task: str
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    seconds: float


@dataclass
class LoopState:
    """Everything the loop needs to resume (besides model and optimizer state)."""

    epoch: int = 0  # last finished epoch
    best_val: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**d)


class Engine(Protocol):
    """How one optimisation step is taken (plain/DDP torch or DeepSpeed)."""

    module: nn.Module  # the unwrapped model (fp32 for torch, maybe bf16 for DeepSpeed)

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def step(self, loss: torch.Tensor) -> None: ...

    def train(self, mode: bool) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]:
        """The parameters as float32 CPU tensors (gathered when they are partitioned)."""
        ...


class TorchEngine:
    """torch model + AdamW, optionally wrapped in DistributedDataParallel."""

    def __init__(
        self, model: nn.Module, learning_rate: float, ctx: DistContext, device: torch.device
    ) -> None:
        self.module = model.to(device)
        self.optimizer = make_optimizer(self.module, learning_rate)
        self.wrapped: nn.Module = self.module
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.wrapped = DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.wrapped(x)
        return out

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        self.optimizer.step()

    def train(self, mode: bool) -> None:
        self.wrapped.train(mode)

    def weights(self) -> dict[str, torch.Tensor]:
        return fp32_params(self.module)


def make_optimizer(module: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CPU and CUDA, deterministic), else the default implementation."""
    try:
        return torch.optim.AdamW(module.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(module.parameters(), lr=learning_rate)


def loss_sum(out: torch.Tensor, y: torch.Tensor, task: str, mean: bool = False) -> torch.Tensor:
    """Summed (or mean) loss over the rows: cross-entropy, or squared error on the standardised target."""
    out = out.float()
    reduction = "mean" if mean else "sum"
    if task == "classification":
        return F.cross_entropy(out, y, reduction=reduction)
    return F.mse_loss(out.squeeze(1), y, reduction=reduction)


class Loop:
    """Runs epochs ``state.epoch + 1 .. epochs`` and calls ``on_epoch`` after each."""

    def __init__(
        self,
        engine: Engine,
        cfg: LoopConfig,
        ctx: DistContext,
        device: torch.device,
        x_train: np.ndarray[Any, Any],
        y_train: np.ndarray[Any, Any],
        x_val: np.ndarray[Any, Any],
        y_val: np.ndarray[Any, Any],
        cuda_graphs: bool = False,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.ctx = ctx
        self.device = device
        self.x_train = torch.from_numpy(np.ascontiguousarray(x_train)).to(device)
        self.y_train = torch.from_numpy(np.ascontiguousarray(y_train)).to(device)
        self.x_val = torch.from_numpy(np.ascontiguousarray(x_val)).to(device)
        self.y_val = torch.from_numpy(np.ascontiguousarray(y_val)).to(device)
        # One process on a CUDA device only: a graph holds one rank's collectives, untested across ranks.
        self.graphed: GraphedStep | None = None
        if cuda_graphs and device.type == "cuda" and ctx.world_size == 1:
            self.graphed = GraphedStep(self._mean_loss_step, cfg.batch_size, device)

    def _mean_loss_step(self, batch: torch.Tensor) -> torch.Tensor:
        xb = self.x_train.index_select(0, batch)
        yb = self.y_train.index_select(0, batch)
        loss = loss_sum(self.engine.forward(xb), yb, self.cfg.task, mean=True)
        self.engine.step(loss)
        return loss.detach()

    def _val(self) -> tuple[float, float]:
        self.engine.train(False)
        with torch.no_grad():
            out = self.engine.module(self.x_val).float()
            loss = float(loss_sum(out, self.y_val, self.cfg.task)) / len(self.y_val)
            if self.cfg.task == "classification":
                metric = float((out.argmax(dim=1) == self.y_val).float().mean())
            else:
                resid = ((out.squeeze(1) - self.y_val) ** 2).sum()
                total = ((self.y_val - self.y_val.mean()) ** 2).sum()
                metric = float(1.0 - resid / total) if float(total) > 0 else 0.0
        return loss, metric

    def run_epoch(self, epoch: int) -> EpochResult:
        cfg, ctx = self.cfg, self.ctx
        t0 = time.perf_counter()
        n = len(self.y_train)
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = torch.from_numpy(rng.permutation(n)).to(self.device)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + ctx.rank)  # dropout masks
        self.engine.train(True)
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        bs, world, rank = cfg.batch_size, ctx.world_size, ctx.rank
        for start in range(0, n, bs):
            batch = perm[start : start + bs]
            nb = len(batch)
            if world > 1:
                lo, hi = (nb * rank) // world, (nb * (rank + 1)) // world
                batch = batch[lo:hi]
            if world == 1:  # the mean loss directly: one op less per step
                if self.graphed is not None and nb == bs:
                    loss = self.graphed(batch)
                else:
                    loss = self._mean_loss_step(batch)
                total += loss * nb
            else:
                xb = self.x_train.index_select(0, batch)
                yb = self.y_train.index_select(0, batch)
                loss = loss_sum(self.engine.forward(xb), yb, cfg.task)
                self.engine.step(loss * (world / nb))
                total += loss.detach()
        if world > 1:
            dist.all_reduce(total)
        train_loss = float(total) / n
        if not np.isfinite(train_loss):
            raise TrainingDivergedError(
                f"the training loss became {train_loss} in epoch {epoch}; lower the learning rate"
            )
        val_loss, metric = self._val()
        if not np.isfinite(val_loss):  # the training loss is taken before each step: not after the last
            raise TrainingDivergedError(
                f"the validation loss became {val_loss} in epoch {epoch}; lower the learning rate"
            )
        return EpochResult(epoch, train_loss, val_loss, metric, time.perf_counter() - t0)

    def fit(
        self, state: LoopState, on_epoch: Callable[[EpochResult, LoopState], None] | None = None
    ) -> LoopState:
        cfg = self.cfg
        while state.epoch < cfg.epochs and not state.stopped_early:
            r = self.run_epoch(state.epoch + 1)
            state.epoch = r.epoch
            if r.val_loss < state.best_val - cfg.min_delta or not state.best_state:
                state.best_val, state.best_epoch, state.bad_epochs = r.val_loss, r.epoch, 0
                state.best_state = self.engine.weights()
            else:
                state.bad_epochs += 1
            stop = cfg.early_stopping and state.bad_epochs >= cfg.patience
            if self.ctx.distributed:  # every rank follows rank 0's decision
                flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
                dist.broadcast(flag, src=0)
                stop = bool(flag.item())
            state.stopped_early = stop and state.epoch < cfg.epochs
            state.history.append(
                {
                    "epoch": float(r.epoch),
                    "train_loss": r.train_loss,
                    "val_loss": r.val_loss,
                    "val_metric": r.val_metric,
                    "seconds": r.seconds,
                }
            )
            if on_epoch is not None:
                on_epoch(r, state)
        return state


def fp32_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters (not the preprocessing buffers) as float32 CPU tensors."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.named_parameters()}


def best_model(template: M, state: LoopState) -> M:
    """``template`` (a fresh float32 model with its fitted buffers) loaded with the best weights."""
    model = copy.deepcopy(template).to("cpu", torch.float32)
    if state.best_state:
        missing, unexpected = model.load_state_dict(state.best_state, strict=False)
        params = {k for k, _ in model.named_parameters()}
        if unexpected or params & set(missing):
            raise RuntimeError(
                f"best weights do not fit the model: missing {missing}, unexpected {unexpected}"
            )
    return model.eval()

"""Throughput of the trainer's loop against a plain hand-written torch loop (``make bench-trainer``).

Like for like by default: the same model (the trainer's MLP, same layers, same initial weights), the
same data, batch size, epochs, torch threads and repetitions, the same batch gathering (a shuffled
permutation per epoch, rows taken with ``index_select``) and the same optimizer -- AdamW with the
fused kernel, as the trainer builds it (the script checks that both optimizers have identical
settings before timing). Both loops run in one process, alternating (ABBA order), so that load from
other processes hits both alike.

The trainer's loop is timed as it runs in production: per-epoch validation, early-stopping
bookkeeping (a copy of the best weights) and a checkpoint written to an object store (a local
directory here) after every epoch. The plain loop only trains. Inside the trainer's timed runs the
script also measures how long validation, the best-weights copy and the checkpoint take, and reports
each as a fraction of the trainer's wall time: what those production duties cost.

``--plain-unfused`` gives the plain loop torch's default (non-fused) AdamW instead, the optimizer
most hand-written loops use (not like for like; for information only).

The last line is ``RESULT trainer_vs_plain_torch=<r> validation_cost=<f> checkpoint_cost=<f>
bookkeeping_cost=<f> train_only_vs_plain_torch=<r> trainer_vs_plain_torch_cpu=<r>``:

* ``trainer_vs_plain_torch``: median over the repeats of the samples/s ratio of a back-to-back pair;
* ``validation_cost`` / ``checkpoint_cost`` / ``bookkeeping_cost``: median share of the trainer's wall
  time spent in per-epoch validation / checkpoint saving / best-weights copies;
* ``train_only_vs_plain_torch``: the same ratio with those three measured times taken out of the
  trainer's wall time (the loop's training steps alone against the plain loop);
* ``trainer_vs_plain_torch_cpu``: the first ratio in samples per CPU second of this process instead of
  per wall second (on a shared machine it is less disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from kubeloop_trainer.app import train_targets
from kubeloop_trainer.checkpoint import Checkpointer
from kubeloop_trainer.data import Dataset, prepare
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.loop import EpochResult, Loop, LoopConfig, LoopState, TorchEngine
from kubeloop_trainer.model import build_model
from torch.nn import functional as F  # noqa: N812

from kubeloop.contracts import checkpoint_prefix
from kubeloop.resources import DatasetSpec
from kubeloop.storage.local import LocalStore

CPU = torch.device("cpu")
LR = 1e-3


def make_dataset(rows: int, features: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    w = rng.normal(size=features)
    y = (x @ w + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)]).assign(y=y)
    return prepare(df, DatasetSpec(uri="/bench.csv", target="y"), "classification", seed)


def plain_optimizer(params: Iterable[torch.nn.Parameter], fused: bool) -> torch.optim.Optimizer:
    """What a hand-written loop writes: AdamW, with the fused kernel when asked (and available)."""
    params = list(params)
    if fused:
        try:
            return torch.optim.AdamW(params, lr=LR, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=LR)


def optimizer_settings(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {"type": type(opt).__name__, **{k: v for k, v in opt.defaults.items() if k != "params"}}


@dataclass
class TrainerRun:
    samples_per_s: float
    samples_per_cpu_s: float
    wall_s: float
    validation_s: float
    checkpoint_s: float
    bookkeeping_s: float

    def share(self, seconds: float) -> float:
        return seconds / self.wall_s

    @property
    def train_only_samples_per_s(self) -> float:
        rest = self.wall_s - self.validation_s - self.checkpoint_s - self.bookkeeping_s
        return self.samples_per_s * self.wall_s / rest


def _timed(fn: Callable[..., Any], acc: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t0

    return wrapper


def make_engine(ds: Dataset, hidden: list[int]) -> TorchEngine:
    torch.manual_seed(0)
    return TorchEngine(build_model(ds, hidden, 0.0), LR, DistContext(), CPU)


def ours(ds: Dataset, hidden: list[int], batch: int, epochs: int, store_dir: Path) -> TrainerRun:
    ctx = DistContext()
    engine = make_engine(ds, hidden)
    cfg = LoopConfig(
        epochs=epochs,
        batch_size=batch,
        learning_rate=LR,
        seed=0,
        task="classification",
        early_stopping=True,
        patience=1000,
    )
    loop = Loop(engine, cfg, ctx, CPU, ds.x_train, train_targets(ds, ds.y_train), ds.x_val, ds.y_val)
    store = LocalStore(store_dir)
    store.ensure_bucket(checkpoint_prefix("bench", "job").bucket)
    ckpt = Checkpointer(store, checkpoint_prefix("bench", "job"), "uid", ctx, store_dir)
    # measured inside the timed run: instance attributes shadow the methods for this run only
    val_s, ckpt_s, keep_s = [0.0], [0.0], [0.0]
    loop._val = _timed(loop._val, val_s)  # type: ignore[method-assign]
    engine.weights = _timed(engine.weights, keep_s)  # type: ignore[method-assign]

    def on_epoch(r: EpochResult, st: LoopState) -> None:
        ckpt.save_torch(engine, st, {"mlflow_run_id": ""})

    c0, t0 = time.process_time(), time.perf_counter()
    loop.fit(LoopState(), _timed(on_epoch, ckpt_s))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = len(ds.y_train) * epochs
    return TrainerRun(samples / wall, samples / cpu, wall, val_s[0], ckpt_s[0], keep_s[0])


def plain(ds: Dataset, hidden: list[int], batch: int, epochs: int, fused: bool) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process)."""
    torch.manual_seed(0)
    model = build_model(ds, hidden, 0.0)
    opt = plain_optimizer(model.parameters(), fused)
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    n = len(y)
    model.train()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            # index_select, as the trainer gathers its batches: ``x[idx]`` costs about twice as much
            # per batch and would make the plain loop slower for a reason that is not the trainer's
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n * epochs / wall, n * epochs / cpu


def result_line(values: dict[str, float]) -> str:
    return "RESULT " + " ".join(f"{k}={v:.3f}" for k, v in values.items())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", "25000")))
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 32])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "7")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument(
        "--plain-unfused",
        action="store_true",
        help="give the plain loop torch's default (non-fused) AdamW: NOT like for like, for information",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    fused = not a.plain_unfused
    ds = make_dataset(a.rows, a.features)

    trainer_opt = optimizer_settings(make_engine(ds, a.hidden).optimizer)
    plain_opt = optimizer_settings(plain_optimizer(build_model(ds, a.hidden, 0.0).parameters(), fused))
    like_for_like = trainer_opt == plain_opt
    print(
        f"bench-trainer: {len(ds.y_train)} training rows x {ds.encoder.width} features, MLP {a.hidden}, "
        f"batch {a.batch}, {a.epochs} epochs, {a.threads} torch thread(s), {a.repeats} alternating repeats "
        f"(ABBA), load average {os.getloadavg()[0]:.2f}"
    )
    print(f"optimizer: trainer {trainer_opt}")
    print(f"           plain   {plain_opt}")
    if not like_for_like:
        if fused:
            raise SystemExit("the plain loop's optimizer differs from the trainer's: not like for like")
        print("NOTE: --plain-unfused: the two optimizers differ; this run is NOT like for like")

    with tempfile.TemporaryDirectory() as d:
        ours(ds, a.hidden, a.batch, 1, Path(d))  # warm-up
        plain(ds, a.hidden, a.batch, 1, fused)
        runs: list[TrainerRun] = []
        plain_runs: list[float] = []
        plain_cpu: list[float] = []
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        for i in range(a.repeats):
            if i % 2 == 0:  # ABBA order: neither loop always runs first
                o = ours(ds, a.hidden, a.batch, a.epochs, Path(d))
                q, qc = plain(ds, a.hidden, a.batch, a.epochs, fused)
            else:
                q, qc = plain(ds, a.hidden, a.batch, a.epochs, fused)
                o = ours(ds, a.hidden, a.batch, a.epochs, Path(d))
            runs.append(o)
            plain_runs.append(q)
            plain_cpu.append(qc)
            ratios.append(o.samples_per_s / q)
            cpu_ratios.append(o.samples_per_cpu_s / qc)
            print(
                f"  repeat {i + 1}: trainer {o.samples_per_s:,.0f} samples/s "
                f"(wall {o.wall_s * 1e3:.0f} ms: validation {o.validation_s * 1e3:.1f} ms, "
                f"checkpoints {o.checkpoint_s * 1e3:.1f} ms, best-weights copies {o.bookkeeping_s * 1e3:.1f} ms), "
                f"plain torch {q:,.0f} samples/s, ratio {ratios[-1]:.3f} (per CPU second {cpu_ratios[-1]:.3f})"
            )
    med = statistics.median
    train_only = [o.train_only_samples_per_s / q for o, q in zip(runs, plain_runs, strict=True)]
    ours_sps = [o.samples_per_s for o in runs]
    print(
        f"trainer loop:     best {max(ours_sps):,.0f}, median {med(ours_sps):,.0f} samples/s; "
        f"median {med([o.samples_per_cpu_s for o in runs]):,.0f} samples per CPU second"
    )
    print(
        f"plain torch loop: best {max(plain_runs):,.0f}, median {med(plain_runs):,.0f} samples/s; "
        f"median {med(plain_cpu):,.0f} samples per CPU second"
    )
    print(
        f"trainer training steps alone (wall minus validation, checkpoints, best-weights copies): "
        f"median {med([o.train_only_samples_per_s for o in runs]):,.0f} samples/s"
    )
    print(f"ratio of the best runs: {max(ours_sps) / max(plain_runs):.3f}")
    print(f"per-repeat ratios (wall): {', '.join(f'{r:.3f}' for r in ratios)}")
    print(
        f"per-repeat ratios (CPU time, less sensitive to other processes): "
        f"{', '.join(f'{r:.3f}' for r in cpu_ratios)} -> median {med(cpu_ratios):.3f}"
    )
    print(f"load average now {os.getloadavg()[0]:.2f}")
    # each pair runs back to back, so load from other processes hits both loops alike; the median
    # over the pairs discards the pairs a load spike split
    print(
        result_line(
            {
                "trainer_vs_plain_torch": med(ratios),
                "validation_cost": med([o.share(o.validation_s) for o in runs]),
                "checkpoint_cost": med([o.share(o.checkpoint_s) for o in runs]),
                "bookkeeping_cost": med([o.share(o.bookkeeping_s) for o in runs]),
                "train_only_vs_plain_torch": med(train_only),
                "trainer_vs_plain_torch_cpu": med(cpu_ratios),
            }
        )
    )


if __name__ == "__main__":
    main()

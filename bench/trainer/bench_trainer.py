"""Throughput of the trainer's loop against a plain hand-written torch loop (``make bench-trainer``).

Same model (the trainer's MLP, same initial weights), same data, same batch size and optimizer, in
one process, alternating the two so that machine noise hits both alike. The trainer's loop is timed
as it runs in production: per-epoch validation, early-stopping bookkeeping and a checkpoint written
to an object store (a local directory here) after every epoch. The plain loop only trains.

The trainer uses AdamW's fused kernel; the plain loop uses AdamW as most hand-written loops do
(``--plain-fused`` gives it the fused kernel too, for a like-for-like optimizer).

The last line is ``RESULT trainer_vs_plain_torch=<ratio>`` (goal: 0.90 or more): the median, over the
repeats, of the samples/s ratio of two back-to-back runs (ABBA order); the ratio of the best runs of
each loop is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from kubeloop_trainer.app import train_targets
from kubeloop_trainer.checkpoint import Checkpointer
from kubeloop_trainer.data import Dataset, prepare
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.loop import Loop, LoopConfig, LoopState, TorchEngine
from kubeloop_trainer.model import build_model
from kubeloop_trainer.storage import LocalStore
from torch.nn import functional as F  # noqa: N812

from kubeloop.contracts import checkpoint_prefix
from kubeloop.resources import DatasetSpec

CPU = torch.device("cpu")


def make_dataset(rows: int, features: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    w = rng.normal(size=features)
    y = (x @ w + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)]).assign(y=y)
    return prepare(df, DatasetSpec(uri="/bench.csv", target="y"), "classification", seed)


def ours(ds: Dataset, hidden: list[int], batch: int, epochs: int, store_dir: Path) -> float:
    torch.manual_seed(0)
    ctx = DistContext()
    engine = TorchEngine(build_model(ds, hidden, 0.0), 1e-3, ctx, CPU)
    cfg = LoopConfig(
        epochs=epochs,
        batch_size=batch,
        learning_rate=1e-3,
        seed=0,
        task="classification",
        early_stopping=True,
        patience=1000,
    )
    loop = Loop(engine, cfg, ctx, CPU, ds.x_train, train_targets(ds, ds.y_train), ds.x_val, ds.y_val)
    ckpt = Checkpointer(LocalStore(store_dir), checkpoint_prefix("bench", "job"), "uid", ctx, store_dir)
    t0 = time.perf_counter()
    loop.fit(LoopState(), lambda r, st: ckpt.save_torch(engine, st, {"mlflow_run_id": ""}))
    return len(ds.y_train) * epochs / (time.perf_counter() - t0)


def plain(ds: Dataset, hidden: list[int], batch: int, epochs: int, fused: bool = False) -> float:
    torch.manual_seed(0)
    model = build_model(ds, hidden, 0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    n = len(y)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return n * epochs / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_ROWS", "25000")))
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 32])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "7")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    p.add_argument(
        "--plain-fused",
        action="store_true",
        help="give the plain loop the fused AdamW the trainer uses (like-for-like optimizer)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ds = make_dataset(a.rows, a.features)
    print(
        f"bench-trainer: {len(ds.y_train)} training rows x {ds.encoder.width} features, MLP {a.hidden}, "
        f"batch {a.batch}, {a.epochs} epochs, {a.threads} thread(s), {a.repeats} alternating repeats, "
        f"plain loop optimizer: {'fused AdamW' if a.plain_fused else 'AdamW (default)'}"
    )
    with tempfile.TemporaryDirectory() as d:
        ours(ds, a.hidden, a.batch, 1, Path(d))  # warm-up
        plain(ds, a.hidden, a.batch, 1, a.plain_fused)
        ours_runs, plain_runs, ratios = [], [], []
        for i in range(a.repeats):
            if i % 2 == 0:  # ABBA order: neither loop always runs first
                o = ours(ds, a.hidden, a.batch, a.epochs, Path(d))
                q = plain(ds, a.hidden, a.batch, a.epochs, a.plain_fused)
            else:
                q = plain(ds, a.hidden, a.batch, a.epochs, a.plain_fused)
                o = ours(ds, a.hidden, a.batch, a.epochs, Path(d))
            ours_runs.append(o)
            plain_runs.append(q)
            ratios.append(o / q)
            print(
                f"  repeat {i + 1}: trainer {o:,.0f} samples/s, plain torch {q:,.0f} samples/s, ratio {o / q:.3f}"
            )
    print(
        f"trainer loop:     best {max(ours_runs):,.0f}, median {statistics.median(ours_runs):,.0f} samples/s"
    )
    print(
        f"plain torch loop: best {max(plain_runs):,.0f}, median {statistics.median(plain_runs):,.0f} samples/s"
    )
    print(f"ratio of the best runs: {max(ours_runs) / max(plain_runs):.3f}")
    # each pair runs back to back (ABBA order), so load from other processes hits both loops alike;
    # the median over the pairs discards the pairs a load spike split
    print(f"RESULT trainer_vs_plain_torch={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

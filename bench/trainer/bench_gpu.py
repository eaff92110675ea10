"""DeepSpeed ZeRO-1 bf16 step time against a plain torch loop on the same GPU (``make bench-trainer-gpu``).

Like for like by default:

* the same model (the trainer's ``TabularMLP``, same layers) with the same initial weights, the same
  data already on the GPU, the same batch size and the same batch gathering (a seeded permutation,
  rows taken with ``index_select``, as ``Loop.run_epoch`` does);
* the same optimizer: torch's AdamW with the same learning rate and default implementation -- the
  optimizer the trainer hands to ``deepspeed.initialize``;
* the same precision regime: bf16 compute over fp32 master weights. DeepSpeed's ``bf16`` mode keeps
  bf16 parameters and fp32 master copies in its optimizer; the plain loop uses ``torch.autocast`` over
  fp32 parameters, the usual way to train in bf16 without DeepSpeed;
* the same number of steps, timed between two CUDA synchronisations, in alternating (ABBA) rounds.

Ours is the trainer's own engine (``kubeloop_trainer.ds_engine.DeepSpeedEngine``, ZeRO stage 1 with
bf16, built by the trainer's ``deepspeed_config``) driven exactly as ``Loop.run_epoch`` drives an
engine in a single process (mean loss, ``engine.step``). On a CUDA device that includes the trainer's
CUDA graph: each full batch's step is replayed from one captured graph
(``kubeloop_trainer.graphs.GraphedStep``). Like for like, the plain loop is then captured by the same
``GraphedStep``, and both optimizers are AdamW with ``capturable=True``. The ``eager`` variant times the
trainer with graphs off (``KUBELOOP_TRAINER_CUDA_GRAPHS=false``) against the plain loop run eagerly: the
headline of earlier runs. On the CPU (the dry run) nothing is captured.

Three shapes: ``example`` is examples/trainingjob.yaml on the breast-cancer table (30 features,
hidden [64, 32], batch 64): a tiny model where per-step framework overhead dominates. ``wide``
(256 features, hidden [2048, 2048, 2048], batch 8192) still is launch-bound on an H200 (~0.6 ms of
matrix work in a ~2 ms step). ``large`` (1024 features, hidden [8192, 8192, 8192], batch 8192, 143M
parameters, ~6.7 TFLOP per step) keeps the GPU busy, so host-side overhead hides behind it.

``--variants`` also times DeepSpeed configurations other than the trainer's (DeepSpeed options merged
over the trainer's ``deepspeed_config``), to find where DeepSpeed's per-step cost goes; the headline
ratios are always the trainer's own configuration. ``skip_1rank_reduce`` is not a configuration but a
patch of DeepSpeed's code (``PATCHES``): on one rank it skips ZeRO's gradient all-reduce path, which
changes no value there, to measure what that path costs. ``compile`` and ``deepcompile`` compile the model
(DeepSpeed's ``engine.compile()``; DeepCompile also moves ZeRO-1's gradient handling into the compiled
graph): like for like, they are timed against the plain loop with its model through ``torch.compile``. A
variant that fails (e.g. DeepCompile's JIT-built ops on a machine without a CUDA toolchain) is reported
and skipped.

``--profile`` then shows where a step's time goes, for the trainer's engine and the plain loop: host
time per phase (forward, backward, optimizer step), torch.profiler's busiest operators, a cProfile of the
DeepSpeed steps, and on a GPU every operation that makes the host wait for the device (torch's sync
debug mode), with where it was called from.

Last line: ``RESULT ds_vs_plain_example=<r> ds_vs_plain_wide=<r> ...`` (step-time ratios, lower is
better for us; 1.0 means DeepSpeed costs nothing over plain torch).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubeloop_trainer.ds_engine as ds_engine
import torch
from kubeloop_trainer.distributed import DistContext, deepspeed_config, init_process_group
from kubeloop_trainer.ds_engine import DeepSpeedEngine
from kubeloop_trainer.graphs import GraphedStep, use_own_stream
from kubeloop_trainer.loop import loss_sum
from kubeloop_trainer.model import TabularMLP

from kubeloop.resources import DeepSpeedSpec

LR = 1e-3

# DeepSpeed options merged over the trainer's configuration (``--variants``); "trainer" is the trainer's own.
VARIANTS: dict[str, dict[str, Any]] = {
    "trainer": {},
    # The trainer's configuration before it turned these off (DeepSpeed's defaults), all together and
    # one at a time.
    "session3_config": {
        "zero_optimization": {
            "compute_grad_norm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
        },
        "timers": {"throughput": {"enabled": True, "synchronized": True}},
    },
    "grad_norm": {"zero_optimization": {"compute_grad_norm": True}},
    "contiguous_grads": {"zero_optimization": {"contiguous_gradients": True}},
    "reduce_scatter": {"zero_optimization": {"reduce_scatter": True}},
    "tput_timer": {"timers": {"throughput": {"enabled": True, "synchronized": True}}},
    # DeepSpeed's default for bf16 (one device sync per step for nothing).
    "overflow_check": {"bf16": {"check_grad_overflow": True}},
    # Knobs still at DeepSpeed's defaults, to see what else a step pays for on one rank.
    "no_multi_rank_bucket": {"zero_optimization": {"use_multi_rank_bucket_allreduce": False}},
    "overlap_comm": {"zero_optimization": {"overlap_comm": True}},
    # fp32 gradient accumulation: DeepSpeed's BF16_Optimizer instead of the ZeRO optimizer (it always
    # computes the norm).
    "fp32_grad_accum": {
        "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": {"compute_grad_norm": True},
    },
    # No ZeRO at all (DeepSpeed's bf16 optimizer): what ZeRO-1 itself costs on one rank.
    "no_zero": {"zero_optimization": {"stage": 0, "compute_grad_norm": True}},
    # bf16 through torch.autocast over fp32 parameters (the plain loop's own regime) instead of DeepSpeed's
    # bf16 parameters with fp32 master copies.
    "torch_autocast": {"bf16": {"enabled": False}, "torch_autocast": {"enabled": True, "dtype": "bfloat16"}},
    # Not a configuration (see PATCHES): the trainer's config with ZeRO's gradient all-reduce path skipped.
    "skip_1rank_reduce": {},
    # Compiled (see COMPILED): DeepSpeed's engine.compile(), plain torch.compile of the module (ZeRO's hooks
    # stay eager), and DeepCompile, which puts ZeRO-1's gradient handling into the compiled graph.
    "compile": {},
    "deepcompile": {"compile": {"deepcompile": True}},
    # The trainer's config with every step run eagerly (KUBELOOP_TRAINER_CUDA_GRAPHS=false), against the
    # plain loop run eagerly too; on a CUDA device "trainer" itself replays a captured graph (GRAPHED).
    "eager": {},
}


def _skip_1rank_reduce(engine: DeepSpeedEngine) -> None:
    # On one rank ZeRO-1's all-reduce path (flatten the bucket, divide by 1, all-reduce over a 1-rank group,
    # unflatten, copy back into each .grad) leaves every gradient as it was, so skipping it changes no
    # value. No DeepSpeed option does this: it is an upper bound on what patching DeepSpeed could save.
    zero = engine.engine.optimizer
    if engine.engine.dp_world_size != 1:
        raise SystemExit("skip_1rank_reduce is only an identity at world size 1")
    zero.allreduce_no_retain = lambda *args, **kwargs: None


# Variants that change DeepSpeed's code rather than its configuration: measurements of where the time
# goes, never something the trainer does.
PATCHES: dict[str, Callable[[DeepSpeedEngine], None]] = {"skip_1rank_reduce": _skip_1rank_reduce}

# Variants where DeepSpeed compiles the model (``engine.compile()``, inductor). Like for like, the plain
# loop they are timed against compiles its model too, with torch.compile and the same backend.
COMPILED = frozenset({"compile", "deepcompile"})

# On a CUDA device the trainer replays each full batch's step from a captured CUDA graph
# (kubeloop_trainer.graphs.GraphedStep). Like for like, the plain loop it is timed against is captured by the
# same GraphedStep, and both sides use AdamW with ``capturable=True`` (a captured step keeps its step count
# on the device).
GRAPHED = frozenset({"trainer"})


def loop_mode(variant: str, device: torch.device) -> str:
    if variant in COMPILED:
        return "compiled"
    return "graphed" if variant in GRAPHED and device.type == "cuda" else "eager"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Shape:
    name: str
    features: int
    hidden: tuple[int, ...]
    batch: int
    steps: int
    warmup: int


SHAPES = (
    Shape("example", 30, (64, 32), 64, 400, 50),
    Shape("wide", 256, (2048, 2048, 2048), 8192, 60, 10),
    Shape("large", 1024, (8192, 8192, 8192), 8192, 30, 5),
)


def make_model(shape: Shape, seed: int) -> TabularMLP:
    torch.manual_seed(seed)
    return TabularMLP(shape.features, shape.features, shape.hidden, n_outputs=2, dropout=0.0)


def make_data(shape: Shape, device: torch.device, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, shape.features, generator=g)
    y = (x[:, :3].sum(dim=1) > 0).long()
    return x.to(device), y.to(device)


def batches(n: int, batch: int, device: torch.device, seed: int) -> Callable[[int], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(device)
    n_full = n // batch

    def nth(i: int) -> torch.Tensor:
        start = (i % n_full) * batch
        return perm[start : start + batch]

    return nth


def time_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step, warm-up excluded, between two device synchronisations."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return (time.perf_counter() - t0) / steps


def make_engine(shape: Shape, device: torch.device, ctx: DistContext, variant: str) -> DeepSpeedEngine:
    extra = VARIANTS[variant]

    def config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return merged(deepspeed_config(*args, **kwargs), extra)

    ds_engine.deepspeed_config = config  # type: ignore[assignment]
    try:
        engine = DeepSpeedEngine(
            make_model(shape, seed=0),
            LR,
            DeepSpeedSpec(zero_stage=1, precision="bf16"),
            shape.batch,
            ctx,
            device,
            capturable=loop_mode(variant, device) == "graphed",
        )
    finally:
        ds_engine.deepspeed_config = deepspeed_config
    if variant in PATCHES:
        PATCHES[variant](engine)
    if variant in COMPILED:
        engine.engine.compile()
    return engine


def bench_shape(
    shape: Shape, device: torch.device, ctx: DistContext, rounds: int, variants: list[str]
) -> dict[str, float]:
    rows = shape.batch * 16
    x, y = make_data(shape, device, rows)
    nth = batches(rows, shape.batch, device, seed=2)

    graphs: dict[str, GraphedStep] = {}

    def stepper(
        step_on: Callable[[torch.Tensor], torch.Tensor], mode: str, side: str
    ) -> Callable[[int], None]:
        """One step per batch number, from the trainer's GraphedStep when the mode is graphed."""
        run: Callable[[torch.Tensor], torch.Tensor] = step_on
        if mode == "graphed":
            run = graphs[side] = GraphedStep(step_on, shape.batch, device)

        def step(i: int) -> None:
            run(nth(i))

        return step

    def plain_loop(mode: str) -> tuple[Callable[[int], None], torch.optim.Optimizer, Callable[..., Any]]:
        model = make_model(shape, seed=0).to(device)
        model.train(True)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, capturable=mode == "graphed")
        fwd = torch.compile(model) if mode == "compiled" else model

        def step_on(idx: torch.Tensor) -> torch.Tensor:
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = fwd(xb)
            loss = loss_sum(out, yb, "classification", mean=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            return loss.detach()

        return stepper(step_on, mode, "plain"), opt, fwd

    def failed(variant: str, e: Exception) -> None:  # a variant this DeepSpeed or machine cannot run
        where = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}"
            for f in reversed(traceback.extract_tb(e.__traceback__)[-5:])
        )
        print(f"{shape.name} [{variant}]: failed: {type(e).__name__}: {str(e)[:400]} @ {where}", flush=True)

    loops: dict[str, tuple[Callable[[int], None], torch.optim.Optimizer, Callable[..., Any]]] = {}
    results: dict[str, float] = {}
    for variant in variants:
        mode = loop_mode(variant, device)
        try:
            if mode not in loops:
                loops[mode] = plain_loop(mode)
            plain_step, opt, plain = loops[mode]
            ours = make_engine(shape, device, ctx, variant)
        except Exception as e:  # the others still run
            failed(variant, e)
            continue
        ours.train(True)
        # Like for like: the plain loop's optimizer has the settings of the one DeepSpeed received.
        ds_defaults = {k: v for k, v in ours.engine.basic_optimizer.defaults.items() if k != "lr"}
        plain_defaults = {k: v for k, v in opt.defaults.items() if k != "lr"}
        if ds_defaults != plain_defaults:
            raise SystemExit(f"optimizers differ: deepspeed {ds_defaults} vs plain {plain_defaults}")

        def ours_on(idx: torch.Tensor, engine: DeepSpeedEngine = ours) -> torch.Tensor:
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            loss = loss_sum(engine.forward(xb), yb, "classification", mean=True)
            engine.step(loss)
            return loss.detach()

        ours_step = stepper(ours_on, mode, "ours")
        ours_s: list[float] = []
        plain_s: list[float] = []
        for r in range(rounds):
            order = ((ours_step, ours_s), (plain_step, plain_s))
            for fn, acc in order if r % 2 == 0 else tuple(reversed(order)):
                acc.append(time_steps(fn, shape.steps, shape.warmup, device))
        with torch.no_grad():
            xb, yb = x[: shape.batch], y[: shape.batch]
            final_ours = float(loss_sum(ours.forward(xb), yb, "classification", True))
            with torch.autocast(device.type, dtype=torch.bfloat16):
                final_plain = float(loss_sum(plain(xb), yb, "classification", True))
        o, p = statistics.median(ours_s), statistics.median(plain_s)
        replayed = ""
        if mode == "graphed":  # proof that both sides ran from their graphs, not eagerly after a refusal
            g_ours, g_plain = graphs["ours"], graphs["plain"]
            replayed = f" | graph replays: deepspeed {g_ours.replays}, plain {g_plain.replays}"
            if g_ours.eager or g_plain.eager:
                replayed += f" (capture refused: deepspeed {g_ours.eager}, plain {g_plain.eager})"
        print(
            f"{shape.name} [{variant}, {type(ours.engine.optimizer).__name__}]: features={shape.features} "
            f"hidden={list(shape.hidden)} batch={shape.batch} steps={shape.steps}x{rounds} | deepspeed zero1 "
            f"bf16 {o * 1e3:.3f} ms/step (rounds {[round(s * 1e3, 3) for s in ours_s]}) | plain torch "
            f"{'torch.compile ' if mode == 'compiled' else 'CUDA graph ' if mode == 'graphed' else ''}autocast bf16 {p * 1e3:.3f} ms/step (rounds {[round(s * 1e3, 3) for s in plain_s]}) | ratio "
            f"{o / p:.3f} | loss after training: deepspeed {final_ours:.4f}, plain {final_plain:.4f}{replayed}",
            flush=True,
        )
        suffix = shape.name if variant == "trainer" else f"{shape.name}_{variant}"
        results.update(
            {f"ds_vs_plain_{suffix}": o / p, f"ds_ms_{suffix}": o * 1e3, f"plain_ms_{suffix}": p * 1e3}
        )
        del ours
    return results


def profile_shape(shape: Shape, device: torch.device, ctx: DistContext, steps: int = 200) -> None:
    """Where a step's time goes, for the trainer's engine and the plain loop (``--profile``).

    Per phase, the host time spent issuing it (no synchronisation between phases: in a launch-bound
    step that is what the step costs); then torch.profiler's busiest host-side operators.
    """
    from torch.profiler import ProfilerActivity, profile

    rows = shape.batch * 16
    x, y = make_data(shape, device, rows)
    nth = batches(rows, shape.batch, device, seed=2)
    engine = make_engine(shape, device, ctx, "eager")  # host time per phase: the steps run eagerly
    engine.train(True)
    plain = make_model(shape, seed=0).to(device)
    opt = torch.optim.AdamW(plain.parameters(), lr=LR)

    def ds_phases(i: int) -> list[Callable[[], Any]]:
        idx = nth(i)
        box: dict[str, Any] = {}
        return [
            lambda: box.update(loss=loss_sum(engine.forward(x[idx]), y[idx], "classification", mean=True)),
            lambda: engine.engine.backward(box["loss"]),
            lambda: engine.engine.step(),
        ]

    def plain_phases(i: int) -> list[Callable[[], Any]]:
        idx = nth(i)
        box: dict[str, Any] = {}

        def fwd() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = plain(x[idx])
            box["loss"] = loss_sum(out, y[idx], "classification", mean=True)

        def bwd() -> None:
            opt.zero_grad(set_to_none=True)
            box["loss"].backward()

        return [fwd, bwd, lambda: opt.step()]

    for name, phases in (("deepspeed", ds_phases), ("plain", plain_phases)):
        spent = [0.0, 0.0, 0.0]
        for i in range(steps + 20):
            for k, fn in enumerate(phases(i)):
                t0 = time.perf_counter()
                fn()
                if i >= 20:
                    spent[k] += time.perf_counter() - t0
        sync(device)
        us = [round(v / steps * 1e6, 1) for v in spent]
        print(f"{shape.name} {name}: host us/step forward {us[0]} backward {us[1]} step {us[2]}", flush=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for i in range(50):
                for fn in phases(i):
                    fn()
            sync(device)
        if name == "deepspeed":
            pr = cProfile.Profile()
            pr.enable()
            for i in range(100):
                for fn in phases(i):
                    fn()
            pr.disable()
            sync(device)
            print(f"{shape.name} deepspeed: cProfile over 100 steps (host time by function)", flush=True)
            pstats.Stats(pr, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            print(f"{shape.name} deepspeed: the same, DeepSpeed's functions by cumulative time", flush=True)
            pstats.Stats(pr, stream=sys.stdout).sort_stats("cumulative").print_stats("deepspeed", 30)
        table = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60
        )
        print(f"{shape.name} {name}: torch.profiler over 50 steps\n{table}", flush=True)
        if device.type == "cuda":
            report_syncs(f"{shape.name} {name}", phases)


def report_syncs(label: str, phases: Callable[[int], list[Callable[[], Any]]], steps: int = 5) -> None:
    """Every operation that makes the host wait for the GPU during a few steps, with where it came from
    (torch's sync debug mode): each one drains the launch queue of a launch-bound step."""
    import traceback
    import warnings

    seen: dict[str, int] = {}

    def record(message: Warning | str, *_: Any, **__: Any) -> None:
        if "debug mode is a prototype" in str(message):  # torch's notice on switching the mode on
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}({f.name})" for f in reversed(frames[-6:]))
        key = f"{str(message).splitlines()[0][:60]} @ {where}"
        seen[key] = seen.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(steps):
                for fn in phases(i):
                    fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    total = sum(seen.values())
    print(f"{label}: {total / steps:.1f} synchronising operations per step", flush=True)
    for key, n in sorted(seen.items(), key=lambda kv: -kv[1]):
        print(f"  {n / steps:.1f}/step {key}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per shape (default 4)")
    ap.add_argument(
        "--shapes", default="example,wide,large", help="comma-separated subset of: example, wide, large"
    )
    ap.add_argument("--variants", default="trainer", help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    ap.add_argument("--steps", type=int, default=0, help="override every shape's timed steps (dry runs)")
    ap.add_argument("--profile", action="store_true", help="then print where each step's time goes")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-trainer-gpu needs a CUDA GPU; none on this machine", file=sys.stderr)
        return 2
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}", flush=True)
        use_own_stream(device)  # as the trainer does when it graphs; every variant and both sides alike
    ctx = DistContext()
    init_process_group(ctx, device, always=True)
    wanted = set(args.shapes.split(","))
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if "trainer" not in variants:
        variants.insert(0, "trainer")
    results: dict[str, float] = {}
    for shape in SHAPES:
        if shape.name in wanted:
            if args.steps:
                shape = Shape(shape.name, shape.features, shape.hidden, shape.batch, args.steps, 2)
            results.update(bench_shape(shape, device, ctx, args.rounds, variants))
    if args.profile:
        for shape in SHAPES:
            if shape.name in wanted:
                profile_shape(shape, device, ctx)
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in results.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Process-group set-up from the torchrun environment, and the DeepSpeed configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from kubeloop.resources import DeepSpeedSpec
from kubeloop_trainer.errors import ConfigError, DistributedError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DistContext:
        e = dict(os.environ if env is None else env)
        try:
            world = int(e.get("WORLD_SIZE", "1"))
            return cls(
                rank=int(e.get("RANK", "0")),
                world_size=world,
                local_rank=int(e.get("LOCAL_RANK", "0")),
                local_world_size=int(e.get("LOCAL_WORLD_SIZE", str(world))),
            )
        except ValueError as ex:
            raise DistributedError(f"bad torchrun environment: {ex}") from ex


def device_for(ctx: DistContext, use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(
    ctx: DistContext, device: torch.device, timeout_s: int = 600, *, always: bool = False
) -> None:
    """gloo on CPU, nccl on GPU; torchrun's MASTER_ADDR/MASTER_PORT rendezvous (env://).

    ``always`` also creates a group of one (DeepSpeed needs one even for a single process); the
    rendezvous variables default to a free loopback port then.
    """
    if dist.is_initialized() or not (ctx.distributed or always):
        return
    if not ctx.distributed:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend=backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s)
        )
    except Exception as e:
        raise DistributedError(f"cannot join the {backend} process group: {e}") from e


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def deepspeed_config(spec: DeepSpeedSpec, global_batch: int, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config for our loop: one optimizer step per global batch, split over ranks.

    ``train_batch_size = micro_batch * world_size`` (no gradient accumulation). The optimizer is
    passed to ``deepspeed.initialize`` as a torch AdamW, so no fused kernel has to be built.
    """
    micro = max(1, global_batch // world_size)
    precision = spec.precision
    if precision == "fp16" and not on_gpu:
        raise ConfigError("distributed.deepspeed.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if precision == "bf16" and spec.zero_stage in (1, 2):
        # With no clipping and no bf16 overflow check the global gradient norm is used for nothing,
        # yet ZeRO 1/2 computes it every step (a norm per parameter and an all-reduce). fp16 keeps it:
        # there it is how an overflow is found. Stage 3 has no such switch.
        zero["compute_grad_norm"] = False
    if world_size == 1 and spec.zero_stage in (1, 2):
        # One rank has no one to reduce gradients with; by default ZeRO still copies every gradient into
        # a contiguous bucket and reduce-scatters it. On one GPU that cost 0.4-0.5 ms per step of a small
        # model (bench-trainer-gpu). With more ranks DeepSpeed's defaults stay.
        zero["contiguous_gradients"] = False
        zero["reduce_scatter"] = False
    cfg: dict[str, Any] = {
        "train_batch_size": micro * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        # DeepSpeed clips the gradient norm at 1.0 unless told otherwise; the torch/DDP path never
        # clips, and the backend must not change what is learnt.
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        # bf16 has float32's exponent range, so it does not overflow where fp16 does; DeepSpeed's check
        # costs a device sync per step, and the loop already stops on a non-finite loss.
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": False},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer waits for the device at the start and the end of every step (its
        # default is synchronized); we never print its figures, so it only stalls the launch queue.
        "timers": {"throughput": {"enabled": False}},
    }
    return cfg

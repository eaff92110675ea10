"""DeepSpeed engine (``deepspeed.initialize``): ZeRO stage and bf16/fp16 from the spec.

On a machine without CUDA DeepSpeed runs on its CPU accelerator over gloo. Its optional
shared-memory collective op is a C++ build of several minutes at first use, so it stays off unless
``KUBELOOP_TRAINER_DEEPSPEED_SHM=true``; gloo does the all-reduce then.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubeloop.resources import DeepSpeedSpec
from kubeloop_trainer.distributed import DistContext, deepspeed_config
from kubeloop_trainer.errors import DistributedError
from kubeloop_trainer.loop import fp32_params


def _import_deepspeed(device: torch.device, allow_shm: bool) -> Any:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    try:
        import deepspeed

        # ``deepspeed.comm.torch`` as an attribute is the torch module (star import); go by name
        ds_torch_comm: Any = importlib.import_module("deepspeed.comm.torch")
    except Exception as e:
        raise DistributedError(f"DeepSpeed cannot be imported: {e}") from e
    if device.type == "cpu" and not allow_shm:
        ds_torch_comm.build_shm_op = lambda: None
    return deepspeed


class DeepSpeedEngine:
    def __init__(
        self,
        model: nn.Module,
        learning_rate: float,
        spec: DeepSpeedSpec,
        global_batch: int,
        ctx: DistContext,
        device: torch.device,
        allow_shm: bool = False,
        capturable: bool = False,
    ) -> None:
        deepspeed = _import_deepspeed(device, allow_shm)
        self.zero_stage = spec.zero_stage
        self.capturable = capturable
        self.config = deepspeed_config(spec, global_batch, ctx.world_size, device.type == "cuda")
        # capturable: the step count lives on the device, so that a CUDA graph can replay the step
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, capturable=capturable)
        try:
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model.to(device), optimizer=optimizer, config=self.config, dist_init_required=True
            )
        except Exception as e:
            raise DistributedError(f"deepspeed.initialize failed: {e}") from e
        self.module: nn.Module = self.engine.module
        self._deepspeed = deepspeed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.engine(x)
        return out

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def train(self, mode: bool) -> None:
        self.engine.train(mode)

    def weights(self) -> dict[str, torch.Tensor]:
        ctx = (
            self._deepspeed.zero.GatheredParameters(list(self.module.parameters()))
            if self.zero_stage == 3
            else contextlib.nullcontext()
        )
        with ctx:
            return fp32_params(self.module)

    def save(self, directory: Path, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory), tag="ckpt", client_state=client_state)

    def load(self, directory: Path) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(str(directory), tag="ckpt")
        if path is None:
            raise DistributedError(f"no DeepSpeed checkpoint under {directory}")
        self._fit_capturable()
        return dict(client_state or {})

    def _fit_capturable(self) -> None:
        """A loaded optimizer state brings the settings it was saved with; whether its step count lives on
        the device (a CUDA-graphed run) is this run's choice, not the checkpoint's."""
        opt = self.engine.basic_optimizer
        for group in opt.param_groups:
            group["capturable"] = self.capturable
        for param, state in opt.state.items():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                where = param.device if self.capturable else torch.device("cpu")
                state["step"] = step.to(device=where, dtype=torch.float32)

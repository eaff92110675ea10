"""DeepSpeed: the configuration we build (unit) and real runs (CPU accelerator; GPU when present)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from kubeloop_trainer.distributed import deepspeed_config
from kubeloop_trainer.errors import ConfigError

from kubeloop.resources import DeepSpeedSpec, TrainingJobSpec


def test_config_splits_the_global_batch_over_ranks() -> None:
    cfg = deepspeed_config(
        DeepSpeedSpec(zero_stage=2, precision="bf16"), global_batch=64, world_size=4, on_gpu=True
    )
    assert cfg["train_batch_size"] == 64
    assert cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["gradient_accumulation_steps"] == 1
    # nothing clips and bf16 has no overflow check, so the gradient norm would be computed for nothing
    assert cfg["zero_optimization"] == {"stage": 2, "compute_grad_norm": False}
    assert cfg["timers"] == {"throughput": {"enabled": False}}  # two device syncs per step otherwise
    assert cfg["gradient_clipping"] == 0.0  # DeepSpeed's default (1.0) would make it learn differently
    assert cfg["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert cfg["fp16"]["enabled"] is False
    assert "optimizer" not in cfg  # a torch AdamW is handed over: no fused op to build


def test_config_precisions() -> None:
    fp16 = deepspeed_config(DeepSpeedSpec(zero_stage=1, precision="fp16"), 32, 1, on_gpu=True)
    assert fp16["fp16"]["enabled"]
    assert not fp16["bf16"]["enabled"]
    # fp16 finds overflows through the norm; one rank has nothing to reduce-scatter
    assert fp16["zero_optimization"] == {"stage": 1, "contiguous_gradients": False, "reduce_scatter": False}
    one = deepspeed_config(DeepSpeedSpec(zero_stage=1, precision="bf16"), 32, 1, on_gpu=True)
    assert one["zero_optimization"] == {
        "stage": 1,
        "compute_grad_norm": False,
        "contiguous_gradients": False,
        "reduce_scatter": False,
    }
    zero3 = deepspeed_config(DeepSpeedSpec(zero_stage=3, precision="bf16"), 32, 1, on_gpu=True)
    assert zero3["zero_optimization"] == {"stage": 3}  # DeepSpeed refuses the switch at stage 3
    fp32 = deepspeed_config(DeepSpeedSpec(zero_stage=0, precision="fp32"), 32, 1, on_gpu=False)
    assert not fp32["fp16"]["enabled"]
    assert not fp32["bf16"]["enabled"]
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        deepspeed_config(DeepSpeedSpec(precision="fp16"), 32, 1, on_gpu=False)


def test_config_is_accepted_by_deepspeed() -> None:
    """DeepSpeed's own parser takes the config (single process: micro batch == global batch)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = deepspeed_config(DeepSpeedSpec(zero_stage=1, precision="bf16"), 64, 1, on_gpu=False)
    parsed = DeepSpeedConfig(json.loads(json.dumps(cfg)))
    assert parsed.zero_optimization_stage == 1
    assert parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == 64
    assert parsed.gradient_clipping == 0.0
    assert parsed.zero_config.compute_grad_norm is False
    assert parsed.zero_config.contiguous_gradients is False
    assert parsed.zero_config.reduce_scatter is False
    assert parsed.timers_config.enabled is False
    for stage in (0, 2, 3):
        other = deepspeed_config(DeepSpeedSpec(zero_stage=stage, precision="bf16"), 64, 1, on_gpu=False)
        assert DeepSpeedConfig(json.loads(json.dumps(other))).zero_optimization_stage == stage


def _ds_spec(make_spec: Callable[..., dict[str, Any]], uri: str, name: str, precision: str, gpus: int) -> str:
    spec = make_spec(
        uri,
        "target",
        "regression",
        training={"epochs": 3, "batchSize": 32, "learningRate": 0.01, "seed": 3},
        distributed={
            "backend": "deepspeed",
            "gpusPerNode": gpus,
            "allowCpu": gpus == 0,
            "deepspeed": {"zeroStage": 1, "precision": precision},
        },
        registry={"modelName": name},
    )
    TrainingJobSpec.model_validate(spec)
    return json.dumps(spec)


@pytest.fixture
def ds_env(
    diabetes: pd.DataFrame,
    local_env: dict[str, str],
    tmp_path: Path,
    make_spec: Callable[..., dict[str, Any]],
) -> Callable[[str, int], dict[str, str]]:
    """``ds_env(model_name, gpus)``: a trainer environment for a ZeRO-1 bf16 run on the diabetes table."""
    data = tmp_path / "diabetes.csv"
    diabetes.to_csv(data, index=False)

    def env(name: str, gpus: int) -> dict[str, str]:
        return {**local_env, "KUBELOOP_TRAINER_SPEC": _ds_spec(make_spec, str(data), name, "bf16", gpus)}

    return env


@pytest.mark.slow
def test_deepspeed_zero1_bf16_on_the_cpu_accelerator(
    ds_env: Callable[[str, int], dict[str, str]], run_cli: Callable[..., Any]
) -> None:
    """A real deepspeed.initialize run (ZeRO-1, bf16) over gloo: killed after epoch 2, resumed from its
    DeepSpeed checkpoint in the object store, registered and exported."""
    env = ds_env("diab-ds", 0)
    first = run_cli({**env, "KUBELOOP_TRAINER_CRASH_AFTER_EPOCH": "2"})
    assert first.rc == -9, first.stderr[-3000:]
    assert [e["epoch"] for e in first.events()] == [1, 2]
    r = run_cli(env)
    assert r.rc == 0, r.stderr[-3000:]
    assert r.events("resumed") == [{"event": "resumed", "epoch": 2, "epochs": 3}]
    assert [e["epoch"] for e in r.events()] == [3]
    assert r.termination is not None
    assert r.termination["modelVersion"] == 1
    assert r.termination["metrics"]["r2"] > 0.2


@pytest.mark.slow
def test_deepspeed_zero1_bf16_two_ranks_on_the_cpu_accelerator(
    ds_env: Callable[[str, int], dict[str, str]], run_cli: Callable[..., Any]
) -> None:
    """Two ranks under torchrun: ZeRO's gradient reduction with DeepSpeed's multi-rank defaults, no global
    gradient norm; one registered version, and rank 1 partitions and steps its share of the optimizer."""
    env = ds_env("diab-ds2", 0)
    r = run_cli(
        env, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    )
    assert r.rc == 0, r.stderr[-3000:]
    assert [e["epoch"] for e in r.events()] == [1, 2, 3]  # rank 0 alone reports
    assert r.termination is not None
    assert r.termination["modelVersion"] == 1
    assert r.termination["metrics"]["r2"] > 0.2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deepspeed_zero1_bf16_on_gpu(
    ds_env: Callable[[str, int], dict[str, str]], run_cli: Callable[..., Any]
) -> None:
    env = ds_env("diab-ds-gpu", 1)
    r = run_cli(env)
    assert r.rc == 0, r.stderr[-3000:]
    assert r.termination is not None
    assert r.termination["modelVersion"] == 1

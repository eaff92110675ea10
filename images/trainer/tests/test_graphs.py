"""The CUDA-graph training step (kubeloop_trainer.graphs): its schedule on the CPU with a stand-in for CUDA's
capture, and on a GPU the real thing against eager steps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.errors import CudaGraphError
from kubeloop_trainer.graphs import GraphedStep, back_to_default_stream, graphs_wanted, use_own_stream
from kubeloop_trainer.loop import Loop, LoopConfig, TorchEngine
from kubeloop_trainer.model import TabularMLP


class FakeGraph:
    def __init__(self) -> None:
        self.work: Any = None


class Recorded(GraphedStep):
    """CUDA's side of GraphedStep played on the CPU: recording runs nothing (the step only notes the call),
    a replay runs the recorded step on whatever the captured index tensor holds then."""

    def __init__(self, trained: list[list[int]], refuse: bool = False, fail_in_step: bool = False) -> None:
        super().__init__(self._step, batch_size=4, device=torch.device("cpu"))
        self.trained = trained
        self.refuse = refuse
        self.fail_in_step = fail_in_step
        self.recording = False
        self.side: list[list[int]] = []

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        if self.recording:
            if self.fail_in_step:
                raise RuntimeError("operation not permitted when stream is capturing")
            return torch.zeros(())
        self.trained.append(batch.tolist())
        return batch.sum().float()

    def _on_side_stream(self, batch: torch.Tensor) -> torch.Tensor:
        self.side.append(batch.tolist())
        return self.step(batch)

    def _new_graph(self) -> Any:
        return FakeGraph()

    @contextlib.contextmanager
    def _recording(self, graph: Any) -> Iterator[None]:
        self.recording = True
        try:
            yield
        finally:
            self.recording = False
        if self.refuse:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        graph.work = self._step

    def _replay(self, graph: Any) -> None:
        assert self.captured is not None
        _, index, loss = self.captured
        loss.copy_(graph.work(index))


def batches(n: int) -> list[torch.Tensor]:
    return [torch.arange(4 * i, 4 * i + 4) for i in range(n)]


def test_every_batch_is_trained_once_in_order_and_replayed_after_the_warm_up() -> None:
    trained: list[list[int]] = []
    g = Recorded(trained)
    losses = [float(g(b)) for b in batches(10)]
    assert trained == [b.tolist() for b in batches(10)]
    assert g.side == [b.tolist() for b in batches(GraphedStep.WARMUP)]  # warm-up steps on a side stream
    assert g.replays == 10 - GraphedStep.WARMUP  # the captured batch is replayed too: recording ran nothing
    assert not g.eager
    assert losses == [float(b.sum()) for b in batches(10)]  # each replay's loss is its own batch's


def test_a_refused_capture_trains_that_batch_and_the_rest_eagerly() -> None:
    trained: list[list[int]] = []
    g = Recorded(trained, refuse=True)
    losses = [float(g(b)) for b in batches(8)]
    assert trained == [b.tolist() for b in batches(8)]
    assert g.eager
    assert g.replays == 0
    assert g.captured is None
    assert losses == [float(b.sum()) for b in batches(8)]


def test_a_step_that_raises_while_captured_stops_training_with_a_named_retryable_error() -> None:
    g = Recorded([], fail_in_step=True)
    for b in batches(GraphedStep.WARMUP):
        g(b)
    with pytest.raises(CudaGraphError, match="KUBELOOP_TRAINER_CUDA_GRAPHS=false") as e:
        g(batches(GraphedStep.WARMUP + 1)[-1])
    assert "operation not permitted when stream is capturing" in e.value.message
    assert e.value.exit_code == 35
    assert e.value.retryable


def test_a_graphed_step_refuses_a_batch_of_another_size() -> None:
    g = Recorded([])
    with pytest.raises(ValueError, match="full batches of 4 rows"):
        g(torch.arange(3))


def _loop(seed: int, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], graphs: bool = False) -> Loop:
    torch.manual_seed(seed)
    model = TabularMLP(x.shape[1], x.shape[1], (16,), n_outputs=2, dropout=0.0)
    cfg = LoopConfig(epochs=2, batch_size=16, learning_rate=1e-2, seed=seed, task="classification")
    engine = TorchEngine(model, cfg.learning_rate, DistContext(), torch.device("cpu"))
    return Loop(engine, cfg, DistContext(), torch.device("cpu"), x, y, x[:20], y[:20], cuda_graphs=graphs)


def _table() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)).astype(np.float32)  # 6 full batches of 16 and one of 4
    return x, (x[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize(
    ("enabled", "deepspeed", "stage", "device", "world", "want"),
    [
        (True, True, 1, "cuda", 1, True),
        (False, True, 1, "cuda", 1, False),  # KUBELOOP_TRAINER_CUDA_GRAPHS=false
        (True, False, 1, "cuda", 1, False),  # the torch backend
        (True, True, 2, "cuda", 1, False),
        (True, True, 3, "cuda", 1, False),
        (True, True, 1, "cpu", 1, False),
        (True, True, 1, "cuda", 2, False),
    ],
)
def test_which_runs_are_graphed(
    enabled: bool, deepspeed: bool, stage: int, device: str, world: int, want: bool
) -> None:
    assert graphs_wanted(enabled, deepspeed, stage, torch.device(device), world) is want


def test_no_graph_on_the_cpu() -> None:
    x, y = _table()
    assert _loop(1, x, y, graphs=True).graphed is None


def test_the_loop_sends_full_batches_through_the_graph_and_the_short_last_one_eagerly() -> None:
    x, y = _table()
    eager = _loop(3, x, y)
    graphed = _loop(3, x, y)

    class Replayed(GraphedStep):  # the loop's own step, "captured" (recorded, not run) then replayed
        def _on_side_stream(self, batch: torch.Tensor) -> torch.Tensor:
            return self.step(batch)

        def _capture(self, batch: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
            return FakeGraph(), batch.clone(), torch.zeros(())

        def _replay(self, graph: Any) -> None:
            assert self.captured is not None
            _, index, loss = self.captured
            loss.copy_(self.step(index))

    seen: list[int] = []
    step = graphed._mean_loss_step

    def counted(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return step(batch)

    graphed.graphed = Replayed(counted, 16, torch.device("cpu"))
    a, b = eager.run_epoch(1), graphed.run_epoch(1)
    assert (a.train_loss, a.val_loss, a.val_metric) == (b.train_loss, b.val_loss, b.val_metric)
    assert graphed.graphed.replays == 6 - GraphedStep.WARMUP
    assert seen == [16] * 6  # the graphed step saw the full batches only
    for p, q in zip(eager.engine.module.parameters(), graphed.engine.module.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deepspeed_steps_replayed_from_a_cuda_graph_train_like_eager_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a GPU: the trainer's DeepSpeed engine (ZeRO-1 bf16) trained through the captured graph ends where
    the same engine trained eagerly ends, and the graph was replayed, not refused."""
    from kubeloop_trainer.distributed import init_process_group
    from kubeloop_trainer.ds_engine import DeepSpeedEngine

    from kubeloop.resources import DeepSpeedSpec

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    # a group of one on a free port, undone afterwards: tests after this one start trainers of their own
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    ctx = DistContext()
    init_process_group(ctx, device, always=True)
    stream = use_own_stream(device)  # as the trainer does when it graphs
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 30)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64)
    cfg = LoopConfig(epochs=3, batch_size=64, learning_rate=1e-3, seed=5, task="classification")
    histories = []
    try:
        for graphs in (False, True):
            torch.manual_seed(5)
            model = TabularMLP(30, 30, (64, 32), n_outputs=2, dropout=0.0)
            spec = DeepSpeedSpec(zero_stage=1, precision="bf16")
            engine = DeepSpeedEngine(model, cfg.learning_rate, spec, 64, ctx, device, capturable=graphs)
            loop = Loop(engine, cfg, ctx, device, x[:800], y[:800], x[800:], y[800:], cuda_graphs=graphs)
            histories.append([loop.run_epoch(e) for e in (1, 2, 3)])
            if graphs:
                assert loop.graphed is not None
                assert not loop.graphed.eager
                assert loop.graphed.replays == 3 * (800 // 64) - GraphedStep.WARMUP
    finally:
        back_to_default_stream(device, stream)
        torch.distributed.destroy_process_group()
    for a, b in zip(*histories, strict=True):
        np.testing.assert_allclose(
            [a.train_loss, a.val_loss, a.val_metric],
            [b.train_loss, b.val_loss, b.val_metric],
            rtol=1e-3,
            atol=1e-4,
        )

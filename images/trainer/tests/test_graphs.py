"""The CUDA-graph training step (kubeloop_trainer.graphs): its schedule on the CPU with a stand-in for CUDA's
capture, and on a GPU the real thing against eager steps."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.errors import CudaGraphError
from kubeloop_trainer.graphs import GraphedStep, back_to_default_stream, graphs_wanted, use_own_stream
from kubeloop_trainer.loop import Loop, LoopConfig, TorchEngine, loss_sum
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
        self.warm_ups: list[list[int]] = []

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        if self.recording:
            if self.fail_in_step:
                raise RuntimeError("operation not permitted when stream is capturing")
            return torch.zeros(())
        self.trained.append(batch.tolist())
        return batch.sum().float()

    def _warm_up(self, batch: torch.Tensor) -> torch.Tensor:
        self.warm_ups.append(batch.tolist())
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


def group_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendezvous of an in-process group of one, on a free port, set through monkeypatch so that it is
    gone after the test: trainers that later tests start inherit the environment and would reuse it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for key, value in {**env, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)


def batches(n: int) -> list[torch.Tensor]:
    return [torch.arange(4 * i, 4 * i + 4) for i in range(n)]


def test_every_batch_is_trained_once_in_order_and_replayed_after_the_warm_up() -> None:
    trained: list[list[int]] = []
    g = Recorded(trained)
    losses = [float(g(b)) for b in batches(10)]
    assert trained == [b.tolist() for b in batches(10)]
    assert g.warm_ups == [b.tolist() for b in batches(GraphedStep.WARMUP)]  # eager, on the run's stream
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
    with pytest.raises(CudaGraphError, match="the next attempt trains without CUDA graphs") as e:
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
    ("enabled", "deepspeed", "stage", "precision", "device", "world", "want"),
    [
        (True, True, 1, "bf16", "cuda", 1, True),
        (False, True, 1, "bf16", "cuda", 1, False),  # KUBELOOP_TRAINER_CUDA_GRAPHS=false
        (True, False, 1, "bf16", "cuda", 1, False),  # the torch backend
        (True, True, 0, "bf16", "cuda", 1, False),
        (True, True, 2, "bf16", "cuda", 1, False),
        (True, True, 3, "bf16", "cuda", 1, False),
        (True, True, 1, "fp16", "cuda", 1, False),  # its overflow check reads the GPU every step
        (True, True, 1, "fp32", "cuda", 1, False),  # so does its gradient norm
        (True, True, 1, "bf16", "cpu", 1, False),
        (True, True, 1, "bf16", "cuda", 2, False),
    ],
)
def test_which_runs_are_graphed(
    enabled: bool, deepspeed: bool, stage: int, precision: str, device: str, world: int, want: bool
) -> None:
    assert graphs_wanted(enabled, deepspeed, stage, precision, torch.device(device), world) is want


def test_no_graph_on_the_cpu() -> None:
    x, y = _table()
    assert _loop(1, x, y, graphs=True).graphed is None


def test_the_loop_sends_full_batches_through_the_graph_and_the_short_last_one_eagerly() -> None:
    x, y = _table()
    eager = _loop(3, x, y)
    graphed = _loop(3, x, y)

    class Replayed(GraphedStep):  # the loop's own step, "captured" (recorded, not run) then replayed
        def _warm_up(self, batch: torch.Tensor) -> torch.Tensor:
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
    group_of_one(monkeypatch)
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


def test_a_checkpoint_saved_by_a_graphed_run_resumes_in_one_that_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer state of a graphed run says capturable (its step count on the GPU). Loaded into a run
    without graphs (here on the CPU, where torch refuses a capturable AdamW step), it is made to fit."""
    from kubeloop_trainer.distributed import init_process_group
    from kubeloop_trainer.ds_engine import DeepSpeedEngine

    from kubeloop.resources import DeepSpeedSpec

    group_of_one(monkeypatch)
    cpu, ctx = torch.device("cpu"), DistContext()
    init_process_group(ctx, cpu, always=True)
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))

    def engine() -> DeepSpeedEngine:
        torch.manual_seed(0)
        model = TabularMLP(5, 5, (8,), n_outputs=2, dropout=0.0)
        return DeepSpeedEngine(model, 1e-2, DeepSpeedSpec(zero_stage=1, precision="bf16"), 16, ctx, cpu)

    try:
        saved = engine()
        saved.step(loss_sum(saved.forward(x), y, "classification", mean=True))
        for group in saved.engine.basic_optimizer.param_groups:  # as a graphed run's optimizer is
            group["capturable"] = True
        saved.save(tmp_path / "ckpt", {"epoch": 1})
        resumed = engine()
        assert resumed.load(tmp_path / "ckpt")["epoch"] == 1
        assert [g["capturable"] for g in resumed.engine.basic_optimizer.param_groups] == [False]
        before = [p.detach().clone() for p in resumed.module.parameters()]
        resumed.step(loss_sum(resumed.forward(x), y, "classification", mean=True))  # refused unless it fits
        assert any(not torch.equal(a, b) for a, b in zip(before, resumed.module.parameters(), strict=True))
    finally:
        torch.distributed.destroy_process_group()


def test_a_run_that_failed_inside_a_capture_is_retried_without_graphs(
    local_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_main: Callable[[dict[str, str]], Any],
    make_spec: Callable[..., dict[str, Any]],
) -> None:
    """A TrainingJob cannot turn graphs off, so the trainer does: the attempt whose step raised inside the
    capture notes it next to its checkpoints (exit 35, retried), and the retry trains eagerly."""
    import json

    import pandas as pd
    from kubeloop_trainer import app

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame["a"] > 0).astype(int)
    frame.to_csv(tmp_path / "t.csv", index=False)
    env = {
        **local_env,
        "KUBELOOP_TRAINER_SPEC": json.dumps(make_spec(str(tmp_path / "t.csv"), "y", "classification")),
    }
    # as on one GPU with DeepSpeed ZeRO-1 bf16 (this machine has none: the stream switch is left out)
    monkeypatch.setattr(app, "graphs_wanted", lambda *args: True)
    monkeypatch.setattr(app, "use_own_stream", lambda device: None)
    asked: list[bool] = []

    class Spy(app.Loop):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, cuda_graphs: bool = False) -> None:
            asked.append(cuda_graphs)
            super().__init__(*args, cuda_graphs=cuda_graphs)

    monkeypatch.setattr(app, "Loop", Spy)
    real_fit = app.Loop.fit

    def failing_fit(self: Any, *args: Any) -> Any:
        raise CudaGraphError("the training step failed while being captured as a CUDA graph (boom)")

    monkeypatch.setattr(Spy, "fit", failing_fit)
    first = run_main(env)
    assert first.rc == 35, first.stderr[-2000:]
    assert first.termination["reason"] == "CudaGraphCaptureFailed"
    notes = list((tmp_path / "store").rglob("cuda-graphs-refused.json"))
    assert len(notes) == 1
    assert json.loads(notes[0].read_text()) == {"uid": "uid-1", "reason": first.termination["message"]}

    monkeypatch.setattr(Spy, "fit", real_fit)
    second = run_main(env)
    assert second.rc == 0, second.stderr[-2000:]
    assert asked == [True, False]
    assert "training without CUDA graphs" in second.stderr

"""The training loop: determinism, early stopping, checkpoint/resume equivalence (no I/O)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from kubeloop_testing.storage import MemoryStore
from kubeloop_trainer.app import train_targets
from kubeloop_trainer.checkpoint import Checkpointer
from kubeloop_trainer.data import Dataset, data_fingerprint, prepare
from kubeloop_trainer.distributed import DistContext
from kubeloop_trainer.loop import Loop, LoopConfig, LoopState, TorchEngine, best_model
from kubeloop_trainer.model import build_model

from kubeloop.contracts import ObjectRef
from kubeloop.resources import DatasetSpec

CPU = torch.device("cpu")
ONE = DistContext()


def _dataset(frame: pd.DataFrame, task: str = "classification") -> Dataset:
    return prepare(frame, DatasetSpec(uri="/d.csv", target="target"), task, 3)  # type: ignore[arg-type]


def _loop(ds: Dataset, epochs: int = 4, **cfg: object) -> Loop:
    torch.manual_seed(3)
    engine = TorchEngine(build_model(ds, [16], 0.1), 0.01, ONE, CPU)
    config = LoopConfig(epochs=epochs, batch_size=64, learning_rate=0.01, seed=3, task=ds.task, **cfg)  # type: ignore[arg-type]
    return Loop(
        engine,
        config,
        ONE,
        CPU,
        ds.x_train,
        train_targets(ds, ds.y_train),
        ds.x_val,
        train_targets(ds, ds.y_val),
    )


def test_same_seed_same_model(breast_cancer: pd.DataFrame) -> None:
    ds = _dataset(breast_cancer)
    a = _loop(ds).fit(LoopState())
    b = _loop(ds).fit(LoopState())
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    for k, v in a.best_state.items():
        assert torch.equal(v, b.best_state[k])
    assert a.history[-1]["val_metric"] > 0.9


def test_early_stopping_restores_the_best_epoch(diabetes: pd.DataFrame) -> None:
    ds = _dataset(diabetes, "regression")
    loop = _loop(ds, epochs=200, early_stopping=True, patience=2)
    st = loop.fit(LoopState())
    assert st.stopped_early
    assert st.epoch < 200
    assert st.epoch == st.best_epoch + 2
    assert st.best_val == min(h["val_loss"] for h in st.history)
    model = best_model(build_model(ds, [16], 0.1), st)
    with torch.no_grad():
        out = model(torch.from_numpy(ds.x_val)).squeeze(1).numpy()
    y = train_targets(ds, ds.y_val)
    assert float(np.mean((out - y) ** 2)) == pytest.approx(st.best_val, rel=1e-4)


def test_resume_from_checkpoint_is_exact(breast_cancer: pd.DataFrame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(breast_cancer)
    straight = _loop(ds, epochs=5, early_stopping=False).fit(LoopState())

    store = MemoryStore(buckets=("b",))
    ckpt = Checkpointer(store, ObjectRef("b", "checkpoints/ns/job"), "uid-1", ONE, tmp_path)
    first = _loop(ds, epochs=2, early_stopping=False)
    first.fit(LoopState(), lambda r, st: ckpt.save_torch(first.engine, st, {"mlflow_run_id": "r1"}))  # type: ignore[arg-type]
    assert store.exists(ObjectRef("b", "checkpoints/ns/job/checkpoint.pt"))

    second = _loop(ds, epochs=5, early_stopping=False)
    meta = ckpt.load()
    assert meta is not None
    assert meta["epoch"] == 2
    assert meta["extra"]["mlflow_run_id"] == "r1"
    state = Checkpointer.restore_torch(meta, second.engine)  # type: ignore[arg-type]
    seen: list[int] = []
    resumed = second.fit(state, lambda r, st: seen.append(r.epoch))
    assert seen == [3, 4, 5]
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in straight.history], rel=1e-6
    )

    # another TrainingJob with the same name (a new UID) does not pick the checkpoint up
    other = Checkpointer(store, ObjectRef("b", "checkpoints/ns/job"), "uid-2", ONE, tmp_path)
    assert other.load() is None


def test_checkpoint_is_loadable_with_weights_only(breast_cancer: pd.DataFrame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = _dataset(breast_cancer)
    store = MemoryStore(buckets=("b",))
    ckpt = Checkpointer(store, ObjectRef("b", "c/ns/j"), "u", ONE, tmp_path)
    loop = _loop(ds, epochs=1)
    loop.fit(LoopState(), lambda r, st: ckpt.save_torch(loop.engine, st, {}))  # type: ignore[arg-type]
    data = store.get(ObjectRef("b", "c/ns/j/checkpoint.pt"))
    torch.load(io.BytesIO(data), weights_only=True)


def test_threads_follow_the_pod_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a CPU-limited pod the trainer sizes torch's pool by the cgroup quota, shared by the node's ranks."""
    import kubeloop_trainer.app as app
    from kubeloop_trainer.settings import TrainerSettings

    before = torch.get_num_threads()
    monkeypatch.setattr(app, "cpu_limit", lambda: 4)
    try:
        settings = TrainerSettings(spec="{}")
        assert app.configure_threads(settings, DistContext(local_world_size=2)) == 2
        assert torch.get_num_threads() == 2
        assert app.configure_threads(settings, DistContext(local_world_size=8)) == 1
        assert app.configure_threads(TrainerSettings(spec="{}", threads=3), ONE) == 3
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_of_other_data_is_not_resumed(breast_cancer: pd.DataFrame, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a dataset prefix read again after a restart may have grown a column or a category: the model
    # no longer has the checkpoint's shape (load_state_dict failed on every retry) or its scaling
    ds = _dataset(breast_cancer)
    assert data_fingerprint(ds) == data_fingerprint(_dataset(breast_cancer.copy()))
    grown = _dataset(breast_cancer.assign(site=np.where(breast_cancer.index % 2 == 0, "a", "b")))
    assert data_fingerprint(grown) != data_fingerprint(ds)

    store = MemoryStore(buckets=("b",))
    ckpt = Checkpointer(store, ObjectRef("b", "checkpoints/ns/job"), "uid-1", ONE, tmp_path)
    first = _loop(ds, epochs=1)
    extra = {"mlflow_run_id": "r1", "data": data_fingerprint(ds)}
    first.fit(LoopState(), lambda r, st: ckpt.save_torch(first.engine, st, extra))  # type: ignore[arg-type]

    assert ckpt.load(data_fingerprint(grown)) is None
    meta = ckpt.load(data_fingerprint(ds))
    assert meta is not None
    Checkpointer.restore_torch(meta, _loop(ds).engine)  # type: ignore[arg-type]


def test_values_near_the_float32_limit_train() -> None:
    # A feature and a regression target spanning +-3e38 (float32 holds them) overflowed when scaled in
    # float32 (x - mean), and the run failed as TrainingDiverged in epoch 1, "lower the learning rate".
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "huge": np.r_[3e38, -3e38 * rng.uniform(0.5, 1.0, n - 1)],
            "x": rng.normal(size=n),
            "target": np.r_[-2e38, 2e38 * rng.uniform(0.5, 1.0, n - 1)],
        }
    )
    ds = _dataset(frame, "regression")
    assert np.isfinite(train_targets(ds, ds.y_train)).all()
    st = _loop(ds, epochs=2).fit(LoopState())
    assert all(np.isfinite(h["val_loss"]) for h in st.history)


class _PoisonedEngine(TorchEngine):
    """Its weights turn NaN at the last step of the first epoch: after the training loss was taken."""

    steps = 0

    def step(self, loss: torch.Tensor) -> None:
        super().step(loss)
        self.steps += 1
        if self.steps == 1:
            with torch.no_grad():
                next(self.module.parameters()).fill_(float("nan"))


def test_a_validation_loss_that_is_not_finite_is_divergence(breast_cancer: pd.DataFrame) -> None:
    # The training loss is taken before each step: weights that the last step of an epoch ruins gave a
    # NaN validation loss that was kept as the best (the first epoch's weights are always kept), and
    # with epochs 1 the run went on to fail as ExportError, "ONNX output differs from torch by nan".
    from kubeloop_trainer.errors import TrainingDivergedError

    ds = _dataset(breast_cancer)
    torch.manual_seed(3)
    engine = _PoisonedEngine(build_model(ds, [16], 0.0), 0.01, ONE, CPU)
    cfg = LoopConfig(epochs=1, batch_size=10_000, learning_rate=0.01, seed=3, task=ds.task)
    loop = Loop(engine, cfg, ONE, CPU, ds.x_train, ds.y_train, ds.x_val, train_targets(ds, ds.y_val))
    seen: list[int] = []
    with pytest.raises(TrainingDivergedError, match="validation loss became nan in epoch 1"):
        loop.fit(LoopState(), lambda r, st: seen.append(r.epoch))
    assert seen == []

"""ONNX export: raw inputs, preprocessing in the graph, parity with torch, metadata (no I/O)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from kubeloop_trainer.data import prepare
from kubeloop_trainer.errors import DataError, ExportError
from kubeloop_trainer.export import export_onnx, onnx_feed, verify
from kubeloop_trainer.model import InferenceHead, build_model

from kubeloop.contracts import TRAINER_NO_RETRY_EXIT_CODES, ModelMetadata
from kubeloop.resources import DatasetSpec


def _trained_head(ds, steps: int = 30):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model(ds, [8], 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    for _ in range(steps):
        out = model(x)
        loss = (
            torch.nn.functional.cross_entropy(out, y)
            if ds.task == "classification"
            else torch.nn.functional.mse_loss(out.squeeze(1), (y - ds.target_mean) / ds.target_std)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return InferenceHead(model.eval(), ds.task, ds.target_mean, ds.target_std).eval()


def _meta(ds) -> ModelMetadata:  # type: ignore[no-untyped-def]
    return ModelMetadata(
        features=ds.encoder.features, task=ds.task, classes=ds.classes, target=ds.target, model_name="m"
    )


def test_classification_graph_takes_raw_values(mixed_frame: pd.DataFrame) -> None:
    ds = prepare(
        mixed_frame, DatasetSpec(uri="/d.csv", target="y", categorical_features=["size"]), "classification", 1
    )
    head = _trained_head(ds)
    model = export_onnx(head, ds, _meta(ds))
    data = model.SerializeToString()
    assert verify(data, head, ds, 1e-4) <= 1e-4

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [(i.name, i.type) for i in sess.get_inputs()]
    assert names == [
        ("x1", "tensor(float)"),
        ("x2", "tensor(float)"),
        ("color", "tensor(string)"),
        ("size", "tensor(string)"),
    ]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "label"]
    meta = ModelMetadata.from_props(dict(sess.get_modelmeta().custom_metadata_map))
    assert meta.classes == ["hi", "lo", "mid"]
    assert meta.task == "classification"
    assert [f.name for f in meta.features] == ["x1", "x2", "color", "size"]

    # raw rows, with a missing number, a missing and an unseen category; batch of 3
    feed = {
        "x1": np.array([[np.nan], [12.0], [9.0]], np.float32),
        "x2": np.array([[-5.0], [-4.0], [-6.0]], np.float32),
        "color": np.array([[""], ["red"], ["purple"]], object),
        "size": np.array([["1"], ["3"], ["2"]], object),
    }
    probs, labels = sess.run(None, feed)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert set(labels) <= {"hi", "lo", "mid"}
    # the same rows through torch: NaN imputed by the model, missing colour -> mode, unseen -> zeros
    enc = ds.encoder
    cols = {
        "x1": np.array([np.nan, 12.0, 9.0]),
        "x2": np.array([-5.0, -4.0, -6.0]),
        "color": np.array([None, "red", "purple"], object),
        "size": np.array(["1", "3", "2"], object),
    }
    want = head(torch.from_numpy(enc.encode(cols))).detach().numpy()
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_regression_graph(diabetes: pd.DataFrame) -> None:
    ds = prepare(diabetes, DatasetSpec(uri="/d.csv", target="target"), "regression", 1)
    head = _trained_head(ds, steps=60)
    model = export_onnx(head, ds, _meta(ds))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["prediction"]
    (pred,) = sess.run(None, onnx_feed(ds, ds.raw_val))
    assert pred.shape == (len(ds.y_val), 1)
    assert 25 < float(pred.mean()) < 350  # target units, not standardised
    assert sess.get_inputs()[0].shape == ["N", 1]  # dynamic batch
    onnx.checker.check_model(model, full_check=True)


def test_verify_refuses_a_model_that_differs(diabetes: pd.DataFrame) -> None:
    ds = prepare(diabetes, DatasetSpec(uri="/d.csv", target="target"), "regression", 1)
    head = _trained_head(ds, steps=5)
    data = export_onnx(head, ds, _meta(ds)).SerializeToString()
    with torch.no_grad():
        head.model.net[0].bias.add_(0.01)  # torch drifts away from the exported graph
    with pytest.raises(ExportError, match="differs from torch"):
        verify(data, head, ds, 1e-4)


def test_an_export_failure_is_not_retried(diabetes: pd.DataFrame) -> None:
    # ExportError (32) was retried up to the Job's backoffLimit, each retry training the whole model
    # again to fail the same way: export, checker and onnxruntime comparison are pure computation on
    # the trained model (no storage, no network; uploads fail as StorageError/TrackingError), and the
    # same spec, seed and data (or the last checkpoint) give the same model.
    ds = prepare(diabetes, DatasetSpec(uri="/d.csv", target="target"), "regression", 1)
    head = _trained_head(ds, steps=5)
    data = export_onnx(head, ds, _meta(ds)).SerializeToString()
    with torch.no_grad():
        head.model.net[0].bias.add_(0.01)
    messages = []
    for _ in range(2):
        with pytest.raises(ExportError) as e:
            verify(data, head, ds, 1e-4)
        messages.append(e.value.message)
    assert messages[0] == messages[1]  # a second attempt fails alike
    assert not ExportError.retryable
    assert ExportError.exit_code == 32
    assert ExportError.exit_code in TRAINER_NO_RETRY_EXIT_CODES


def test_feature_named_like_an_output_is_refused(breast_cancer: pd.DataFrame) -> None:
    df = breast_cancer.rename(columns={"mean radius": "label"})
    with pytest.raises(DataError, match="'label' is named like an output"):  # before training
        prepare(df, DatasetSpec(uri="/d.csv", target="target"), "classification", 1)
    # a regression model has no output "label"
    ds = prepare(df, DatasetSpec(uri="/d.csv", target="target"), "regression", 1)
    head = _trained_head(ds, 1)
    verify(export_onnx(head, ds, _meta(ds)).SerializeToString(), head, ds, 1e-4)


@pytest.mark.parametrize(
    "name",
    [
        "kubeloop/x",
        "kubeloop/empty",
        "kubeloop/cat0/mode",
        "model.net.0.weight",
        "/model/model/net/net.0/Gemm_output_0",
        "onnx::Gemm_0",
    ],
)
def test_any_feature_name_exports(name: str) -> None:
    # Column names are the user's: one equal to a tensor name of the graph (our "kubeloop/..." front-end
    # or torch's weights and node outputs) made the graph invalid (not SSA, or an input shadowed by an
    # initializer), and the job failed with ExportError after the whole training.
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame(
        {
            name: rng.choice(["p", "q", "r"], n) if "empty" in name or "mode" in name else rng.normal(size=n),
            "other": rng.normal(size=n),
            "y": rng.choice(["a", "b"], n),
        }
    )
    ds = prepare(df, DatasetSpec(uri="/d.csv", target="y"), "classification", 1)
    head = _trained_head(ds, 3)
    data = export_onnx(head, ds, _meta(ds)).SerializeToString()
    assert verify(data, head, ds, 1e-4) <= 1e-4
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [name, "other"]


def test_extreme_values_stay_finite_in_torch_and_onnx() -> None:
    # Standardising in float32 overflowed: x - mean for a column spanning +-3e38 (training rows: the
    # training loss became NaN, reported as TrainingDiverged, "lower the learning rate"), and x / std for
    # a value far outside the training range (validation or serving rows: NaN out, and for validation
    # rows an ExportError "differs from torch by nan"). Standardised in float64 and bounded, they stay
    # finite, in torch and in the graph alike.
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "huge": np.r_[3e38, -3e38 * rng.uniform(0.5, 1.0, n - 1)],
            "small": rng.normal(size=n) * 1e-3,
            "y": rng.normal(size=n),
        }
    )
    ds = prepare(df, DatasetSpec(uri="/d.csv", target="y"), "regression", 1)
    with torch.no_grad():
        assert torch.isfinite(build_model(ds, [8], 0.0).preprocess(torch.from_numpy(ds.x_train))).all()
    head = _trained_head(ds, 5)
    data = export_onnx(head, ds, _meta(ds)).SerializeToString()
    verify(data, head, ds, 1e-4)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    odd = np.array([3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 0.0], dtype=np.float32)
    cols = {"huge": odd.astype(np.float64), "small": odd[::-1].astype(np.float64)}
    (got,) = sess.run(None, {k: v.astype(np.float32).reshape(-1, 1) for k, v in cols.items()})
    with torch.no_grad():
        want = head(torch.from_numpy(ds.encoder.encode(cols))).numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_standardising_is_the_plain_formula_where_it_does_not_overflow() -> None:
    # the overflow-safe form (halves, then the bound) gives (x - mean) / std to the bit elsewhere
    from kubeloop_trainer.model import MAX_STANDARDISED, TabularMLP

    g = torch.Generator().manual_seed(0)
    m = TabularMLP(50, 50, [4], 2)
    m.mean.copy_(torch.randn(50, generator=g) * torch.logspace(-30, 30, 50))
    m.std.copy_(torch.rand(50, generator=g) * torch.logspace(-20, 20, 50) + 1e-30)
    x = torch.randn(2000, 50, generator=g) * torch.logspace(-30, 30, 50)
    plain = (x - m.mean) / m.std
    got = m.preprocess(x)
    fits = torch.isfinite(plain) & (plain.abs() < MAX_STANDARDISED)
    assert 0 < int(fits.sum()) < fits.numel()
    assert torch.equal(got[fits], plain[fits])
    assert bool((got[~fits].abs() == MAX_STANDARDISED).all())

"""A model exported by the trainer (images/trainer) served as-is: the cross-component contract.

Raw values in, preprocessing in the graph: null numeric -> NaN (imputed by the graph), null category ->
"" (missing), numbers as categories -> canonical strings, unseen category allowed; outputs
``probabilities`` and a string ``label``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("kubeloop_trainer.export")
torch = pytest.importorskip("torch")

from kubeloop_trainer.data import prepare  # noqa: E402
from kubeloop_trainer.export import export_onnx  # noqa: E402
from kubeloop_trainer.model import InferenceHead, build_model  # noqa: E402

from kubeloop.contracts import ModelMetadata  # noqa: E402
from kubeloop.resources import DatasetSpec  # noqa: E402


@pytest.fixture(scope="module")
def trainer_model() -> tuple[bytes, list[str]]:
    rng = np.random.default_rng(0)
    n = 200
    x1 = rng.normal(10, 3, n)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.choice([1, 2, 3], n)
    score = x1 + (color == "red") * 4 - (size == 3) * 3
    y = np.array(["lo", "mid", "hi"])[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]
    df = pd.DataFrame({"x1": x1, "x2": rng.normal(size=n), "color": color, "size": size, "y": y})
    ds = prepare(
        df, DatasetSpec(uri="/d.csv", target="y", categorical_features=["size"]), "classification", 1
    )
    torch.manual_seed(0)
    head = InferenceHead(build_model(ds, [8], 0.0).eval(), ds.task, ds.target_mean, ds.target_std).eval()
    md = ModelMetadata(
        features=ds.encoder.features,
        task=ds.task,
        classes=ds.classes,
        target="y",
        model_name="m",
        model_version="1",
    )
    return export_onnx(head, ds, md).SerializeToString(), list(ds.classes)


def test_trainer_model_through_every_api(make_client, trainer_model) -> None:
    import onnxruntime as ort

    model, classes = trainer_model
    c = make_client(model, batching_enabled=True, max_latency_ms=1)
    records = [
        {"x1": None, "x2": -0.5, "color": None, "size": 1},
        {"x1": 12.0, "x2": 0.4, "color": "red", "size": "3"},
        {"x1": 9, "x2": 1, "color": "purple", "size": 2.0},
    ]
    feed = {
        "x1": np.array([[np.nan], [12.0], [9.0]], np.float32),
        "x2": np.array([[-0.5], [0.4], [1.0]], np.float32),
        "color": np.array([[""], ["red"], ["purple"]], object),
        "size": np.array([["1"], ["3"], ["2"]], object),
    }
    probs, labels = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)

    r = c.post("/forward_batch", json=records)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    np.testing.assert_array_equal(
        np.array([[p["probabilities"][k] for k in classes] for p in preds], np.float32), probs
    )
    assert [p["label"] for p in preds] == list(labels)
    assert c.post("/forward", json=records[0]).json()["label"] == labels[0]

    inputs = [
        {
            "name": n,
            "shape": [3, 1],
            "datatype": "BYTES" if feed[n].dtype == object else "FP32",
            "data": [r[n] for r in records],
        }
        for n in ("x1", "x2", "color")
    ] + [{"name": "size", "shape": [3, 1], "datatype": "BYTES", "data": ["1", "3", "2"]}]
    out = c.post("/v2/models/m/infer", json={"inputs": inputs}).json()["outputs"]
    assert [o["name"] for o in out] == ["probabilities", "label"]
    np.testing.assert_array_equal(np.array(out[0]["data"], np.float32).reshape(3, 3), probs)
    assert out[1] == {"name": "label", "datatype": "BYTES", "shape": [3], "data": list(labels)}
    assert c.get("/metadata").json()["classes"] == classes

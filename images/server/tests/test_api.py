"""Every endpoint in-process, answers compared with plain onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import pytest
from kubeloop_server.metrics import ServerMetrics
from kubeloop_testing.onnx_models import random_records

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))


def _oip_packed(records: list[dict[str, float]], n: int = 30) -> dict[str, object]:
    data = [r[f"f{i}"] for r in records for i in range(n)]
    return {
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [len(records), n], "datatype": "FP32", "data": data}],
    }


def _oip_per_feature(records: list[dict[str, object]]) -> dict[str, object]:
    inputs = []
    for name in records[0]:
        col = [r[name] for r in records]
        dt = "BYTES" if isinstance(col[0], str) else "FP32"
        inputs.append({"name": name, "shape": [len(col), 1], "datatype": dt, "data": col})
    return {"inputs": inputs}


def test_server_metadata_and_health(make_client, packed_clf) -> None:
    c = make_client(packed_clf)
    assert c.get("/v2").json() == {
        "name": "kubeloop-server",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    r = c.get("/v2/health/live")
    assert r.status_code == 200
    assert r.json() == {"live": True}
    r = c.get("/v2/health/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True}


def test_model_metadata_and_ready(make_client, packed_clf) -> None:
    c = make_client(packed_clf)
    expected = {
        "name": "iris-like",
        "versions": ["3"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        "parameters": {
            "model_kind": "kubeloop",
            "record_api": True,
            "prediction_log_unlogged_inputs": "",
            "prediction_log_prediction": True,
        },
    }
    assert c.get("/v2/models/iris-like").json() == expected
    assert c.get("/v2/models/iris-like/versions/3").json() == expected
    assert c.get("/v2/models/iris-like/ready").json() == {"name": "iris-like", "ready": True}
    assert c.get("/v2/models/iris-like/versions/3/ready").json() == {"name": "iris-like", "ready": True}
    r = c.get("/v2/models/iris-like/versions/4")
    assert r.status_code == 404
    assert "version '4'" in r.json()["error"]
    r = c.get("/v2/models/other/ready")
    assert r.status_code == 404
    assert "'other' not found" in r.json()["error"]


def test_name_and_version_overrides(make_client, packed_clf) -> None:
    c = make_client(packed_clf, model_name="served", model_version="42")
    assert c.get("/v2/models/served/versions/42").json()["versions"] == ["42"]
    assert c.get("/metadata").json()["version"] == "42"


@pytest.mark.parametrize("versioned", [False, True])
def test_oip_infer_packed_equals_onnxruntime(make_client, packed_clf, reference, versioned) -> None:
    c = make_client(packed_clf)
    records = random_records(5, seed=1)
    path = "/v2/models/iris-like/versions/3/infer" if versioned else "/v2/models/iris-like/infer"
    r = c.post(path, json=_oip_packed(records))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "iris-like"
    assert body["model_version"] == "3"
    assert body["id"] == "req-1"
    (out,) = body["outputs"]
    assert out["name"] == "probabilities"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [5, 3]
    expected = reference(packed_clf).run_records(records)[0]
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32).reshape(5, 3), expected)


def test_oip_infer_nested_data_and_per_feature_tensors(make_client, packed_clf, reference) -> None:
    c = make_client(packed_clf)
    records = random_records(2, seed=2)
    expected = reference(packed_clf).run_records(records)[0]
    nested = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 30],
                "datatype": "FP32",
                "data": [[r[f"f{i}"] for i in range(30)] for r in records],
            }
        ]
    }
    out = c.post("/v2/models/iris-like/infer", json=nested).json()["outputs"][0]
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32).reshape(2, 3), expected)
    # A packed model also accepts one tensor per feature, named as in the metadata.
    per_feature = {
        "inputs": [
            {"name": f"f{i}", "shape": [2], "datatype": "FP64", "data": [r[f"f{i}"] for r in records]}
            for i in range(30)
        ]
    }
    r = c.post("/v2/models/iris-like/infer", json=per_feature)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 3), expected
    )
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", r.json()["id"])  # generated when the request has none


def test_oip_infer_per_feature_mixed(make_client, mixed_clf, reference) -> None:
    c = make_client(mixed_clf)
    records = random_records(4, n_numeric=4, categorical=CATEGORICAL, seed=3)
    r = c.post(
        "/v2/models/mixed/infer", json={**_oip_per_feature(records), "outputs": [{"name": "probabilities"}]}
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_array_equal(
        np.array(out["data"], dtype=np.float32).reshape(4, 3), reference(mixed_clf).run_records(records)[0]
    )
    meta = c.get("/v2/models/mixed").json()
    assert [i["name"] for i in meta["inputs"]] == ["f0", "f1", "f2", "f3", "color", "size"]
    assert meta["inputs"][4] == {"name": "color", "datatype": "BYTES", "shape": [-1, 1]}


def test_forward_classification(make_client, mixed_clf, reference) -> None:
    c = make_client(mixed_clf)
    records = random_records(6, n_numeric=4, categorical=CATEGORICAL, seed=4)
    expected = reference(mixed_clf).run_records(records)[0]
    classes = ["setosa", "versicolor", "virginica"]
    for rec, probs in zip(records, expected, strict=True):
        r = c.post("/forward", json=rec)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == classes[int(np.argmax(probs))]
        assert body["model_version"] == "7"
        got = np.array([body["probabilities"][k] for k in classes], dtype=np.float32)
        np.testing.assert_array_equal(got, probs)
    r = c.post("/forward_batch", json=records)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == [classes[int(k)] for k in expected.argmax(axis=1)]
    for p, probs in zip(preds, expected, strict=True):
        np.testing.assert_array_equal(
            np.array([p["probabilities"][k] for k in classes], dtype=np.float32), probs
        )
    # {"records": [...]} is accepted as well
    assert c.post("/forward_batch", json={"records": records[:2]}).json()["predictions"] == preds[:2]


def test_forward_regression(make_client, mixed_reg, reference) -> None:
    c = make_client(mixed_reg)
    records = random_records(5, n_numeric=3, categorical=CATEGORICAL, seed=5)
    expected = reference(mixed_reg).run_records(records)[0].reshape(-1)
    got = [c.post("/forward", json=r).json()["prediction"] for r in records]
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), expected)
    batch = c.post("/forward_batch", json=records).json()["predictions"]
    np.testing.assert_array_equal(np.array([p["prediction"] for p in batch], dtype=np.float32), expected)


def test_metadata(make_client, mixed_clf) -> None:
    md = make_client(mixed_clf).get("/metadata").json()
    assert md["task"] == "classification"
    assert md["version"] == "7"
    assert md["name"] == "mixed"
    assert md["classes"] == ["setosa", "versicolor", "virginica"]
    assert md["features"][-1] == {"name": "size", "type": "categorical"}
    assert md["layout"] == "per_feature"
    assert md["mlflow_run_id"] == "0123456789abcdef"


def test_metrics(make_client, packed_clf) -> None:
    c = make_client(packed_clf)
    records = random_records(3, seed=6)
    c.post("/forward_batch", json=records)
    c.post("/forward", json=records[0])
    c.post("/forward", json={"nope": 1})
    text = c.get("/metrics").text
    assert 'kubeloop_server_requests_total{endpoint="/forward",protocol="rest",status="200"} 1.0' in text
    assert 'kubeloop_server_requests_total{endpoint="/forward",protocol="rest",status="400"} 1.0' in text
    assert (
        'kubeloop_server_request_duration_seconds_count{endpoint="/forward_batch",protocol="rest",status="200"} 1.0'
        in text
    )
    assert "kubeloop_server_batch_size_rows_sum 4.0" in text
    assert (
        'kubeloop_server_model_info{kind="kubeloop",layout="packed",model_name="iris-like",model_version="3",provider="CPUExecutionProvider",task="classification"} 1.0'
        in text
    )
    counts = re.findall(r'kubeloop_server_predictions_total\{class="[a-z]+"\} (\d+)\.0', text)
    assert sum(map(int, counts)) == 4
    assert "kubeloop_server_ready 1.0" in text
    assert "_created" not in text


def test_regression_prediction_histogram(make_client, mixed_reg) -> None:
    c = make_client(mixed_reg)
    c.post("/forward_batch", json=random_records(3, n_numeric=3, categorical=CATEGORICAL))
    assert 'kubeloop_server_prediction_value_bucket{le="+Inf"} 3.0' in c.get("/metrics").text


def log_graph() -> bytes:
    """A foreign regression graph: y = log(x), float [N, 1] in and out (log 0 is -inf, log -1 is NaN)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _metric(text: str, name: str) -> float:
    (value,) = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(value)


def test_nonfinite_predictions_are_counted_not_observed(make_client) -> None:  # type: ignore[no-untyped-def]
    """A NaN or -inf regression output was observed into the histogram: bisect put NaN (every comparison
    false) and -inf into the lowest bucket, as if the model had predicted <= -10000, and the running sum became
    NaN for good. Such values are counted on their own instead."""
    c = make_client(log_graph())
    assert c.server_app.runtime.task == "regression"

    def infer(xs: list[float]) -> None:
        body = {"inputs": [{"name": "x", "shape": [len(xs), 1], "datatype": "FP32", "data": xs}]}
        r = c.post("/v2/models/model/infer", json=body)
        assert r.status_code == 200, r.text

    infer([1.0, 0.0, -1.0, float(np.e)])  # log: 0, -inf, NaN, 1
    infer([0.0])
    infer([1.0])
    text = c.get("/metrics").text
    assert _metric(text, 'kubeloop_server_prediction_value_bucket{le="-10000.0"}') == 0.0
    assert _metric(text, 'kubeloop_server_prediction_value_bucket{le="0.0"}') == 2.0
    assert _metric(text, 'kubeloop_server_prediction_value_bucket{le="+Inf"}') == 3.0
    assert _metric(text, "kubeloop_server_nonfinite_predictions_total") == 3.0


def test_histogram_sum_stays_finite() -> None:
    """With buckets that let the exposition carry _sum (prometheus_client leaves _sum and _count out when a
    bucket is negative, as the default regression buckets are), NaN and inf made it NaN for good."""
    m = ServerMetrics(regression_buckets=(0.0, 1.0, 10.0))
    m.set_model("m", "1", "regression", "CPUExecutionProvider", "packed", [])
    m.observe_values(np.array([[2.0], [np.nan], [np.inf], [-np.inf], [3.0]], dtype=np.float32))
    m.observe_values(np.array([0.5]))
    text = m.render().decode()
    assert _metric(text, "kubeloop_server_prediction_value_sum") == 5.5
    assert _metric(text, "kubeloop_server_prediction_value_count") == 3.0
    assert _metric(text, "kubeloop_server_nonfinite_predictions_total") == 3.0


def test_nonfinite_counter_starts_at_zero(make_client, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """Regression values and classified rows (probabilities with a NaN or an infinity) alike."""
    for model in (log_graph(), packed_clf):
        text = make_client(model).get("/metrics").text
        assert _metric(text, "kubeloop_server_nonfinite_predictions_total") == 0.0


def test_unknown_route_and_method(make_client, packed_clf) -> None:
    c = make_client(packed_clf)
    r = c.get("/v3/anything")
    assert r.status_code == 404
    assert r.json() == {"error": "no route GET /v3/anything"}
    r = c.get("/forward")
    assert r.status_code == 405
    assert "GET" in r.json()["error"]


def test_framework_routes_match_the_fast_lane(make_client, packed_clf) -> None:
    """The FastAPI app alone (without the FastLane front door) serves the same answers."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    fast = make_client(packed_clf)
    records = random_records(2, seed=9)
    with TestClient(fast.server_app.fastapi, raise_server_exceptions=False) as plain:
        for method, path, body in [
            ("POST", "/forward", records[0]),
            ("POST", "/forward_batch", records),
            ("POST", "/v2/models/iris-like/versions/3/infer", _oip_packed(records)),
            ("POST", "/v2/models/iris-like/infer", {"inputs": []}),
            ("GET", "/v2/models/iris-like/versions/3/ready", None),
            ("GET", "/v2/models/nope", None),
            ("GET", "/v2", None),
        ]:
            a = fast.request(method, path, json=body)
            b = plain.request(method, path, json=body)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), path

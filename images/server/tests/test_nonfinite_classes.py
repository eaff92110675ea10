"""A classifier whose probabilities come out NaN or infinite for some rows (a foreign or broken model, an
overflow inside the graph): no class is made up for those rows. The record API answers ``label: null`` with
``label_error`` saying why, the class counter leaves them out (they are counted as non-finite), the
prediction log writes a null prediction, and every protocol's answer stays valid (JSON has no NaN: null)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

from kubeloop.contracts import FeatureSpec, ModelMetadata

LOGGING = {
    "prediction_logging_enabled": True,
    "s3_endpoint": "127.0.0.1:1",  # unused: the test passes its own store
    "namespace": "ns",
    "deployment": "md",
    "bucket": "kubeloop",
    "prediction_log_flush_interval_s": 3600,
}
INFER = "/v2/models/ratio/infer"
# probabilities = x / sum(x): [1, 3] -> b, [3, 1] -> a, [0, 0] -> NaN, NaN, [1, -1] -> inf, -inf
ROWS = [[1.0, 3.0], [0.0, 0.0], [1.0, -1.0], [3.0, 1.0]]
LABELS = ["b", None, None, "a"]


def ratio_classifier() -> bytes:
    """A Kubeloop classifier over f0, f1 (packed) whose probabilities are x / sum(x): not finite where the
    row sums to 0."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["input", "axes"], ["total"], keepdims=1),
            helper.make_node("Div", ["input", "total"], ["probabilities"]),
        ],
        "ratio",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    md = ModelMetadata(
        features=[FeatureSpec(name="f0", type="numeric"), FeatureSpec(name="f1", type="numeric")],
        task="classification",
        classes=["a", "b"],
        model_name="ratio",
        model_version="1",
        mlflow_run_id="0123456789abcdef",
        trained_at="2026-11-22T00:00:00Z",
        target="label",
    )
    onnx.helper.set_model_props(model, md.to_props())
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def ratio() -> bytes:
    return ratio_classifier()


def strict_json(body: bytes) -> Any:
    """Parse as JSON proper: NaN, Infinity and -Infinity (which Python's json takes) are refused."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in a JSON answer: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def _record(row: list[float]) -> dict[str, float]:
    return {"f0": row[0], "f1": row[1]}


def _metric(text: str, line: str) -> float:
    for m in text.splitlines():
        if m.startswith(line + " "):
            return float(m.split()[-1])
    raise AssertionError(f"{line} not in metrics:\n{text}")


def test_record_api_answers_no_label_for_nonfinite_probabilities(make_client, ratio) -> None:  # type: ignore[no-untyped-def]
    """Before: argmax over NaN is 0, so /forward answered label "a" for [0, 0] (and "a" for [1, -1], whose
    probabilities are inf and -inf), as if the model had said so."""
    c = make_client(ratio)
    answers = []
    for row in ROWS:
        r = c.post("/forward", json=_record(row))
        assert r.status_code == 200, r.text
        answers.append(strict_json(r.content))
    batch = c.post("/forward_batch", json=[_record(row) for row in ROWS])
    assert batch.status_code == 200, batch.text
    predictions = strict_json(batch.content)["predictions"]
    for answer in answers:
        assert answer.pop("model_version") == "1"
    assert predictions == answers
    assert [p["label"] for p in predictions] == LABELS
    assert predictions[0] == {"label": "b", "probabilities": {"a": 0.25, "b": 0.75}}
    assert predictions[1] == {
        "label": None,
        "probabilities": {"a": None, "b": None},
        "label_error": "the model's probabilities for this record are not finite (NaN or infinity): no class "
        "is predicted",
    }
    assert predictions[2]["label"] is None
    assert predictions[2]["probabilities"] == {"a": None, "b": None}  # inf and -inf: JSON has neither
    assert "label_error" in predictions[2]
    assert "label_error" not in predictions[3]


def test_class_counter_leaves_out_nonfinite_rows(make_client, ratio) -> None:  # type: ignore[no-untyped-def]
    """Before: both non-finite rows were counted under class "a" and there was no non-finite counter for a
    classifier. Single rows and batches take different paths through the counter: both are covered."""
    c = make_client(ratio)
    for row in ROWS:  # one row per request
        assert c.post("/forward", json=_record(row)).status_code == 200
    body = {"inputs": [{"name": "input", "shape": [4, 2], "datatype": "FP32", "data": ROWS}]}
    assert c.post(INFER, json=body).status_code == 200  # four rows in one run
    text = c.get("/metrics").text
    assert _metric(text, 'kubeloop_server_predictions_total{class="a"}') == 2.0
    assert _metric(text, 'kubeloop_server_predictions_total{class="b"}') == 2.0
    assert _metric(text, "kubeloop_server_nonfinite_predictions_total") == 4.0


def test_class_counter_exact_past_float32_range() -> None:
    """A row of finite values whose sum overflows float32 is finite, and counted under its class."""
    m = ServerMetrics()
    m.set_model("m", "1", "classification", "CPUExecutionProvider", "packed", ["a", "b"])
    big = np.float32(3e38)
    m.observe_classes(np.array([[big, big * 0.5]], dtype=np.float32))
    m.observe_classes(
        np.array([[big, big * 0.5], [1.0, 2.0], [np.nan, 0.0], [0.0, -np.inf]], dtype=np.float32)
    )
    assert m.class_counts == [2, 1]
    assert m.nonfinite_predictions == 2


def test_prediction_log_holds_null_where_the_answer_has_no_label(make_client, ratio, memory_store) -> None:  # type: ignore[no-untyped-def]
    """Before: the log held class "a" for the rows the model gave no class for. (The drift checks read the
    feature columns only; the prediction column may hold nulls, as a foreign graph's does.)"""
    c = make_client(ratio, store=memory_store, **LOGGING)
    for row in ROWS[:2]:
        assert c.post("/forward", json=_record(row)).status_code == 200
    assert c.post("/forward_batch", json=[_record(row) for row in ROWS[2:]]).status_code == 200
    c.server_app.predlog.flush()
    (data,) = memory_store.objects.values()
    table = pq.read_table(io.BytesIO(data))
    assert table.column("_prediction").to_pylist() == LABELS
    assert table.column("f0").to_pylist() == [row[0] for row in ROWS]


def log_regressor() -> bytes:
    """A foreign regression graph y = log(x) (log 0 is -inf, log -1 is NaN)."""
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


def test_prediction_log_holds_null_for_a_nonfinite_regression_value(make_client, memory_store) -> None:  # type: ignore[no-untyped-def]
    """/forward answers null for a NaN or infinite value (JSON has neither); the log held NaN and -inf."""
    c = make_client(log_regressor(), store=memory_store, **LOGGING)
    r = c.post("/forward_batch", json=[{"x": 1.0}, {"x": 0.0}, {"x": -1.0}])
    assert r.status_code == 200, r.text
    assert [p["prediction"] for p in strict_json(r.content)["predictions"]] == [0.0, None, None]
    c.server_app.predlog.flush()
    (data,) = memory_store.objects.values()
    assert pq.read_table(io.BytesIO(data)).column("_prediction").to_pylist() == [0.0, None, None]


def test_oip_answers_carry_the_tensor_as_computed_and_stay_valid(make_grpc, ratio) -> None:  # type: ignore[no-untyped-def]
    """OIP returns tensors as the model computed them: NaN and infinity travel as such in binary data and
    gRPC raw contents, and as null in JSON (which has no NaN). Passed before the fix too: it pins that."""
    c, stub = make_grpc(ratio)
    x = np.array(ROWS, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = x / x.sum(axis=1, keepdims=True)
    body = {"inputs": [{"name": "input", "shape": [4, 2], "datatype": "FP32", "data": ROWS}]}
    r = c.post(INFER, json=body)
    assert r.status_code == 200, r.text
    (out,) = strict_json(r.content)["outputs"]
    assert out["data"] == [0.25, 0.75, None, None, None, None, 0.75, 0.25]

    body["parameters"] = {"binary_data_output": True}
    r = c.post(INFER, json=body)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = strict_json(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 32
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f4").reshape(4, 2), expected)

    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[4, 2])
    reply = stub.ModelInfer(
        pb.ModelInferRequest(model_name="ratio", inputs=[tensor], raw_input_contents=[x.tobytes()]),
        timeout=10,
    )
    got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(4, 2)
    np.testing.assert_array_equal(got, expected)  # NaN == NaN for assert_array_equal

"""Foreign ONNX models (no Kubeloop metadata) in-process: the record API where the inputs read as features
(and a 422 naming why where they do not), metadata that says which kind of model it is and what is
logged, prediction logs holding what can be held, and OIP JSON with int64 tensors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
from kubeloop_testing import foreign_models as fm

from kubeloop.contracts import PREDICTION_LOG_PREDICTION

LOGGING = {
    "prediction_logging_enabled": True,
    "s3_endpoint": "127.0.0.1:1",
    "namespace": "ns",
    "deployment": "md",
}


def _table(store):  # type: ignore[no-untyped-def]
    (blob,) = store.objects.values()
    return pq.read_table(io.BytesIO(blob))


def test_packed_mlp_record_api_answers_every_output(make_client) -> None:  # type: ignore[no-untyped-def]
    model = fm.packed_mlp()
    c = make_client(model)
    x = fm.packed_mlp_inputs(3, seed=4)["input"]
    expected = fm.ort_outputs(model, {"input": x})["output"]
    records = [{f"input_{j}": float(v) for j, v in enumerate(row)} for row in x]
    body = c.post("/forward", json=records[0]).json()
    assert body["model_version"] == "1"
    np.testing.assert_array_equal(np.array(body["outputs"]["output"], np.float32), expected[0])
    preds = c.post("/forward_batch", json=records).json()["predictions"]
    np.testing.assert_array_equal(np.array([p["outputs"]["output"] for p in preds], np.float32), expected)
    md = c.get("/metadata").json()
    assert (md["kind"], md["task"], md["layout"], md["prediction_output"]) == ("onnx", None, "packed", None)
    assert [f["name"] for f in md["features"]] == [f"input_{j}" for j in range(8)]
    assert md["record_api"] == {"available": True, "reason": None}
    assert "no output reads as class probabilities" in md["task_source"]
    meta = c.get("/v2/models/model").json()
    assert meta["parameters"] == {
        "model_kind": "onnx",
        "record_api": True,
        "prediction_log_unlogged_inputs": "",
        "prediction_log_prediction": False,
    }
    r = c.post("/forward", json={**records[0], "input_8": 1.0})
    assert r.status_code == 400
    assert "unknown feature 'input_8'" in r.json()["error"]


def test_sklearn_pipeline_classifies_with_zipmap_classes(make_client) -> None:  # type: ignore[no-untyped-def]
    model = fm.sklearn_pipeline()
    c = make_client(model)
    feeds = fm.sklearn_inputs(5, seed=1)
    expected = fm.ort_outputs(model, feeds)
    records = [{k: (v[i, 0] if k == "color" else float(v[i, 0])) for k, v in feeds.items()} for i in range(5)]
    preds = c.post("/forward_batch", json=records).json()["predictions"]
    assert [p["label"] for p in preds] == [str(v) for v in expected["output_label"]]
    probs = np.array([[p["probabilities"][k] for k in ("0", "1", "2")] for p in preds], np.float32)
    np.testing.assert_array_equal(probs, expected["output_probability"])
    md = c.get("/metadata").json()
    assert (md["task"], md["classes"], md["prediction_output"]) == (
        "classification",
        ["0", "1", "2"],
        "output_probability",
    )
    assert "ZipMap" in md["task_source"]
    assert md["features"][-1] == {"name": "color", "type": "categorical"}
    oip = c.get("/v2/models/model").json()
    assert oip["outputs"] == [
        {"name": "output_label", "datatype": "INT64", "shape": [-1]},
        {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3]},
    ]


def test_graph_without_named_features_refuses_the_record_api_by_name(make_client) -> None:  # type: ignore[no-untyped-def]
    model = fm.multi_io_graph()
    c = make_client(model)
    for path, body in (("/forward", {"dense": 1}), ("/forward_batch", [{"dense": 1}])):
        r = c.post(path, json=body)
        assert r.status_code == 422, r.text
        assert "do not read as named features" in r.json()["error"]
        assert "dense FP32 [-1, 4], category_id INT64 [-1]" in r.json()["error"]
    r = c.get("/metadata")
    assert r.status_code == 422
    assert "do not read as named features" in r.json()["error"]
    assert c.get("/v2/models/model").json()["parameters"] == {
        "model_kind": "onnx",
        "record_api": False,
        "prediction_log_unlogged_inputs": "",
        "prediction_log_prediction": True,
    }
    # OIP JSON with int64 data: whole numbers in, onnxruntime's answer out; 1.5 refused, not truncated.
    feeds = fm.multi_io_inputs(2, seed=5)
    doc = {
        "inputs": [
            {
                "name": "dense",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": feeds["dense"].reshape(-1).tolist(),
            },
            {"name": "category_id", "shape": [2], "datatype": "INT64", "data": feeds["category_id"].tolist()},
        ]
    }
    out = {o["name"]: o for o in c.post("/v2/models/model/infer", json=doc).json()["outputs"]}
    expected = fm.ort_outputs(model, feeds)
    assert out["best"]["datatype"] == "INT64"
    assert out["best"]["data"] == expected["best"].tolist()
    np.testing.assert_array_equal(np.array(out["score"]["data"], np.float32).reshape(2, 1), expected["score"])
    doc["inputs"][1]["data"] = [1.5, 2]
    r = c.post("/v2/models/model/infer", json=doc)
    assert r.status_code == 400
    assert "must be whole numbers for model input 'category_id' (INT64)" in r.json()["error"]


def test_json_integer_past_int64_is_refused_naming_the_input(make_client) -> None:  # type: ignore[no-untyped-def]
    """2**63 parses as uint64: it went to the model unchecked, which refused it with ORT's 'Unexpected input
    data type' (and, batched with other requests, turned the merged batch into float64 and failed it)."""
    c = make_client(fm.multi_io_graph())
    dense = {"name": "dense", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}
    for value in (2**63, 2**64 - 1):
        doc = {"inputs": [dense, {"name": "category_id", "shape": [1], "datatype": "INT64", "data": [value]}]}
        r = c.post("/v2/models/model/infer", json=doc)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "input 'category_id' has a value out of range for INT64"
    doc["inputs"][1]["data"] = [2**63 - 1]
    assert c.post("/v2/models/model/infer", json=doc).status_code == 200


def test_record_api_gives_an_output_without_a_row_per_record_whole(make_client) -> None:  # type: ignore[no-untyped-def]
    """A graph output that is not batched (here a constant [2], as exported models list their class ids) was
    split across the records: record k got its element k (a wrong answer), and a third record a 500."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node(
            "Constant", [], ["ids"], value=helper.make_tensor("v", TensorProto.INT64, [2], [7, 8])
        ),
        helper.make_node(
            "Constant", [], ["count"], value=helper.make_tensor("c", TensorProto.INT64, [], [5])
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 1]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("count", TensorProto.INT64, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    c = make_client(model.SerializeToString())
    for n in (1, 2, 3):
        r = c.post("/forward_batch", json=[{"x": k} for k in range(n)])
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [{"outputs": {"y": k, "ids": [7, 8], "count": 5}} for k in range(n)]
    r = c.post("/forward", json={"x": 4})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"y": 4, "ids": [7, 8], "count": 5}


def test_an_output_without_a_row_per_record_is_not_read_as_the_prediction(make_client, memory_store) -> None:  # type: ignore[no-untyped-def]
    """A constant float [1] output before the real one was taken as the regression value: /forward_batch
    answered one prediction for three records and the prediction log's flush failed (columns of unequal
    length), dropping every row buffered with it."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Constant", [], ["scale"], value=helper.make_tensor("s", TensorProto.FLOAT, [1], [0.5])
        ),
        helper.make_node("Mul", ["x", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    c = make_client(model.SerializeToString(), store=memory_store, **LOGGING)
    assert c.get("/metadata").json()["prediction_output"] == "y"
    r = c.post("/forward_batch", json=[{"x": 1.0}, {"x": 2.0}, {"x": 3.0}])
    assert r.json()["predictions"] == [{"prediction": v} for v in (1.0, 4.0, 9.0)]
    c.server_app.predlog.flush()
    assert _table(memory_store).column(PREDICTION_LOG_PREDICTION).to_pylist() == [1.0, 4.0, 9.0]


def test_integer_feature_values_must_be_whole_numbers(make_client) -> None:  # type: ignore[no-untyped-def]
    c = make_client(fm.int_feature_graph())
    assert c.post("/forward", json={"age": 40, "income": 2500.0}).json()["prediction"] == 22.5
    for value, needle in ((40.5, "must be an integer (INT64), got float"), (None, "integer features have no missing value"),
                          ("40", "must be an integer"), (2**63, "out of range for INT64")):  # fmt: skip
        r = c.post("/forward", json={"age": value, "income": 1.0})
        assert r.status_code == 400, (value, r.text)
        assert needle in r.json()["error"], (value, r.json())


def test_prediction_log_of_foreign_models(make_client, memory_store) -> None:  # type: ignore[no-untyped-def]
    model = fm.multi_io_graph()
    c = make_client(model, store=memory_store, **LOGGING)
    feeds = fm.multi_io_inputs(3, seed=2)
    doc = {
        "inputs": [
            {
                "name": "dense",
                "shape": [3, 4],
                "datatype": "FP32",
                "data": feeds["dense"].reshape(-1).tolist(),
            },
            {"name": "category_id", "shape": [3], "datatype": "INT64", "data": feeds["category_id"].tolist()},
        ]
    }
    assert c.post("/v2/models/model/infer", json=doc).status_code == 200
    c.server_app.predlog.flush()
    t = _table(memory_store)
    assert t.column_names[:5] == ["dense_0", "dense_1", "dense_2", "dense_3", "category_id"]
    df = t.to_pandas()
    np.testing.assert_allclose(df["dense_2"], feeds["dense"][:, 2], rtol=1e-6)
    assert df["category_id"].tolist() == feeds["category_id"].astype(float).tolist()
    np.testing.assert_allclose(
        df[PREDICTION_LOG_PREDICTION], fm.ort_outputs(model, feeds)["score"].reshape(-1), rtol=1e-6
    )


def test_what_is_not_logged_is_said_in_metadata_and_metrics(make_client, memory_store) -> None:  # type: ignore[no-untyped-def]
    c = make_client(fm.image_graph(), store=memory_store, **LOGGING)
    params = c.get("/v2/models/model").json()["parameters"]
    assert params["prediction_log_unlogged_inputs"].startswith(
        "pixels: shape [-1, 3, 4, 4] FP32 does not read as columns"
    )
    assert params["record_api"] is False
    assert c.get("/metadata").status_code == 422
    text = c.get("/metrics").text
    assert "kubeloop_server_prediction_log_unlogged_inputs 1.0" in text
    assert 'kind="onnx"' in text
    # A graph whose outputs say nothing about a prediction: the log's prediction column is null.
    store2 = type(memory_store)()
    c2 = make_client(fm.packed_mlp(), store=store2, **LOGGING)
    assert c2.get("/metadata").json()["prediction_logging"]["prediction"].startswith("not logged: no output")
    assert "kubeloop_server_prediction_log_prediction_logged 0.0" in c2.get("/metrics").text
    x = fm.packed_mlp_inputs(2)["input"]
    doc = {"inputs": [{"name": "input", "shape": [2, 8], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    assert c2.post("/v2/models/model/infer", json=doc).status_code == 200
    c2.server_app.predlog.flush()
    t = _table(store2)
    assert t.column(PREDICTION_LOG_PREDICTION).null_count == 2
    np.testing.assert_allclose(t.to_pandas()["input_7"], x[:, 7], rtol=1e-6)

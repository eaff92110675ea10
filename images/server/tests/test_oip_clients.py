"""Acceptance: a standard Open Inference Protocol client (Triton's ``tritonclient``, from PyPI, default
settings: its HTTP client sends and asks for binary tensor data, its gRPC client uses raw contents)
against the server as a real process, over HTTP and gRPC.

For a Kubeloop model and four foreign ONNX models (a packed-input MLP, a multi-input multi-output graph
with int64 tensors, a scikit-learn pipeline converted with skl2onnx, a string-only graph): server and model
liveness, readiness and metadata, then inference whose every output equals plain in-process onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from kubeloop_testing import foreign_models as fm
from kubeloop_testing.onnx_models import mlp_model, random_records

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))


def _mixed_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    recs = random_records(n, n_numeric=4, categorical=CATEGORICAL, seed=seed)
    feeds: dict[str, np.ndarray] = {
        f"f{i}": np.array([[r[f"f{i}"]] for r in recs], dtype=np.float32) for i in range(4)
    }
    for name, _ in CATEGORICAL:
        feeds[name] = np.array([[r[name]] for r in recs], dtype=object)
    return feeds


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    inputs: Callable[[int], dict[str, np.ndarray]]
    name: str  # served model name
    kind: str


CASES = {
    "kubeloop-mixed": Case(
        lambda: mlp_model(
            n_numeric=4, categorical=CATEGORICAL, layout="per_feature", name="mixed", version="7"
        ),
        _mixed_inputs,
        "mixed",
        "kubeloop",
    ),
    "foreign-packed-mlp": Case(fm.packed_mlp, fm.packed_mlp_inputs, "model", "onnx"),
    "foreign-multi-io-int64": Case(fm.multi_io_graph, fm.multi_io_inputs, "model", "onnx"),
    "foreign-sklearn-pipeline": Case(fm.sklearn_pipeline, fm.sklearn_inputs, "model", "onnx"),
    "foreign-strings": Case(fm.string_graph, fm.string_inputs, "model", "onnx"),
}
DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
    np.dtype(object): "BYTES",
}


@pytest.fixture(scope="module")
def servers(
    start_servers: Callable[..., list[Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One server process per case, shared by the HTTP and the gRPC tests."""
    work = tmp_path_factory.mktemp("oip-clients")
    models = {}
    envs = []
    for key, case in CASES.items():
        models[key] = case.build()
        path = work / f"{key}.onnx"
        path.write_bytes(models[key])
        envs.append({"model_uri": str(path), "drain_seconds": "0"})
    return dict(zip(CASES, zip(start_servers(envs), models.values(), strict=True), strict=True))


def _check_outputs(
    case_key: str, model: bytes, feeds: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> None:
    expected = fm.ort_outputs(model, feeds)
    assert set(got) == set(expected)
    for name, exp in expected.items():
        value = got[name]
        if exp.dtype == object:  # BYTES come back as bytes
            value = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(value)
            assert value.shape == exp.shape, name
            assert value.tolist() == exp.tolist(), (case_key, name)
        else:
            assert value.dtype == exp.dtype, (case_key, name, value.dtype)
            np.testing.assert_array_equal(value, exp, err_msg=f"{case_key} {name}")


@pytest.mark.parametrize("key", list(CASES))
def test_http_client(servers: dict[str, Any], key: str) -> None:
    sp, model = servers[key]
    case = CASES[key]
    with httpclient.InferenceServerClient(url=f"127.0.0.1:{sp.port}") as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(case.name)
        assert not client.is_model_ready("no-such-model")
        meta = client.get_server_metadata()
        assert meta["name"] == "kubeloop-server"
        assert "binary_tensor_data" in meta["extensions"]
        md = client.get_model_metadata(case.name)
        assert md["parameters"]["model_kind"] == case.kind
        feeds = case.inputs(5)
        assert [i["name"] for i in md["inputs"]] == list(feeds)
        inputs = []
        for name, arr in feeds.items():
            inp = httpclient.InferInput(name, list(arr.shape), DATATYPES[arr.dtype])
            inp.set_data_from_numpy(arr)  # binary_data=True: the binary tensor data extension
            inputs.append(inp)
        result = client.infer(case.name, inputs)
        got = {o["name"]: result.as_numpy(o["name"]) for o in md["outputs"]}
        _check_outputs(key, model, feeds, got)
        # The same request as JSON in and out (binary_data=False), and one output asked for by name.
        for inp, arr in zip(inputs, feeds.values(), strict=True):
            inp.set_data_from_numpy(arr, binary_data=False)
        first = md["outputs"][0]["name"]
        result = client.infer(
            case.name, inputs, outputs=[httpclient.InferRequestedOutput(first, binary_data=False)]
        )
        _check_outputs(key, model, feeds, {first: result.as_numpy(first)} | {
            o["name"]: fm.ort_outputs(model, feeds)[o["name"]] for o in md["outputs"][1:]
        })  # fmt: skip


@pytest.mark.parametrize("key", list(CASES))
def test_grpc_client(servers: dict[str, Any], key: str) -> None:
    sp, model = servers[key]
    case = CASES[key]
    client = grpcclient.InferenceServerClient(url=sp.grpc_target)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(case.name)
        meta = client.get_server_metadata(as_json=True)
        assert meta["name"] == "kubeloop-server"
        md = client.get_model_metadata(case.name, as_json=True)
        feeds = case.inputs(6, seed=3)
        assert [i["name"] for i in md["inputs"]] == list(feeds)
        inputs = []
        for name, arr in feeds.items():
            inp = grpcclient.InferInput(name, list(arr.shape), DATATYPES[arr.dtype])
            inp.set_data_from_numpy(arr)  # raw_input_contents
            inputs.append(inp)
        result = client.infer(case.name, inputs, request_id="req-7")
        assert result.get_response().id == "req-7"
        got = {o["name"]: result.as_numpy(o["name"]) for o in md["outputs"]}
        _check_outputs(key, model, feeds, got)
        with pytest.raises(Exception, match=r"NOT_FOUND|not found"):
            client.infer("no-such-model", inputs)
    finally:
        client.close()

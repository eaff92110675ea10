"""The declared datatype of an input gets the same answer over REST JSON, the REST binary extension and gRPC
(raw and typed contents): the same tensor is accepted on every path that can carry it, or refused on every
one with a 400 / INVALID_ARGUMENT naming the input, the declared and the expected datatype.

The rule: the declared datatype is the model input's, or a number type the server converts with range
checks (an integer into any integer or float input, a float into a float input). A float never goes into an
integer input, BOOL only into BOOL and BOOL only from BOOL, and JSON values must be what their declared
datatype can hold (``"INT8"`` with ``[300]`` is refused, as gRPC's ``int_contents`` of an INT8 tensor is)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_testing import foreign_models as fm

# Written out here, not imported from the codec, so that the test does not share the code it checks.
DTYPES = {
    "BOOL": "?", "INT8": "<i1", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, row-major

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape, "data": self.values}

    def raw(self) -> bytes | None:
        """The little-endian bytes of the values, None when the declared datatype cannot hold them."""
        if self.datatype == "BOOL":
            ok = all(type(v) is bool for v in self.values)
        elif self.datatype.startswith(("INT", "UINT")):
            ok = all(type(v) is int for v in self.values)
        else:
            ok = all(type(v) in (int, float) for v in self.values)
        if not ok:
            return None
        try:
            return np.array(self.values, dtype=DTYPES[self.datatype]).tobytes()
        except OverflowError:
            return None

    def contents(self) -> pb.InferTensorContents | None:
        field = CONTENTS.get(self.datatype)
        if field is None:  # FP16 travels only raw
            return None
        if _mixes_booleans_and_numbers(self):
            return None  # protobuf would turn a number into true/false, or a boolean into 1/0
        try:
            return pb.InferTensorContents(**{field: self.values})
        except (TypeError, ValueError):
            return None


def bool_graph() -> bytes:
    """One BOOL [N, 1] input ("flag"), one float [N, 1] output."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["flag"], ["as_float"], to=TensorProto.FLOAT)],
        "bool_input",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 1])],
        [helper.make_tensor_value_info("as_float", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


DENSE = Tensor("dense", "FP32", [2, 4], [0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 3.0])
CATEGORY = Tensor("category_id", "INT64", [2], [3, 7])
OK = "ok"

# (model, the tensor under test, what every path that can carry it answers: OK or needles of the refusal)
CASES: list[tuple[str, Tensor, Any]] = [
    # an INT64 input
    ("multi", Tensor("category_id", "INT64", [2], [3, -7]), OK),
    ("multi", Tensor("category_id", "INT32", [2], [3, -7]), OK),
    ("multi", Tensor("category_id", "UINT8", [2], [3, 200]), OK),
    ("multi", Tensor("category_id", "INT8", [2], [300, 1]), ("'category_id'", "out of range for INT8")),
    ("multi", Tensor("category_id", "UINT64", [2], [2**63 + 5, 1]), ("'category_id'", "out of range for INT64")),
    ("multi", Tensor("category_id", "INT64", [2], [1.5, 2]), ("'category_id'", "whole numbers", "INT64")),
    ("multi", Tensor("category_id", "FP32", [2], [1, 2]), ("'category_id'", "FP32", "INT64")),
    ("multi", Tensor("category_id", "FP32", [2], [1.0, 2.0]), ("'category_id'", "FP32", "INT64")),
    ("multi", Tensor("category_id", "FP64", [2], [1.0, 2.0]), ("'category_id'", "FP64", "INT64")),
    ("multi", Tensor("category_id", "FP16", [2], [1.0, 2.0]), ("'category_id'", "FP16", "INT64")),
    ("multi", Tensor("category_id", "BOOL", [2], [True, False]), ("'category_id'", "BOOL", "INT64")),
    # an FP32 input
    ("multi", Tensor("dense", "FP64", [2, 4], [0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 3.0]), OK),
    ("multi", Tensor("dense", "FP16", [2, 4], [0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 3.0]), OK),
    ("multi", Tensor("dense", "INT32", [2, 4], [1, -2, 3, 4, 5, 6, 7, 8]), OK),
    ("multi", Tensor("dense", "INT64", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8.5]), ("'dense'", "whole numbers", "INT64")),
    ("multi", Tensor("dense", "INT8", [2, 4], [1, 2, 3, 4, 5, 6, 7, 300]), ("'dense'", "out of range for INT8")),
    ("multi", Tensor("dense", "FP64", [2, 4], [1.0, 2, 3, 4, 5, 6, 7, 1e300]), ("'dense'", "out of range for FP32")),
    ("multi", Tensor("dense", "BOOL", [2, 4], [True, False] * 4), ("'dense'", "BOOL", "FP32")),
    # a BOOL input
    ("bool", Tensor("flag", "BOOL", [2, 1], [True, False]), OK),
    ("bool", Tensor("flag", "INT64", [2, 1], [1, 0]), ("'flag'", "INT64", "BOOL")),
    ("bool", Tensor("flag", "UINT8", [2, 1], [1, 0]), ("'flag'", "UINT8", "BOOL")),
    ("bool", Tensor("flag", "FP32", [2, 1], [1.0, 0.0]), ("'flag'", "FP32", "BOOL")),
    # JSON booleans are not numbers: a number datatype holding one is refused, not read as 1 or 0 (nor are
    # numbers true/false for BOOL)
    ("multi", Tensor("category_id", "INT64", [2], [True, 2]), ("'category_id'", "boolean", "INT64")),
    ("multi", Tensor("category_id", "INT64", [2], [3, False]), ("'category_id'", "boolean", "INT64")),
    ("multi", Tensor("category_id", "INT64", [2], [True, False]), ("'category_id'", "boolean", "INT64")),
    ("multi", Tensor("category_id", "UINT8", [2], [True, 2]), ("'category_id'", "boolean", "UINT8")),
    ("multi", Tensor("dense", "FP32", [2, 4], [True, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 3.0]), ("'dense'", "boolean", "FP32")),
    ("multi", Tensor("dense", "FP64", [2, 4], [0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, False]), ("'dense'", "boolean", "FP64")),
    ("multi", Tensor("dense", "FP16", [2, 4], [0.5, -1.0, 2.0, 0.25, 1.5, True, -0.75, 3.0]), ("'dense'", "boolean", "FP16")),
    ("multi", Tensor("dense", "INT32", [2, 4], [1, 2, 3, True, 5, 6, 7, 8]), ("'dense'", "boolean", "INT32")),
    ("bool", Tensor("flag", "BOOL", [2, 1], [True, 0]), ("'flag'", "true/false", "BOOL")),
    ("bool", Tensor("flag", "BOOL", [2, 1], [1, 0]), ("'flag'", "true/false", "BOOL")),
    ("bool", Tensor("flag", "BOOL", [2, 1], [1.0, False]), ("'flag'", "true/false", "BOOL")),
]  # fmt: skip
MODELS = {
    "multi": ("model", [DENSE, CATEGORY]),
    "bool": ("model", [Tensor("flag", "BOOL", [2, 1], [True, True])]),
}
INFER = "/v2/models/model/infer"


def _request_tensors(model: str, t: Tensor) -> list[Tensor]:
    return [t if other.name == t.name else other for other in MODELS[model][1]]


def _rest_outcome(r: Any) -> tuple[str, Any]:
    if r.status_code != 200:
        assert r.status_code == 400, r.text
        return "refused", r.json()["error"]
    head_len = r.headers.get("inference-header-content-length")
    body = r.content
    doc = orjson.loads(body[: int(head_len)] if head_len else body)
    tail = memoryview(body)[int(head_len) :] if head_len else None
    out: dict[str, list[Any]] = {}
    for o in doc["outputs"]:
        dtype = DTYPES[o["datatype"]]
        if "data" in o:
            out[o["name"]] = np.array(o["data"], dtype=dtype).tolist()
        else:
            assert tail is not None
            n = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(tail[:n], dtype=dtype).tolist()
            tail = tail[n:]
    return "ok", out


def _grpc_outcome(stub: Any, msg: pb.ModelInferRequest) -> tuple[str, Any]:
    try:
        resp = stub.ModelInfer(msg, timeout=10)
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    else:
        return "ok", {
            o.name: np.frombuffer(raw, dtype=DTYPES[o.datatype]).tolist()
            for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
        }
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    return "refused", details


def _outcomes(client: Any, stub: Any, model: str, t: Tensor) -> dict[str, tuple[str, Any]]:
    """The answer of every path that can carry the tensor ``t`` (the model's other inputs given right)."""
    tensors = _request_tensors(model, t)
    name = MODELS[model][0]
    got: dict[str, tuple[str, Any]] = {}
    got["json"] = _rest_outcome(
        client.post(INFER, content=orjson.dumps({"inputs": [x.json() for x in tensors]}))
    )
    raw = t.raw()
    if raw is not None:
        # The binary extension: the tensor under test binary, the others as JSON, outputs binary.
        inputs = [
            {
                "name": x.name,
                "datatype": x.datatype,
                "shape": x.shape,
                "parameters": {"binary_data_size": len(raw)},
            }
            if x is t
            else x.json()
            for x in tensors
        ]
        head = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
        r = client.post(
            INFER, content=head + raw, headers={"Inference-Header-Content-Length": str(len(head))}
        )
        got["binary"] = _rest_outcome(r)
        msg = pb.ModelInferRequest(model_name=name)
        for x in tensors:
            msg.inputs.add(name=x.name, datatype=x.datatype, shape=x.shape)
            x_raw = x.raw()
            assert x_raw is not None
            msg.raw_input_contents.append(x_raw)
        got["grpc_raw"] = _grpc_outcome(stub, msg)
    if t.contents() is not None:
        msg = pb.ModelInferRequest(model_name=name)
        for x in tensors:
            msg.inputs.add(name=x.name, datatype=x.datatype, shape=x.shape, contents=x.contents())
        got["grpc_contents"] = _grpc_outcome(stub, msg)
    return got


@pytest.fixture
def servers(make_grpc) -> dict[str, tuple[Any, Any]]:  # type: ignore[no-untyped-def]
    return {"multi": make_grpc(fm.multi_io_graph()), "bool": make_grpc(bool_graph())}


@pytest.mark.parametrize(
    ("model", "tensor", "expected"),
    CASES,
    ids=[f"{c[1].name}-{c[1].datatype}-{k}" for k, c in enumerate(CASES)],
)
def test_every_protocol_gives_the_same_answer_to_a_declared_datatype(
    servers: dict[str, tuple[Any, Any]], model: str, tensor: Tensor, expected: Any
) -> None:
    client, stub = servers[model]
    got = _outcomes(client, stub, model, tensor)
    if expected == OK:
        for path, (kind, outputs) in got.items():
            assert kind == "ok", (path, outputs)
        first = got["json"][1]
        for path, (_, outputs) in got.items():
            assert outputs == first, (path, outputs, first)
    else:
        for path, (kind, message) in got.items():
            assert kind == "refused", (path, message)
            for needle in expected:
                assert needle in message, (path, needle, message)


def test_the_widened_tensor_gives_the_answer_of_the_model_datatype(
    servers: dict[str, tuple[Any, Any]],
) -> None:
    """An accepted conversion feeds the same numbers the model's own datatype would."""
    client, stub = servers["multi"]
    same = _outcomes(client, stub, "multi", Tensor("category_id", "INT64", [2], [3, 200]))
    widened = _outcomes(client, stub, "multi", Tensor("category_id", "UINT8", [2], [3, 200]))
    assert same["json"][0] == "ok"
    assert widened == {p: same[p] for p in widened}


def _mixes_booleans_and_numbers(t: Tensor) -> bool:
    """Only JSON tells a boolean from a number: raw bytes and protobuf's typed contents make a client's True
    a 1 (or its 1 a true) before the server sees it, so these cases go over JSON alone."""
    booleans = {type(v) is bool for v in t.values}
    return (True in booleans) if t.datatype != "BOOL" else (False in booleans)


def test_most_cases_go_over_every_path() -> None:
    """Only values a binary or typed gRPC tensor cannot hold (1.5 as INT64, 300 as INT8) are JSON-only: the
    other cases compare REST JSON with the binary extension and gRPC."""
    cases = [t for _, t, _ in CASES if not _mixes_booleans_and_numbers(t)]
    compared = [t for t in cases if t.raw() is not None or t.contents() is not None]
    assert len(compared) >= len(cases) - 2
    assert sum(t.raw() is not None for t in cases) >= len(cases) - 4
    assert len(cases) <= len(CASES) - 10

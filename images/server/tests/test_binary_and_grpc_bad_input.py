"""Malformed binary-extension (REST) and gRPC requests: 400 / INVALID_ARGUMENT (413 / RESOURCE_EXHAUSTED
for sizes over the limits) whose message names the problem, never a 5xx / INTERNAL. Then the same
tensors sent right, over every encoding, give onnxruntime's answer."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_testing import foreign_models as fm
from kubeloop_testing.onnx_models import random_records

ROW = np.array([random_records(1, seed=12)[0][f"f{i}"] for i in range(30)], dtype=np.float32)
INFER = "/v2/models/iris-like/infer"


def binary_request(
    inputs: list[dict[str, Any]], tail: bytes, header_length: int | str | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({"inputs": inputs, **extra})
    n = len(head) if header_length is None else header_length
    return head + tail, {
        "Inference-Header-Content-Length": str(n),
        "Content-Type": "application/octet-stream",
    }


def fp32_input(size: int | None = None, **overrides: Any) -> dict[str, Any]:
    raw = ROW.tobytes()
    return {
        "name": "input",
        "shape": [1, 30],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw) if size is None else size},
        **overrides,
    }


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def mixed_inputs(color: bytes, color_size: int | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """The mixed model's six inputs: f0..f3 as JSON, color and size as binary BYTES."""
    inputs: list[dict[str, Any]] = [
        {"name": f"f{i}", "shape": [1, 1], "datatype": "FP32", "data": [0.5]} for i in range(4)
    ]
    size = bytes_elements(b"M")
    inputs.append(
        {"name": "color", "shape": [1, 1], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(color) if color_size is None else color_size}}
    )  # fmt: skip
    inputs.append(
        {"name": "size", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(size)}}
    )
    return inputs, color + size


# (model, request body and headers, status, substrings of the error)
BINARY_CASES: list[tuple[str, Callable[[], tuple[bytes, dict[str, str]]], int, tuple[str, ...]]] = [
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes(), "12a"), 400, ("'12a' is not a non-negative integer",)),
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes(), 99_999), 400, ("99999 exceeds the request body",)),
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes(), 5), 400, ("JSON header of the binary request is not valid JSON",)),
    ("packed", lambda: binary_request([fp32_input(200)], ROW.tobytes()), 400, ("binary_data_size 200 runs past the binary data",)),
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes() + b"\0" * 8), 400, ("128 bytes of binary data", "add up to 120")),
    ("packed", lambda: binary_request([fp32_input(100)], ROW.tobytes()[:100]), 400, ("100 bytes of binary data but shape [1, 30] of FP32 needs 120 bytes",)),
    ("packed", lambda: binary_request([fp32_input(datatype="FLOAT32")], ROW.tobytes()), 400, ("datatype 'FLOAT32' is not an OIP datatype",)),
    ("packed", lambda: binary_request([fp32_input(-4)], ROW.tobytes()), 400, ("binary_data_size must be a non-negative integer",)),
    ("packed", lambda: binary_request([fp32_input("120")], ROW.tobytes()), 400, ("binary_data_size must be a non-negative integer",)),
    ("packed", lambda: binary_request([fp32_input(data=[1.0] * 30)], ROW.tobytes()), 400, ("both 'data' and parameters.binary_data_size",)),
    ("packed", lambda: (orjson.dumps({"inputs": [fp32_input()]}), {}), 400, ("no Inference-Header-Content-Length header",)),
    ("packed", lambda: (orjson.dumps({"inputs": [fp32_input()]}) + b"\xff\xfe" + ROW.tobytes(), {}), 400, ("not valid JSON", "needs the Inference-Header-Content-Length header")),
    ("packed", lambda: binary_request([fp32_input(datatype="BYTES")], ROW.tobytes()), 400, ("datatype is BYTES but model input 'input' is FP32",)),
    ("packed", lambda: binary_request([fp32_input()], np.array([*ROW[:29], np.inf], np.float32).tobytes()), 400, ("input 'input'.data[29] is out of range for FP32",)),
    ("packed", lambda: binary_request([fp32_input(shape=[1, 29])], ROW.tobytes()), 400, ("shape [1, 29] does not fit model input 'input' of shape [-1, 30]",)),
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes(), parameters={"binary_data_output": "yes"}), 400, ("binary_data_output must be true or false",)),
    ("packed", lambda: binary_request([fp32_input(parameters={"shared_memory_region": "r0"})], b""), 400, ("shared-memory extension is not supported",)),
    ("packed", lambda: binary_request([fp32_input()], ROW.tobytes(), outputs=[{"name": "probabilities", "parameters": {"classification": 2}}]), 400, ("classification extension is not supported",)),
    ("packed", lambda: binary_request([fp32_input(shape=[11, 30], parameters={"binary_data_size": 1320})], ROW.tobytes() * 11), 413, ("batch of 11 rows exceeds the limit of 10",)),
    ("mixed", lambda: binary_request(*mixed_inputs(struct.pack("<I", 10) + b"red")), 400, ("input 'color': BYTES element 0 declares 10 bytes but only 3 remain",)),
    ("mixed", lambda: binary_request(*mixed_inputs(b"\x03\x00")), 400, ("BYTES element 0 is cut short",)),
    ("mixed", lambda: binary_request(*mixed_inputs(bytes_elements(b"red", b"blue"))), 400, ("holds 2 BYTES elements but the shape needs 1",)),
    ("mixed", lambda: binary_request(*mixed_inputs(bytes_elements(b"r\xffd"))), 400, ("BYTES element 0 is not valid UTF-8",)),
    ("multi", lambda: binary_request(
        [{"name": "dense", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
         {"name": "category_id", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}],
        struct.pack("<d", 2.5)), 400, ("category_id'.datatype is FP64 but model input 'category_id' is INT64", "integer datatype")),
    ("multi", lambda: binary_request(
        [{"name": "dense", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
         {"name": "category_id", "shape": [1], "datatype": "UINT64", "parameters": {"binary_data_size": 8}}],
        struct.pack("<Q", 2**63 + 5)), 400, ("out of range for INT64",)),
]  # fmt: skip


@pytest.fixture
def clients(make_client, packed_clf, mixed_clf) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {
        "packed": make_client(packed_clf, max_request_rows=10),
        "mixed": make_client(mixed_clf),
        "multi": make_client(fm.multi_io_graph()),
    }


def test_malformed_binary_requests_get_400_naming_the_problem(clients: dict[str, Any]) -> None:
    for k, (model, build, status, needles) in enumerate(BINARY_CASES):
        body, headers = build()
        path = {"packed": INFER, "mixed": "/v2/models/mixed/infer", "multi": "/v2/models/model/infer"}[model]
        r = clients[model].post(path, content=body, headers=headers)
        assert r.status_code == status, (k, r.status_code, r.text)
        message = r.json()["error"]
        for needle in needles:
            assert needle in message, (k, needle, message)
    assert len(BINARY_CASES) >= 15


def test_content_encoding_is_refused_by_name(clients: dict[str, Any]) -> None:
    body, headers = binary_request([fp32_input()], ROW.tobytes())
    r = clients["packed"].post(INFER, content=body, headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "Content-Encoding gzip is not supported" in r.json()["error"]


def test_non_ascii_digits_in_the_header_length_are_refused_by_name(clients: dict[str, Any]) -> None:
    """'²' is a digit to str.isdigit() but not to int(): it was a 500 (ValueError)."""
    body, headers = binary_request([fp32_input()], ROW.tobytes())
    for value in ("\u00b2", "\u0661\u0662"):  # superscript two; Arabic-Indic one, two
        headers["Inference-Header-Content-Length"] = value.encode()  # type: ignore[assignment]
        r = clients["packed"].post(INFER, content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert "is not a non-negative integer" in r.json()["error"]


def _infer(name: str = "iris-like", **fields: Any) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=name, **fields)


def _tensor(name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (1, 30), **kw: Any) -> Any:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape), **kw)


RAW = ROW.tobytes()
FP32_CONTENTS = pb.InferTensorContents(fp32_contents=ROW.tolist())

GRPC_CASES: list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, tuple[str, ...]]] = [
    ("packed", _infer(), grpc.StatusCode.INVALID_ARGUMENT, ("'inputs' must be a non-empty list",)),
    ("packed", _infer(inputs=[_tensor()], raw_input_contents=[RAW, RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("raw_input_contents has 2 entries but the request has 1 inputs",)),
    ("packed", _infer(inputs=[_tensor()], raw_input_contents=[RAW[:-4]]), grpc.StatusCode.INVALID_ARGUMENT, ("116 bytes of binary data but shape [1, 30] of FP32 needs 120 bytes",)),
    ("packed", _infer(inputs=[_tensor(datatype="FLOAT")], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("datatype 'FLOAT' is not an OIP datatype",)),
    ("packed", _infer(inputs=[_tensor(contents=pb.InferTensorContents(int_contents=[1] * 30))]), grpc.StatusCode.INVALID_ARGUMENT, ("datatype FP32 takes contents.fp32_contents, got contents.int_contents",)),
    ("packed", _infer(inputs=[_tensor(contents=pb.InferTensorContents(fp32_contents=ROW.tolist()[:29]))]), grpc.StatusCode.INVALID_ARGUMENT, ("contents has 29 elements but shape [1, 30] needs 30",)),
    ("packed", _infer(inputs=[_tensor(datatype="FP16", contents=pb.InferTensorContents(fp32_contents=ROW.tolist()))]), grpc.StatusCode.INVALID_ARGUMENT, ("FP16 tensors travel only in raw_input_contents",)),
    ("packed", _infer(inputs=[_tensor(contents=FP32_CONTENTS)], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("has typed contents but the request uses raw_input_contents",)),
    ("packed", _infer(inputs=[_tensor(shape=(1, -30))], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("shape must be a list of non-negative integers",)),
    ("packed", _infer(inputs=[_tensor(shape=(1, 29))], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("does not fit model input 'input' of shape [-1, 30]",)),
    ("packed", _infer(inputs=[_tensor(name="x")], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("unknown input 'x'",)),
    ("packed", _infer(inputs=[_tensor(), _tensor()], raw_input_contents=[RAW, RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("input 'input' is given twice",)),
    ("packed", _infer(inputs=[_tensor(name="")], raw_input_contents=[RAW]), grpc.StatusCode.INVALID_ARGUMENT, ("inputs[0].name is empty",)),
    ("packed", _infer(inputs=[_tensor()], raw_input_contents=[RAW], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]), grpc.StatusCode.INVALID_ARGUMENT, ("unknown output 'logits'",)),
    ("packed", _infer(inputs=[_tensor(contents=pb.InferTensorContents(fp64_contents=[*ROW.tolist()[:29], 1e300]), datatype="FP64")]), grpc.StatusCode.INVALID_ARGUMENT, ("data[29] is out of range for FP32",)),
    ("packed", _infer(inputs=[_tensor()], raw_input_contents=[RAW], parameters={"shared_memory_region": pb.InferParameter(string_param="r")}), grpc.StatusCode.INVALID_ARGUMENT, ("shared-memory extension is not supported",)),
    ("packed", _infer(inputs=[_tensor(shape=(11, 30))], raw_input_contents=[RAW * 11]), grpc.StatusCode.RESOURCE_EXHAUSTED, ("batch of 11 rows exceeds the limit of 10",)),
    ("packed", _infer(name="nope", inputs=[_tensor()], raw_input_contents=[RAW]), grpc.StatusCode.NOT_FOUND, ("model 'nope' not found",)),
    ("packed", _infer(model_version="9", inputs=[_tensor()], raw_input_contents=[RAW]), grpc.StatusCode.NOT_FOUND, ("no version '9'",)),
    ("multi", _infer(name="model", inputs=[_tensor("dense", shape=(1, 4), contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4])),
                                            _tensor("category_id", "INT32", (1,), contents=pb.InferTensorContents(int_contents=[1, 2]))]),
     grpc.StatusCode.INVALID_ARGUMENT, ("contents has 2 elements but shape [1] needs 1",)),
    ("multi", _infer(name="model", inputs=[_tensor("dense", shape=(2, 4), contents=pb.InferTensorContents(fp32_contents=[1] * 8)),
                                            _tensor("category_id", "INT64", (3,), contents=pb.InferTensorContents(int64_contents=[1, 2, 3]))]),
     grpc.StatusCode.INVALID_ARGUMENT, ("has 3 rows but other inputs have 2",)),
    ("mixed", _infer(name="mixed", inputs=[*[_tensor(f"f{i}", shape=(1, 1)) for i in range(4)], _tensor("color", "BYTES", (1, 1)), _tensor("size", "BYTES", (1, 1))],
                     raw_input_contents=[b"\0\0\0?"] * 4 + [struct.pack("<I", 9) + b"red", bytes_elements(b"M")]),
     grpc.StatusCode.INVALID_ARGUMENT, ("BYTES element 0 declares 9 bytes but only 3 remain",)),
]  # fmt: skip


def test_malformed_grpc_requests_get_invalid_argument_naming_the_problem(
    make_grpc, packed_clf, mixed_clf
) -> None:  # type: ignore[no-untyped-def]
    stubs = {
        "packed": make_grpc(packed_clf, max_request_rows=10)[1],
        "mixed": make_grpc(mixed_clf)[1],
        "multi": make_grpc(fm.multi_io_graph())[1],
    }
    for k, (model, request, code, needles) in enumerate(GRPC_CASES):
        with pytest.raises(grpc.RpcError) as err:
            stubs[model].ModelInfer(request, timeout=10)
        assert err.value.code() == code, (k, err.value.code(), err.value.details())
        for needle in needles:
            assert needle in err.value.details(), (k, needle, err.value.details())
    invalid = [c for c in GRPC_CASES if c[2] == grpc.StatusCode.INVALID_ARGUMENT]
    assert len(invalid) >= 15


def test_grpc_message_over_the_body_limit_is_refused_by_grpc(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    _, stub = make_grpc(packed_clf, max_body_bytes=1024)
    request = _infer(inputs=[_tensor(shape=(40, 30))], raw_input_contents=[RAW * 40])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_health_metadata_and_unimplemented_repository(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    c, stub = make_grpc(packed_clf)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris-like", version="3")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (meta.name, list(meta.extensions)) == ("kubeloop-server", ["binary_tensor_data"])
    md = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris-like"))
    assert (md.name, list(md.versions), md.platform) == ("iris-like", ["3"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("input", "FP32", [-1, 30])]
    for rpc, req in (
        (stub.ModelReady, pb.ModelReadyRequest(name="x")),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="x")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            rpc(req)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    c.server_app.dataplane.start_draining()
    assert not stub.ServerReady(pb.ServerReadyRequest()).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="iris-like")).ready
    text = c.get("/metrics").text
    assert (
        'kubeloop_server_requests_total{endpoint="ModelReady",protocol="grpc",status="NOT_FOUND"} 1.0' in text
    )


def test_every_encoding_gives_onnxruntime_answer(make_grpc, packed_clf, reference) -> None:  # type: ignore[no-untyped-def]
    """JSON, binary in / JSON out, JSON in / binary out, binary both ways, gRPC raw, gRPC typed: one answer."""
    c, stub = make_grpc(packed_clf)
    rows = np.stack([ROW, ROW * 0.5, -ROW])
    records = [{f"f{i}": float(v) for i, v in enumerate(r)} for r in rows]
    expected = reference(packed_clf).run_records(records)[0]
    json_in = {"name": "input", "shape": [3, 30], "datatype": "FP32", "data": rows.reshape(-1).tolist()}
    bin_in = {
        "name": "input",
        "shape": [3, 30],
        "datatype": "FP32",
        "parameters": {"binary_data_size": rows.nbytes},
    }
    answers = []
    for inp, tail, out_binary in (
        (json_in, b"", False),
        (bin_in, rows.tobytes(), False),
        (json_in, b"", True),
        (bin_in, rows.tobytes(), True),
    ):
        doc: dict[str, Any] = {"inputs": [inp], "parameters": {"binary_data_output": out_binary}}
        head = orjson.dumps(doc)
        headers = {"Inference-Header-Content-Length": str(len(head))} if tail or out_binary else {}
        r = c.post(INFER, content=head + tail, headers=headers)
        assert r.status_code == 200, r.text
        if out_binary:
            n = int(r.headers["inference-header-content-length"])
            meta = orjson.loads(r.content[:n])
            (out,) = meta["outputs"]
            assert out["parameters"] == {"binary_data_size": 36}
            assert r.headers["content-type"] == "application/octet-stream"
            answers.append(np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"]))
        else:
            assert "inference-header-content-length" not in r.headers
            answers.append(np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 3))
    raw = stub.ModelInfer(_infer(inputs=[_tensor(shape=(3, 30))], raw_input_contents=[rows.tobytes()]))
    answers.append(np.frombuffer(raw.raw_output_contents[0], dtype="<f4").reshape(list(raw.outputs[0].shape)))
    typed = stub.ModelInfer(
        _infer(
            inputs=[
                _tensor(
                    shape=(3, 30),
                    datatype="FP64",
                    contents=pb.InferTensorContents(fp64_contents=rows.reshape(-1).tolist()),
                )
            ]
        )
    )
    answers.append(np.frombuffer(typed.raw_output_contents[0], dtype="<f4").reshape(3, 3))
    for a in answers:
        np.testing.assert_array_equal(a, expected)


def test_per_output_binary_flag_and_bytes_outputs(make_client) -> None:  # type: ignore[no-untyped-def]
    """A string graph: BYTES in binary, one output binary and one JSON; mixed JSON and binary inputs."""
    model = fm.string_graph()
    c = make_client(model)
    feeds = fm.string_inputs(4, seed=2)
    expected = fm.ort_outputs(model, feeds)
    word = bytes_elements(*(w.encode() for w in feeds["word"].reshape(-1)))
    doc = {
        "inputs": [
            {
                "name": "word",
                "shape": [4, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(word)},
            },
            {"name": "tag", "shape": [4, 1], "datatype": "BYTES", "data": feeds["tag"].reshape(-1).tolist()},
        ],
        "outputs": [{"name": "tag_upper", "parameters": {"binary_data": True}}, {"name": "code_sum"}],
    }
    head = orjson.dumps(doc)
    r = c.post(
        "/v2/models/model/infer",
        content=head + word,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:n])
    upper, total = meta["outputs"]
    assert (upper["name"], upper["datatype"], "data" in upper) == ("tag_upper", "BYTES", False)
    blob = r.content[n:]
    assert len(blob) == upper["parameters"]["binary_data_size"]
    got, off = [], 0
    while off < len(blob):
        (k,) = struct.unpack_from("<I", blob, off)
        got.append(blob[off + 4 : off + 4 + k].decode())
        off += 4 + k
    assert got == expected["tag_upper"].reshape(-1).tolist()
    np.testing.assert_array_equal(np.array(total["data"], np.float32).reshape(4, 1), expected["code_sum"])

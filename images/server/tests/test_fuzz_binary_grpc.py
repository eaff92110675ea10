"""Property test: hundreds of generated binary-extension (REST) and gRPC requests — valid, perturbed and
arbitrary — never get a 5xx or INTERNAL/UNKNOWN, and every refusal names its problem."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_testing import foreign_models as fm

N_BINARY = 320
N_GRPC = 320
DATATYPES = [
    "FP32",
    "FP64",
    "FP16",
    "INT64",
    "INT32",
    "INT8",
    "UINT8",
    "UINT64",
    "BOOL",
    "BYTES",
    "fp32",
    "STRING",
]
DTYPES = {
    "FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT8": "<i1",
    "UINT8": "<u1", "UINT64": "<u8", "BOOL": "?",
}  # fmt: skip
# model -> (infer path, model name, input names)
MODELS = {
    "packed": ("/v2/models/iris-like/infer", "iris-like", ["input", "f0", "f1"]),
    "mixed": ("/v2/models/mixed/infer", "mixed", ["f0", "f1", "f2", "f3", "color", "size"]),
    "multi": ("/v2/models/model/infer", "model", ["dense", "category_id"]),
}
OUTPUT_NAMES = ["probabilities", "embedding", "score", "best", "nope"]
shapes = st.sampled_from(
    [[1, 30], [2, 30], [1, 1], [3, 1], [1], [2], [1, 4], [2, 4], [0, 30], [1, 29], [-1, 4], []]
)


@st.composite
def tensor_bytes(draw: st.DrawFn, datatype: str, shape: list[int]) -> bytes:
    """Right-sized data most of the time (so requests get far enough to be judged), else arbitrary."""
    n = int(np.prod(shape)) if shape and min(shape) >= 0 else 1
    choice = draw(st.integers(0, 9))
    if choice < 6 and datatype in DTYPES:
        dt = np.dtype(DTYPES[datatype])
        if dt.kind == "f":
            values = draw(
                st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=n, max_size=n)
            )
        elif dt.kind == "b":
            values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        else:
            info = np.iinfo(dt)
            values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
        return np.array(values, dtype=dt).tobytes()
    if choice < 8 and datatype == "BYTES":
        items = draw(
            st.lists(
                st.one_of(st.text(max_size=6).map(str.encode), st.binary(max_size=6)), min_size=n, max_size=n
            )
        )
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    return draw(st.binary(max_size=64))


@st.composite
def binary_request(draw: st.DrawFn, names: list[str]) -> tuple[bytes, dict[str, str]]:
    inputs: list[dict[str, Any]] = []
    tail = b""
    for name in draw(st.lists(st.sampled_from([*names, "bogus"]), min_size=0, max_size=4)):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(shapes)
        tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
        if draw(st.booleans()):
            raw = draw(tensor_bytes(datatype, shape))
            size: Any = draw(
                st.sampled_from([len(raw), len(raw), len(raw) + 4, max(0, len(raw) - 1), -1, "12"])
            )
            tensor["parameters"] = {"binary_data_size": size}
            tail += raw
        else:
            tensor["data"] = draw(
                st.lists(st.one_of(st.floats(width=32), st.integers(-5, 5), st.text(max_size=3)), max_size=4)
            )
        if draw(st.integers(0, 5)) == 0:
            tensor.pop(draw(st.sampled_from(sorted(tensor))))
        inputs.append(tensor)
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.sampled_from([True, False, "yes", 1]))}
    if draw(st.booleans()):
        doc["outputs"] = [
            {"name": n, "parameters": {"binary_data": draw(st.sampled_from([True, False, None]))}}
            for n in draw(st.lists(st.sampled_from(OUTPUT_NAMES), max_size=2))
        ]
    head = orjson.dumps(doc)
    n = draw(st.sampled_from([len(head), len(head), len(head), len(head) - 1, len(head) + len(tail) + 1, 0]))
    header = draw(st.sampled_from([str(n), str(n), str(n), "x", "-3", " 7"]))
    if draw(st.integers(0, 7)) == 0:
        tail += draw(st.binary(max_size=16))
    return head + tail, {"Inference-Header-Content-Length": header}


@st.composite
def grpc_request(draw: st.DrawFn, model_name: str, names: list[str]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=draw(st.sampled_from([model_name, model_name, "other"])))
    use_raw = draw(st.booleans())
    raws = []
    for name in draw(st.lists(st.sampled_from([*names, "bogus", ""]), min_size=0, max_size=4)):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(shapes)
        t = req.inputs.add(
            name=name, datatype=datatype, shape=[draw(st.integers(-2, 40)) if d < 0 else d for d in shape]
        )
        if use_raw:
            raws.append(draw(tensor_bytes(datatype, shape)))
        else:
            field = draw(st.sampled_from(["fp32_contents", "fp64_contents", "int_contents", "int64_contents",
                                          "uint_contents", "bool_contents", "bytes_contents"]))  # fmt: skip
            n = draw(st.integers(0, 62))
            if field in ("fp32_contents", "fp64_contents"):
                values: list[Any] = draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
            elif field == "bool_contents":
                values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            elif field == "bytes_contents":
                values = draw(st.lists(st.binary(max_size=5), min_size=n, max_size=n))
            elif field == "uint_contents":
                values = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
            elif field == "int_contents":
                values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n))
            else:
                values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
            getattr(t.contents, field).extend(values)
    if use_raw:
        extra = draw(st.integers(-1, 1))
        raws = raws[: max(0, len(raws) + extra)] if extra < 0 else raws + [b"\0"] * extra
        req.raw_input_contents.extend(raws)
    for n in draw(st.lists(st.sampled_from(OUTPUT_NAMES), max_size=2)):
        req.outputs.add(name=n)
    if draw(st.integers(0, 5)) == 0:
        req.parameters[
            draw(st.sampled_from(["classification", "priority", "shared_memory_region"]))
        ].int64_param = 1
    return req


@st.composite
def valid_tensors(draw: st.DrawFn, model: str) -> list[tuple[str, str, list[int], bytes]]:
    """Right tensors for a model, with generated values: (name, datatype, shape, raw bytes)."""
    n = draw(st.integers(1, 4))
    finite = st.floats(-1e6, 1e6, width=32)

    def floats(count: int) -> bytes:
        return np.array(draw(st.lists(finite, min_size=count, max_size=count)), "<f4").tobytes()

    if model == "packed":
        return [("input", "FP32", [n, 30], floats(n * 30))]
    if model == "multi":
        ids = np.array(draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)), "<i8").tobytes()
        return [("dense", "FP32", [n, 4], floats(n * 4)), ("category_id", "INT64", [n], ids)]
    out = [(f"f{i}", "FP32", [n, 1], floats(n)) for i in range(4)]
    for name in ("color", "size"):
        items = draw(st.lists(st.text(max_size=6), min_size=n, max_size=n))
        out.append(
            (name, "BYTES", [n, 1], b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in items))
        )
    return out


@st.composite
def valid_binary(draw: st.DrawFn, model: str) -> tuple[bytes, dict[str, str]]:
    tensors = draw(valid_tensors(model))
    doc = {
        "inputs": [
            {"name": name, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            for name, dt, shape, raw in tensors
        ],
        "parameters": {"binary_data_output": draw(st.booleans())},
    }
    head = orjson.dumps(doc)
    return head + b"".join(t[3] for t in tensors), {"Inference-Header-Content-Length": str(len(head))}


@st.composite
def valid_grpc(draw: st.DrawFn, model: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=MODELS[model][1])
    for name, dt, shape, raw in draw(valid_tensors(model)):
        req.inputs.add(name=name, datatype=dt, shape=shape)
        req.raw_input_contents.append(raw)
    return req


def test_no_5xx_for_generated_binary_requests(make_client, packed_clf, mixed_clf) -> None:  # type: ignore[no-untyped-def]
    clients = {
        "packed": make_client(packed_clf),
        "mixed": make_client(mixed_clf),
        "multi": make_client(fm.multi_io_graph()),
    }
    statuses: dict[int, int] = {}
    requests = st.sampled_from(sorted(MODELS)).flatmap(
        lambda m: st.tuples(st.just(m), st.one_of(binary_request(MODELS[m][2]), valid_binary(m)))
    )

    @settings(max_examples=N_BINARY, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests)
    def check(req: tuple[str, tuple[bytes, dict[str, str]]]) -> None:
        model, (body, headers) = req
        r = clients[model].post(MODELS[model][0], content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, f"{body[:300]!r} {headers} -> {r.status_code} {r.text}"
        assert r.status_code in (200, 400, 404, 413), r.text
        if r.status_code != 200:
            assert r.json()["error"]

    check()
    print("binary fuzz statuses:", statuses)
    assert sum(statuses.values()) >= N_BINARY * 0.9, statuses
    assert statuses.get(200, 0) >= 50, statuses
    assert statuses.get(400, 0) > 50, statuses


def test_no_internal_for_generated_grpc_requests(make_grpc, packed_clf, mixed_clf) -> None:  # type: ignore[no-untyped-def]
    stubs = {
        "packed": make_grpc(packed_clf)[1],
        "mixed": make_grpc(mixed_clf)[1],
        "multi": make_grpc(fm.multi_io_graph())[1],
    }
    codes: dict[str, int] = {}
    allowed = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
    requests = st.sampled_from(sorted(MODELS)).flatmap(
        lambda m: st.tuples(st.just(m), st.one_of(grpc_request(MODELS[m][1], MODELS[m][2]), valid_grpc(m)))
    )

    @settings(max_examples=N_GRPC, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests)
    def check(req: tuple[str, pb.ModelInferRequest]) -> None:
        model, msg = req
        try:
            stubs[model].ModelInfer(msg, timeout=10)
            code, details = "OK", ""
        except grpc.RpcError as e:
            code, details = e.code().name, e.details()
        codes[code] = codes.get(code, 0) + 1
        assert code in allowed, f"{msg} -> {code} {details}"
        assert code == "OK" or details

    check()
    print("gRPC fuzz codes:", codes)
    assert sum(codes.values()) >= N_GRPC * 0.9, codes
    assert codes.get("OK", 0) >= 50, codes
    # Enough refusals to show the generator reaches validation. Hypothesis does not draw evenly: over 21
    # random seeds this count ran from 39 to 97 of 320, so a bound of 40 failed now and then.
    assert codes.get("INVALID_ARGUMENT", 0) >= 20, codes

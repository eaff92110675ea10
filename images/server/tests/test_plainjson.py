"""The common REST request read straight from its bytes (kubeloop_server._plainjson, in C): whatever body it
reads, it must read exactly as the general path (orjson, then the codec) decodes it, bit for bit and with the
same id; every other body it must decline (None), so that the general path decodes or refuses it with its
own error. Checked on crafted bodies and on thousands of generated and mangled ones, for float32 and
float64 inputs."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from kubeloop_server import codec, rest
from kubeloop_server.codec import InferRequest, PlainBodyReader
from kubeloop_server.errors import ServerError
from kubeloop_server.model import ModelRuntime
from kubeloop_server.rest import infer_payload
from kubeloop_testing.foreign_models import identity_graph
from onnx import TensorProto

WIDTH = 3
MAX_ROWS = 8


@pytest.fixture(scope="module", params=["FP32", "FP64", "FP32, any width"])
def runtime(request: pytest.FixtureRequest) -> ModelRuntime:
    elem = TensorProto.DOUBLE if request.param == "FP64" else TensorProto.FLOAT
    return ModelRuntime(identity_graph(elem, None if "any width" in request.param else WIDTH))


def general(rt: ModelRuntime, body: bytes) -> tuple[str, Any]:
    """The general path's outcome: the decoded tensor and id, or the error."""
    try:
        doc, binary = infer_payload([], body)
        req = codec.decode_infer_request(rt, doc, MAX_ROWS, True, binary)
    except ServerError as e:
        return type(e).__name__, e.message
    return "ok", described(req)


def described(req: InferRequest) -> tuple[str, tuple[int, ...], bytes, int, str | None]:
    (arr,) = req.feeds.values()
    # the bytes: -0.0 and 0.0 differ, as do NaN payloads
    generated = req.id.startswith(codec._ID_PREFIX)  # one the server made up: differs on every call
    return arr.dtype.str, arr.shape, arr.tobytes(), req.rows, None if generated else req.id


def check(rt: ModelRuntime, body: bytes) -> bool:
    """The reader reads ``body`` as the general path does, or declines it; True when it read it."""
    reader = PlainBodyReader.for_model(rt, MAX_ROWS)
    assert reader is not None
    got = reader.read(body)
    if got is None:
        return False
    assert general(rt, body) == ("ok", described(got)), body
    # and through the REST layer's entry point, which the server calls
    doc, binary = infer_payload([], body, reader)
    assert doc is got or described(doc) == described(got)
    assert binary is None
    return True


def tensor(data: Any, shape: Any = None, name: str = "x", datatype: str = "FP32") -> dict[str, Any]:
    n = len(data)
    width = len(data[0]) if n and isinstance(data[0], list) else max(n, 1)
    rows = n if n and isinstance(data[0], list) else 1
    return {
        "name": name,
        "shape": shape if shape is not None else [rows, width],
        "datatype": datatype,
        "data": data,
    }


def dtype_of(rt: ModelRuntime) -> str:
    spec = rt.single_float_input
    assert spec is not None
    return spec.datatype


def test_the_common_body_is_read_and_equals_the_general_path(runtime: ModelRuntime) -> None:
    dt = dtype_of(runtime)
    bodies = [
        orjson.dumps({"inputs": [tensor([0.5, -1.25, 3.0], datatype=dt)]}),
        orjson.dumps({"inputs": [tensor([[0.5, -1.25, 3.0], [1, 2, 3]], datatype=dt)]}),
        orjson.dumps({"id": "req-1", "inputs": [tensor([0.0025, 0.5975, -0.5483], datatype=dt)]}),
        orjson.dumps({"inputs": [tensor([1, 2, 3], [1, 3], datatype=dt)], "id": "é ☃"}),
        # another client's spelling: spaces after separators, keys in another order, newlines
        b'{ "inputs" : [ { "datatype" : "%s" , "data" : [ 1e3 , -2E-2 , 0 ] , "shape" : [ 1 , 3 ] , '
        b'"name" : "x" } ] }\n' % dt.encode(),
        b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"%s","data":[1,2,3,4,5,6]}]}' % dt.encode(),
        # signs of zero: an integer -0 is 0 (orjson reads an integer), a float -0.0 stays negative
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"%s","data":[-0,-0.0,-0e5]}]}' % dt.encode(),
        # past the fast conversion: 16+ significant digits, exponents past 22, tiny and huge values
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"%s","data":[0.1000000000000000055511151231257827,'
        b"1e-30,123456789012345e-40]}]}" % dt.encode(),
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"%s","data":[3.4028235e38,1e-46,999999999999999]}]}'
        % dt.encode(),
    ]
    for body in bodies:
        assert check(runtime, body), body


def test_values_are_rounded_as_the_general_path_rounds_them(runtime: ModelRuntime) -> None:
    """Decimal literals of every length and exponent, and the literals of random doubles and floats: each
    value must be the general path's to the bit (the fast conversion and CPython's both correctly rounded)."""
    dt = dtype_of(runtime)
    rng = random.Random(11)
    read = 0
    for _ in range(3000):
        kind = rng.randrange(5)
        if kind == 0:  # short decimals, as clients write features
            vals = [f"{rng.uniform(-1e4, 1e4):.{rng.randrange(0, 9)}f}" for _ in range(WIDTH)]
        elif kind == 1:  # the shortest repr of random doubles (17 digits, exponents)
            vals = [repr(struct.unpack("<d", rng.randbytes(8))[0]) for _ in range(WIDTH)]
            vals = [v for v in vals if v not in ("nan", "inf", "-inf")] or ["1.5"]
        elif kind == 2:  # random float32 values written out
            vals = [repr(float(np.frombuffer(rng.randbytes(4), np.float32)[0])) for _ in range(WIDTH)]
            vals = [v for v in vals if v not in ("nan", "inf", "-inf")] or ["2.5"]
        elif kind == 3:  # mantissa and exponent near the fast path's edges
            vals = [
                f"{rng.choice(['', '-'])}{rng.randrange(10 ** rng.randrange(1, 18))}"
                f"{rng.choice(['', '.' + str(rng.randrange(10**6))])}"
                f"{rng.choice(['e', 'E'])}{rng.choice(['', '+', '-'])}{rng.randrange(0, 40)}"
                for _ in range(WIDTH)
            ]
        else:  # integers up to 18 digits (past 15 the reader declines)
            vals = [
                str(rng.randrange(-(10 ** rng.randrange(1, 19)), 10 ** rng.randrange(1, 19)))
                for _ in range(WIDTH)
            ]
        data = ",".join(vals[:WIDTH] + ["0"] * (WIDTH - len(vals)))
        body = b'{"inputs":[{"name":"x","shape":[1,%d],"datatype":"%s","data":[%s]}]}' % (
            WIDTH,
            dt.encode(),
            data.encode(),
        )
        read += check(runtime, body)
    assert read > 1500  # most are the reader's (random doubles past float32 and long integers are not)


@pytest.mark.parametrize(
    "body",
    [
        # not JSON numbers: what strtod would take, JSON refuses
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[01,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1.,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[.5,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[+1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1e,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1e+,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[--1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1.2.3,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[NaN,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[Infinity,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3,]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[0x10,2,3]}]}',
        # values the general path refuses or reads differently: booleans, nulls, strings, not finite
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[true,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[null,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":["1",2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1e39,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1e400,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[12345678901234567890123,2,3]}]}',
        # the shape
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2]}]}',
        b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5]]}]}',
        b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2],[3,4],[5,6]]}]}',
        # as many values and rows as the shape says, the first row as wide, but not the others
        b'{"inputs":[{"name":"x","shape":[3,3],"datatype":"FP32","data":[[1,2,3],[4,5],[6,7,8,9]]}]}',
        b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],4,5,6]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,[2],3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[[[1,2,3]]]}]}',
        b'{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP32","data":[]}]}',
        b'{"inputs":[{"name":"x","shape":[1,0],"datatype":"FP32","data":[]}]}',
        b'{"inputs":[{"name":"x","shape":[-1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1.0,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1e0,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[01,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3,1],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[9,3],"datatype":"FP32","data":[%s]}]}'
        % b",".join([b"1"] * 27),  # 9 > max rows
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}',  # past the width
        # names, datatypes, keys
        b'{"inputs":[{"name":"y","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"\\u0078","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT64","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"fp32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3],"parameters":{}}]}',
        b'{"inputs":[{"name":"x","name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32"}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"parameters":{}}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"y"}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"id":7}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"id":null}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"id":"a\\"b"}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"id":"\xff"}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"id":"a","id":"b"}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]},'
        b'{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[]}',
        b'{"inputs":{}}',
        b"{}",
        # not one JSON document
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}{}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]} x',
        b'\xef\xbb\xbf{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3\x00]}]}',
        b"",
        b"[]",
        b"null",
    ],
)
def test_anything_else_is_declined_and_left_to_the_general_path(body: bytes) -> None:
    rt = ModelRuntime(identity_graph(TensorProto.FLOAT, WIDTH))
    reader = PlainBodyReader.for_model(rt, MAX_ROWS)
    assert reader is not None
    assert reader.read(body) is None
    # and the REST entry point hands the body to the general path, whose answer is unchanged
    try:
        doc, binary = infer_payload([], body, reader)
        got: tuple[str, Any] = ("ok", described(codec.decode_infer_request(rt, doc, MAX_ROWS, True, binary)))
    except ServerError as e:
        got = (type(e).__name__, e.message)
    assert got == general(rt, body)


def test_mangled_bodies_are_read_as_the_general_path_reads_them_or_declined(runtime: ModelRuntime) -> None:
    """5,000 valid bodies with bytes flipped, inserted, deleted or cut off: none may crash the reader, and any
    it still reads must be what the general path decodes."""
    dt = dtype_of(runtime)
    rng = random.Random(5)
    alphabet = b'{}[],:"-+.eE0123456789 \n\\xnameshapedatatypeinputsidFP3264truefalsnul\x00\xff'
    read = 0
    for _ in range(5000):
        rows = rng.randrange(1, 3)
        data: Any = [
            [round(rng.uniform(-9, 9), rng.randrange(0, 6)) for _ in range(WIDTH)] for _ in range(rows)
        ]
        if rng.random() < 0.5:
            data = [v for row in data for v in row]
        doc: dict[str, Any] = {"inputs": [tensor(data, [rows, WIDTH], datatype=dt)]}
        if rng.random() < 0.3:
            doc["id"] = f"r{rng.randrange(100)}"
        body = bytearray(orjson.dumps(doc))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(body) + 1)
            op = rng.randrange(4)
            if op == 0 and pos < len(body):
                body[pos] = rng.choice(alphabet)
            elif op == 1:
                body[pos:pos] = bytes([rng.choice(alphabet)])
            elif op == 2 and pos < len(body):
                del body[pos]
            else:
                del body[pos:]
        read += check(runtime, bytes(body))
    assert read > 100, read  # some still read (a digit changed, a space added): compared above


def test_a_large_body_is_read_as_the_general_path_reads_it() -> None:
    """500 rows of 40 short decimals, flat and as rows: past the reader's first buffer (64 values)."""
    rt = ModelRuntime(identity_graph(TensorProto.FLOAT, 40))
    rng = np.random.default_rng(3)
    rows = np.round(rng.normal(size=(500, 40)) * 100, 3)
    for data in (rows.reshape(-1).tolist(), rows.tolist()):
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [500, 40], "datatype": "FP32", "data": data}]})
        reader = PlainBodyReader.for_model(rt, 1000)
        assert reader is not None
        got = reader.read(body)
        assert got is not None
        doc, _ = infer_payload([], body)
        want = codec.decode_infer_request(rt, doc, 1000)
        assert described(got) == described(want)


def test_only_a_few_numbers_per_body_take_the_slow_conversion() -> None:
    """17-digit literals (the reprs of float32 values a client converted to Python floats) are read by
    CPython's conversion, ten times slower than orjson reads them: up to four per body; a body with more
    goes to orjson at once instead of costing more than it saves."""
    rt = ModelRuntime(identity_graph(TensorProto.FLOAT, 6))
    reader = PlainBodyReader.for_model(rt, MAX_ROWS)
    assert reader is not None
    reprs = (repr(float(np.float32(k / 10))) for k in range(1, 100))
    long_ = [v for v in reprs if len(v.replace(".", "").lstrip("0")) == 17][:6]
    assert len(long_) == 6
    for slow in range(7):
        values = long_[:slow] + ["0.5"] * (6 - slow)
        body = (
            b'{"inputs":[{"name":"x","shape":[1,6],"datatype":"FP32","data":[%s]}]}'
            % ",".join(values).encode()
        )
        got = reader.read(body)
        assert (got is not None) == (slow <= 4), (slow, got)
        if got is not None:
            assert general(rt, body) == ("ok", described(got))


def test_a_model_without_one_float_input_has_no_reader() -> None:
    int_model = ModelRuntime(identity_graph(TensorProto.INT64, WIDTH))
    half = ModelRuntime(identity_graph(TensorProto.FLOAT16, WIDTH))
    assert PlainBodyReader.for_model(int_model, MAX_ROWS) is None
    assert PlainBodyReader.for_model(half, MAX_ROWS) is None


def test_the_tensor_is_writable_and_its_own() -> None:
    """ONNX Runtime and the prediction log get an ordinary array, not a view of the request's bytes."""
    rt = ModelRuntime(identity_graph(TensorProto.FLOAT, WIDTH))
    reader = PlainBodyReader.for_model(rt, MAX_ROWS)
    assert reader is not None
    body = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}'
    got = reader.read(body)
    assert got is not None
    arr = got.feeds["x"]
    assert arr.flags.writeable
    assert arr.flags.c_contiguous
    assert arr.dtype == np.float32
    arr[0, 0] = 7.0
    assert reader.read(body).feeds["x"][0, 0] == 1.0  # type: ignore[union-attr]


def test_the_server_reads_the_common_body_without_the_general_path(
    make_client: Callable[..., Any], packed_clf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ASGI and the HTTP fast lane's entry point, the common body never reaches orjson: with the
    general path's JSON parse broken, it is still answered, as before; a body the reader declines is not."""
    client = make_client(packed_clf)
    app = client.server_app
    assert app.plain is not None
    url = "/v2/models/iris-like/infer"
    body = orjson.dumps(
        {"id": "a", "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.25] * 30}]}
    )
    want = client.post(url, content=body)
    assert want.status_code == 200

    def broken(_body: bytes | None) -> Any:
        raise RuntimeError("the general path was used")

    monkeypatch.setattr(rest, "parse_infer_json", broken)
    got = client.post(url, content=body)
    assert (got.status_code, got.json()) == (200, want.json())
    status, payload, _, _ = app.infer_now("iris-like", None, [], body)
    assert (status, orjson.loads(payload)) == (200, want.json())
    declined = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [None] * 30}]}
    )
    assert client.post(url, content=declined).status_code == 500
    assert app.infer_now("iris-like", None, [], declined)[0] == 500

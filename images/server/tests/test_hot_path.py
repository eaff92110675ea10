"""The short path of the common OIP request (one float [N, F] input as a flat JSON list): the list's element
types are checked in C (numbers only: no booleans, nulls, strings) and the array's finiteness by a dot product
instead of a numpy reduction. It must decide exactly as the array check does: every payload below is decoded with the short check and with it forced off, and both give the same
array or the same error; bad values through it get a 4xx naming the input, never a 5xx."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kubeloop_server import codec
from kubeloop_server.errors import ServerError
from kubeloop_server.model import ModelRuntime
from kubeloop_testing.foreign_models import identity_graph
from onnx import TensorProto

FLT_MAX = float(np.finfo(np.float32).max)


def payloads(width: int) -> list[Any]:
    ok = [0.5 + k for k in range(width)]
    return [
        ok,
        list(range(width)),  # ints
        [True, *ok[1:]],  # a boolean among numbers: refused (numpy would take it as 1.0)
        [*ok[:-1], False],
        [[True, *ok[1:]]],  # nested as one row, a boolean in it
        [None, True, *ok[2:]],  # a boolean among nulls and numbers
        [None, *ok[1:]],  # null: missing
        ["1.0", *ok[1:]],  # a string
        [[v] for v in ok],  # nested wrongly
        [ok],  # nested as [1, width] rows
        [[None, *ok[1:]]],  # the same checks inside a row
        [["1.0", *ok[1:]]],
        [[1e39, *ok[1:]]],
        [[*ok[:-1], float("nan")]],
        [[10**400, *ok[1:]]],
        [ok[:-1]],  # a short row
        [[*ok[:-1], [1.0]]],
        [1e39, *ok[1:]],
        [-1e39, *ok[1:]],
        [FLT_MAX, *ok[1:]],
        [-FLT_MAX, *ok[1:]],
        [3.4028235e38, *ok[1:]],  # past FLT_MAX, rounds to it in float32
        [70000.0, *ok[1:]],  # past float16's range
        [65504.0, *ok[1:]],  # float16's largest
        [10**40, *ok[1:]],
        [10**400, *ok[1:]],
        [float("nan"), *ok[1:]],  # not from JSON, but from Python callers
        [*ok[:-1], float("inf")],
        [*ok[:-1], float("-inf")],
        [{"v": 1}, *ok[1:]],
        ok[:-1],  # too short
        [*ok, 1.0],  # too long
        [],
    ]


def outcome(rt: ModelRuntime, body: dict[str, Any], allow_missing: bool) -> tuple[str, Any]:
    try:
        req = codec.decode_infer_request(rt, body, 100, allow_missing)
    except ServerError as e:
        return type(e).__name__, e.message
    (arr,) = req.feeds.values()
    return "ok", (arr.dtype.str, arr.shape, arr.tobytes())


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE])
@pytest.mark.parametrize("allow_missing", [True, False])
def test_short_check_decides_as_the_array_check(monkeypatch, elem: int, allow_missing: bool) -> None:  # type: ignore[no-untyped-def]
    rt = ModelRuntime(identity_graph(elem))
    assert rt.single_float_input is not None
    datatype = rt.single_float_input.datatype
    seen_ok = 0
    for data in payloads(4):
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": data}]}
        fast = outcome(rt, body, allow_missing)
        with monkeypatch.context() as m:
            m.setattr(codec, "_flat_numbers", lambda *_a: False)
            slow = outcome(rt, body, allow_missing)
        assert fast == slow, f"{datatype} data {data!r}: short path {fast[:2]} vs array check {slow[:2]}"
        seen_ok += fast[0] == "ok"
    assert 0 < seen_ok < len(payloads(4))  # both kinds of outcome were compared


def test_short_check_takes_flat_numbers_only() -> None:
    assert codec._flat_numbers(
        [0.0, 1, -FLT_MAX, FLT_MAX, 1e39, 10**400]
    )  # the range is checked on the array
    for bad in ([None], ["a"], [[1.0]], [0.5, True], [False], [1, {"v": 1}]):
        assert not codec._flat_numbers(bad), bad


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ([1e39] + [0.0] * 29, ("input 'input'", "out of range")),
        (["x"] + [0.0] * 29, ("input 'input'", "numbers")),
        ([[0.0] * 30], None),  # nested as one row: served
        ([0.0] * 29, ("input 'input'", "29 elements", "needs 30")),
        ([None] + [0.0] * 29, ("input 'input'", "missing values")),
        ([True] + [0.0] * 29, ("input 'input'", "boolean", "FP32")),  # was read as 1.0
        ([0.0] * 29 + [False], ("input 'input'", "boolean", "FP32")),
        ([[0.0] * 29 + [True]], ("input 'input'", "boolean", "FP32")),
    ],
)
def test_bad_values_through_the_short_path_are_4xx_naming_the_input(  # type: ignore[no-untyped-def]
    make_client, packed_clf, data: list[Any], needles: tuple[str, ...] | None
) -> None:
    client = make_client(packed_clf, allow_missing=False)
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data}]}
    r = client.post("/v2/models/iris-like/infer", json=body)
    if needles is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_float16_value_past_its_range_is_refused(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(identity_graph(TensorProto.FLOAT16))
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP16", "data": [70000.0, 1, 2, 3]}]}
    r = client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 400, r.text
    assert "input 'x'" in r.json()["error"]
    assert "out of range" in r.json()["error"]
    body["inputs"][0]["data"] = [65504.0, 1, 2, 3]
    r = client.post("/v2/models/model/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [65504.0, 1.0, 2.0, 3.0]


def test_runs_share_one_run_options() -> None:
    """Every session.run gets the runtime's one RunOptions (not None: a default built per call)."""
    rt = ModelRuntime(identity_graph(TensorProto.FLOAT))
    seen: list[Any] = []
    inner = rt._run

    def spy(names: Any, feeds: Any, options: Any) -> Any:
        seen.append(options)
        return inner(names, feeds, options)

    rt._run = spy
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = rt.run({"x": x})
    rt.run({"x": x})
    assert np.array_equal(y, x)
    assert len(seen) == 2
    assert seen[0] is seen[1] is not None


def test_record_value_past_a_float16_feature_range_is_named(make_client) -> None:  # type: ignore[no-untyped-def]
    """The record API refused 70000 for a float16 feature with 'invalid record', naming nothing."""
    client = make_client(identity_graph(TensorProto.FLOAT16))
    rec = {"x_0": 70000.0, "x_1": 1.0, "x_2": 2.0, "x_3": 3.0}
    for path, body, where in (("/forward", rec, ""), ("/forward_batch", [rec, rec], "record 0: ")):
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == f"{where}feature 'x_0' = 70000.0 is not a finite float16", r.text

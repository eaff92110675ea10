"""Bad input gets a 4xx whose message names the problem (never a 500)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kubeloop_testing.onnx_models import random_records

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))
MIXED = random_records(1, n_numeric=4, categorical=CATEGORICAL, seed=11)[0]
PACKED = random_records(1, seed=12)[0]
ROW = [PACKED[f"f{i}"] for i in range(30)]


def oip(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW, **overrides}
    return {"inputs": [tensor]}


def raw(b: bytes) -> bytes:
    return b


INFER = "/v2/models/iris-like/infer"

# (model, method path, body (dict/list -> JSON; bytes -> raw), expected status, substrings of the error)
CASES: list[tuple[str, str, Any, int, tuple[str, ...]]] = [
    # --- /forward and /forward_batch -------------------------------------------------------------------
    ("mixed", "/forward", {**MIXED, "colour": "red"}, 400, ("unknown feature 'colour'",)),
    ("mixed", "/forward", {k: v for k, v in MIXED.items() if k != "f2"}, 400, ("missing feature 'f2'",)),
    ("mixed", "/forward", {**MIXED, "f1": "3.5"}, 400, ("feature 'f1'", "must be a number", "string")),
    ("mixed-strict", "/forward", {**MIXED, "f0": None}, 400, ("feature 'f0' is null", "missing values")),
    ("mixed-strict", "/forward", {**MIXED, "color": None}, 400, ("feature 'color' is null",)),
    ("mixed", "/forward", {**MIXED, "f3": True}, 400, ("feature 'f3'", "boolean")),
    ("mixed", "/forward", {**MIXED, "f3": 1e39}, 400, ("feature 'f3'", "not a finite float32")),
    ("mixed", "/forward", {**MIXED, "color": ["red"]}, 400, ("feature 'color' is categorical", "a list")),
    ("mixed", "/forward", {**MIXED, "size": {"v": "M"}}, 400, ("feature 'size' is categorical", "an object")),
    ("mixed", "/forward", [MIXED], 400, ("JSON object keyed by feature name",)),
    ("mixed", "/forward", raw(b'{"f0": NaN}'), 400, ("not valid JSON",)),
    ("mixed", "/forward", raw(b'{"f0": 1,'), 400, ("not valid JSON",)),
    ("mixed", "/forward", raw(b""), 400, ("body is empty",)),
    ("mixed", "/forward_batch", {"f0": 1}, 400, ("JSON array of records",)),
    ("mixed", "/forward_batch", [], 400, ("empty list",)),
    ("mixed", "/forward_batch", [MIXED, {**MIXED, "size": ["M"]}], 400, ("record 1", "feature 'size'")),
    ("mixed", "/forward_batch", [MIXED, 7], 400, ("record 1", "JSON object")),
    ("packed", "/forward", {**PACKED, "f29": "x"}, 400, ("feature 'f29'", "number")),
    ("packed", "/forward", {**PACKED, "f30": 1.0}, 400, ("unknown feature 'f30'",)),
    ("packed", "/forward_batch", [PACKED, {**PACKED, "f7": float("inf")}], 400, ("not valid JSON", "column")),
    ("packed", "/forward_batch", [PACKED] * 11, 413, ("11 records exceed the limit of 10",)),
    # --- OIP v2 -------------------------------------------------------------------------------------------
    ("packed", "/v2/models/nope/infer", oip(), 404, ("model 'nope' not found",)),
    ("packed", "/v2/models/iris-like/versions/9/infer", oip(), 404, ("no version '9'",)),
    ("packed", INFER, oip(name="x"), 400, ("unknown input 'x'", "['input']")),
    ("packed", INFER, {"inputs": []}, 400, ("'inputs' must be a non-empty list",)),
    ("packed", INFER, {"input": []}, 400, ("'inputs'",)),
    ("packed", INFER, oip(shape=[1, 29]), 400, ("shape [1, 29]", "[-1, 30]")),
    ("packed", INFER, oip(shape=[2, 30]), 400, ("60", "30 elements")),
    ("packed", INFER, oip(datatype="BYTES"), 400, ("datatype is BYTES", "FP32")),
    ("packed", INFER, oip(datatype="FLOAT32"), 400, ("datatype 'FLOAT32'",)),
    ("packed-strict", INFER, oip(data=[*ROW[:-1], None]), 400, ("data[29]", "null")),
    ("packed", INFER, oip(data=[*ROW[:-1], 1e39]), 400, ("data[29]", "out of range")),
    ("packed", INFER, oip(data=[*ROW[:-1], "a"]), 400, ("data must be numbers",)),
    ("packed", INFER, oip(data=[[1.0, 2.0], [3.0]]), 400, ("input 'input'.data",)),
    ("packed", INFER, oip(shape=[1, -30]), 400, ("non-negative integers",)),
    ("packed", INFER, oip(shape=[0, 30], data=[]), 400, ("0 rows",)),
    ("packed", INFER, oip(shape=[11, 30], data=ROW * 11), 413, ("11 rows exceeds the limit of 10",)),
    ("packed", INFER, {**oip(), "outputs": [{"name": "logits"}]}, 400, ("unknown output 'logits'",)),
    ("packed", INFER, {**oip(), "id": 5}, 400, ("'id' must be a string",)),
    ("packed", INFER, oip(parameters={"binary_data_size": 120}), 400, ("Inference-Header-Content-Length",)),
    ("packed", INFER, {"inputs": [oip()["inputs"][0], oip()["inputs"][0]]}, 400, ("given twice",)),
    (
        "mixed",
        "/v2/models/mixed/infer",
        {"inputs": [{"name": "f0", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]},
        400,
        ("missing input",),
    ),
    (
        "mixed",
        "/v2/models/mixed/infer",
        {
            "inputs": [
                {"name": n, "shape": [1, 1], "datatype": "FP32", "data": [1.0]}
                for n in ("f0", "f1", "f2", "f3", "color", "size")
            ]
        },
        400,
        ("input 'color'", "datatype is FP32", "BYTES"),
    ),
]


@pytest.fixture
def clients(make_client, packed_clf, mixed_clf) -> dict[str, Any]:
    return {
        "packed": make_client(packed_clf, max_request_rows=10),
        "mixed": make_client(mixed_clf, max_request_rows=10),
        "packed-strict": make_client(packed_clf, allow_missing=False),
        "mixed-strict": make_client(mixed_clf, allow_missing=False),
    }


@pytest.mark.parametrize(
    ("model", "path", "body", "status", "needles"),
    CASES,
    ids=[f"{i:02d}-{c[1]}" for i, c in enumerate(CASES)],
)
def test_bad_input_is_4xx_naming_the_problem(clients, model, path, body, status, needles) -> None:
    content = (
        body
        if isinstance(body, bytes)
        else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        if "inf" not in repr(body)
        else _json_with_inf(body)
    )
    r = clients[model].post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def _json_with_inf(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()  # emits Infinity, which is not JSON


def test_at_least_twelve_cases() -> None:
    assert len(CASES) >= 12


def test_oversized_body_is_413(make_client, packed_clf) -> None:
    c = make_client(packed_clf, max_body_bytes=2048)
    r = c.post("/forward", content=b"[" + b"1," * 2000 + b"1]", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "exceeds the limit of 2048 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b" " * 1024

    r = c.post("/forward", content=chunks())
    assert r.status_code == 413
    assert "exceeds the limit of 2048 bytes" in r.json()["error"]


def test_missing_values_and_canonical_categories(make_client, mixed_clf, reference) -> None:
    """null is a missing value (NaN / ""); numbers and booleans are canonical category strings."""
    import numpy as np

    c = make_client(mixed_clf)
    ref = reference(mixed_clf)
    rec = {**MIXED, "f1": None, "color": None, "size": 3.0}
    got = c.post("/forward", json=rec).json()["probabilities"]
    feeds = {
        i.name: np.array([[rec[i.name]]], dtype=np.float32) for i in ref.inputs if i.type == "tensor(float)"
    }
    feeds["f1"] = np.array([[np.nan]], dtype=np.float32)
    feeds["color"] = np.array([[""]], dtype=object)
    feeds["size"] = np.array([["3"]], dtype=object)
    want = ref.session.run(None, feeds)[0][0]
    np.testing.assert_array_equal(np.array(list(got.values()), dtype=np.float32), want)
    body = {"inputs": [{"name": i.name, "shape": [1, 1], "datatype": "BYTES" if i.type == "tensor(string)" else "FP32",
                        "data": [rec[i.name]]} for i in ref.inputs]}  # fmt: skip
    body["inputs"][-1]["data"] = ["3"]
    r = c.post("/v2/models/mixed/infer", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], dtype=np.float32), want)


def test_unseen_category_is_served(make_client, mixed_clf) -> None:
    """A category the model never saw is valid input (the graph maps it to 'unknown')."""
    r = make_client(mixed_clf).post("/forward", json={**MIXED, "color": "ultraviolet"})
    assert r.status_code == 200, r.text

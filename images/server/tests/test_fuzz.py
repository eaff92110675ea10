"""Property test: hundreds of generated requests (valid, perturbed and arbitrary) never get a 5xx."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeloop_testing.onnx_models import random_records

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))
N_EXAMPLES = 600

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e6, max_value=1e6),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
feature_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.sampled_from(["red", "green", "XL", "", "ünïcode"]),
    st.none(),
    st.booleans(),
    st.lists(st.floats(allow_nan=False), max_size=2),
)
datatypes = st.sampled_from(
    ["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "STRING"]
)


@st.composite
def perturbed_record(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    rec = dict(base)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "set":
            rec[draw(st.sampled_from(sorted(rec) or ["f0"]))] = draw(feature_values)
        elif action == "drop" and rec:
            rec.pop(draw(st.sampled_from(sorted(rec))))
        else:
            rec[draw(st.text(max_size=5))] = draw(feature_values)
    return rec


@st.composite
def oip_request(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    inputs = []
    for name in draw(st.lists(st.sampled_from([*names, "bogus"]), min_size=0, max_size=4)):
        rows = draw(st.integers(0, 3))
        width = draw(st.sampled_from([1, 30, 29]))
        tensor: dict[str, Any] = {
            "name": name,
            "shape": draw(st.sampled_from([[rows, width], [rows], [rows, width, 1], [-1, width], []])),
            "datatype": draw(datatypes),
            "data": draw(
                st.one_of(
                    st.lists(
                        st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=rows * width + 1
                    ),
                    st.lists(feature_values, max_size=6),
                    json_values,
                )
            ),
        }
        if draw(st.booleans()):
            tensor.pop(draw(st.sampled_from(sorted(tensor))))
        inputs.append(tensor)
    req: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        req["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "x"])}), max_size=2)
        )
    if draw(st.booleans()):
        req["id"] = draw(json_scalars)
    return req


def test_no_5xx_for_generated_requests(make_client, packed_clf, mixed_clf) -> None:
    clients = {"packed": make_client(packed_clf), "mixed": make_client(mixed_clf)}
    packed_rec = random_records(1, seed=1)[0]
    mixed_rec = random_records(1, n_numeric=4, categorical=CATEGORICAL, seed=2)[0]
    sent: list[int] = []
    statuses: dict[int, int] = {}

    f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
    valid_mixed = st.fixed_dictionaries(
        {
            **{f"f{i}": f32 for i in range(4)},
            "color": st.text(max_size=10),
            "size": st.sampled_from(["S", "XL", "?"]),
        }
    )
    valid_packed = st.fixed_dictionaries({f"f{i}": f32 for i in range(30)})
    requests = st.one_of(
        st.tuples(st.just("mixed"), st.just("/forward"), valid_mixed),
        st.tuples(
            st.just("packed"), st.just("/forward_batch"), st.lists(valid_packed, min_size=1, max_size=3)
        ),
        st.tuples(st.just("packed"), st.just("/forward"), perturbed_record(packed_rec)),
        st.tuples(st.just("mixed"), st.just("/forward"), perturbed_record(mixed_rec)),
        st.tuples(
            st.just("mixed"), st.just("/forward_batch"), st.lists(perturbed_record(mixed_rec), max_size=4)
        ),
        st.tuples(
            st.just("packed"), st.just("/v2/models/iris-like/infer"), oip_request(["input", "f0", "f1"])
        ),
        st.tuples(
            st.just("mixed"),
            st.just("/v2/models/mixed/infer"),
            oip_request(["f0", "f1", "f2", "f3", "color", "size"]),
        ),
        st.tuples(
            st.sampled_from(["packed", "mixed"]),
            st.sampled_from(["/forward", "/forward_batch", "/v2/models/iris-like/infer"]),
            json_values,
        ),
        st.tuples(st.just("packed"), st.just("/forward"), st.binary(max_size=40)),
    )

    @settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests)
    def check(req: tuple[str, str, Any]) -> None:
        model, path, body = req
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = clients[model].post(path, content=content, headers={"content-type": "application/json"})
        sent.append(r.status_code)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, f"{path} {content[:300]!r} -> {r.status_code} {r.text}"
        assert r.status_code in (200, 400, 404, 413), r.text
        if r.status_code != 200:
            assert r.json()["error"]

    check()
    print("fuzz statuses:", statuses)
    assert len(sent) >= 500, statuses
    assert statuses.get(200, 0) > 50, statuses
    assert statuses.get(400, 0) > 100, statuses

"""YAML aliases are references: a few hundred bytes can name a document of 10^8 values ("billion laughs").
Decoding runs on the event loop, so expanding one would stall every request of the facade; a body that
expands past a bound is refused at once, naming ``body``. Anchors used as YAML is meant to use them
(defaults merged into a few maps) still work."""

from __future__ import annotations

import time
import warnings

import pytest
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.bodies import decode_document
from kubeloop_api.errors import ApiError
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _bomb(levels: int) -> bytes:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines).encode()


@pytest.mark.parametrize("levels", [6, 8])
def test_a_yaml_body_expanding_to_millions_of_values_is_refused_at_once(levels: int) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ApiError) as e:
        decode_document(_bomb(levels), "application/yaml")
    took = time.perf_counter() - t0
    assert 400 <= e.value.status_code < 500
    assert e.value.message.startswith("body: "), e.value.message
    assert "alias" in e.value.message
    assert took < 5.0, (
        f"{took:.1f} s on the event loop"
    )  # without the bound: 12 s for 6 levels, ~20 min for 8


def test_a_yaml_bomb_is_refused_by_the_create_route() -> None:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    body = b"apiVersion: kubeloop.io/v1alpha1\nkind: TrainingJob\n" + _bomb(8).replace(b"a0:", b"x0:", 0)
    s = ApiSettings()
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=fk.transport()), metrics=m)
    t0 = time.perf_counter()
    with TestClient(app) as c:
        r = c.post("/api/v1/namespaces/a/trainingjobs", content=body,
                   headers={"Authorization": "Bearer t", "Content-Type": "application/yaml"})  # fmt: skip
    assert r.status_code in (400, 422), r.text
    assert r.json()["details"]["causes"][0]["field"] == "body"
    assert time.perf_counter() - t0 < 5.0


def test_anchors_used_for_defaults_still_work() -> None:
    doc = b"""
defaults: &d {cpu: "1", memory: 1Gi, labels: {team: a, tier: x}}
items:
""" + b"".join(b"  - {<<: *d, name: n%d}\n" % i for i in range(200))
    out = decode_document(doc, "application/yaml")
    assert len(out["items"]) == 200
    assert out["items"][7] == {
        "cpu": "1",
        "memory": "1Gi",
        "labels": {"team": "a", "tier": "x"},
        "name": "n7",
    }

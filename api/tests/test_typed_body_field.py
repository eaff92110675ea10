"""A typed JSON body (scale, canary, alias, tokens, registry aliases) that is not an object at all is
refused naming ``body``, as every other refusal names its field. Against the in-memory stand-in."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROUTES = [
    ("PUT", "/api/v1/namespaces/a/modeldeployments/m/scale"),
    ("PUT", "/api/v1/namespaces/a/modeldeployments/m/canary"),
    ("PUT", "/api/v1/namespaces/a/modeldeployments/m/alias"),
    ("POST", "/api/v1/tokens"),
]


def _send(method: str, path: str, body: bytes) -> Any:
    """One JSON request as alice to a facade on the in-memory stand-in (the registry configured, unused)."""
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    s = ApiSettings(mlflow_tracking_uri="http://127.0.0.1:9")
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=fk.transport()), metrics=m)
    with TestClient(app) as c:
        return c.request(method, path, content=body,
                         headers={"Authorization": "Bearer t", "Content-Type": "application/json"})  # fmt: skip


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("body", [b"null", b"[1]", b"3", b'"replicas"', b""])
def test_a_typed_body_that_is_no_object_is_a_422_naming_body(method: str, path: str, body: bytes) -> None:
    r = _send(method, path, body)
    assert r.status_code == 422, r.text
    out = r.json()
    assert [c["field"] for c in out["details"]["causes"]] == ["body"], out
    assert out["message"].startswith("body: "), out


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/api/v1/namespaces/a/modeldeployments/m/scale", b'{"replicas": true}', "replicas"),
        ("PUT", "/api/v1/namespaces/a/modeldeployments/m/scale", b'{"replicas": "3"}', "replicas"),
        ("PUT", "/api/v1/namespaces/a/modeldeployments/m/scale", b'{"replicas": 2.5}', "replicas"),
        (
            "PUT",
            "/api/v1/namespaces/a/modeldeployments/m/canary",
            b'{"trafficPercent": "25"}',
            "trafficPercent",
        ),
        (
            "PUT",
            "/api/v1/namespaces/a/modeldeployments/m/canary",
            b'{"trafficPercent": false}',
            "trafficPercent",
        ),
        ("PUT", "/api/v1/namespaces/a/models/m/aliases/champion", b'{"version": "3"}', "version"),
        ("POST", "/api/v1/tokens", b'{"name": "ci", "expiresInSeconds": "600"}', "expiresInSeconds"),
        ("POST", "/api/v1/tokens", b'{"name": 7}', "name"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_a_422_naming_it(
    method: str, path: str, body: bytes, field: str
) -> None:
    # kubectl and the API server take no "3" or true for a number: the facade does not either (pydantic's
    # lax mode would read "3" as 3 and true as 1).
    r = _send(method, path, body)
    assert r.status_code == 422, r.text
    assert [c["field"] for c in r.json()["details"]["causes"]] == [field], r.text

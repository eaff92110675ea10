"""A list's refused query parameters named, against the in-memory Kubernetes stand-in answering as the
API server does (the same with the real API server: test_component_list_params.py)."""

from __future__ import annotations

import warnings

import httpx
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter."
)


def test_an_expired_continue_token_is_a_410_naming_continue() -> None:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}

    def kube(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("continue"):
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": EXPIRED,
                    "reason": "Expired", "code": 410}  # fmt: skip
            return httpx.Response(410, json=body)
        return fk.handle(req)

    s = ApiSettings()
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=httpx.MockTransport(kube)), metrics=m)
    with TestClient(app) as c:
        r = c.get("/api/v1/namespaces/a/trainingjobs", params={"continue": "old", "limit": 5},
                  headers={"Authorization": "Bearer t"})  # fmt: skip
    assert r.status_code == 410
    body = r.json()
    assert body["reason"] == "Expired"
    assert body["message"] == f"continue: {EXPIRED}"
    assert body["details"]["causes"][0]["field"] == "continue"

"""Operations the facade authorises itself (SubjectAccessReview: datasets, models, kept logs) are judged
with the same groups as the Kubernetes calls it makes impersonating the caller. The API server adds
``system:authenticated`` to every impersonated user; an API token's record does not carry it, so the
review must add it, or a grant to all authenticated users counts for one and not the other."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.objects import Objects
from kubeloop_api.settings import ApiSettings

from kubeloop.storage.local import LocalStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_an_api_token_caller_is_reviewed_as_an_authenticated_user(tmp_path: Path) -> None:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": ["team-a", "system:authenticated"]}
    reviewed: list[dict[str, Any]] = []

    def allow(spec: dict[str, Any]) -> bool:
        if spec["resourceAttributes"]["verb"] == "impersonate":
            return True
        reviewed.append(spec)
        # A cluster-wide grant to every authenticated user (e.g. a ClusterRoleBinding to the group).
        return "system:authenticated" in spec.get("groups", [])

    fk.allow = allow
    store = LocalStore(tmp_path)
    store.ensure_bucket("kubeloop")
    s = ApiSettings()
    m = ApiMetrics()
    objects = Objects(store, "kubeloop", m)
    app = create_app(s, kube=Kube(s, m, transport=fk.transport()), metrics=m, objects=objects)
    with TestClient(app) as c:
        r = c.post("/api/v1/tokens", json={"name": "ci"}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert (
            c.get("/api/v1/namespaces/a/datasets", headers={"Authorization": "Bearer t"}).status_code == 200
        )
        r = c.get("/api/v1/namespaces/a/datasets", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert [sorted(spec["groups"]) for spec in reviewed] == [
        ["system:authenticated", "team-a"],
        ["system:authenticated", "team-a"],
    ]

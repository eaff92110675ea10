"""Replacing a stored dataset (``overwrite=true``) destroys its data: it needs the permission that changing
an existing object needs, ``update`` on trainingjobs, besides ``create``; a caller who may only create
can add datasets, not replace them. Against the in-memory Kubernetes stand-in and a local store."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
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

A = {"Authorization": "Bearer t", "Content-Type": "text/csv"}
FIRST = b"a,b\n1,2\n3,4\n"
SECOND = b"a,b\n5,6\n7,8\n"


@pytest.mark.parametrize(("verbs", "status"), [({"create"}, 403), ({"create", "update"}, 201)])
def test_overwriting_a_dataset_needs_update(tmp_path: Path, verbs: set[str], status: int) -> None:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    asked: list[dict[str, Any]] = []

    def allow(spec: dict[str, Any]) -> bool:
        attrs = spec["resourceAttributes"]
        asked.append(attrs)
        return attrs["resource"] == "trainingjobs" and attrs["verb"] in verbs

    fk.allow = allow
    store = LocalStore(tmp_path / "store")
    store.ensure_bucket("kubeloop")
    s = ApiSettings()
    m = ApiMetrics()
    objects = Objects(store, "kubeloop", m)
    app = create_app(s, kube=Kube(s, m, transport=fk.transport()), metrics=m, objects=objects)
    url = "/api/v1/namespaces/a/datasets/d.csv"
    with TestClient(app) as c:
        assert c.put(url, content=FIRST, headers=A).status_code == 201  # a new name: create is enough
        r = c.put(url, params={"overwrite": "true"}, content=SECOND, headers=A)
    assert r.status_code == status, r.text
    stored = store.get(objects.ref("datasets/a/d.csv"))
    if status == 403:
        assert r.json()["reason"] == "Forbidden"
        assert '"update"' in r.json()["message"] or "cannot update" in r.json()["message"]
        assert stored == FIRST
    else:
        assert stored == SECOND
    assert {"verb": "update", "group": "kubeloop.io", "resource": "trainingjobs", "namespace": "a"} in asked

"""Authorization matrix against the real API server: callers bound to namespace A (a ServiceAccount with a
cluster token, and a person with a Kubeloop API token) try everything the facade offers on namespace B.
Every case must be refused, and no response may carry anything of B's (a marker planted in B's objects,
dataset and model). The same operations by B's own tenant succeed (the positive control). Revoked and
expired API tokens get 401; no credential ever appears in the facade's log."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_cluster import ApiEnv, Tenant, Tenants, expect, register_model
from api_testdata import good_csv
from kubernetes import client

from kubeloop.contracts import training_log

pytestmark = pytest.mark.component

MARKER = f"bsecret{secrets.token_hex(6)}"

TJ_SPEC = {
    "dataset": {"uri": "s3://kubeloop/datasets/b.csv", "target": "y"},
    "task": "classification",
    "runPolicy": {"suspend": True},
}
MD_SPEC = {
    "model": {"name": "m", "alias": "champion"},
    "canary": {"model": {"name": "m", "version": 1}, "trafficPercent": 5},
}
DM_SPEC = {
    "deployment": "secret-md",
    "schedule": "0 * * * *",
    "retrain": {"trainingJobRef": {"name": "secret-tj"}},
}


@pytest.fixture(scope="module")
def victim(api_env: ApiEnv, tenants: Tenants) -> Iterator[dict[str, Any]]:
    """Namespace B's objects, dataset, kept log and model, each carrying the marker."""
    ns = tenants.b.namespace
    labels = {"marker": MARKER}
    with api_env.client(tenants.b.headers) as c:
        for plural, name, spec in (("trainingjobs", "secret-tj", TJ_SPEC), ("modeldeployments", "secret-md", MD_SPEC),
                                   ("driftmonitors", "secret-dm", DM_SPEC)):  # fmt: skip
            expect(c.post(f"/api/v1/namespaces/{ns}/{plural}", json={"metadata": {"name": name, "labels": labels},
                                                                       "spec": spec}), 201)  # fmt: skip
        data = good_csv().replace(b"mean radius", MARKER.encode(), 1)
        expect(c.put(f"/api/v1/namespaces/{ns}/datasets/secret.csv", content=data), 201)
    kept = training_log(ns, "secret-tj", "secret-tj-0-abcde", api_env.minio.bucket)
    api_env.minio.client().put_object(Bucket=kept.bucket, Key=kept.key, Body=f"log {MARKER}\n".encode())
    model = f"secret-{MARKER}"
    version = register_model(api_env, ns, model, "secret-tj", 0.9)
    with api_env.client(tenants.b.headers) as c:
        expect(
            c.put(f"/api/v1/namespaces/{ns}/models/{model}/aliases/champion", json={"version": version}), 200
        )
    yield {"ns": ns, "model": model, "version": version}
    for prefix in (f"datasets/{ns}/", f"logs/{ns}/"):
        api_env.minio.delete_prefix(prefix)


def cases(ns: str, model: str, version: int) -> list[tuple[str, str, str, Any]]:
    """(id, method, path, JSON body or bytes) — everything the facade offers, aimed at namespace ``ns``."""
    b = f"/api/v1/namespaces/{ns}"
    tj, md, dm = (
        f"{b}/trainingjobs/secret-tj",
        f"{b}/modeldeployments/secret-md",
        f"{b}/driftmonitors/secret-dm",
    )
    w = f"/api/v1/watch/namespaces/{ns}"
    m = f"{b}/models/{model}"
    return [
        ("read-tj", "GET", tj, None),
        ("read-md", "GET", md, None),
        ("read-dm", "GET", dm, None),
        ("list-tj", "GET", f"{b}/trainingjobs", None),
        ("list-md", "GET", f"{b}/modeldeployments", None),
        ("list-dm", "GET", f"{b}/driftmonitors?labelSelector=marker", None),
        ("watch-tj-namespace", "GET", f"{w}/trainingjobs", None),
        ("stream-tj", "GET", f"{w}/trainingjobs/secret-tj", None),
        ("watch-md-namespace", "GET", f"{w}/modeldeployments", None),
        ("stream-md-resume", "GET", f"{w}/modeldeployments/secret-md?resourceVersion=1", None),
        ("stream-dm", "GET", f"{w}/driftmonitors/secret-dm", None),
        ("create-tj", "POST", f"{b}/trainingjobs", {"metadata": {"name": "intruder"}, "spec": TJ_SPEC}),
        (
            "create-md-dry-run",
            "POST",
            f"{b}/modeldeployments?dryRun=true",
            {"metadata": {"name": "x"}, "spec": MD_SPEC},
        ),
        ("create-dm", "POST", f"{b}/driftmonitors", {"metadata": {"name": "intruder"}, "spec": DM_SPEC}),
        ("patch-tj", "PATCH", tj, {"spec": {"training": {"epochs": 1}}}),
        ("patch-md", "PATCH", md, {"metadata": {"labels": {"owned": "yes"}}}),
        ("patch-dm", "PATCH", dm, {"spec": {"suspend": True}}),
        ("suspend-tj", "POST", f"{tj}/suspend", None),
        ("resume-md", "POST", f"{md}/resume", None),
        ("suspend-dm", "POST", f"{dm}/suspend", None),
        ("scale-md", "PUT", f"{md}/scale", {"replicas": 0}),
        ("read-scale-md", "GET", f"{md}/scale", None),
        ("canary-md", "PUT", f"{md}/canary", {"trafficPercent": 100}),
        ("alias-md", "PUT", f"{md}/alias", {"alias": "mine"}),
        ("delete-tj", "DELETE", tj, None),
        ("delete-md", "DELETE", md, None),
        ("delete-dm", "DELETE", dm, None),
        ("logs", "GET", f"{tj}/logs", None),
        ("logs-follow", "GET", f"{tj}/logs?follow=true", None),
        ("logs-kept", "GET", f"{tj}/logs?source=kept", None),
        ("pods", "GET", f"{tj}/pods", None),
        ("predict-forward", "POST", f"{md}/forward", {"mean radius": 1.0}),
        ("predict-batch", "POST", f"{md}/forward_batch", [{"mean radius": 1.0}]),
        ("predict-oip", "POST", f"{md}/v2/models/secret-md/infer", {"inputs": []}),
        ("predict-metadata", "GET", f"{md}/metadata", None),
        ("predict-ready", "GET", f"{md}/v2/health/ready", None),
        ("upload-dataset", "PUT", f"{b}/datasets/mine.csv", good_csv()),
        ("overwrite-dataset", "PUT", f"{b}/datasets/secret.csv?overwrite=true", good_csv()),
        ("list-datasets", "GET", f"{b}/datasets", None),
        ("stat-dataset", "GET", f"{b}/datasets/secret.csv", None),
        ("download-dataset", "GET", f"{b}/datasets/secret.csv/url", None),
        ("delete-dataset", "DELETE", f"{b}/datasets/secret.csv", None),
        ("list-models", "GET", f"{b}/models", None),
        ("read-model", "GET", m, None),
        ("list-versions", "GET", f"{m}/versions", None),
        ("read-version", "GET", f"{m}/versions/{version}", None),
        ("move-alias", "PUT", f"{m}/aliases/champion", {"version": version}),
        ("remove-alias", "DELETE", f"{m}/aliases/champion", None),
    ]


def _send(c: httpx.Client, method: str, path: str, body: Any) -> tuple[int, str]:
    kw: dict[str, Any] = {}
    if isinstance(body, bytes):
        kw["content"] = body
    elif body is not None:
        kw["json"] = body
    with c.stream(method, path, **kw) as r:
        text = b""
        for chunk in r.iter_bytes():
            text += chunk
            if len(text) > 65536 or r.headers.get("content-type", "").startswith("text/event-stream"):
                break
        return r.status_code, text.decode(errors="replace")


def _callers(tenants: Tenants) -> list[tuple[str, Tenant]]:
    return [("serviceaccount", tenants.a), ("api-token", tenants.token_a)]


def test_no_leak_from_namespace_b_to_callers_of_namespace_a(
    api_env: ApiEnv, tenants: Tenants, victim: dict[str, Any]
) -> None:
    matrix = cases(victim["ns"], victim["model"], victim["version"])
    results: list[tuple[str, str, int]] = []
    leaks: list[str] = []
    for who, caller in _callers(tenants):
        with api_env.client(caller.headers) as c:
            for case_id, method, path, body in matrix:
                status, text = _send(c, method, path, body)
                results.append((who, case_id, status))
                if status != 403 or MARKER in text:
                    leaks.append(f"{who} {case_id}: {status} {text[:200]}")
    total = len(results)
    print(f"authorization matrix: {total} cases, {len(leaks)} leaks")
    assert total >= 40
    assert not leaks, "\n".join(leaks)


def test_nothing_in_b_changed(api_env: ApiEnv, tenants: Tenants, victim: dict[str, Any]) -> None:
    ns = victim["ns"]
    with api_env.client(tenants.b.headers) as c:
        for plural, name in (
            ("trainingjobs", "secret-tj"),
            ("modeldeployments", "secret-md"),
            ("driftmonitors", "secret-dm"),
        ):
            obj = expect(c.get(f"/api/v1/namespaces/{ns}/{plural}/{name}"), 200)
            assert obj["metadata"]["generation"] == 1
            assert "owned" not in obj["metadata"]["labels"]
        assert [d["name"] for d in expect(c.get(f"/api/v1/namespaces/{ns}/datasets"), 200)["items"]] == [
            "secret.csv"
        ]
        model = expect(c.get(f"/api/v1/namespaces/{ns}/models/{victim['model']}"), 200)
        assert model["aliases"] == {"champion": victim["version"]}
        for plural in ("trainingjobs", "driftmonitors"):
            names = [
                o["metadata"]["name"]
                for o in expect(c.get(f"/api/v1/namespaces/{ns}/{plural}"), 200)["items"]
            ]
            assert "intruder" not in names


def test_the_owner_can_do_the_same_positive_control(
    api_env: ApiEnv, tenants: Tenants, victim: dict[str, Any]
) -> None:
    """B's own tenant gets past authorization on the read cases (so a 403 above is a real refusal)."""
    reads = [c for c in cases(victim["ns"], victim["model"], victim["version"]) if c[1] == "GET"]
    with api_env.client(tenants.b.headers) as c:
        for case_id, method, path, body in reads:
            status, text = _send(c, method, path, body)
            if case_id.startswith("predict"):
                assert status == 409, (case_id, status, text)  # authorised; nothing serves it (no Service)
            else:
                assert status == 200, (case_id, status, text)


def test_a_namespace_a_path_to_bs_model_is_not_found(
    api_env: ApiEnv, tenants: Tenants, victim: dict[str, Any]
) -> None:
    a = f"/api/v1/namespaces/{tenants.a.namespace}/models/{victim['model']}"
    with api_env.client(tenants.a.headers) as c:
        for method, path, body in (("GET", a, None), ("GET", f"{a}/versions", None),
                                   ("GET", f"{a}/versions/{victim['version']}", None),
                                   ("PUT", f"{a}/aliases/champion", {"version": victim["version"]})):  # fmt: skip
            status, text = _send(c, method, path, body)
            assert status == 404, (path, status, text)
            assert MARKER not in text.replace(victim["model"], "")


def test_revoked_and_expired_api_tokens_are_401(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    with api_env.client(api_env.admin.headers) as admin:
        made = expect(
            admin.post(
                "/api/v1/tokens", json={"name": "to revoke", "user": "dora", "groups": [f"team-{ns}"]}
            ),
            201,
        )
        token = made["token"]
        api_env.remember(token)
        with api_env.client({"Authorization": f"Bearer {token}"}) as c:
            expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs"), 200)
            expect(admin.delete(f"/api/v1/tokens/{made['id']}"), 200)
            r = expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs"), 401)
            assert "revoked" in r["message"]
            expect(c.get("/api/v1/tokens"), 401)

        made = expect(
            admin.post(
                "/api/v1/tokens", json={"name": "to expire", "user": "erin", "groups": [f"team-{ns}"]}
            ),
            201,
        )
        api_env.remember(made["token"])
        # Let it run out: move its expiry into the past in its Secret (as time would).
        with api_env.kube.api_client() as api:
            core = client.CoreV1Api(api)
            secret = core.read_namespaced_secret(f"kubeloop-api-token-{made['id']}", api_env.home)
            import base64

            doc = json.loads(base64.b64decode(secret.data["token.json"]))
            doc["expiresAt"] = "2020-01-01T00:00:00Z"
            secret.data["token.json"] = base64.b64encode(json.dumps(doc).encode()).decode()
            core.replace_namespaced_secret(secret.metadata.name, api_env.home, secret)
        with api_env.client({"Authorization": f"Bearer {made['token']}"}) as c:
            r = expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs"), 401)
            assert "expired" in r["message"]
        listed = expect(admin.get("/api/v1/tokens"), 200)["items"]
        assert all("token" not in t and "sha256" not in t for t in listed)
    for bogus in ("klp_000000000000_" + "A" * 43, "not-a-token", "eyJhbGciOiJSUzI1NiJ9.e30.sig"):
        with api_env.client({"Authorization": f"Bearer {bogus}"}) as c:
            expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs"), 401)


def test_api_token_for_someone_else_needs_impersonation(api_env: ApiEnv, tenants: Tenants) -> None:
    with api_env.client(tenants.a.headers) as c:
        expect(c.post("/api/v1/tokens", json={"name": "x", "user": "root"}), 403)
        expect(c.post("/api/v1/tokens", json={"name": "x", "groups": ["system:masters"]}), 403)
        mine = expect(c.post("/api/v1/tokens", json={"name": "my script", "expiresInSeconds": 3600}), 201)
        api_env.remember(mine["token"])
        assert mine["user"] == tenants.a.user
    with api_env.client(tenants.token_a.headers) as c:
        # An API token cannot mint more tokens for itself (that would outlive its revocation).
        expect(c.post("/api/v1/tokens", json={"name": "again"}), 403)


def test_no_credential_in_the_facades_log(api_env: ApiEnv, tenants: Tenants) -> None:
    assert len(api_env.capture.lines) > 100  # the capture works: the facade logged every request
    assert api_env.leaked() == []

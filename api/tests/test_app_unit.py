"""The app against an in-memory Kubernetes stand-in: authentication, API tokens, impersonation, error
mapping, body handling, metrics and the OpenAPI document. The same behaviour against the real API
server is in test_component_*.py."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_fakekube import FakeKube
from fastapi import FastAPI
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings
from kubeloop_api.tokens import digest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

A = {"Authorization": "Bearer tok-alice"}
TJ = {
    "apiVersion": "kubeloop.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "tj1"},
    "spec": {"dataset": {"uri": "s3://kubeloop/datasets/a.csv", "target": "y"}, "task": "classification"},
}


@pytest.fixture
def fake() -> FakeKube:
    fk = FakeKube()
    fk.users["tok-alice"] = {"username": "alice", "uid": "u1", "groups": ["team-a", "system:authenticated"]}
    fk.users["tok-bob"] = {"username": "bob", "groups": ["team-b"]}
    return fk


def _app(fake: FakeKube, **settings: Any) -> FastAPI:
    s = ApiSettings(**settings)
    m = ApiMetrics()
    return create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m)


@pytest.fixture
def client(fake: FakeKube) -> Iterator[TestClient]:
    with TestClient(_app(fake)) as c:
        yield c


def test_missing_malformed_and_rejected_credentials_are_401(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer a b"}, {"Authorization": "Bearer nope"}):  # fmt: skip
        r = client.get("/api/v1/namespaces/a/trainingjobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["reason"] == "Unauthorized"
    # Unauthenticated requests are refused before parameter validation: nothing about the API leaks.
    assert client.get("/api/v1/namespaces/NOT_VALID/trainingjobs").status_code == 401


def test_token_review_answers_are_cached_under_the_tokens_hash(client: TestClient, fake: FakeKube) -> None:
    for _ in range(3):
        assert client.get("/api/v1/namespaces/a/trainingjobs", headers=A).status_code == 200
    reviews = [r for r in fake.requests if r.url.path.endswith("/tokenreviews")]
    assert len(reviews) == 1
    authn = client.app.state.services.authn  # type: ignore[attr-defined]
    assert list(authn._cache) == [digest("tok-alice")]


def test_a_rejected_token_is_refused_from_memory_for_a_while(fake: FakeKube) -> None:
    """A client retrying a bad token costs the API server one TokenReview per auth_failure_cache_ttl_s, not
    one per request; the refusal is the same 401. Only the cluster's own "no" is remembered: an error
    reaching the API server is not, and 0 turns the memory off."""
    with TestClient(_app(fake, auth_failure_cache_ttl_s=60)) as c:
        bad = {"Authorization": "Bearer not-a-token"}
        for _ in range(3):
            r = c.get("/api/v1/namespaces/a/trainingjobs", headers=bad)
            assert (r.status_code, r.json()["reason"]) == (401, "Unauthorized")
        reviews = [r for r in fake.requests if r.url.path.endswith("/tokenreviews")]
        assert len(reviews) == 1
        authn = c.app.state.services.authn  # type: ignore[attr-defined]
        assert list(authn._rejected) == [digest("not-a-token")]  # the hash, never the token
        metrics = c.get("/metrics", headers=A).text
        assert 'kubeloop_api_auth_failures_total{reason="rejected"} 3.0' in metrics
        # The memory ends: the cluster is asked again (and may now accept the token).
        authn._rejected[digest("not-a-token")] = 0.0
        fake.users["not-a-token"] = {"username": "carol", "groups": []}
        assert c.get("/api/v1/namespaces/a/trainingjobs", headers=bad).status_code == 200
    with TestClient(_app(fake, auth_failure_cache_ttl_s=60)) as c:
        fake.review_error = 503
        assert c.get("/api/v1/namespaces/a/trainingjobs", headers=A).status_code >= 500
        authn = c.app.state.services.authn  # type: ignore[attr-defined]
        assert list(authn._rejected) == []
        fake.review_error = None
        assert c.get("/api/v1/namespaces/a/trainingjobs", headers=A).status_code == 200
    with TestClient(_app(fake, auth_failure_cache_ttl_s=0)) as c:
        before = len([r for r in fake.requests if r.url.path.endswith("/tokenreviews")])
        for _ in range(2):
            assert (
                c.get(
                    "/api/v1/namespaces/a/trainingjobs", headers={"Authorization": "Bearer nope"}
                ).status_code
                == 401
            )
        after = len([r for r in fake.requests if r.url.path.endswith("/tokenreviews")])
        assert after - before == 2
        assert not c.app.state.services.authn._rejected  # type: ignore[attr-defined]


def test_every_kubernetes_call_impersonates_the_caller(client: TestClient, fake: FakeKube) -> None:
    assert client.post("/api/v1/namespaces/a/trainingjobs", json=TJ, headers=A).status_code == 201
    assert client.get("/api/v1/namespaces/a/trainingjobs/tj1", headers=A).status_code == 200
    assert client.post("/api/v1/namespaces/a/trainingjobs/tj1/suspend", headers=A).status_code == 200
    assert client.delete("/api/v1/namespaces/a/trainingjobs/tj1", headers=A).status_code == 200
    crd_calls = [r for r in fake.requests if "/apis/kubeloop.io/" in r.url.path]
    assert len(crd_calls) == 5  # create, get, get + patch, delete
    for r in crd_calls:
        assert r.headers["impersonate-user"] == "alice"
        assert r.headers.get_list("impersonate-group") == ["team-a"]
    assert [r.url.params.get("fieldManager") for r in crd_calls if r.method in ("POST", "PATCH")] == [
        "kubeloop-api", "kubeloop-api"
    ]  # fmt: skip


def test_kubernetes_refusals_pass_through_with_their_reason(client: TestClient, fake: FakeKube) -> None:
    r = client.get("/api/v1/namespaces/a/trainingjobs/missing", headers=A)
    assert (r.status_code, r.json()["reason"]) == (404, "NotFound")
    assert client.post("/api/v1/namespaces/a/trainingjobs", json=TJ, headers=A).status_code == 201
    r = client.post("/api/v1/namespaces/a/trainingjobs", json=TJ, headers=A)
    assert (r.status_code, r.json()["reason"]) == (409, "AlreadyExists")
    fake.deny_impersonated = lambda user, verb, ns: ns == "b"
    r = client.get("/api/v1/namespaces/b/trainingjobs", headers=A)
    assert (r.status_code, r.json()["reason"]) == (403, "Forbidden")
    assert 'User "alice"' in r.json()["message"]


def test_bodies_json_yaml_size_and_type(client: TestClient) -> None:
    r = client.post(
        "/api/v1/namespaces/a/trainingjobs",
        content=yaml.safe_dump(TJ),
        headers={**A, "Content-Type": "application/yaml"},
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/api/v1/namespaces/a/trainingjobs",
        content=b"{not json",
        headers={**A, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["message"].startswith("body: not valid JSON")
    r = client.post("/api/v1/namespaces/a/trainingjobs", content=b'{"a": NaN}', headers=A)
    assert r.status_code == 400
    r = client.post("/api/v1/namespaces/a/trainingjobs", content=b"[" * 100000, headers=A)
    assert r.status_code in (400, 413)
    r = client.post(
        "/api/v1/namespaces/a/trainingjobs", content=b"x", headers={**A, "Content-Type": "text/xml"}
    )
    assert r.status_code == 415
    big = b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = client.post("/api/v1/namespaces/a/trainingjobs", content=big, headers=A)
    assert r.status_code == 413
    assert r.json()["message"].startswith("body:")


def test_parameter_errors_name_the_parameter(client: TestClient) -> None:
    r = client.get("/api/v1/namespaces/a/trainingjobs?limit=0", headers=A)
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "limit"
    r = client.put("/api/v1/namespaces/a/modeldeployments/m/scale", json={"replicas": -1}, headers=A)
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "replicas"
    r = client.get("/api/v1/namespaces/a/trainingjobs/Bad_Name", headers=A)
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "name"


def test_conflicting_patch_is_retried_from_a_fresh_read(client: TestClient, fake: FakeKube) -> None:
    assert client.post("/api/v1/namespaces/a/trainingjobs", json=TJ, headers=A).status_code == 201
    orig = fake.handle
    bumped = []

    def racing(req: Any) -> Any:
        # Another writer changes the object between our read and our patch, once.
        if req.method == "PATCH" and not bumped:
            bumped.append(1)
            obj = fake.objects[("a", "trainingjobs", "tj1")]
            obj["metadata"]["resourceVersion"] = fake._next_rv()
        return orig(req)

    fake.handle = racing  # type: ignore[method-assign]
    r = client.post("/api/v1/namespaces/a/trainingjobs/tj1/suspend", headers=A)
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["runPolicy"]["suspend"] is True
    # A resourceVersion the caller sends is their precondition: a 409 goes back to them.
    r = client.patch(
        "/api/v1/namespaces/a/trainingjobs/tj1", json={"metadata": {"resourceVersion": "1"}}, headers=A
    )
    assert r.status_code == 409


def test_api_tokens_create_use_list_revoke(client: TestClient, fake: FakeKube) -> None:
    r = client.post("/api/v1/tokens", json={"name": "ci job"}, headers=A)
    assert r.status_code == 201, r.text
    rec = r.json()
    token = rec.pop("token")
    assert rec["user"] == "alice"
    assert rec["groups"] == ["team-a"]
    assert rec["owner"] == "alice"
    secret = fake.objects[("kubeloop-system", "secrets", f"kubeloop-api-token-{rec['id']}")]
    assert token not in str(secret)  # only the hash is kept
    hdr = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/namespaces/a/trainingjobs", headers=hdr).status_code == 200
    listed = client.get("/api/v1/tokens", headers=A).json()["items"]
    assert [t["id"] for t in listed] == [rec["id"]]
    assert "token" not in listed[0]
    assert "sha256" not in listed[0]
    assert client.get("/api/v1/tokens", headers={"Authorization": "Bearer tok-bob"}).json()["items"] == []
    fake.allow = lambda spec: False  # bob may not impersonate alice
    assert (
        client.get(f"/api/v1/tokens/{rec['id']}", headers={"Authorization": "Bearer tok-bob"}).status_code
        == 404
    )
    assert client.delete(f"/api/v1/tokens/{rec['id']}", headers=A).json()["revoked"] is True
    r = client.get("/api/v1/namespaces/a/trainingjobs", headers=hdr)
    assert r.status_code == 401
    assert "revoked" in r.json()["message"]
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (
        client.get(
            "/api/v1/namespaces/a/trainingjobs", headers={"Authorization": f"Bearer {wrong}"}
        ).status_code
        == 401
    )


def test_expired_api_token_is_401(client: TestClient, fake: FakeKube) -> None:
    rec = client.post("/api/v1/tokens", json={"name": "short"}, headers=A).json()
    store = client.app.state.services.tokens  # type: ignore[attr-defined]
    import asyncio

    record = asyncio.run(store.get(rec["id"]))
    record.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    key = ("kubeloop-system", "secrets", f"kubeloop-api-token-{rec['id']}")
    sha = asyncio.run(store._read(rec["id"]))[0].sha256
    record.sha256 = sha
    fake.objects[key] = store._secret(record, fake.objects[key]["metadata"]["resourceVersion"])
    r = client.get("/api/v1/namespaces/a/trainingjobs", headers={"Authorization": f"Bearer {rec['token']}"})
    assert r.status_code == 401
    assert "expired" in r.json()["message"]


def test_tokens_for_someone_else_need_impersonation_rights(client: TestClient, fake: FakeKube) -> None:
    fake.allow = lambda spec: False
    r = client.post("/api/v1/tokens", json={"name": "x", "user": "mallory"}, headers=A)
    assert r.status_code == 403
    assert "impersonate" in r.json()["message"]
    r = client.post("/api/v1/tokens", json={"name": "x", "groups": ["system:masters"]}, headers=A)
    assert r.status_code == 403
    fake.allow = lambda spec: spec["resourceAttributes"]["verb"] == "impersonate"
    r = client.post("/api/v1/tokens", json={"name": "x", "user": "carol", "groups": ["team-c"]}, headers=A)
    assert r.status_code == 201
    assert r.json()["user"] == "carol"
    r = client.post("/api/v1/tokens", json={"name": "x", "expiresInSeconds": 10**9}, headers=A)
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "expiresInSeconds"


def test_unknown_routes_and_bugs(fake: FakeKube) -> None:
    app = _app(fake)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/nowhere")
        assert r.status_code == 404
        assert r.json()["kind"] == "Status"
        r = c.get("/boom")
        assert r.status_code == 500
        assert "secret detail" not in r.text
        assert "bug" in r.json()["message"]


def test_metrics_use_route_templates(client: TestClient) -> None:
    client.get("/api/v1/namespaces/a/trainingjobs/x1", headers=A)
    client.get("/api/v1/namespaces/a/trainingjobs/x2", headers=A)
    client.get("/random/path/1")
    text = client.get("/metrics").text
    assert 'route="/api/v1/namespaces/{namespace}/trainingjobs/{name}",status="4xx"} 2.0' in text
    assert 'route="unmatched"' in text
    assert "x1" not in text
    assert "/random" not in text
    assert "kubeloop_api_upstream_request_duration_seconds" in text


def test_openapi_carries_the_resource_schemas(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("TrainingJob", "ModelDeployment", "DriftMonitor", "TrainingJobSpec", "ModelRef"):
        assert name in schemas
    body = doc["paths"]["/api/v1/namespaces/{namespace}/trainingjobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TrainingJob"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


def test_readyz_reports_kubernetes(client: TestClient, fake: FakeKube) -> None:
    assert client.get("/readyz").json()["checks"]["kubernetes"] == "ok"
    assert client.get("/healthz").status_code == 200


def test_readyz_names_failed_checks_without_their_messages(
    fake: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /readyz takes no credentials (kubelet probes call it): a backend's error text (an endpoint, a
    # credential echoed by a misconfigured proxy) goes to the facade's log, the caller sees ok/failed.
    import logging

    from kubeloop_api.errors import UnavailableError
    from kubeloop_api.objects import Objects

    from kubeloop.storage import StorageUnavailableError
    from kubeloop.storage.local import LocalStore

    secret = "AKIAEXAMPLESECRET0042"

    class Down(LocalStore):
        def bucket_exists(self, bucket: str) -> bool:
            raise StorageUnavailableError(f"object store at minio:9000?key={secret} unreachable")

    s = ApiSettings()
    m = ApiMetrics()
    objects = Objects(Down(tmp_path), "kubeloop", m)
    app = create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m, objects=objects)
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 200  # object storage is reported, not required
        assert r.json() == {
            "ready": True,
            "checks": {"kubernetes": "ok", "mlflow": "disabled", "objectStore": "failed"},
        }

        async def kube_down() -> None:
            raise UnavailableError(f"Kubernetes API unreachable: token {secret}")

        c.app.state.services.kube.ping = kube_down  # type: ignore[attr-defined]
        with caplog.at_level(logging.WARNING, logger="kubeloop_api"):
            r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == {"kubernetes": "failed", "mlflow": "disabled", "objectStore": "failed"}
    assert secret not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert f"token {secret}" in logged
    assert f"key={secret}" in logged
    assert "readyz" in logged


def test_predictions_proxy_forwards_no_credentials(client: TestClient, fake: FakeKube) -> None:
    import httpx

    seen: list[httpx.Request] = []

    def model_server(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path == "/forward":
            return httpx.Response(200, json={"label": "a"})
        if req.url.path == "/v2/models/m/infer":
            return httpx.Response(400, json={"error": "bad tensor"})
        return httpx.Response(500, text="model crashed")

    svc = client.app.state.services  # type: ignore[attr-defined]
    svc.extra["predict_client"] = httpx.AsyncClient(transport=httpx.MockTransport(model_server))
    md = {"metadata": {"name": "m"}, "spec": {"model": {"name": "m", "version": 1}}}
    assert client.post("/api/v1/namespaces/a/modeldeployments", json=md, headers=A).status_code == 201
    base = "/api/v1/namespaces/a/modeldeployments/m"
    r = client.post(f"{base}/forward", json={"x": 1}, headers=A)
    assert (r.status_code, r.json()["reason"]) == (409, "Conflict")  # no Service: not serving yet
    fake.objects[("a", "services", "m")] = {
        "metadata": {"name": "m"}, "spec": {"clusterIP": "10.96.1.2", "ports": [{"name": "http", "port": 80}]}
    }  # fmt: skip
    r = client.post(f"{base}/forward", json={"x": 1}, headers={**A, "Cookie": "c=1"})
    assert r.status_code == 200
    assert r.json() == {"label": "a"}
    assert str(seen[-1].url) == "http://10.96.1.2/forward"
    assert "authorization" not in seen[-1].headers
    assert "cookie" not in seen[-1].headers
    r = client.post(f"{base}/v2/models/m/infer", json={}, headers=A)
    assert r.status_code == 400
    assert r.json() == {"error": "bad tensor"}
    r = client.get(f"{base}/v2/health/ready", headers=A)
    assert r.status_code == 502
    assert "model crashed" in r.json()["message"]
    r = client.get(f"{base}/v2/models/../../metrics", headers=A)
    assert r.status_code in (404, 422)
    fake.deny_impersonated = lambda user, verb, ns: True
    assert client.post(f"{base}/forward", json={"x": 1}, headers=A).status_code == 403


@pytest.mark.parametrize("name", ["iris.v2", "1st-model"])
def test_predictions_find_the_service_the_operator_names_before_status_url_is_set(
    client: TestClient, fake: FakeKube, name: str
) -> None:
    # A ModelDeployment's name is a DNS subdomain; its Service's name is a DNS-1035 label the operator
    # derives from it (kubeloop.naming). Until status.url is written the facade must derive the same.
    import httpx

    from kubeloop.naming import model_deployment_service_name

    svc = client.app.state.services  # type: ignore[attr-defined]
    svc.extra["predict_client"] = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda req: httpx.Response(200, json={"label": "a"}))
    )
    md = {"metadata": {"name": name}, "spec": {"model": {"name": "m", "version": 1}}}
    assert client.post("/api/v1/namespaces/a/modeldeployments", json=md, headers=A).status_code == 201
    service = model_deployment_service_name(name)
    assert service != name
    fake.objects[("a", "services", service)] = {
        "metadata": {"name": service}, "spec": {"clusterIP": "10.96.1.3", "ports": [{"name": "http", "port": 80}]}
    }  # fmt: skip
    r = client.post(f"/api/v1/namespaces/a/modeldeployments/{name}/forward", json={"x": 1}, headers=A)
    assert r.status_code == 200, r.text


def test_log_redaction_blanks_credentials() -> None:
    from kubeloop_api.logconfig import redact

    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    api_token = "klp_0123456789ab_" + "x" * 43
    text = redact(f"Authorization: Bearer {jwt} token={api_token} url?X-Amz-Signature=abc123&x=1")
    assert jwt not in text
    assert api_token not in text
    assert "abc123" not in text
    assert "[REDACTED]" in text
    assert "x=1" in text


def test_requests_the_api_server_sheds_are_sent_again(fake: FakeKube) -> None:
    import httpx

    shed = {"n": 0}
    orig = fake.handle

    def throttling(req: httpx.Request) -> httpx.Response:
        if "/apis/kubeloop.io/" in req.url.path and shed["n"] < 2:
            shed["n"] += 1
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"kind": "Status", "code": 429,
                                  "reason": "TooManyRequests", "message": "too many requests"})  # fmt: skip
        return orig(req)

    fake.handle = throttling  # type: ignore[method-assign]
    with TestClient(_app(fake)) as c:
        assert c.get("/api/v1/namespaces/a/trainingjobs", headers=A).status_code == 200
        assert shed["n"] == 2
    shed["n"] = -100  # always shed: the 429 is passed on after the retries
    with TestClient(_app(fake, kube_throttle_retries=1)) as c:
        r = c.get("/api/v1/namespaces/a/trainingjobs", headers=A)
        assert r.status_code == 429
        assert shed["n"] == -98


def test_bodies_json_cannot_carry_are_refused_naming_the_field(client: TestClient, fake: FakeKube) -> None:
    # What the decoders accept but JSON (and so the API server) cannot carry: an integer past int64, a
    # number too large for a double (json reads it as inf), YAML's .nan and non-string map keys.
    md = '{"metadata": {"name": "m"}, "spec": {"model": {"name": "m", "version": %s}}}'
    for number in ("100000000000000000000000", "1e400"):
        r = client.post("/api/v1/namespaces/a/modeldeployments", content=md % number, headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["details"]["causes"][0]["field"] == "spec.model.version"
    y = {**A, "Content-Type": "application/yaml"}
    base = yaml.safe_dump(TJ)
    for number in (".nan", "-.inf"):
        # orjson would send null: the object would be created without the threshold the caller gave.
        promotion = f"task: classification\n  promotion: {{metric: accuracy, threshold: {number}}}"
        r = client.post(
            "/api/v1/namespaces/a/trainingjobs", content=base.replace("task: classification", promotion),
            headers=y,
        )  # fmt: skip
        assert r.status_code == 422, r.text
        assert r.json()["details"]["causes"][0]["field"] == "spec.promotion.threshold"
    for keys, field in (("{~: a}", "metadata.labels"), ("{1.5: a}", "metadata.labels")):
        r = client.post(
            "/api/v1/namespaces/a/trainingjobs", content=base.replace("name: tj1", f"name: tj1\n  labels: {keys}"),
            headers=y,
        )  # fmt: skip
        assert r.status_code == 422, r.text
        assert r.json()["details"]["causes"][0]["field"] == field
    r = client.patch("/api/v1/namespaces/a/trainingjobs/tj1", content="metadata: {1: a, b: c}", headers=y)
    assert r.status_code == 422, r.text
    deep = json.dumps({**TJ, "metadata": {"name": "tj1", "generateName": "DEEP"}})
    r = client.post(  # orjson refuses to encode more than 254 levels
        "/api/v1/namespaces/a/trainingjobs", content=deep.replace('"DEEP"', "[" * 300 + "]" * 300), headers=A
    )
    assert r.status_code == 422, r.text
    assert r.json()["details"]["causes"][0]["field"].startswith("metadata.generateName[0]")
    assert not [q for q in fake.requests if q.method in ("POST", "PATCH") and "kubeloop.io/" in q.url.path]
    # Integer and boolean keys are names, as kubectl's YAML reader makes them (sigs.k8s.io/yaml).
    labelled = base.replace("name: tj1", "name: tj1\n  labels: {2: a, yes: b}")
    r = client.post("/api/v1/namespaces/a/trainingjobs", content=labelled, headers=y)
    assert r.status_code == 201, r.text
    assert fake.objects[("a", "trainingjobs", "tj1")]["metadata"]["labels"] == {"2": "a", "true": "b"}


def test_yaml_timestamps_stay_the_strings_written(client: TestClient, fake: FakeKube) -> None:
    # kubectl's YAML reader (sigs.k8s.io/yaml, go-yaml v2) keeps an unquoted date as the string written;
    # so must the facade, or the same file kubectl applies is refused here (or changed).
    text = yaml.safe_dump(TJ).replace("name: tj1", "name: tj1\n  annotations: {released: 2024-01-01}")
    text = text.replace("target: y", "target: 2024-01-01 10:00:00")
    r = client.post(
        "/api/v1/namespaces/a/trainingjobs", content=text, headers={**A, "Content-Type": "application/yaml"}
    )
    assert r.status_code == 201, r.text
    stored = fake.objects[("a", "trainingjobs", "tj1")]
    assert stored["metadata"]["annotations"] == {"released": "2024-01-01"}
    assert stored["spec"]["dataset"]["target"] == "2024-01-01 10:00:00"


def test_non_ascii_user_and_group_names_are_impersonated_as_utf8(client: TestClient, fake: FakeKube) -> None:
    # OIDC names are Unicode; the API server (Go) reads header values as the UTF-8 bytes client-go sends.
    fake.users["tok-jose"] = {"username": "josé", "groups": ["équipe-ü", "system:authenticated"]}
    r = client.get("/api/v1/namespaces/a/trainingjobs", headers={"Authorization": "Bearer tok-jose"})
    assert r.status_code == 200, r.text
    raw = dict(fake.requests[-1].headers.raw)
    assert raw[b"Impersonate-User"] == "josé".encode()
    assert raw[b"Impersonate-Group"] == "équipe-ü".encode()


def test_token_user_and_group_names_with_control_characters_are_refused(
    client: TestClient, fake: FakeKube
) -> None:
    # Such a name cannot be sent as an impersonation header: the token would be minted and then fail on
    # every use.
    fake.allow = lambda spec: True
    for body, field in (
        ({"name": "x", "user": "carol\r\nX-Evil: 1"}, "user"),
        ({"name": "x", "groups": ["team-a", "a\nb"]}, "groups.1"),
        ({"name": "x", "groups": [" team-a"]}, "groups.0"),
    ):
        r = client.post("/api/v1/tokens", json=body, headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["details"]["causes"][0]["field"] == field
    assert not [k for k in fake.objects if k[1] == "secrets"]


def test_api_token_user_prefix_marks_api_token_users_for_rbac(fake: FakeKube) -> None:
    # KUBELOOP_API_API_TOKEN_USER_PREFIX: RBAC sees an API token's user under the prefix, so a cluster
    # admin can give API tokens less than their users' own credentials.
    with TestClient(_app(fake, api_token_user_prefix="kubeloop:")) as c:
        rec = c.post("/api/v1/tokens", json={"name": "ci"}, headers=A).json()
        assert rec["user"] == "alice"
        hdr = {"Authorization": f"Bearer {rec['token']}"}
        assert c.get("/api/v1/namespaces/a/trainingjobs", headers=hdr).status_code == 200
        assert fake.requests[-1].headers["impersonate-user"] == "kubeloop:alice"
        assert fake.requests[-1].headers.get_list("impersonate-group") == ["team-a"]
        # The token's own caller still sees and may revoke the tokens that act as it.
        assert [t["id"] for t in c.get("/api/v1/tokens", headers=hdr).json()["items"]] == [rec["id"]]
        assert c.delete(f"/api/v1/tokens/{rec['id']}", headers=hdr).status_code == 200


def test_malformed_json_is_a_400_naming_the_body_on_every_route(client: TestClient) -> None:
    # Routes with a typed body (FastAPI parses it) answered 422 naming the character offset as the field.
    for path, method in (("/api/v1/namespaces/a/modeldeployments/m/scale", "PUT"), ("/api/v1/tokens", "POST"),
                         ("/api/v1/namespaces/a/trainingjobs", "POST")):  # fmt: skip
        r = client.request(
            method, path, content=b'{"replicas": 1', headers={**A, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, (path, r.text)
        assert r.json()["message"].startswith("body: not valid JSON"), r.text


def test_dataset_upload_without_overwrite_never_replaces_one_stored_meanwhile(
    fake: FakeKube, tmp_path: Path
) -> None:
    # The name is checked before the body is read; an upload of the same name that completes while this
    # one streams (minutes for a large file) must not be replaced by it without overwrite=true.
    from kubeloop_api.objects import Objects

    from kubeloop.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    store.ensure_bucket("kubeloop")
    objects = Objects(store, "kubeloop", ApiMetrics())
    s = ApiSettings()
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m, objects=objects)
    first = b"a,b\n1,2\n3,4\n"

    def body() -> Iterator[bytes]:
        yield b"a,b\n"
        store.put(objects.ref("datasets/a/d.csv"), first, "text/csv")  # the other upload lands
        yield b"5,6\n7,8\n"

    with TestClient(app) as c:
        r = c.put(
            "/api/v1/namespaces/a/datasets/d.csv", content=body(), headers={**A, "Content-Type": "text/csv"}
        )
        assert r.status_code == 409, r.text
        assert store.get(objects.ref("datasets/a/d.csv")) == first


def test_dataset_upload_that_loses_a_race_for_a_new_name_is_409_and_replaces_nothing(
    fake: FakeKube, tmp_path: Path
) -> None:
    # Two uploads of one new name can both find it free, however often it is checked: the other
    # upload lands here after this one's last check, before its write. The store decides (a
    # create-only write): the loser is refused with 409 naming the dataset, the winner's data stays.
    from kubeloop_api.objects import Objects

    from kubeloop.contracts import ObjectRef
    from kubeloop.storage import ObjectInfo
    from kubeloop.storage.local import LocalStore

    first = b"a,b\n1,2\n3,4\n"

    class Racy(LocalStore):
        """The other upload lands just after each existence check of the name has found it free."""

        def stat(self, ref: ObjectRef) -> ObjectInfo | None:
            info = super().stat(ref)
            if ref.key == "datasets/a/d.csv" and info is not None:
                return None  # checked a moment before it landed
            if ref.key == "datasets/a/d.csv":
                self.put(ref, first, "text/csv")
            return info

    store = Racy(tmp_path / "store")
    store.ensure_bucket("kubeloop")
    s = ApiSettings()
    m = ApiMetrics()
    objects = Objects(store, "kubeloop", m)
    app = create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m, objects=objects)
    with TestClient(app) as c:
        r = c.put(
            "/api/v1/namespaces/a/datasets/d.csv",
            content=b"a,b\n5,6\n7,8\n",
            headers={**A, "Content-Type": "text/csv"},
        )
    assert r.status_code == 409, r.text
    assert r.json()["message"] == 'dataset: dataset "d.csv" exists; pass overwrite=true to replace it'
    assert store.get(objects.ref("datasets/a/d.csv")) == first


def test_a_bug_is_counted_as_a_5xx_in_the_metrics(fake: FakeKube) -> None:
    # The 500 of an unhandled exception is sent outside the route stack (Starlette's outermost
    # middleware): the request metrics must count it all the same, a 500 being always a bug.
    app = _app(fake)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/boom").status_code == 500
        text = c.get("/metrics").text
    assert 'kubeloop_api_requests_total{method="GET",route="/boom",status="5xx"} 1.0' in text

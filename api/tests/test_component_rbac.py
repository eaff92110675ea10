"""The facade with exactly the rights api/deploy/rbac.yaml gives it (its own ServiceAccount, not the
cluster admin): every kind of call it makes as itself works, and callers are still held to their own
RBAC. Shows the manifest is enough, and that the facade needs no more."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cluster import REPO, ApiEnv, Tenants, expect, live_api, service_account_token
from kubeloop_api.settings import ApiSettings
from kubernetes import client

pytestmark = pytest.mark.component


def _manifests(namespace: str, suffix: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((REPO / "api" / "deploy" / "rbac.yaml").read_text()) if d]
    out = []
    for d in copy.deepcopy(docs):
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            d["metadata"]["name"] += f"-{suffix}"
        else:
            d["metadata"]["namespace"] = namespace
        if d["kind"] == "ClusterRoleBinding":
            d["roleRef"]["name"] += f"-{suffix}"
        for s in d.get("subjects", []):
            s["namespace"] = namespace
        out.append(d)
    return out


@pytest.fixture(scope="module")
def facade_as_itself(api_env: ApiEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    suffix = secrets.token_hex(3)
    docs = _manifests(api_env.home, suffix)
    api_env.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        with api_env.kube.api_client() as api:
            token = service_account_token(api, api_env.home, "kubeloop-api")
        api_env.remember(token)
        admin_cfg = yaml.safe_load(api_env.kube.kubeconfig.read_text())
        cluster = admin_cfg["clusters"][0]["cluster"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "kubeloop-api", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "kubeloop-api"}}],
            "current-context": "c",
        }
        path: Path = tmp_path_factory.mktemp("rbac") / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        m = api_env.minio
        settings = ApiSettings(
            kubeconfig=str(path), namespace=api_env.home, s3_endpoint=m.endpoint, s3_access_key=m.access_key,
            s3_secret_key=m.secret_key, s3_region=m.region, bucket=m.bucket, api_token_record_retention_s=0,
        )  # fmt: skip
        with live_api(settings) as live:
            yield live.url
    finally:
        for d in docs:
            if d["kind"].startswith("Cluster"):
                api_env.kube.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found")


def test_the_deploy_rbac_is_enough_and_callers_keep_their_own(
    api_env: ApiEnv, tenants: Tenants, facade_as_itself: str
) -> None:
    import httpx

    ns, other = tenants.a.namespace, tenants.b.namespace
    with httpx.Client(base_url=facade_as_itself, headers=tenants.a.headers, timeout=30) as c:
        assert c.get("/readyz").json()["checks"]["kubernetes"] == "ok"
        # TokenReview and impersonated calls
        expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs"), 200)
        expect(c.get(f"/api/v1/namespaces/{other}/trainingjobs"), 403)
        md = {
            "metadata": {"name": "rbac-md"},
            "spec": {"model": {"name": "m", "version": 1}, "suspend": True},
        }
        expect(c.post(f"/api/v1/namespaces/{ns}/modeldeployments", json=md), 201)
        # SubjectAccessReviews
        expect(c.get(f"/api/v1/namespaces/{ns}/datasets"), 200)
        expect(c.get(f"/api/v1/namespaces/{other}/datasets"), 403)
        # The Service lookup behind predictions (404 -> "not serving yet", not a 403)
        expect(c.post(f"/api/v1/namespaces/{ns}/modeldeployments/rbac-md/forward", json={}), 409)
        # API tokens: Secrets in its own namespace; impersonation checks for tokens of others
        made = expect(c.post("/api/v1/tokens", json={"name": "rbac check"}), 201)
        api_env.remember(made["token"])
        expect(c.post("/api/v1/tokens", json={"name": "x", "user": "someone-else"}), 403)
        assert made["id"] in [t["id"] for t in expect(c.get("/api/v1/tokens"), 200)["items"]]
        with httpx.Client(
            base_url=facade_as_itself, headers={"Authorization": f"Bearer {made['token']}"}
        ) as t:
            expect(t.get(f"/api/v1/namespaces/{ns}/modeldeployments/rbac-md"), 200)
        expect(c.delete(f"/api/v1/tokens/{made['id']}"), 200)
        # Ended token records past the retention (0 here) are deleted when the next token is made.
        again = expect(c.post("/api/v1/tokens", json={"name": "after"}), 201)
        api_env.remember(again["token"])
        listed = [t["id"] for t in expect(c.get("/api/v1/tokens"), 200)["items"]]
        assert made["id"] not in listed
        assert again["id"] in listed
    # Nothing beyond the manifest: the facade's identity cannot, e.g., read Secrets elsewhere.
    with api_env.kube.api_client() as api:
        review = client.AuthorizationV1Api(api).create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{api_env.home}:kubeloop-api",
                    "resourceAttributes": {"namespace": ns, "verb": "get", "resource": "secrets"},
                }
            }
        )
        assert review.status.allowed is False

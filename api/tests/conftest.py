"""Fixtures of the REST facade's tests. Helper modules (api_*.py) sit next to the tests; pytest's
importlib mode puts nothing on sys.path, so this directory is added here."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


# --- the live facade against the local cluster ----------------------------------------------------------

from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from api_cluster import REPO, ApiEnv, Tenants  # noqa: E402


@pytest.fixture(scope="session")
def api_env(kube_cluster: Any, minio_server: Any, mlflow_server: Any) -> Iterator[ApiEnv]:
    from api_cluster import (
        LogCapture,
        apply_crds,
        cluster_admin,
        create_namespace,
        delete_cluster_admin,
        delete_namespace,
        live_api,
    )
    from kubeloop_api.settings import ApiSettings

    apply_crds(kube_cluster, REPO / "crds")
    with kube_cluster.api_client() as api:
        home = create_namespace(api, "kl-api")
        try:
            admin = cluster_admin(api, home)
            capture = LogCapture()
            capture.install()
            settings = ApiSettings(
                kubeconfig=str(kube_cluster.kubeconfig),
                namespace=home,
                s3_endpoint=minio_server.endpoint,
                s3_access_key=minio_server.access_key,
                s3_secret_key=minio_server.secret_key,
                s3_region=minio_server.region,
                bucket=minio_server.bucket,
                mlflow_tracking_uri=mlflow_server.tracking_uri,
                sse_heartbeat_s=1.0,
                dataset_max_bytes=256 * 1024,
            )
            try:
                with live_api(settings) as live:
                    env = ApiEnv(live.url, home, admin, capture, kube_cluster, minio_server, mlflow_server)
                    env.remember(admin.token, minio_server.secret_key)
                    yield env
                    leaked = env.leaked()
            finally:
                capture.remove()
            assert not leaked, f"credentials in the facade's log: {leaked}"
        finally:
            delete_cluster_admin(api, home)
            delete_namespace(api, home)


@pytest.fixture(scope="module")
def tenants(api_env: ApiEnv) -> Iterator[Tenants]:
    """Two namespaces; in each a ServiceAccount and an API-token user (group) with the tenant Role there
    and nowhere else."""
    from api_cluster import Tenant, create_namespace, delete_namespace, grant, no_pods, tenant

    with api_env.kube.api_client() as api:
        ns_a, ns_b = create_namespace(api, "kl-a"), create_namespace(api, "kl-b")
        try:
            a, b = tenant(api, ns_a), tenant(api, ns_b)
            no_pods(api, ns_b)  # A runs the tests' own pods (logs, predictions); B never needs any
            out = [a, b]
            for ns in (ns_a, ns_b):
                group = f"team-{ns}"
                grant(
                    api, ns, {"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}, "team"
                )
                with api_env.client(api_env.admin.headers) as c:
                    r = c.post("/api/v1/tokens", json={"name": f"person in {ns}", "user": f"person-{ns}",
                                                       "groups": [group]})  # fmt: skip
                    assert r.status_code == 201, r.text
                    out.append(Tenant(ns, f"person-{ns}", r.json()["token"], [group]))
            api_env.remember(*(t.token for t in out))
            yield Tenants(*out)
        finally:
            delete_namespace(api, ns_a)
            delete_namespace(api, ns_b)

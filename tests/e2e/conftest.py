"""Fixtures for whole-platform (e2e) tests: the real API server, the node agent running real pods,
MinIO and MLflow, and the operator as a real process.

Reuse them for every kind (TrainingJob, ModelDeployment, DriftMonitor, the REST facade):

* ``platform`` (session) — what ``make cluster-up`` sets up, minus the operator's Deployment: the
  CRDs (Kubeloop's and kopf's peering CRD), the operator's ServiceAccount and RBAC, and the
  breast-cancer table in MinIO (``platform.dataset_uri``). Also the addresses: MinIO and MLflow as
  the host sees them and as pods see them (the ``kubeloop-system`` Services).
* ``kl`` (function) — a fresh namespace (with the credentials Secret pods need) and a small client
  for it: ``apply``/``get``/``status``/``patch_spec``/``delete``, ``wait`` (poll with a timeout and
  a message), ``events``, ``pods``/``jobs``, ``kubectl``, and ``training_job()`` (the example
  TrainingJob as a dict, made unique to the test: namespace, model name, experiment).
* ``kubeloop_operator`` (function) — a ``kubeloop-operator`` process that reconciles only ``kl``'s
  namespace, as the operator's ServiceAccount (so its RBAC is exercised), standalone (no peering);
  ``start(**settings)`` accepts ``KUBELOOP_OPERATOR_*`` overrides by field name. The handle
  (``localcluster.platform.LocalOperator``) offers ``kill()`` (SIGKILL), ``stop()``, ``restart()``,
  ``rss_bytes()``, ``metrics()`` and ``log()``. Started lazily: a test calls
  ``kubeloop_operator.start()``, so it can choose the settings. ``operator_for(kl, dir)`` makes more
  (two replicas for peering). Its log is printed when the test fails.
* ``audit_writes(kube_cluster, since, namespace=…, user=…)`` — write requests recorded in the API
  server's audit log (create/update/patch/delete), for "0 writes while idle" checks.

These tests need the local cluster (pods reach MinIO and MLflow through the node agent's system
Services); against another cluster (KUBELOOP_TEST_KUBECONFIG) they are skipped with that reason.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import pytest
import yaml
from kubeloop_operator import k8s
from kubeloop_testing.polling import wait
from localcluster import platform as lp
from localcluster.pytest_fixtures import KubeCluster, MinioServer, MlflowServer
from nodeagent.pytest_fixtures import NodeAgent

from kubeloop.contracts import Labels

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
OPERATOR_SA = f"system:serviceaccount:{lp.SYSTEM_NAMESPACE}:{lp.OPERATOR}"


# --- the platform ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    kube_cluster: KubeCluster
    minio: MinioServer
    mlflow: MlflowServer
    dataset_uri: str
    pod_s3_endpoint: str = lp.POD_S3_ENDPOINT
    pod_mlflow_uri: str = lp.POD_MLFLOW_URI

    @property
    def kubectl(self) -> lp.Kubectl:
        return lp.Kubectl(self.kube_cluster.kubeconfig)

    def admin(self) -> k8s.Kube:
        return k8s.Kube.connect(str(self.kube_cluster.kubeconfig))


@pytest.fixture(scope="session")
def platform(
    kube_cluster: KubeCluster, node_agent: NodeAgent, minio_server: MinioServer, mlflow_server: MlflowServer
) -> Platform:
    if not kube_cluster.local:
        pytest.skip("the operator's e2e tests need the local cluster (pods reach MinIO/MLflow through it)")
    kubectl = lp.Kubectl(kube_cluster.kubeconfig)
    lp.prerequisites(kubectl)
    minio = {
        "url": minio_server.url,
        "access_key": minio_server.access_key,
        "secret_key": minio_server.secret_key,
        "region": minio_server.region,
        "bucket": minio_server.bucket,
    }
    uri = lp.upload_breast_cancer(minio)
    return Platform(kube_cluster, minio_server, mlflow_server, uri)


def audit_writes(
    kube_cluster: KubeCluster, since: datetime, *, namespace: str | None = None, user: str | None = None
) -> list[dict[str, Any]]:
    """Write requests (create/update/patch/delete) in the audit log since ``since``, optionally only in
    ``namespace`` (cluster-scoped objects excluded then) and only by ``user``."""
    path = kube_cluster.audit_log
    if path is None:
        raise AssertionError("no audit log: not the local cluster")
    out: list[dict[str, Any]] = []
    for f in sorted(path.parent.glob(path.name + "*"), key=lambda p: p.stat().st_mtime):
        if f.suffix == ".gz":
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("verb") not in ("create", "update", "patch", "delete", "deletecollection"):
                    continue
                when = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00"))
                if when < since:
                    continue
                ref = ev.get("objectRef") or {}
                if namespace is not None and ref.get("namespace") != namespace:
                    continue
                if user is not None and (ev.get("user") or {}).get("username") != user:
                    continue
                out.append(ev)
    return out


# --- a namespace and a client for it ------------------------------------------------------------


@dataclass
class Kl:
    """The test's namespace and ways to act on it (admin credentials)."""

    platform: Platform
    namespace: str
    kube: k8s.Kube
    token: str = field(default_factory=lambda: secrets.token_hex(3))

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.platform.kube_cluster.kubectl(*args, namespace=self.namespace, check=check).stdout

    def training_job(self, name: str = "breast-cancer", **spec_changes: Any) -> dict[str, Any]:
        """examples/trainingjob.yaml in this namespace, with a model name and experiment of its own so
        tests never share a registered model; ``spec_changes`` replace top-level spec fields."""
        m: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
        m["metadata"] = {"name": name, "namespace": self.namespace}
        m["spec"]["registry"]["modelName"] = f"{name}-{self.namespace}"[:63].rstrip("-.")
        m["spec"]["mlflow"]["experiment"] = self.namespace
        m["spec"]["dataset"]["uri"] = self.platform.dataset_uri
        m["spec"].update(spec_changes)
        return m

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        body = dict(manifest)
        body["metadata"] = {**body.get("metadata", {}), "namespace": self.namespace}
        obj, _ = self.kube.create(body)
        return obj

    def get(self, name: str, kind: k8s.Kind = k8s.TRAININGJOB) -> dict[str, Any] | None:
        return self.kube.get(kind, self.namespace, name)

    def status(self, name: str, kind: k8s.Kind = k8s.TRAININGJOB) -> dict[str, Any]:
        obj = self.get(name, kind)
        return dict((obj or {}).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any], kind: k8s.Kind = k8s.TRAININGJOB) -> dict[str, Any]:
        """What a user does (``kubectl patch``): a merge patch of the spec."""
        obj: dict[str, Any] = self.kube.request(
            "PATCH", kind.path(self.namespace, name), body={"spec": spec}, content_type=k8s.MERGE_PATCH
        )
        return obj

    def delete(self, name: str, kind: k8s.Kind = k8s.TRAININGJOB) -> bool:
        return self.kube.delete(kind, self.namespace, name)

    def objects(self, kind: k8s.Kind, selector: str | None = None) -> list[dict[str, Any]]:
        return self.kube.list(kind, self.namespace, label_selector=selector)

    def pods(self, tj: str) -> list[dict[str, Any]]:
        return self.objects(k8s.POD, f"{Labels.TRAININGJOB}={tj}")

    def jobs(self, tj: str | None = None) -> list[dict[str, Any]]:
        return self.objects(
            k8s.JOB, f"{Labels.TRAININGJOB}={tj}" if tj else f"{Labels.MANAGED_BY}=kubeloop-operator"
        )

    def events(self, name: str, kind: str = "TrainingJob") -> list[dict[str, Any]]:
        """Events about the ``kind`` named ``name`` (not those of its Job of the same name)."""
        return [
            e
            for e in self.objects(k8s.EVENT)
            if (e.get("involvedObject") or {}).get("name") == name and e["involvedObject"].get("kind") == kind
        ]

    def wait(self, what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        return wait(what, fn, timeout, interval)

    def wait_phase(self, name: str, phase: str, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(name)
            return st if st.get("phase") == phase else None

        try:
            return wait(f"TrainingJob {name} phase {phase}", check, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}; status: {json.dumps(self.status(name), indent=1)[:3000]}") from None


@pytest.fixture
def kl(platform: Platform, k8s_namespace: str) -> Iterator[Kl]:
    lp.ensure_secret(
        platform.kubectl,
        k8s_namespace,
        {"access_key": platform.minio.access_key, "secret_key": platform.minio.secret_key},
    )
    kube = platform.admin()
    try:
        yield Kl(platform, k8s_namespace, kube)
    finally:
        kube.close()


# --- the operator as a process ----------------------------------------------------------------------

# The e2e name of the platform's LocalOperator (localcluster.platform): start/kill/stop/restart,
# rss_bytes, metrics and log.
OperatorProcess: TypeAlias = lp.LocalOperator


def operator_for(kl: Kl, workdir: Path) -> OperatorProcess:
    """An operator process for ``kl``'s namespace (not started); tests may run several (peering)."""
    p = kl.platform
    minio = {
        "url": p.minio.url,
        "access_key": p.minio.access_key,
        "secret_key": p.minio.secret_key,
        "bucket": p.minio.bucket,
    }
    return lp.LocalOperator(p.kubectl, kl.namespace, minio, p.mlflow.tracking_uri, workdir)


KUBELOOP_KINDS = (k8s.TRAININGJOB, k8s.MODELDEPLOYMENT, k8s.DRIFTMONITOR)


def drain(kl: Kl, op: OperatorProcess | None, timeout: float = 60) -> None:
    """Delete every Kubeloop resource of the namespace while an operator runs to release its
    finalizer; without one (or past ``timeout``) the finalizer is removed by hand. Otherwise the
    namespace's deletion would wait forever for an operator that is gone."""
    if op is not None and op.starts and not op.running:
        op.start()
    for kind in KUBELOOP_KINDS:
        for obj in kl.objects(kind):
            kl.kube.delete(kind, kl.namespace, obj["metadata"]["name"])
    deadline = time.monotonic() + (timeout if op is not None and op.running else 0)
    while time.monotonic() < deadline and any(kl.objects(kind) for kind in KUBELOOP_KINDS):
        time.sleep(0.5)
    for kind in KUBELOOP_KINDS:
        for obj in kl.objects(kind):
            kl.kube.request(
                "PATCH",
                kind.path(kl.namespace, obj["metadata"]["name"]),
                body={"metadata": {"finalizers": None}},
                content_type=k8s.MERGE_PATCH,
            )


def owner_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the object's controlling owner."""
    return next((r["uid"] for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")), None)


def kill_once_during(
    op: OperatorProcess,
    rng: random.Random,
    kill_at: float,
    batch: Sequence[tuple[str, str]],
    act: Callable[[str, str], object],
) -> None:
    """One chaos round: ``act(action, name)`` for each of ``batch`` with short random pauses, and
    SIGKILL to the operator once, at ``kill_at`` (monotonic) while they run or after them; then the
    operator is started again."""
    killed = False
    for action, name in batch:
        act(action, name)
        if not killed and time.monotonic() >= kill_at:
            op.kill()
            killed = True
        time.sleep(rng.uniform(0.0, 0.3))
    if not killed:
        time.sleep(max(0.0, kill_at - time.monotonic()))
        op.kill()
    op.start()


@pytest.fixture
def kubeloop_operator(kl: Kl, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """The test's operator; at teardown it releases the namespace's resources, then stops."""
    op = operator_for(kl, tmp_path / "operator")
    try:
        yield op
    finally:
        try:
            drain(kl, op)
        finally:
            op.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed and op.log_path.exists():
            print(f"\n----- operator log ({op.log_path}) -----\n{op.log()[-8000:]}", file=sys.stderr)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)

"""The chart against a real API server: every rendered object validated by kube-apiserver (server-side
dry run), and a real install into a fresh namespace whose operator watches only that namespace, comes
up through the node agent, passes its post-install check and `helm test`, reconciles a resource
there, and uninstalls without leaving cluster-wide objects behind.

Cluster-wide names are scoped by the release name (the test namespace's name), so nothing here can
meet the platform's own operator (``make cluster-up``: release-less names, ``t-*`` namespaces
excluded) or another test. CRDs are created only where absent, from the chart's crds/ (equal to
crds/, tests/chart/test_chart_crds.py): an existing CRD is never replaced.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from kubeloop_testing.polling import wait
from localcluster.pytest_fixtures import KubeCluster
from nodeagent.pytest_fixtures import NodeAgent

from .conftest import CHART, Helm, set_args

pytestmark = pytest.mark.component

CHART_CRDS = sorted((CHART / "crds").glob("*.yaml"))


@pytest.fixture(scope="module")
def chart_crds(kube_cluster: KubeCluster) -> None:
    """The chart's CRDs on the cluster, as `helm install` puts them: created when absent, else left."""
    names = []
    for path in CHART_CRDS:
        crd = yaml.safe_load(path.read_text())
        names.append(f"crd/{crd['metadata']['name']}")
        proc = kube_cluster.kubectl("create", "-f", str(path), check=False)
        assert proc.returncode == 0 or "AlreadyExists" in proc.stderr, proc.stderr
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def _helm_kube(kube_cluster: KubeCluster, namespace: str) -> list[str]:
    return ["--kubeconfig", str(kube_cluster.kubeconfig), "--namespace", namespace]


def _release(namespace: str) -> str:
    """A short release name, unique like the namespace (whose name ends in random hex): it prefixes
    the cluster-wide names."""
    return f"kl-{namespace.rsplit('-', 1)[-1]}"


def _server_dry_run(kube_cluster: KubeCluster, manifest: str) -> list[str]:
    """kubectl apply --dry-run=server: each object goes through the API server's validation and
    admission (schemas, CEL rules, defaulting) without being stored."""
    proc = kube_cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=kubeloop-chart-test", "-f", "-",
        input=manifest, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"the API server refused the rendered chart:\n{proc.stderr}"
    return proc.stdout.strip().splitlines()


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "bundled-minio-mlflow": {
        "minio": {"enabled": True, "persistence": {"enabled": True}},
        "mlflowServer": {"enabled": True, "persistence": {"enabled": True}},
        "operator": {"replicas": 2, "watchNamespaces": ["team-*", "!team-x"]},
    },
    "external-store": {
        "objectStore": {"endpoint": "https://s3.example.com", "credentials": {"existingSecret": "s3"}},
        "mlflow": {"trackingUri": "http://mlflow.example:5000"},
        "api": {"enabled": False},
        "rbac": {"aggregateToDefaultRoles": False},
    },
}


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_api_server_accepts_every_rendered_object(
    kube_cluster: KubeCluster, chart_crds: None, k8s_namespace: str, helm: Helm, values: str
) -> None:
    kube = _helm_kube(kube_cluster, k8s_namespace)
    release = _release(k8s_namespace)
    args = [release, str(CHART), *kube, "--skip-crds", *set_args(VALUE_SETS[values])]
    # helm's own dry run against the server: lookups, the kube version check, and NOTES.
    out = helm("install", *args, "--dry-run=server").stdout
    assert "NOTES:" in out
    assert f"kubectl -n {k8s_namespace} rollout status deploy/{release}-kubeloop-operator" in out
    # Then every object, hooks included, through the API server's own validation.
    manifest = helm("template", *args, "--include-crds=false", "--kube-version", "1.37.2").stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    applied = _server_dry_run(kube_cluster, manifest)
    assert len(applied) == len(docs), applied
    assert all("(server dry run)" in line for line in applied), applied


def _get(kube_cluster: KubeCluster, *args: str) -> dict[str, Any] | None:
    proc = kube_cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.mark.slow
def test_install_runs_checks_reconciles_and_uninstalls(
    kube_cluster: KubeCluster, node_agent: NodeAgent, chart_crds: None, k8s_namespace: str, helm: Helm
) -> None:
    ns, release = k8s_namespace, _release(k8s_namespace)
    kube = _helm_kube(kube_cluster, ns)
    values = {"operator": {"watchNamespaces": [ns]}, "check": {"timeoutSeconds": 180}}
    t0 = time.monotonic()
    # The post-install check is a hook: install returns only once it passed (or fails with it).
    out = helm(
        "install", release, str(CHART), *kube, "--skip-crds", "--timeout", "5m", *set_args(values),
        timeout=330,
    ).stdout  # fmt: skip
    installed = time.monotonic() - t0
    assert "STATUS: deployed" in out, out
    try:
        for name in (f"{release}-kubeloop-operator", f"{release}-kubeloop-api"):
            dep = _get(kube_cluster, "deployment", name, "-n", ns)
            assert dep is not None
            assert dep["status"].get("readyReplicas") == 1, dep["status"]
        tested = helm("test", release, *kube, "--timeout", "4m", timeout=260).stdout
        assert "Phase:          Succeeded" in tested, tested

        # Only this release's operator watches this namespace: it writes the DriftMonitor's status,
        # and the drift check's ServiceAccount and Role (the chart's RBAC at work).
        monitor = {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "metadata": {"name": "chart-dm", "namespace": ns},
            "spec": {"deployment": "absent", "schedule": "0 0 1 1 *"},
        }
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(monitor))

        def reconciled() -> dict[str, Any] | None:
            dm = _get(kube_cluster, "driftmonitor", "chart-dm", "-n", ns)
            status = (dm or {}).get("status") or {}
            conds = {c["type"]: c for c in status.get("conditions", [])}
            return conds.get("DeploymentFound")

        found = wait("the chart's operator to reconcile the DriftMonitor", reconciled, 90, interval=1.0)
        assert found["status"] == "False", found
        for kind in ("cronjob", "serviceaccount", "role", "rolebinding"):
            wait(
                f"the drift check's {kind}",
                lambda k=kind: _get(kube_cluster, k, "chart-dm-drift-check", "-n", ns),
                60,
                interval=1.0,
            )
    finally:
        helm("uninstall", release, *kube, "--wait", "--timeout", "2m", timeout=150)
    leftovers = []
    for kind in ("clusterrole", "clusterrolebinding", "clusterkopfpeering"):
        items = (_get(kube_cluster, kind) or {}).get("items", [])
        leftovers += [
            f"{kind}/{i['metadata']['name']}" for i in items if i["metadata"]["name"].startswith(release)
        ]
    assert not leftovers, leftovers
    assert _get(kube_cluster, "deployment", f"{release}-kubeloop-operator", "-n", ns) is None
    print(f"helm install (check hook passed) took {installed:.1f} s")

"""Fixtures of the component tests: the Kubeloop CRDs installed on the test cluster."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster.pytest_fixtures import KubeCluster

REPO = Path(__file__).resolve().parents[2]
# KUBELOOP_TEST_CRD_DIR: try CRDs from elsewhere (e.g. a candidate generation) against the same tests.
CRD_DIR = Path(os.environ.get("KUBELOOP_TEST_CRD_DIR", REPO / "crds"))


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    """The directory the CRDs under test come from (``crds/``, or KUBELOOP_TEST_CRD_DIR)."""
    return CRD_DIR


def _openapi_schema_names(kube_cluster: KubeCluster, group: str, version: str) -> set[str]:
    proc = kube_cluster.kubectl("get", "--raw", f"/openapi/v3/apis/{group}/{version}", check=False)
    if proc.returncode != 0:
        return set()
    return set(json.loads(proc.stdout).get("components", {}).get("schemas", {}))


def wait_for_openapi(kube_cluster: KubeCluster, crds: list[dict[str, Any]], timeout: float = 30.0) -> None:
    """Wait until the API server publishes every CRD's schema in its OpenAPI v3 document.

    ``Established`` only says the resource is served: the OpenAPI controller publishes the schema
    afterwards, and on a fresh API server that lags by up to a few hundred milliseconds, during
    which ``kubectl explain`` says it cannot find the resource.
    """
    wanted: dict[tuple[str, str], set[str]] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        reversed_group = ".".join(reversed(group.split(".")))
        for v in crd["spec"]["versions"]:
            if v.get("served", True):
                wanted.setdefault((group, v["name"]), set()).add(f"{reversed_group}.{v['name']}.{kind}")
    deadline = time.monotonic() + timeout
    while True:
        missing = {
            n for (g, v), names in wanted.items() for n in names - _openapi_schema_names(kube_cluster, g, v)
        }
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the API server did not publish {sorted(missing)} in OpenAPI v3 within {timeout}s"
            )
        time.sleep(0.1)


@pytest.fixture(scope="session")
def kubeloop_crds(kube_cluster: KubeCluster, crd_dir: Path) -> list[dict[str, Any]]:
    """`kubectl apply -f crds/` on the cluster, then wait until every CRD is Established and published."""
    docs = [d for f in sorted(crd_dir.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    assert crds, f"no CustomResourceDefinition in {crd_dir}"
    kube_cluster.kubectl("apply", "-f", str(crd_dir))
    for crd in crds:
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}"
        )
    # Refreshes kubectl's discovery cache (short names, categories) and checks what the server serves.
    served = kube_cluster.kubectl("api-resources", "--api-group=kubeloop.io", "-o", "name").stdout.split()
    assert sorted(served) == sorted(f"{c['spec']['names']['plural']}.kubeloop.io" for c in crds), served
    wait_for_openapi(kube_cluster, crds)
    return crds

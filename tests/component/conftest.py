"""Fixtures of the component tests: the Kubeloop CRDs installed on the test cluster."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def kubeloop_crds(kube_cluster: KubeCluster, crd_dir: Path) -> list[dict[str, Any]]:
    """`kubectl apply -f crds/` on the cluster, then wait until every CRD is Established."""
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
    return crds

"""The GitOps layout: examples/base (a kustomize base of the three examples) and the overlays under
examples/gitops/ build with kustomize (kubectl's, as ``kubectl apply -k`` and Argo CD do), hold a coherent
set of objects, and pass the API server; a broken overlay is refused naming the field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster.pytest_fixtures import KubeCluster, kubectl_binary
from pydantic import ValidationError

from kubeloop import resources as r

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BASE = EXAMPLES / "base"
OVERLAYS = sorted(p.parent for p in (EXAMPLES / "gitops").glob("*/kustomization.yaml"))
KINDS = {"TrainingJob": r.TrainingJob, "ModelDeployment": r.ModelDeployment, "DriftMonitor": r.DriftMonitor}


def kustomize(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl_binary(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kustomize build {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        assert d["kind"] not in out, f"two {d['kind']} objects"
        out[d["kind"]] = d
    return out


def test_there_are_overlays() -> None:
    assert {p.name for p in OVERLAYS} >= {"staging", "production"}, OVERLAYS


def test_the_base_builds_to_the_examples_unchanged() -> None:
    files = [
        d
        for f in sorted(BASE.glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    assert by_kind(kustomize(BASE)) == by_kind(files)
    # `kubectl apply -f examples/<kind>.yaml` reads the base's files.
    for f in BASE.glob("*.yaml"):
        if f.name != "kustomization.yaml":
            assert (EXAMPLES / f.name).read_text() == f.read_text(), f.name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_an_overlay_is_valid_and_coherent(overlay: Path) -> None:
    docs = by_kind(kustomize(overlay))
    assert set(docs) == {"Namespace", *KINDS}, sorted(docs)
    namespace = docs["Namespace"]["metadata"]["name"]
    models = {kind: cls.from_manifest(docs[kind]) for kind, cls in KINDS.items()}  # validates every field
    tj, md, dm = (models[k] for k in ("TrainingJob", "ModelDeployment", "DriftMonitor"))
    assert {m.metadata["namespace"] for m in models.values()} == {namespace}
    # The deployment serves what the job registers and promotes; the monitor watches that deployment and
    # retrains that job, all in the overlay's namespace.
    assert md.spec.model.name == tj.spec.registry.model_name
    assert md.spec.model.alias == tj.spec.promotion.alias
    assert dm.spec.deployment == md.metadata["name"]
    assert dm.spec.retrain is not None
    assert dm.spec.retrain.training_job_ref.name == tj.metadata["name"]


def test_no_two_environments_share_a_registered_model() -> None:
    # The model registry is shared by the cluster: staging promoting `champion` must not move production's.
    names = [by_kind(kustomize(o))["TrainingJob"]["spec"]["registry"]["modelName"] for o in OVERLAYS]
    assert len(set(names)) == len(names), dict(zip((o.name for o in OVERLAYS), names, strict=True))


def dry_run(
    kube_cluster: KubeCluster, docs: list[dict[str, Any]], namespace: str
) -> subprocess.CompletedProcess[str]:
    """Server-side dry run of the overlay's Kubeloop objects, moved into the test's namespace."""
    objs = []
    for d in docs:
        if d["kind"] in KINDS:
            d["metadata"]["namespace"] = namespace
            objs.append(d)
    return kube_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        namespace=namespace,
        input=yaml.safe_dump_all(objs),
        check=False,
    )


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_an_overlay_passes_the_api_server(
    overlay: Path, kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], k8s_namespace: str
) -> None:
    proc = dry_run(kube_cluster, kustomize(overlay), k8s_namespace)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(server dry run)") == len(KINDS), proc.stdout


def test_a_broken_overlay_is_refused_naming_the_field(
    tmp_path: Path, kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], k8s_namespace: str
) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(BASE, tmp_path)],  # kustomize takes no absolute roots
                "patches": [
                    {
                        "target": {"kind": "TrainingJob"},
                        "patch": "- {op: replace, path: /spec/training/epochs, value: 0}",
                    }
                ],
            }
        )
    )
    docs = kustomize(tmp_path)
    with pytest.raises(ValidationError, match=r"spec\.training\.epochs"):
        r.TrainingJob.from_manifest(by_kind(docs)["TrainingJob"])
    proc = dry_run(kube_cluster, docs, k8s_namespace)
    assert proc.returncode != 0, proc.stdout
    assert "spec.training.epochs" in proc.stderr, proc.stderr

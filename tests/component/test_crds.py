"""The CRDs on a real API server: install, server-side validation, printer columns, scale subresource."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster.pytest_fixtures import KubeCluster
from pydantic import ValidationError

from kubeloop import resources as r

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
INVALID_CASES = sorted((REPO / "tests" / "cases" / "invalid").glob("*.yaml"))

SHORT_NAMES = {"TrainingJob": "tj", "ModelDeployment": "md", "DriftMonitor": "dm"}


def _strip_namespace(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc.get("metadata", {}).pop("namespace", None)
    return doc


def _example(kind: str) -> dict[str, Any]:
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == kind:
                return _strip_namespace(doc)
    raise AssertionError(f"no {kind} example in {EXAMPLES}")


def test_apply_crds_is_idempotent(
    kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], crd_dir: Path
) -> None:
    out = kube_cluster.kubectl("apply", "-f", str(crd_dir)).stdout
    assert all(line.endswith(("unchanged", "configured")) for line in out.strip().splitlines()), out
    names = {c["metadata"]["name"] for c in kubeloop_crds}
    listed = json.loads(kube_cluster.kubectl("get", "crd", "-o", "json").stdout)["items"]
    assert names <= {c["metadata"]["name"] for c in listed}


def test_every_crd_is_served_with_kubectl_explain(
    kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]]
) -> None:
    for short in SHORT_NAMES.values():
        out = kube_cluster.kubectl("explain", f"{short}.spec").stdout
        assert "DESCRIPTION" in out, out
        assert "FIELDS" in out, out


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.stem for c in INVALID_CASES])
def test_invalid_case_refused_by_api_server(
    case: Path, kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], k8s_namespace: str
) -> None:
    spec = yaml.safe_load(case.read_text())
    assert {"field", "manifest"} <= set(spec), f"{case} needs `field` and `manifest`"
    manifest = _strip_namespace(spec["manifest"])
    proc = kube_cluster.kubectl(
        "apply", "-f", "-", namespace=k8s_namespace, input=yaml.safe_dump(manifest), check=False
    )
    message = proc.stdout + proc.stderr
    if proc.returncode == 0:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        kube_cluster.kubectl("delete", kind, name, "--ignore-not-found", namespace=k8s_namespace, check=False)
        pytest.fail(
            f"API server accepted invalid {case.name} (expected refusal at {spec['field']}):\n{message}"
        )
    # A refusal by the server, not by kubectl: it comes back as an API error naming the object.
    assert "Error from server" in message or "error when creating" in message or "is invalid" in message, (
        message
    )
    # The server writes map keys as `requests[cpu]`; the cases may write `requests.cpu`.
    normalized = re.sub(r"\[([^\]]+)\]", r".\1", message)
    assert spec["field"] in message or spec["field"] in normalized, (
        f"refusal of {case.name} does not name {spec['field']!r}:\n{message}"
    )


# Resource specs the SDK (pydantic) and the API server (CEL) must judge alike: (resources, the field
# a refusal names, or None where both accept). Each goes into a ModelDeployment; one server round trip.
RESOURCE_PARITY: list[tuple[dict[str, Any], str | None]] = [
    # Extended resources are counted in whole units, however the whole number is written.
    ({"limits": {"nvidia.com/gpu": 2}}, None),
    ({"limits": {"nvidia.com/gpu": "2000m"}}, None),
    ({"limits": {"nvidia.com/gpu": "1.0"}}, None),
    ({"limits": {"example.com/fpga": "1e3"}}, None),
    ({"limits": {"example.com/fpga": "0.5Ki"}}, None),
    ({"limits": {"example.com/fpga": "20e-1"}}, None),
    ({"limits": {"example.com/fpga": "1000000000000000000"}}, None),
    ({"limits": {"nvidia.com/gpu": "0.9999999999"}}, None),  # the server rounds it up to 1
    ({"requests": {"cpu": "500m"}, "limits": {"cpu": "1.5", "kubernetes.io/example": "1.5"}}, None),
    ({"limits": {"nvidia.com/gpu": "500m"}}, "spec.resources.limits[nvidia.com/gpu]"),
    ({"limits": {"nvidia.com/gpu": "1.5"}}, "spec.resources.limits[nvidia.com/gpu]"),
    ({"requests": {"nvidia.com/gpu": "1u"}}, "spec.resources.requests[nvidia.com/gpu]"),
    ({"limits": {"example.com/fpga": "1.1Ki"}}, "spec.resources.limits"),
    ({"limits": {"example.com/fpga": "25e-1"}}, "spec.resources.limits"),
    (
        {"requests": {"example.com/fpga": "1.5"}, "limits": {"example.com/fpga": "1.5"}},
        "spec.resources.limits",
    ),
    ({"requests": {"a.b/c": "0.25"}}, "spec.resources.requests"),
    # Hugepages: whole pages of the size the name gives, and never without cpu or memory.
    ({"requests": {"memory": "1Gi", "hugepages-2Mi": "128Mi"}, "limits": {"hugepages-2Mi": "128Mi"}}, None),
    ({"limits": {"cpu": "1", "hugepages-1Gi": "2Gi"}}, None),
    ({"limits": {"memory": "1Gi", "hugepages-2Mi": 4194304}}, None),
    ({"limits": {"memory": "1Gi", "hugepages-1Gi": "0.5Ti"}}, None),
    ({"limits": {"memory": "1Gi", "hugepages-2048Ki": "4Mi", "hugepages-2Mi": "0"}}, None),
    ({"requests": {"hugepages-2Mi": "128Mi"}, "limits": {"hugepages-2Mi": "128Mi"}}, "spec.resources.limits"),
    ({"requests": {"hugepages-2Mi": "128Mi"}}, "spec.resources.requests"),
    ({"limits": {"memory": "1Gi", "hugepages-2Mi": "3Mi"}}, "spec.resources.limits"),
    ({"requests": {"memory": "1Gi", "hugepages-1Gi": "1.5Gi"}}, "spec.resources.requests"),
    ({"limits": {"memory": "1Gi", "hugepages-2Mi": "2e6"}}, "spec.resources.limits"),
    ({"limits": {"memory": "1Gi", "hugepages-2Mi": "2097152.5"}}, "spec.resources.limits"),
    ({"limits": {"memory": "1Gi", "hugepages-2M": "2M"}}, "spec.resources.limits"),
]


# TrainingJobs whose nvidia.com/gpu is compared with distributed.gpusPerNode: (gpusPerNode, resources,
# the field a refusal names, or None). Equal numbers are equal however they are written.
GPU_COUNT_PARITY: list[tuple[int, dict[str, Any], str | None]] = [
    (2, {"limits": {"nvidia.com/gpu": 2}}, None),
    (2, {"requests": {"nvidia.com/gpu": "2000m"}, "limits": {"nvidia.com/gpu": "2000m"}}, None),
    (2, {"limits": {"nvidia.com/gpu": "2.0"}}, None),
    (1, {"limits": {"nvidia.com/gpu": "1e0"}}, None),
    (2, {"limits": {"nvidia.com/gpu": 1}}, "spec.resources.limits"),
    (2, {"requests": {"nvidia.com/gpu": "3000m"}}, "spec.resources.requests"),
]


def test_resource_rules_agree_with_the_api_server(
    kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], k8s_namespace: str
) -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any], str | None]] = []  # (manifest, resources, field)
    for resources, field in RESOURCE_PARITY:
        md = _example("ModelDeployment")
        md["spec"]["resources"] = resources
        cases.append((md, resources, field))
    for gpus, resources, field in GPU_COUNT_PARITY:
        tj = _example("TrainingJob")
        tj["spec"]["distributed"] = {"gpusPerNode": gpus}
        tj["spec"]["resources"] = resources
        cases.append((tj, resources, field))
    for i, (doc, _, _) in enumerate(cases):
        doc["metadata"]["name"] = f"parity-{i}"
    proc = kube_cluster.kubectl(
        "create",
        "--dry-run=server",
        "-f",
        "-",
        namespace=k8s_namespace,
        input=yaml.safe_dump_all([doc for doc, _, _ in cases]),
        check=False,
    )
    refusals = dict(re.findall(r'"parity-(\d+)" is invalid: (.*)', proc.stderr))
    accepted = set(re.findall(r"/parity-(\d+) created", proc.stdout))
    for i, (doc, resources, field) in enumerate(cases):
        try:
            r.load_manifest(doc)
            sdk = None
        except ValidationError as exc:
            sdk = r.format_validation_error(exc)
        server = refusals.get(str(i))
        assert server is not None or str(i) in accepted, f"no verdict for {resources}:\n{proc.stderr}"
        if field is None:
            assert (sdk, server) == (None, None), f"{doc['kind']} with {resources} refused"
            continue
        assert sdk is not None, f"{resources} accepted by the SDK, server: {server!r}"
        assert server is not None, f"{resources} accepted by the server, SDK: {sdk!r}"
        # The SDK writes map keys as `limits.nvidia.com/gpu`, the server as `limits[nvidia.com/gpu]`.
        assert re.sub(r"\[([^\]]+)\]", r".\1", field) in sdk, (resources, sdk)
        assert field in server, (resources, server)


@pytest.fixture
def example_objects(
    kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], k8s_namespace: str
) -> str:
    docs = [_example(kind) for kind in SHORT_NAMES]
    kube_cluster.kubectl("apply", "-f", "-", namespace=k8s_namespace, input=yaml.safe_dump_all(docs))
    return k8s_namespace


def _printer_columns(crd: dict[str, Any]) -> list[str]:
    served = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    # Columns with priority > 0 only show with `-o wide`.
    return [c["name"].upper() for c in served[0].get("additionalPrinterColumns", []) if not c.get("priority")]


def test_printer_columns(
    kube_cluster: KubeCluster, kubeloop_crds: list[dict[str, Any]], example_objects: str
) -> None:
    ns = example_objects
    by_kind = {c["spec"]["names"]["kind"]: c for c in kubeloop_crds}
    out = kube_cluster.kubectl("get", "tj,md,dm", namespace=ns).stdout
    # Columns are separated by 3+ spaces; a header may contain one ("LAST CHECK").
    headers = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.startswith("NAME")]
    expected = [["NAME", *_printer_columns(by_kind[k])] for k in SHORT_NAMES]
    assert sorted(headers) == sorted(expected), out
    for kind in SHORT_NAMES:
        assert f"{kind.lower()}.kubeloop.io/{_example(kind)['metadata']['name']}" in out, out
    # The columns the design asks for are there.
    assert {"PHASE", "PROGRESS", "METRIC", "VERSION", "AGE"} <= set(_printer_columns(by_kind["TrainingJob"]))

    out = kube_cluster.kubectl("get", "kubeloop", namespace=ns).stdout
    for kind in SHORT_NAMES:
        name = _example(kind)["metadata"]["name"]
        assert f"{kind.lower()}.kubeloop.io/{name}" in out, out
    assert len([line for line in out.splitlines() if line.startswith("NAME")]) == 3, out


def test_scale_model_deployment(kube_cluster: KubeCluster, example_objects: str) -> None:
    ns = example_objects
    name = _example("ModelDeployment")["metadata"]["name"]
    kube_cluster.kubectl("scale", f"md/{name}", "--replicas=3", namespace=ns)
    deadline = time.monotonic() + 10
    while True:
        replicas = kube_cluster.kubectl(
            "get", f"md/{name}", "-o", "jsonpath={.spec.replicas}", namespace=ns
        ).stdout
        if replicas == "3" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert replicas == "3"
    scale = json.loads(
        kube_cluster.kubectl(
            "get", "--raw", f"/apis/kubeloop.io/v1alpha1/namespaces/{ns}/modeldeployments/{name}/scale"
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3

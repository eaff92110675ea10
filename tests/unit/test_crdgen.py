"""The generated CRDs: fresh on disk, structural, documented, with the subresources and columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop import crdgen
from kubeloop.resources import RESOURCES

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_on_disk_equal_the_generator_output() -> None:
    for name, text in crdgen.rendered().items():
        path = CRDS / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == text, f"{path} is stale: run `make crds`"


def test_check_mode_detects_staleness(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    victim = tmp_path / "trainingjobs.yaml"
    victim.write_text(victim.read_text().replace("Maximum number of epochs.", "Epochs."))
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for k, v in schema.get("properties", {}).items():
        out += _walk(v, f"{path}.{k}")
    if "items" in schema:
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}[*]")
    return out


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_crd_shape(resource: Any) -> None:
    crd = yaml.safe_load((CRDS / f"{resource.plural}.yaml").read_text())
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert spec["group"] == "kubeloop.io"
    assert spec["names"]["categories"] == ["kubeloop"]
    assert spec["names"]["shortNames"] == list(resource.short_names)
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert "status" in version["subresources"]
    assert ("scale" in version["subresources"]) == (resource.kind == "ModelDeployment")
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Age" in cols
    assert len(cols) >= 4
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        # Structural: every node has a type (or is int-or-string); nothing JSON-Schema-only survives.
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for banned in (
            "$ref",
            "anyOf",
            "allOf",
            "oneOf",
            "title",
            "const",
            "patternProperties",
            "uniqueItems",
        ):
            assert banned not in node, f"{path}: {banned}"
        if path and path != ".metadata" and not path.endswith(("[]", "[*]")):
            assert node.get("description"), f"{path} lacks a description"


def test_scale_subresource_paths() -> None:
    crd = yaml.safe_load((CRDS / "modeldeployments.yaml").read_text())
    scale = crd["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_cel_rules_are_in_the_schema() -> None:
    text = "".join((CRDS / f"{r.plural}.yaml").read_text() for r in RESOURCES)
    for needle in (
        "exactly one model reference",
        "backend deepspeed needs gpusPerNode >= 1 or allowCpu: true",
        "exactly one of template or trainingJobRef",
        "minReplicas must not exceed maxReplicas",
        "promotion.metric must be a metric of the task",
        "isQuantity(self)",
    ):
        assert needle in text, needle


def test_union_types_are_refused_by_the_generator() -> None:
    from pydantic import BaseModel, Field

    class Bad(BaseModel):
        x: int | str = Field(description="either")

    with pytest.raises(crdgen.SchemaError, match="unions"):
        crdgen.openapi_schema(Bad, "spec")


def test_missing_description_is_refused_by_the_generator() -> None:
    from pydantic import BaseModel

    class Bad(BaseModel):
        x: int

    with pytest.raises(crdgen.SchemaError, match="description"):
        crdgen.openapi_schema(Bad, "spec")

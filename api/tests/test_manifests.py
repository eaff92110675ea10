"""Pure manifest logic: validation with the core models (the same fields the API server names), merge
patches (RFC 7386) and the patch helpers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeloop_api.errors import InvalidError
from kubeloop_api.manifests import (
    Kind,
    alias_patch,
    canary_patch,
    check_patch,
    merge_patch,
    patched,
    suspend_patch,
    validate,
)

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests" / "cases" / "invalid").glob("*.yaml"))
KIND_OF = {"TrainingJob": Kind.trainingjobs, "ModelDeployment": Kind.modeldeployments,
           "DriftMonitor": Kind.driftmonitors}  # fmt: skip


def _examples() -> dict[Kind, dict[str, Any]]:
    out = {}
    for f in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") in KIND_OF:
                doc["metadata"].pop("namespace", None)
                out[KIND_OF[doc["kind"]]] = doc
    return out


EXAMPLES = _examples()


@pytest.mark.parametrize("kind", list(Kind))
def test_examples_pass_unchanged_but_for_the_namespace(kind: Kind) -> None:
    doc = EXAMPLES[kind]
    out = validate(kind, doc, "team-a")
    assert out["metadata"]["namespace"] == "team-a"
    assert out["spec"] == doc["spec"]
    assert out["kind"] == doc["kind"]


@pytest.mark.parametrize("case", INVALID, ids=[c.stem for c in INVALID])
def test_invalid_cases_refused_naming_the_field_the_api_server_names(case: Path) -> None:
    data = yaml.safe_load(case.read_text())
    manifest = data["manifest"]
    manifest.get("metadata", {}).pop("namespace", None)
    with pytest.raises(InvalidError) as exc:
        validate(KIND_OF[manifest["kind"]], manifest, "ns")
    err = exc.value
    assert err.status_code == 422
    normalized = re.sub(r"\[([^\]]+)\]", r".\1", err.message)
    assert data["field"] in err.message or data["field"] in normalized, err.message
    assert any(
        c["field"].startswith(data["field"]) or data["field"].startswith(c["field"]) for c in err.causes
    ), err.causes


def test_namespace_mismatch_and_kind_mismatch_are_refused() -> None:
    doc = dict(EXAMPLES[Kind.trainingjobs], metadata={"name": "x", "namespace": "other"})
    with pytest.raises(InvalidError, match=r"^metadata\.namespace:"):
        validate(Kind.trainingjobs, doc, "mine")
    with pytest.raises(InvalidError, match=r"^kind:"):
        validate(Kind.modeldeployments, EXAMPLES[Kind.trainingjobs], "mine")
    with pytest.raises(InvalidError, match=r"^apiVersion:"):
        validate(Kind.trainingjobs, {**EXAMPLES[Kind.trainingjobs], "apiVersion": "v1"}, "mine")
    with pytest.raises(InvalidError, match=r"^metadata\.name:"):
        validate(Kind.trainingjobs, {**EXAMPLES[Kind.trainingjobs], "metadata": {}}, "mine")
    with pytest.raises(InvalidError, match=r"^metadata\.finalizers:"):
        validate(
            Kind.trainingjobs,
            {**EXAMPLES[Kind.trainingjobs], "metadata": {"name": "a", "finalizers": []}},
            "m",
        )
    with pytest.raises(InvalidError, match=r"^body:"):
        validate(Kind.trainingjobs, [1, 2], "mine")


def test_status_in_a_create_body_is_dropped() -> None:
    doc = {**EXAMPLES[Kind.trainingjobs], "status": {"phase": "Succeeded"}}
    assert "status" not in validate(Kind.trainingjobs, doc, "ns")


def test_merge_patch_follows_rfc7386() -> None:
    # The examples of RFC 7386, appendix A.
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, want in cases:
        assert merge_patch(target, patch) == want, (target, patch)


def test_patches_may_touch_spec_labels_and_annotations_only() -> None:
    check_patch({"spec": {}, "metadata": {"labels": {"a": "b"}}})
    with pytest.raises(InvalidError, match=r"^status: is written by the operator only"):
        check_patch({"status": {"phase": "Succeeded"}})
    with pytest.raises(InvalidError, match=r"^metadata\.name:"):
        check_patch({"metadata": {"name": "other"}})
    with pytest.raises(InvalidError, match=r"^body:"):
        check_patch([{"op": "replace"}])


def _stored(kind: Kind) -> dict[str, Any]:
    doc = validate(kind, EXAMPLES[kind], "ns")
    doc["metadata"].update(resourceVersion="7", uid="u", generation=1)
    return doc


def test_patched_result_is_validated_with_the_field_named() -> None:
    cur = _stored(Kind.trainingjobs)
    out = patched(Kind.trainingjobs, cur, {"spec": {"training": {"epochs": 5}}}, "ns")
    assert out["spec"]["training"]["epochs"] == 5
    with pytest.raises(InvalidError, match=r"spec\.training\.epochs"):
        patched(Kind.trainingjobs, cur, {"spec": {"training": {"epochs": 0}}}, "ns")
    with pytest.raises(InvalidError, match=r"spec\.dataset"):
        patched(Kind.trainingjobs, cur, {"spec": {"dataset": None}}, "ns")


def test_suspend_paths_per_kind() -> None:
    assert suspend_patch(Kind.trainingjobs, True) == {"spec": {"runPolicy": {"suspend": True}}}
    assert suspend_patch(Kind.modeldeployments, False) == {"spec": {"suspend": False}}
    assert suspend_patch(Kind.driftmonitors, True) == {"spec": {"suspend": True}}
    for kind in Kind:
        patched(kind, _stored(kind), suspend_patch(kind, True), "ns")


def test_canary_and_alias_helpers() -> None:
    md = _stored(Kind.modeldeployments)
    md["spec"].pop("canary", None)
    with pytest.raises(InvalidError, match=r"^spec\.canary:"):
        canary_patch(md, 10)
    md["spec"]["canary"] = {"model": {"name": "m", "version": 2}, "trafficPercent": 5}
    out = patched(Kind.modeldeployments, md, canary_patch(md, 30), "ns")
    assert out["spec"]["canary"]["trafficPercent"] == 30
    with pytest.raises(InvalidError, match=r"trafficPercent"):
        patched(Kind.modeldeployments, md, {"spec": {"canary": {"trafficPercent": 101}}}, "ns")

    md["spec"]["model"] = {"name": "m", "version": 3}
    out = patched(Kind.modeldeployments, md, alias_patch(md, "challenger"), "ns")
    assert out["spec"]["model"] == {"name": "m", "alias": "challenger"}
    md["spec"]["model"] = {"uri": "s3://kubeloop/models/m/1/model.onnx"}
    with pytest.raises(InvalidError, match=r"^spec\.model\.alias:"):
        alias_patch(md, "champion")


def test_null_labels_and_annotations_are_absent_as_for_the_api_server() -> None:
    # `labels:` with nothing under it (a template whose entries are commented out) is null in YAML; the
    # API server takes it as no labels, so kubectl applies the file: the facade must too.
    doc = yaml.safe_load(
        "apiVersion: kubeloop.io/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: a\n  labels:\n"
        "  annotations:\nspec:\n  dataset: {uri: s3://kubeloop/datasets/a.csv, target: y}\n"
        "  task: classification\n"
    )
    out = validate(Kind.trainingjobs, doc, "ns")
    assert "labels" not in out["metadata"]
    assert "annotations" not in out["metadata"]


def test_an_empty_namespace_is_the_namespace_of_the_request() -> None:
    # kubectl reads `namespace: ""` (a template with an empty value) as unset and uses its namespace.
    doc = {**EXAMPLES[Kind.trainingjobs], "metadata": {"name": "a", "namespace": ""}}
    assert validate(Kind.trainingjobs, doc, "team-a")["metadata"]["namespace"] == "team-a"

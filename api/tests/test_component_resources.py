"""The three kinds through the facade against the real API server: the object equals what `kubectl apply`
makes, lists with selectors and continue tokens, patches and helpers, and the API server's refusals
passed on faithfully."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from api_cluster import REPO, ApiEnv, Tenants

pytestmark = pytest.mark.component

KINDS = {
    "TrainingJob": "trainingjobs",
    "ModelDeployment": "modeldeployments",
    "DriftMonitor": "driftmonitors",
}


def example(kind: str) -> dict[str, Any]:
    """The example manifest, suspended: an operator running in the cluster then starts no pods for it."""
    for f in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == kind:
                doc["metadata"].pop("namespace", None)
                if kind == "TrainingJob":
                    doc["spec"].setdefault("runPolicy", {})["suspend"] = True
                else:
                    doc["spec"]["suspend"] = True
                return dict(doc)
    raise AssertionError(kind)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


@pytest.mark.parametrize("kind", list(KINDS))
def test_created_through_the_facade_equals_kubectl_apply(
    api_env: ApiEnv, tenants: Tenants, kind: str
) -> None:
    ns, plural = tenants.a.namespace, KINDS[kind]
    via_api = copy.deepcopy(example(kind))
    via_api["metadata"]["name"] = f"{plural[:-1]}-api"
    via_kubectl = copy.deepcopy(example(kind))
    via_kubectl["metadata"]["name"] = f"{plural[:-1]}-kubectl"
    with api_env.client(tenants.a.headers) as c:
        r = c.post(f"/api/v1/namespaces/{ns}/{plural}", json=via_api)
        assert r.status_code == 201, r.text
    api_env.kube.kubectl("apply", "-f", "-", namespace=ns, input=yaml.safe_dump(via_kubectl))
    got = {
        name: json.loads(api_env.kube.kubectl("get", plural, name, "-o", "json", namespace=ns).stdout)
        for name in (via_api["metadata"]["name"], via_kubectl["metadata"]["name"])
    }
    api_obj, kubectl_obj = got[via_api["metadata"]["name"]], got[via_kubectl["metadata"]["name"]]
    a, b = flatten(api_obj["spec"]), flatten(kubectl_obj["spec"])
    differ = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert not differ, f"{kind}: spec fields differ (facade, kubectl): {differ}"
    assert len(a) >= 10  # field by field, including the defaults the API server filled in
    assert api_obj["apiVersion"] == kubectl_obj["apiVersion"]
    assert api_obj["metadata"]["namespace"] == ns


def _tj(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc = example("TrainingJob")
    doc["metadata"] = {"name": name, "labels": labels or {}}
    return doc


def test_list_with_label_selectors_and_continue_tokens(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    base = f"/api/v1/namespaces/{ns}/trainingjobs"
    with api_env.client(tenants.a.headers) as c:
        for i in range(7):
            r = c.post(base, json=_tj(f"page-{i}", {"suite": "list", "team": "x" if i % 2 else "y"}))
            assert r.status_code == 201, r.text
        r = c.get(base, params={"labelSelector": "suite=list,team=x"})
        assert r.status_code == 200
        assert sorted(o["metadata"]["name"] for o in r.json()["items"]) == ["page-1", "page-3", "page-5"]
        seen, token, pages = [], None, 0
        while True:
            params: dict[str, Any] = {"labelSelector": "suite=list", "limit": 3}
            if token:
                params["continue"] = token
            body = c.get(base, params=params).json()
            pages += 1
            assert len(body["items"]) <= 3
            seen += [o["metadata"]["name"] for o in body["items"]]
            token = body["metadata"].get("continue")
            if not token:
                break
        assert pages == 3
        assert sorted(seen) == [f"page-{i}" for i in range(7)]
        r = c.get(base, params={"labelSelector": "suite in (", "limit": 3})
        assert r.status_code == 400, r.text  # the API server's refusal of the selector, passed on
        r = c.get(base, params={"continue": "not-a-token"})
        assert r.status_code in (400, 410), r.text


def test_get_delete_and_the_api_servers_refusals(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    base = f"/api/v1/namespaces/{ns}/trainingjobs"
    with api_env.client(tenants.a.headers) as c:
        assert c.post(base, json=_tj("refusals")).status_code == 201
        r = c.post(base, json=_tj("refusals"))
        assert (r.status_code, r.json()["reason"]) == (409, "AlreadyExists")
        assert r.json()["details"]["name"] == "refusals"
        got = c.get(f"{base}/refusals").json()
        assert got["metadata"]["name"] == "refusals"
        assert got["spec"]["task"] == "classification"
        r = c.get(f"{base}/nope")
        assert (r.status_code, r.json()["reason"]) == (404, "NotFound")
        assert 'trainingjobs.kubeloop.io "nope" not found' in r.json()["message"]
        # Valid for the core model, refused by the API server (a label value it does not accept):
        # the API server's 422 and its causes come back as they are.
        bad = _tj("badlabel", {"team": "not a valid value!"})
        r = c.post(base, json=bad)
        assert r.status_code == 422, r.text
        assert any("metadata.labels" in cause.get("field", "") for cause in r.json()["details"]["causes"])
        # Refused by the facade first, naming the same field the CEL rule would.
        bad = _tj("badspec")
        bad["spec"]["distributed"] = {"backend": "deepspeed", "gpusPerNode": 0}
        r = c.post(base, json=bad)
        assert r.status_code == 422
        assert r.json()["details"]["causes"][0]["field"] == "spec.distributed.gpusPerNode"
        r = c.post(base, json=_tj("dry"), params={"dryRun": "true"})
        assert r.status_code == 201
        assert c.get(f"{base}/dry").status_code == 404
        r = c.delete(f"{base}/refusals")
        assert r.status_code == 200
        # (the operator, when it runs, holds a finalizer: the object may linger until it lets go)
        assert c.delete(f"{base}/never-was").status_code == 404


def test_patches_and_helpers(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.b.namespace  # no pods there: resuming starts nothing
    with api_env.client(tenants.b.headers) as c:
        for kind, plural in KINDS.items():
            doc = example(kind)
            doc["metadata"]["name"] = f"patch-{plural[:-1]}"
            if kind == "ModelDeployment":
                doc["spec"]["canary"] = {
                    "model": {"name": "breast-cancer", "version": 1},
                    "trafficPercent": 10,
                }
            base = f"/api/v1/namespaces/{ns}/{plural}/{doc['metadata']['name']}"
            assert c.post(f"/api/v1/namespaces/{ns}/{plural}", json=doc).status_code == 201
            r = c.post(f"{base}/suspend")
            assert r.status_code == 200, r.text
            spec = r.json()["spec"]
            assert (spec["runPolicy"]["suspend"] if kind == "TrainingJob" else spec["suspend"]) is True
            r = c.post(f"{base}/resume")
            spec = r.json()["spec"]
            assert (spec["runPolicy"]["suspend"] if kind == "TrainingJob" else spec["suspend"]) is False
            r = c.patch(base, json={"metadata": {"labels": {"patched": "yes"}}})
            assert r.status_code == 200
            assert r.json()["metadata"]["labels"]["patched"] == "yes"
            r = c.patch(base, json={"metadata": {"labels": {"x": "y"}, "resourceVersion": "1"}})
            assert r.status_code == 409, r.text
        md = f"/api/v1/namespaces/{ns}/modeldeployments/patch-modeldeployment"
        r = c.put(f"{md}/scale", json={"replicas": 3})
        assert r.status_code == 200
        assert r.json()["kind"] == "Scale"
        assert r.json()["spec"]["replicas"] == 3
        assert c.get(md).json()["spec"]["replicas"] == 3
        assert c.get(f"{md}/scale").json()["spec"]["replicas"] == 3
        r = c.put(f"{md}/canary", json={"trafficPercent": 40})
        assert r.status_code == 200
        assert r.json()["spec"]["canary"]["trafficPercent"] == 40
        r = c.put(f"{md}/canary", json={"trafficPercent": 140})
        assert r.status_code == 422
        assert r.json()["details"]["causes"][0]["field"] == "trafficPercent"
        r = c.put(f"{md}/alias", json={"alias": "challenger"})
        assert r.status_code == 200
        assert r.json()["spec"]["model"] == {
            "name": "breast-cancer",
            "alias": "challenger",
        }
        r = c.put(f"{md}/alias", json={"alias": "latest"})
        assert r.status_code == 422
        assert r.json()["details"]["causes"][0]["field"] == "alias"
        r = c.patch(md, json={"spec": {"replicas": -2}})
        assert r.status_code == 422
        assert r.json()["details"]["causes"][0]["field"] == "spec.replicas"
        r = c.patch(md, json={"spec": {"model": {"uri": "s3://kubeloop/m.onnx"}}})
        assert r.status_code == 422
        assert "exactly one model reference" in r.json()["message"]
        r = c.patch(md, json={"status": {"phase": "Ready"}})
        assert r.status_code == 422
        assert r.json()["details"]["causes"][0]["field"] == "status"
        r = c.patch(
            md, content=b'{"spec": {"replicas": 2}}', headers={"Content-Type": "application/merge-patch+json"}
        )
        assert r.status_code == 200
        assert r.json()["spec"]["replicas"] == 2

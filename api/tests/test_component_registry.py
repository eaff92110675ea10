"""The model registry through the facade against a real MLflow server: models and versions of a
namespace with metrics and lineage, set/move/remove an alias; models of other namespaces stay invisible."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from api_cluster import ApiEnv, Tenants, expect, register_model

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def models(api_env: ApiEnv, tenants: Tenants) -> dict[str, Any]:
    suffix = secrets.token_hex(3)
    a_model, b_model = f"churn-{suffix}", f"fraud-{suffix}"
    v1 = register_model(api_env, tenants.a.namespace, a_model, "churn-1", 0.91)
    v2 = register_model(api_env, tenants.a.namespace, a_model, "churn-2", 0.94)
    vb = register_model(api_env, tenants.b.namespace, b_model, "fraud-1", 0.88)
    return {"a": a_model, "b": b_model, "v1": v1, "v2": v2, "vb": vb}


def test_models_and_versions_with_metrics_and_lineage(
    api_env: ApiEnv, tenants: Tenants, models: dict[str, Any]
) -> None:
    ns = tenants.a.namespace
    base = f"/api/v1/namespaces/{ns}/models"
    with api_env.client(tenants.a.headers) as c:
        names = [m["name"] for m in expect(c.get(base), 200)["items"]]
        assert models["a"] in names
        assert models["b"] not in names
        model = expect(c.get(f"{base}/{models['a']}"), 200)
        assert model["namespace"] == ns
        assert [v["version"] for v in model["versions"]] == [models["v1"], models["v2"]]
        v = expect(c.get(f"{base}/{models['a']}/versions/{models['v2']}"), 200)
        assert v["metrics"]["accuracy"] == pytest.approx(0.94)
        assert v["lineage"]["trainingJob"] == {"namespace": ns, "name": "churn-2", "uid": "uid-churn-2"}
        assert v["lineage"]["onnxUri"].endswith(f"/{models['v2']}/model.onnx")
        assert v["lineage"]["baselineUri"].endswith(f"/{models['v2']}/baseline.json")
        assert v["lineage"]["runId"] == v["runId"]
        listed = expect(c.get(f"{base}/{models['a']}/versions"), 200)["items"]
        assert [x["version"] for x in listed] == [models["v1"], models["v2"]]
        # Another namespace's model is not found here, exactly like a model that does not exist.
        expect(c.get(f"{base}/{models['b']}"), 404)
        expect(c.get(f"{base}/no-such-model"), 404)
        expect(c.get(f"{base}/{models['a']}/versions/999"), 404)


def test_set_move_and_remove_an_alias(api_env: ApiEnv, tenants: Tenants, models: dict[str, Any]) -> None:
    ns = tenants.a.namespace
    alias_url = f"/api/v1/namespaces/{ns}/models/{models['a']}/aliases/champion"
    with api_env.client(tenants.a.headers) as c:
        out = expect(c.put(alias_url, json={"version": models["v1"]}), 200)
        assert out["aliases"]["champion"] == models["v1"]
        out = expect(c.put(alias_url, json={"version": models["v2"]}), 200)  # promote
        assert out["aliases"]["champion"] == models["v2"]
        v2 = expect(c.get(f"/api/v1/namespaces/{ns}/models/{models['a']}/versions/{models['v2']}"), 200)
        assert v2["aliases"] == ["champion"]
        out = expect(c.put(alias_url, json={"version": models["v1"]}), 200)  # roll back
        assert out["aliases"]["champion"] == models["v1"]
        expect(c.put(alias_url, json={"version": 999}), 404)
        expect(c.put(f"/api/v1/namespaces/{ns}/models/{models['a']}/aliases/latest", json={"version": 1}), 422,
               field="alias")  # fmt: skip
        expect(c.put(alias_url, json={"version": 0}), 422, field="version")
        out = expect(c.delete(alias_url), 200)
        assert "champion" not in out["aliases"]
        expect(c.delete(alias_url), 404)
        # A version of another namespace's model cannot be promoted from here.
        expect(
            c.put(
                f"/api/v1/namespaces/{ns}/models/{models['b']}/aliases/champion",
                json={"version": models["vb"]},
            ),
            404,
        )

"""Predictions through the facade against a real model server: a pod running the Kubeloop server image
(the node agent maps kubeloop/server* to our server) behind a Service named after the ModelDeployment,
as the operator's ModelDeployment reconciler will make them. The facade checks the caller's permission
on the ModelDeployment, then proxies OIP v2 REST and /forward to the Service's cluster IP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from api_cluster import ApiEnv, Tenants, expect
from kubernetes import client

pytestmark = pytest.mark.component

MD = "pred-md"
FEATURES = ["f0", "f1", "f2", "f3"]


def _server_pod(api_env: ApiEnv, node_agent: Any, model_uri: str) -> dict[str, Any]:
    m = api_env.minio
    env = {
        "KUBELOOP_SERVER_MODEL_URI": model_uri,
        "KUBELOOP_SERVER_S3_ENDPOINT": f"{node_agent.service_ip('minio')}:9000"
        if node_agent.local
        else m.endpoint,
        "KUBELOOP_SERVER_S3_ACCESS_KEY": m.access_key,
        "KUBELOOP_SERVER_S3_SECRET_KEY": m.secret_key,
        "KUBELOOP_SERVER_PREDICTION_LOGGING_ENABLED": "false",
        "KUBELOOP_SERVER_PORT": "8080",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{MD}-0", "labels": {"app": MD}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "server",
                "image": "kubeloop/server:dev",
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 1},
            }],
        },
    }  # fmt: skip


def test_predictions_are_proxied_after_the_permission_check(
    api_env: ApiEnv, tenants: Tenants, node_agent: Any, s3_prefix: str
) -> None:
    from kubeloop_testing.onnx_models import mlp_model

    ns = tenants.a.namespace
    key = f"{s3_prefix}model.onnx"
    api_env.minio.client().put_object(
        Bucket=api_env.minio.bucket, Key=key,
        Body=mlp_model(n_numeric=len(FEATURES), layout="per_feature", name=MD, version="1"),
    )  # fmt: skip
    md = {"metadata": {"name": MD}, "spec": {"model": {"uri": f"s3://{api_env.minio.bucket}/{key}"}}}
    with api_env.client(tenants.a.headers) as c, api_env.kube.api_client() as api:
        expect(c.post(f"/api/v1/namespaces/{ns}/modeldeployments", json=md), 201)
        base = f"/api/v1/namespaces/{ns}/modeldeployments/{MD}"
        # Before anything serves it: authorised, but not serving yet.
        expect(c.post(f"{base}/forward", json={"f0": 1}), 409)
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(ns, _server_pod(api_env, node_agent, f"s3://{api_env.minio.bucket}/{key}"))
        try:
            core.create_namespaced_service(ns, {"metadata": {"name": MD}, "spec": {
                "selector": {"app": MD}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})  # fmt: skip
        except client.ApiException as e:
            # An operator with a ModelDeployment reconciler made the Service already: use its own.
            if e.status != 409:
                raise
        deadline = time.monotonic() + 240
        while True:
            r = c.get(f"{base}/v2/health/ready")
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, f"server not ready: {r.status_code} {r.text}"
            time.sleep(0.5)
        record = {f: float(i) for i, f in enumerate(FEATURES)}
        out = expect(c.post(f"{base}/forward", json=record), 200)
        ip = core.read_namespaced_service(MD, ns).spec.cluster_ip
        direct = httpx.post(f"http://{ip}:80/forward", json=record, timeout=10).json()
        assert out == direct
        batch = expect(c.post(f"{base}/forward_batch", json=[record, record]), 200)
        assert len(batch["predictions"]) == 2
        infer = {
            "inputs": [{"name": f, "shape": [1, 1], "datatype": "FP32", "data": [1.0]} for f in FEATURES]
        }
        oip = expect(c.post(f"{base}/v2/models/{MD}/infer", json=infer), 200)
        assert oip["model_name"] == MD
        assert oip["outputs"]
        assert expect(c.get(f"{base}/v2/models/{MD}"), 200)["name"] == MD
        assert expect(c.get(f"{base}/metadata"), 200)["features"]
        # The model server's own refusal of bad input comes back as it gave it (a 4xx, not a 5xx).
        r = c.post(f"{base}/forward", json={"nope": 1})
        assert 400 <= r.status_code < 500, r.text
    with api_env.client(tenants.b.headers) as c:
        expect(c.post(f"{base}/forward", json=record), 403)
    with api_env.client() as c:
        expect(c.post(f"{base}/forward", json=record), 401)

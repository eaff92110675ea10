"""What a backing service's failure tells the caller: which service failed and for what, not the
service's own error text. That text names internal addresses (the object store's and MLflow's hosts, an
admission webhook's Service IP), database URLs and whatever a proxy echoed back; it goes to the facade's
log (where credentials are redacted) instead. Against the in-memory Kubernetes stand-in."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fakekube import FakeKube
from fastapi import FastAPI
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.objects import Objects
from kubeloop_api.registry import Registry
from kubeloop_api.settings import ApiSettings

from kubeloop.contracts import ObjectRef
from kubeloop.storage import ObjectInfo, StorageAccessDeniedError, StorageError, StorageUnavailableError
from kubeloop.storage.local import LocalStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

A = {"Authorization": "Bearer t"}
INTERNAL = "10.96.12.7"
SECRET = "hunter2-db-password"


def _fake() -> FakeKube:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    return fk


def _app(kube: Any, **overrides: Any) -> FastAPI:
    s = ApiSettings(mlflow_tracking_uri="http://mlflow.test")
    m = ApiMetrics()
    transport = httpx.MockTransport(kube)
    return create_app(s, kube=Kube(s, m, transport=transport), metrics=m, **overrides)


def _check(r: httpx.Response, status: int, names: str, caplog: pytest.LogCaptureFixture) -> None:
    assert r.status_code == status, r.text
    assert names in r.json()["message"], r.text
    assert INTERNAL not in r.text
    assert SECRET not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert INTERNAL in logged, "the service's own error text must be in the log"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StorageUnavailableError(f"cannot stat s3://kubeloop/datasets/a/d.csv: object store at "
                                 f"minio.svc:9000 unreachable (MaxRetryError: host='{INTERNAL}')"), 503),
        (StorageAccessDeniedError(f"cannot stat s3://kubeloop/datasets/a/d.csv: the object store at "
                                  f"{INTERNAL}:9000 refused access (AccessDenied: key {SECRET})"), 502),
        (StorageError(f"cannot stat s3://kubeloop/datasets/a/d.csv: SlowDown: {INTERNAL} {SECRET}"), 502),
    ],
)  # fmt: skip
def test_object_store_failures_name_the_store_not_its_error_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: StorageError, status: int
) -> None:
    class Failing(LocalStore):
        def stat(self, ref: ObjectRef) -> ObjectInfo | None:
            raise error

    objects = Objects(Failing(tmp_path), "kubeloop", ApiMetrics())
    fk = _fake()
    with TestClient(_app(fk.handle, objects=objects)) as c, caplog.at_level(logging.WARNING):
        r = c.get("/api/v1/namespaces/a/datasets/d.csv", headers=A)
    _check(r, status, "object storage", caplog)


def _list_models_with(mlflow: Any, caplog: pytest.LogCaptureFixture) -> httpx.Response:
    """GET the models list, MLflow answering as ``mlflow`` does."""
    s = ApiSettings(mlflow_tracking_uri="http://mlflow.test")
    reg = Registry(s, ApiMetrics(), transport=httpx.MockTransport(mlflow))
    fk = _fake()
    with TestClient(_app(fk.handle, registry=reg)) as c, caplog.at_level(logging.WARNING):
        return c.get("/api/v1/namespaces/a/models", headers=A)


def test_mlflow_failures_name_mlflow_not_its_error_text(caplog: pytest.LogCaptureFixture) -> None:
    def mlflow(_req: httpx.Request) -> httpx.Response:
        msg = (
            f"(psycopg2.OperationalError) connection to postgresql://mlflow:{SECRET}@{INTERNAL}/mlflow failed"
        )
        return httpx.Response(500, json={"error_code": "INTERNAL_ERROR", "message": msg})

    r = _list_models_with(mlflow, caplog)
    _check(r, 502, "MLflow", caplog)
    assert "500" in r.json()["message"]


@pytest.mark.parametrize(("retry_after", "passed_on"), [("7", "7"), (None, None), ("soon", None)])
def test_mlflow_unavailable_is_a_503_with_its_retry_after(
    caplog: pytest.LogCaptureFixture, retry_after: str | None, passed_on: str | None
) -> None:
    """MLflow's 503 (overloaded, restarting) stays a 503, so the caller knows to retry, with MLflow's own
    Retry-After when it is a number of seconds; its text still goes to the log only."""

    def mlflow(_req: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return httpx.Response(503, text=f"upstream {INTERNAL} overloaded", headers=headers)

    r = _list_models_with(mlflow, caplog)
    _check(r, 503, "MLflow", caplog)
    assert r.json()["reason"] == "ServiceUnavailable"
    assert r.headers.get("retry-after") == passed_on


def test_kubernetes_failures_name_kubernetes_not_its_error_text(caplog: pytest.LogCaptureFixture) -> None:
    fk = _fake()

    def kube(req: httpx.Request) -> httpx.Response:
        if req.method == "POST" and req.url.path.endswith("/trainingjobs"):
            msg = (
                f'Internal error occurred: failed calling webhook "v.example.io": Post "https://hook.'
                f'kube-system.svc:443/validate": dial tcp {INTERNAL}:443: connect: connection refused'
            )
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": msg,
                "reason": "InternalError",
                "code": 500,
            }
            return httpx.Response(500, json=body)
        return fk.handle(req)  # fmt: skip

    tj = {
        "metadata": {"name": "tj"},
        "spec": {"dataset": {"uri": "s3://kubeloop/datasets/a.csv", "target": "y"}, "task": "classification"},
    }
    with TestClient(_app(kube)) as c, caplog.at_level(logging.WARNING):
        r = c.post("/api/v1/namespaces/a/trainingjobs", json=tj, headers=A)
    _check(r, 502, "Kubernetes API", caplog)
    assert "500" in r.json()["message"]
    assert "create trainingjobs" in r.json()["message"]


HTML_404 = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL "
    "was not found on the server.</p>\n"
)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/a/models",
        "/api/v1/namespaces/a/models/m",
        "/api/v1/namespaces/a/models/m/versions/1",
    ],
)
def test_an_mlflow_that_does_not_know_the_request_is_a_502_not_a_missing_model(path: str) -> None:
    # MLflow says a model, version or run does not exist with RESOURCE_DOES_NOT_EXIST. A bare 404 (its
    # web server's page for an unknown path: a tracking URI with a wrong path prefix, a proxy in front)
    # means the facade reached no registry API: the registry failed, the model may well exist.
    def mlflow(_req: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text=HTML_404, headers={"content-type": "text/html"})

    s = ApiSettings(mlflow_tracking_uri="http://mlflow.test/wrong-prefix")
    reg = Registry(s, ApiMetrics(), transport=httpx.MockTransport(mlflow))
    with TestClient(_app(_fake().handle, registry=reg)) as c:
        r = c.get(path, headers=A)
    assert r.status_code == 502, r.text
    assert r.json()["message"].startswith("MLflow answered 404"), r.text


def test_an_mlflow_400_without_its_error_code_is_not_blamed_on_the_caller() -> None:
    def mlflow(_req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, text="Bad Request: header too large", headers={"content-type": "text/plain"}
        )

    s = ApiSettings(mlflow_tracking_uri="http://mlflow.test")
    reg = Registry(s, ApiMetrics(), transport=httpx.MockTransport(mlflow))
    with TestClient(_app(_fake().handle, registry=reg)) as c:
        r = c.get("/api/v1/namespaces/a/models", headers=A)
    assert r.status_code == 502, r.text

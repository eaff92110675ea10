"""Live-cluster helpers for the facade's component tests and its benchmark (bench/api): tenant
namespaces with ServiceAccounts and Roles, tokens from the TokenRequest API, the facade running in a
thread on 127.0.0.1, and a capture of everything it logs."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from kubeloop_api.app import create_app
from kubeloop_api.settings import ApiSettings
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
TEST_NAMESPACE_LABEL = "kubeloop.io/test-namespace"

# What a tenant may do in its own namespace: the three kinds (and scale), read pods and their logs.
TENANT_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kubeloop.io"],
        "resources": ["trainingjobs", "modeldeployments", "driftmonitors", "modeldeployments/scale"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
]


@dataclass
class Tenant:
    namespace: str
    user: str
    token: str
    groups: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def create_namespace(api: client.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"}))
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client.CoreV1Api(api).read_namespaced_service_account("default", name)
            return name
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def no_pods(api: client.ApiClient, namespace: str) -> None:
    """A ResourceQuota of zero pods: objects made there (by load, by fuzzing) never start training or
    serving processes, even with the operator running in the cluster."""
    client.CoreV1Api(api).create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    )


def delete_namespace(api: client.ApiClient, name: str) -> None:
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")


def service_account_token(api: client.ApiClient, namespace: str, name: str, seconds: int = 7200) -> str:
    core = client.CoreV1Api(api)
    with contextlib.suppress(client.ApiException):
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": name}))
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    out = core.create_namespaced_service_account_token(name, namespace, req)
    return str(out.status.token)


def grant(api: client.ApiClient, namespace: str, subject: dict[str, Any], name: str = "tenant") -> None:
    """The tenant Role in ``namespace``, bound to ``subject`` (a ServiceAccount, User or Group)."""
    rbac = client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(client.ApiException):
        rbac.create_namespaced_role(
            namespace, {"metadata": {"name": "kubeloop-tenant"}, "rules": TENANT_RULES}
        )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": f"{name}-{secrets.token_hex(3)}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeloop-tenant"},
            "subjects": [subject],
        },
    )


def tenant(api: client.ApiClient, namespace: str, sa: str = "user") -> Tenant:
    """A ServiceAccount with the tenant Role in its own namespace only, and a token for it."""
    token = service_account_token(api, namespace, sa)
    grant(api, namespace, {"kind": "ServiceAccount", "name": sa, "namespace": namespace}, sa)
    user = f"system:serviceaccount:{namespace}:{sa}"
    return Tenant(namespace, user, token, ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"])


def cluster_admin(api: client.ApiClient, namespace: str) -> Tenant:
    """A ServiceAccount bound to cluster-admin (it may impersonate, i.e. mint API tokens for anyone)."""
    sa = "api-admin"
    token = service_account_token(api, namespace, sa)
    name = f"kubeloop-api-test-admin-{namespace}"
    with contextlib.suppress(client.ApiException):
        client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
            {
                "metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
            }
        )
    return Tenant(namespace, f"system:serviceaccount:{namespace}:{sa}", token)


def delete_cluster_admin(api: client.ApiClient, namespace: str) -> None:
    with contextlib.suppress(client.ApiException):
        client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(f"kubeloop-api-test-admin-{namespace}")


def apply_crds(kube_cluster: Any, crd_dir: Path) -> None:
    kube_cluster.kubectl("apply", "-f", str(crd_dir))
    for plural in ("trainingjobs", "modeldeployments", "driftmonitors"):
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.kubeloop.io"
        )


class LogCapture(logging.Handler):
    """Every record the facade's loggers (and uvicorn's, httpx's) emit, formatted, unfiltered."""

    LOGGERS = ("kubeloop_api", "uvicorn", "httpx", "httpcore")  # children propagate to these

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._saved: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name} {record.levelname} {text}")

    def install(self) -> None:
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.level))
            lg.setLevel(logging.DEBUG)
            lg.addHandler(self)

    def remove(self) -> None:
        for lg, level in self._saved:
            lg.removeHandler(self)
            lg.setLevel(level)

    def text(self) -> str:
        return "\n".join(self.lines)


class LiveApi:
    """The facade served by uvicorn in a background thread on 127.0.0.1 (a free port)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_config=None, access_log=True, lifespan="on",
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="kubeloop-api", daemon=True)
        self.url = ""

    def start(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the facade did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextlib.contextmanager
def live_api(settings: ApiSettings) -> Iterator[LiveApi]:
    api = LiveApi(settings).start()
    try:
        yield api
    finally:
        api.stop()


@dataclass
class ApiEnv:
    """The facade serving on 127.0.0.1, its own namespace, a cluster-admin caller, the log capture, and
    every credential the tests handed out (none may ever show up in a log line)."""

    url: str
    home: str
    admin: Any
    capture: Any
    kube: Any
    minio: Any
    mlflow: Any
    secrets: list[str] = field(default_factory=list)

    def client(self, headers: dict[str, str] | None = None, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=headers or {}, timeout=timeout)

    def remember(self, *tokens: str) -> None:
        self.secrets.extend(t for t in tokens if t)

    def leaked(self) -> list[str]:
        text = self.capture.text()
        return [t[:8] + "…" for t in self.secrets if t in text]


@dataclass
class Tenants:
    a: Any
    b: Any
    token_a: Any
    token_b: Any


def expect(r: httpx.Response, status: int, field: str | None = None, reason: str | None = None) -> Any:
    """Assert the status (and the first cause's field, the reason); returns the JSON body if any."""
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code == status, f"{where}: {r.status_code} {r.text[:800]}"
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
    if field is not None:
        assert body is not None
        assert body["details"]["causes"][0]["field"] == field, body
    if reason is not None:
        assert body is not None
        assert body["reason"] == reason, body
    return body


@dataclass
class SseEvent:
    at: float
    event: str
    id: str | None
    data: Any
    comment: str | None = None


async def sse_events(
    url: str, headers: dict[str, str], out: list[SseEvent], stop: Any = None, timeout: float = 60
) -> int:
    """Read a text/event-stream into ``out`` (with arrival times) until ``stop(out)`` is true; returns the
    HTTP status."""
    import json as _json

    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=timeout)) as client,
        client.stream("GET", url, headers=headers) as resp,
    ):
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code
        block: dict[str, Any] = {}
        async for line in resp.aiter_lines():
            if line == "":
                if block:
                    data = block.get("data")
                    out.append(SseEvent(time.monotonic(), block.get("event", ""), block.get("id"),
                                        _json.loads(data) if data else None, block.get("comment")))  # fmt: skip
                    block = {}
                    if stop is not None and stop(out):
                        return 200
                continue
            key, _, value = line.partition(": ") if not line.startswith(":") else ("comment", "", line[2:])
            block[key] = value
    return 200


def register_model(api_env: ApiEnv, namespace: str, model: str, tj: str, accuracy: float) -> int:
    """What the trainer does for one TrainingJob: a run tagged with its namespace, metrics, a version
    tagged with its TrainingJob and its ONNX and baseline URIs."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=api_env.mlflow.tracking_uri, registry_uri=api_env.mlflow.tracking_uri)
    exp_name = f"api-tests-{namespace}"
    exp = ml.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp else ml.create_experiment(exp_name)
    run = ml.create_run(exp_id, tags={"kubeloop.io/namespace": namespace, "kubeloop.io/trainingjob": tj})
    ml.log_metric(run.info.run_id, "accuracy", accuracy)
    ml.log_metric(run.info.run_id, "f1", accuracy - 0.01)
    ml.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):
        ml.create_registered_model(model)
    mv = ml.create_model_version(
        model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        tags={"kubeloop.io/trainingjob": tj, "kubeloop.io/uid": f"uid-{tj}"},
    )  # fmt: skip
    version = int(mv.version)
    ml.set_model_version_tag(
        model, str(version), "kubeloop.io/model-uri", f"s3://kubeloop/models/{model}/{version}/model.onnx"
    )
    ml.set_model_version_tag(
        model,
        str(version),
        "kubeloop.io/baseline-uri",
        f"s3://kubeloop/models/{model}/{version}/baseline.json",
    )
    return version

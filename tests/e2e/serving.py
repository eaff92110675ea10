"""Helpers for the ModelDeployment e2e tests: ModelDeployment manifests, models in MinIO and MLflow, a
bounded load generator, and the "Ready never lies" sampler.

Traffic goes only to Service ClusterIPs of the node agent (reached from the host through its nat
rules). Every load run is bounded by a request count and a duration.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubeloop_operator import k8s
from nodeagent import network

from .conftest import Kl

TRACK = "kubeloop.io/track"
CONFIG_HASH = "kubeloop.io/config-hash"
SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}}


# --- manifests and status -------------------------------------------------------------------------


def model_deployment(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "resources": SMALL, **spec}
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def is_ready(status: dict[str, Any], generation: int | None = None) -> bool:
    ok = cond(status, "Ready").get("status") == "True"
    return ok and (generation is None or status.get("observedGeneration") == generation)


def md_status(kl: Kl, name: str) -> dict[str, Any]:
    return kl.status(name, k8s.MODELDEPLOYMENT)


def wait_md(
    kl: Kl, name: str, what: str, check: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        st = md_status(kl, name)
        return st if check(st) else None

    try:
        return kl.wait(f"ModelDeployment {name}: {what}", poll, timeout)
    except AssertionError as e:
        pods = [
            (p["metadata"]["name"], (p.get("status") or {}).get("phase"))
            for p in kl.objects(k8s.POD, f"kubeloop.io/owner-name={name}")
        ]
        raise AssertionError(
            f"{e}; status: {json.dumps(md_status(kl, name), indent=1)[:4000]}; pods: {pods}"
        ) from None


def service_ip(kl: Kl, name: str, timeout: float = 30) -> str:
    """The Service's ClusterIP, once it accepts connections on each of its ports.

    Ready replicas reach the node's service proxy only after the EndpointSlice controller and the
    proxy have both caught up (the same lag kube-proxy has), so the first connection right after
    Ready can be refused; a client retries, and so does this (bounded)."""
    svc = kl.get(name, k8s.SERVICE)
    assert svc is not None, f"no Service {name}"
    ip = str(svc["spec"]["clusterIP"])
    ports = [int(p["port"]) for p in svc["spec"].get("ports") or []]
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with socket.create_connection((ip, port), timeout=2):
                    break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"Service {name} ({ip}:{port}) refuses connections: {e}") from e
                time.sleep(0.2)
    return ip


def server_pods(kl: Kl, md_name: str) -> list[dict[str, Any]]:
    return kl.objects(k8s.POD, f"kubeloop.io/owner-name={md_name},app.kubernetes.io/component=serving")


# --- models -------------------------------------------------------------------------------------------


def put_object(kl: Kl, key: str, data: bytes) -> str:
    """An object in the platform's bucket (under the test's namespace); returns its s3:// URI."""
    p = kl.platform.minio
    p.client().upload_fileobj(io.BytesIO(data), p.bucket, key)
    return f"s3://{p.bucket}/{key}"


def get_object(kl: Kl, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    buf = io.BytesIO()
    kl.platform.minio.client().download_fileobj(bucket, key, buf)
    return buf.getvalue()


def register_version(kl: Kl, model: str, onnx: bytes, alias: str | None = None) -> int:
    """A registered MLflow version whose ONNX file is in MinIO at the storage layout's path, tagged as
    the trainer tags it (what a TrainingJob leaves behind, without training)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=kl.platform.mlflow.tracking_uri)
    try:
        client.create_registered_model(model)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    mv = client.create_model_version(model, f"s3://kubeloop/models/{model}/pending", tags={})
    version = int(mv.version)
    uri = put_object(kl, f"models/{model}/{version}/model.onnx", onnx)
    client.set_model_version_tag(model, str(version), "kubeloop.io/model-uri", uri)
    client.set_model_version_tag(model, str(version), "kubeloop.io/namespace", kl.namespace)
    if alias:
        client.set_registered_model_alias(model, alias, str(version))
    return version


def alias_version(kl: Kl, model: str, alias: str) -> int | None:
    from mlflow.tracking import MlflowClient

    try:
        mv = MlflowClient(tracking_uri=kl.platform.mlflow.tracking_uri).get_model_version_by_alias(
            model, alias
        )
    except Exception:
        return None
    return int(mv.version)


# --- load -----------------------------------------------------------------------------------------------


@dataclass
class Reply:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection refused/reset, timeout)
    version: str | None
    error: str = ""


@dataclass
class Load:
    """A closed-loop load generator: ``concurrency`` threads, each sending ``POST /forward`` on a new
    connection per request (so every request is balanced by the Service on its own), at most
    ``max_rate`` requests per second in all, until ``stop()``, ``max_requests`` or ``max_seconds``,
    whichever comes first."""

    host: str
    body: bytes
    concurrency: int = 8
    max_requests: int = 100_000
    max_seconds: float = 180.0
    max_rate: float = 150.0
    """Requests per second at most, all workers together: the load shares two cores with the servers."""
    port: int = 8080
    path: str = "/forward"
    replies: list[Reply] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sent: int = 0
    started_at: float = 0.0
    _kernel_mark: float | None = None

    def _one(self) -> Reply:
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(
                "POST",
                self.path,
                body=self.body,
                headers={"Content-Type": "application/json", "Connection": "close"},
            )
            resp = conn.getresponse()
            data = resp.read()
            version = None
            if resp.status == 200:
                version = str(json.loads(data).get("model_version"))
            err = "" if resp.status == 200 else data[:200].decode(errors="replace")
            return Reply(t0, time.monotonic(), resp.status, version, err)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return Reply(t0, time.monotonic(), 0, None, f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    def _worker(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:  # a slot is taken before sending: never more than max_requests
                if self._sent >= self.max_requests:
                    return
                slot = self.started_at + self._sent / self.max_rate
                self._sent += 1
            wait = slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            r = self._one()
            with self._lock:
                self.replies.append(r)

    def start(self) -> Load:
        self._kernel_mark = network.kernel_log_mark()
        self.started_at = time.monotonic()
        deadline = self.started_at + self.max_seconds
        self._threads = [
            threading.Thread(target=self._worker, args=(deadline,), daemon=True)
            for _ in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self

    def run(self, n: int) -> Load:
        """Exactly ``n`` requests (bounded by ``max_seconds``), then return."""
        self.max_requests = n
        self.start()
        for t in self._threads:
            t.join(timeout=self.max_seconds + 30)
        return self

    def rate(self) -> float:
        """Requests per second so far."""
        replies = self.snapshot()
        span = (max(r.ended for r in replies) - self.started_at) if replies else 0.0
        return len(replies) / span if span > 0 else 0.0

    def snapshot(self) -> list[Reply]:
        with self._lock:
            return list(self.replies)

    @property
    def failures(self) -> list[Reply]:
        return [r for r in self.snapshot() if r.status != 200]

    def explain(self, failures: list[Reply]) -> str:
        """Failed requests for an assertion message, with what the local cluster's proxy logged to the
        kernel since the load started (its rejections and the resets from pods on Service connections:
        which path refused a connection)."""
        lines = network.proxy_log(self._kernel_mark)
        return (
            f"{len(failures)} failed requests, e.g. {failures[:3]}; the kernel's {network.LOG_PREFIX} lines "
            f"since the load started ({len(lines)}, seconds since boot; the load's clock is "
            f"time.monotonic()): " + ("\n".join(lines[-40:]) or "none")
        )

    def versions(self, since: float = 0.0, until: float = float("inf")) -> Counter[str | None]:
        return Counter(r.version for r in self.snapshot() if since <= r.started and r.ended <= until)


# --- Ready never lies ---------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Every ``period`` s reads the server pods and Deployments, then the ModelDeployment's status;
    whenever that status says Ready, every desired replica of each track must be a live pod that is
    Ready and runs the track's desired template (its config hash) and pinned version, and nothing
    else may be left.

    A sample whose Ready disagrees with the pods read just before is a *mismatch*: the operator
    learns of a pod change through a watch, so a status can trail it by a round trip (and Ready may
    turn True between the two reads). A *lie* is Ready staying True over two consecutive samples
    (``period`` apart) that both disagree with the pods; tests require no lie and report mismatches."""

    kl: Kl
    name: str
    period: float = 1.0
    samples: int = 0
    ready_samples: int = 0
    mismatches: list[str] = field(default_factory=list)
    lies: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def observe(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        pods = [p for p in server_pods(self.kl, self.name) if not p["metadata"].get("deletionTimestamp")]
        deps = {
            d["metadata"]["labels"].get(TRACK): d
            for d in self.kl.objects(k8s.DEPLOYMENT, f"kubeloop.io/owner-name={self.name}")
        }
        return pods, deps

    @staticmethod
    def check(
        status: dict[str, Any], pods: list[dict[str, Any]], deps: dict[str, dict[str, Any]]
    ) -> str | None:
        """What is wrong with Ready=True given the pods and Deployments, or None."""
        problems = []
        for track in ("stable", "canary"):
            ts = status.get(track) or {}
            want = int(ts.get("replicas") or 0) if ts else 0
            mine = [p for p in pods if p["metadata"]["labels"].get(TRACK) == track]
            dep = deps.get(track)
            want_hash = (dep or {}).get("metadata", {}).get("annotations", {}).get(CONFIG_HASH)
            ok = [
                p
                for p in mine
                if p["metadata"]["labels"].get(CONFIG_HASH) == want_hash
                and p["metadata"]["labels"].get("kubeloop.io/model-version") == str(ts.get("modelVersion"))
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
            ]
            if len(mine) != want or len(ok) != want:
                problems.append(
                    f"{track}: {len(ok)} of {want} desired ready on version {ts.get('modelVersion')}, "
                    f"{len(mine)} live pods"
                )
        return "; ".join(problems) or None

    def _loop(self) -> None:
        previous: str | None = None
        while not self._stop.wait(self.period):
            self.samples += 1
            try:
                # Pods first, then the status: a Ready status read after the pods must cover them.
                pods, deps = self.observe()
                status = md_status(self.kl, self.name)
            except Exception as e:  # the API server busy for a moment: not a verdict
                previous = None
                print(f"sampler: {e}")
                continue
            if not is_ready(status):
                previous = None
                continue
            self.ready_samples += 1
            problem = self.check(status, pods, deps)
            if problem is not None:
                self.mismatches.append(problem)
                if previous is not None:
                    self.lies.append(f"{previous} / then {problem}")
            previous = problem

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Sampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self

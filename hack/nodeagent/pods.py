"""The kubelet part: one worker per pod bound to this node, reconciling like the kubelet's syncPod.

A worker creates the pod's sandbox (netns + IP), materialises its volumes, runs init containers one
after the other and then the containers, each through :mod:`launcher` in the pod's namespaces;
restarts them per restartPolicy with the kubelet's back-off; runs startup, readiness and liveness
probes; reports phase, conditions and container states; and on deletion sends SIGTERM to each
container's process group, SIGKILL after the grace period, tears the sandbox down and deletes the
pod object (grace 0, uid precondition). Container state is kept on disk, so a restarted agent adopts
running containers instead of starting them again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import network
from .config import Config, ResolvedImage
from .kubeapi import Api, ApiError
from .podutil import field_value, now_iso, parse_time, resource_value
from .volumes import PodVolumes, VolumeError

_WORKSPACE = Path(__file__).resolve().parents[2]

log = logging.getLogger("nodeagent.pods")

Obj = dict[str, Any]
LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
MAX_TERMINATION_MESSAGE = 4096
# What containerd/Docker grant a non-privileged container by default.
DEFAULT_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
]
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class Host(Protocol):
    cfg: Config
    node_api: Api
    ipam: network.IPAM
    pods_dir: Path

    @property
    def node_allocatable(self) -> dict[str, str]: ...

    def event(
        self, pod: Obj, etype: str, reason: str, message: str, *, component: str = "kubelet"
    ) -> None: ...

    def service_env(self, namespace: str) -> dict[str, str]: ...

    def hosts_entries(self) -> list[tuple[str, list[str]]]: ...

    def ensure_mountpoint(self, target: str, is_dir: bool) -> None: ...

    def forget(self, uid: str) -> None: ...


class ConfigError(Exception):
    """CreateContainerConfigError: a referenced ConfigMap/Secret (key) is missing."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, others stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(repl, value)


def _proc_start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class Container:
    spec: Obj
    init: bool
    run_dir: Path
    restart_count: int = 0
    state: str = "waiting"  # waiting / running / terminated
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    pid: int | None = None
    ticks: int | None = None
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    signal: int = 0
    reason: str = ""
    message: str = ""
    last_terminated: Obj | None = None
    ready: bool = False
    started: bool = False
    backoff_delay: float = 0.0
    backoff_until: float = 0.0
    image_id: str = ""
    image_failures: int = 0
    env: dict[str, str] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    killing: str = ""  # why the agent is stopping it ("" when it is not)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def container_id(self) -> str:
        return f"kubeloop://{self.run_dir.parent.parent.name}-{self.name}-{self.restart_count}"

    def log_path(self, restart: int | None = None) -> Path:
        return self.run_dir / f"{self.restart_count if restart is None else restart}.log"

    def terminated_record(self) -> Obj:
        rec: Obj = {
            "exitCode": self.exit_code,
            "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at or now_iso(),
            "containerID": self.container_id,
        }
        if self.signal:
            rec["signal"] = self.signal
        if self.message:
            rec["message"] = self.message
        return rec

    def persist(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "restartCount": self.restart_count,
            "state": self.state,
            "pid": self.pid,
            "ticks": self.ticks,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "exitCode": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "message": self.message,
            "lastTerminated": self.last_terminated,
            "backoffDelay": self.backoff_delay,
            "imageID": self.image_id,
        }
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.run_dir / "state.json")


class PodWorker:
    def __init__(self, host: Host, pod: Obj) -> None:
        self.host = host
        self.cfg = host.cfg
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.ns: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.dir: Path = host.pods_dir / self.uid
        self.wake = asyncio.Event()
        self.gone = False  # the object was deleted from the API
        self.done = False
        self.sandbox: network.Sandbox | None = None
        self.sandbox_torn_down = False
        self.pod_ip: str = (pod.get("status") or {}).get("podIP", "")
        self.start_time: str = (pod.get("status") or {}).get("startTime", "")
        self.volumes = PodVolumes(host.node_api, self.dir, host.node_allocatable, self.cfg.node_name)
        self.volumes_ready = False
        self.volumes_synced_at = 0.0
        self.volume_error = ""
        self.phase: str = (pod.get("status") or {}).get("phase", "Pending")
        self.terminal = self.phase in ("Succeeded", "Failed")
        self.ran_here = False
        self.conditions: dict[str, Obj] = {}
        self.last_status: Obj | None = None
        self.next_wake: float | None = None
        self.events_sent: set[str] = set()
        spec = pod["spec"]
        self.containers = [
            Container(c, False, self.dir / "containers" / c["name"]) for c in spec.get("containers") or []
        ]
        self.init_containers = [
            Container(c, True, self.dir / "containers" / c["name"]) for c in spec.get("initContainers") or []
        ]
        self.initialized = not self.init_containers
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def all_containers(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    @property
    def pod_path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.name}"

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"pod {self.ns}/{self.name}")

    def update(self, pod: Obj) -> None:
        if pod["metadata"]["uid"] != self.uid:
            return
        self.pod = pod
        self.wake.set()

    def deleted(self) -> None:
        self.gone = True
        self.wake.set()

    def poke(self) -> None:
        self.wake.set()

    def wake_at(self, when: float) -> None:
        if self.next_wake is None or when < self.next_wake:
            self.next_wake = when

    def event_once(self, key: str, etype: str, reason: str, message: str) -> None:
        if key in self.events_sent:
            return
        self.events_sent.add(key)
        self.host.event(self.pod, etype, reason, message)

    def save_meta(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "uid": self.uid,
            "namespace": self.ns,
            "name": self.name,
            "podIP": self.pod_ip,
            "startTime": self.start_time,
            "initialized": self.initialized,
            "terminal": self.terminal,
            "phase": self.phase,
            "sandboxTornDown": self.sandbox_torn_down,
        }
        (self.dir / "pod.json").write_text(json.dumps(meta))

    async def run(self) -> None:
        while not self.done:
            self.wake.clear()
            self.next_wake = None
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync of pod %s/%s failed", self.ns, self.name)
                self.wake_at(time.monotonic() + 2)
            if self.done:
                break
            timeout = 10.0 if self.next_wake is None else max(0.0, self.next_wake - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)

    # ------------------------------------------------------------------ adoption
    def adopt(self, meta: Obj) -> None:
        """Take over what a previous agent process left for this pod (same uid)."""
        self.pod_ip = meta.get("podIP", "") or self.pod_ip
        self.start_time = meta.get("startTime", "") or self.start_time
        self.initialized = bool(meta.get("initialized")) or not self.init_containers
        self.terminal = bool(meta.get("terminal")) or self.terminal
        self.phase = meta.get("phase", self.phase)
        self.sandbox_torn_down = bool(meta.get("sandboxTornDown"))
        self.ran_here = True
        if self.pod_ip and not self.sandbox_torn_down:
            self.host.ipam.reserve(self.uid, self.pod_ip)
            ns, veth = network.netns_name(self.cfg, self.uid), network.veth_name(self.cfg, self.uid)
            if (network.NETNS_DIR / ns).exists() and network.link_exists(veth):
                self.sandbox = network.Sandbox(ns, veth, self.pod_ip)
        for c in self.all_containers:
            f = c.run_dir / "state.json"
            if not f.is_file():
                continue
            d = json.loads(f.read_text())
            c.restart_count = int(d.get("restartCount", 0))
            c.started_at, c.finished_at = d.get("startedAt", ""), d.get("finishedAt", "")
            c.exit_code, c.signal = int(d.get("exitCode", 0)), int(d.get("signal", 0))
            c.reason, c.message = d.get("reason", ""), d.get("message", "")
            c.last_terminated = d.get("lastTerminated")
            c.backoff_delay = float(d.get("backoffDelay", 0))
            c.image_id = d.get("imageID", "")
            c.state = d.get("state", "waiting")
            if c.state == "running":
                pid, ticks = d.get("pid"), d.get("ticks")
                if pid and ticks and _proc_start_ticks(int(pid)) == int(ticks):
                    c.pid, c.ticks = int(pid), int(ticks)
                    c.exited.clear()
                    self._watch_exit(c, own_child=False)
                    c.started = not c.spec.get("startupProbe")
                    c.ready = False
                    self._start_probes(c)
                else:
                    self._finish(c, None)
        log.info("adopted pod %s/%s (ip %s)", self.ns, self.name, self.pod_ip or "-")

    def adopt_from_api(self) -> None:
        """No local record (node restarted): containers the API saw started are lost, as after a reboot."""
        status = self.pod.get("status") or {}
        seen = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        for c in self.all_containers:
            s = seen.get(c.name)
            if not s:
                continue
            c.restart_count = int(s.get("restartCount", 0))
            st = s.get("state") or {}
            was = "running" in st or "terminated" in st or bool(s.get("lastState", {}).get("terminated"))
            if "terminated" in st and c.init and st["terminated"].get("exitCode") == 0:
                c.state = "terminated"
                c.exit_code = 0
                c.reason = "Completed"
                c.started_at = st["terminated"].get("startedAt", "")
                c.finished_at = st["terminated"].get("finishedAt", "")
            elif was:
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "ContainerStatusUnknown"
                c.message = "The container could not be located when the pod was terminated"
                c.finished_at = now_iso()
        if all(c.state == "terminated" and c.exit_code == 0 for c in self.init_containers):
            self.initialized = True

    # ------------------------------------------------------------------ main reconcile
    async def sync(self) -> None:
        meta = self.pod["metadata"]
        if self.gone or meta.get("deletionTimestamp"):
            await self._terminate_pod()
            return
        if self.terminal:
            if self.ran_here:
                await self._stop_all("PodCompleted", grace=self._grace())
                await asyncio.to_thread(self._teardown_sandbox)
                await self._push_status()
            return
        if self.sandbox is None:
            if self.sandbox_torn_down:
                return
            ip = self.host.ipam.allocate(self.uid)
            try:
                self.sandbox = await asyncio.to_thread(network.sandbox_up, self.cfg, self.uid, ip)
            except network.NetError as exc:
                self.host.ipam.release(self.uid)
                self.event_once(
                    f"sandbox:{exc}",
                    "Warning",
                    "FailedCreatePodSandBox",
                    f"Failed to create pod sandbox: {exc}",
                )
                self.wake_at(time.monotonic() + 5)
                await self._push_status()
                return
            self.pod_ip = ip
            self.start_time = self.start_time or now_iso()
            self.ran_here = True
            self.save_meta()
        if not self.volumes_ready or time.monotonic() - self.volumes_synced_at > 60:
            try:
                await self.volumes.sync(self.pod)
                self.volumes_ready = True
                self.volume_error = ""
                self.volumes_synced_at = time.monotonic()
            except VolumeError as exc:
                if not self.volumes_ready:
                    self.volume_error = str(exc)
                    self.event_once(
                        f"mount:{exc}", "Warning", "FailedMount", f"MountVolume.SetUp failed: {exc}"
                    )
                    self.wake_at(time.monotonic() + 3)
                    await self._push_status()
                    return
                log.warning("refreshing volumes of %s/%s: %s", self.ns, self.name, exc)
            self.wake_at(time.monotonic() + 60)
        if not self.initialized:
            await self._sync_init()
        if self.initialized:
            for c in self.containers:
                await self._sync_container(c)
        self._compute_phase()
        if self.terminal:
            await self._stop_all("PodCompleted", grace=self._grace())
            await asyncio.to_thread(self._teardown_sandbox)
        self.save_meta()
        await self._push_status()

    async def _sync_init(self) -> None:
        for c in self.init_containers:
            if c.state == "terminated" and c.exit_code == 0 and not c.killing:
                continue
            if c.state == "running":
                return
            if c.state == "terminated":
                if self.restart_policy == "Never":
                    return  # the phase becomes Failed
                await self._restart_after_backoff(c)
                return
            await self._start(c)
            return
        self.initialized = True

    async def _sync_container(self, c: Container) -> None:
        if c.state == "running":
            return
        if c.state == "terminated":
            if c.reason == "ContainerStatusUnknown" and self.restart_policy == "Never":
                return
            policy = self.restart_policy
            if policy == "Always" or (policy == "OnFailure" and c.exit_code != 0):
                await self._restart_after_backoff(c)
            return
        await self._start(c)

    async def _restart_after_backoff(self, c: Container) -> None:
        now = time.monotonic()
        if c.backoff_until == 0.0:
            ran = 0.0
            with contextlib.suppress(ValueError):
                ran = (
                    (parse_time(c.finished_at) - parse_time(c.started_at)).total_seconds()
                    if c.started_at and c.finished_at
                    else 0.0
                )
            if ran > 2 * self.cfg.backoff_max:
                c.backoff_delay = 0.0
            delay = c.backoff_delay
            c.backoff_delay = self.cfg.backoff_initial if delay == 0 else min(delay * 2, self.cfg.backoff_max)
            c.backoff_until = now + delay
            if delay > 0:
                self.host.event(
                    self.pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {c.name} in pod {self.name}_{self.ns}({self.uid})",
                )
                c.waiting_reason = "CrashLoopBackOff"
                c.waiting_message = f"back-off {int(delay)}s restarting failed container={c.name} pod={self.name}_{self.ns}({self.uid})"
        if now < c.backoff_until:
            self.wake_at(c.backoff_until)
            return
        c.backoff_until = 0.0
        c.last_terminated = c.terminated_record()
        c.restart_count += 1
        # Keep the previous run's log (kubectl logs --previous), drop older ones.
        with contextlib.suppress(FileNotFoundError):
            c.log_path(c.restart_count - 2).unlink()
        await self._start(c)

    # ------------------------------------------------------------------ containers
    async def _env(self, c: Container) -> dict[str, str]:
        env: dict[str, str] = {}
        spec = self.pod["spec"]
        if spec.get("enableServiceLinks", True):
            env.update(self.host.service_env(self.ns))
        else:
            env.update(
                {k: v for k, v in self.host.service_env(self.ns).items() if k.startswith("KUBERNETES_")}
            )
        for src in c.spec.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            if "configMapRef" in src:
                ref = src["configMapRef"]
                obj = await self._get_ref("configmaps", ref["name"], bool(ref.get("optional")))
                for k, v in ((obj or {}).get("data") or {}).items():
                    env[prefix + k] = v
            elif "secretRef" in src:
                ref = src["secretRef"]
                obj = await self._get_ref("secrets", ref["name"], bool(ref.get("optional")))
                for k, v in ((obj or {}).get("data") or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode(errors="replace")
        for e in c.spec.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = expand(str(e.get("value") or ""), env)
                continue
            src = e.get("valueFrom")
            if not src:
                env[name] = ""
                continue
            if "fieldRef" in src:
                env[name] = field_value(self._pod_with_status(), src["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in src:
                env[name] = resource_value(
                    self.pod, src["resourceFieldRef"], c.name, self.host.node_allocatable
                )
            elif "configMapKeyRef" in src or "secretKeyRef" in src:
                is_secret = "secretKeyRef" in src
                ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
                obj = await self._get_ref(
                    "secrets" if is_secret else "configmaps", ref["name"], bool(ref.get("optional"))
                )
                if obj is None:
                    continue
                data = obj.get("data") or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    kind = "secret" if is_secret else "configmap"
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind.capitalize() if not is_secret else 'Secret'} {self.ns}/{ref['name']}"
                    )
                value = data[ref["key"]]
                if is_secret:
                    value = base64.b64decode(value).decode(errors="replace")
                env[name] = value
        return env

    async def _get_ref(self, plural: str, name: str, optional: bool) -> Obj | None:
        try:
            return await self.host.node_api.get(f"/api/v1/namespaces/{self.ns}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404 and optional:
                return None
            kind = "secret" if plural == "secrets" else "configmap"
            raise ConfigError(
                f'{kind} "{name}" not found' if exc.status == 404 else f"{kind} {name!r}: {exc.message}"
            ) from exc

    def _pod_with_status(self) -> Obj:
        pod = dict(self.pod)
        status = dict(pod.get("status") or {})
        status.update(
            {
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else [],
                "hostIP": self.cfg.bridge_ip,
                "hostIPs": [{"ip": self.cfg.bridge_ip}],
            }
        )
        pod["status"] = status
        return pod

    def _hosts_file(self) -> Path:
        path = self.dir / "etc-hosts"
        hostname = self.pod["spec"].get("hostname") or self.name
        sub = self.pod["spec"].get("subdomain")
        fqdn = f"{hostname}.{sub}.{self.ns}.svc.cluster.local" if sub else ""
        lines = [
            "# Kubernetes-managed hosts file (kubeloop node agent).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{self.pod_ip}\t{fqdn + chr(9) if fqdn else ''}{hostname}",
        ]
        for ip, names in self.host.hosts_entries():
            lines.append(f"{ip}\t{' '.join(names)}")
        for alias in self.pod["spec"].get("hostAliases") or []:
            lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def _mounts(self, c: Container) -> list[Obj]:
        mounts: list[Obj] = []
        targets: set[str] = set()
        for vm in c.spec.get("volumeMounts") or []:
            src = self.volumes.paths.get(vm["name"])
            if src is None:
                raise ConfigError(f"volume {vm['name']!r} not found in the pod's volumes")
            sub = vm.get("subPath") or ""
            if sub:
                if sub.startswith("/") or ".." in sub.split("/"):
                    raise ConfigError(f"invalid subPath {sub!r}")
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True)
            target = os.path.normpath(vm["mountPath"])
            mounts.append({"source": str(src), "target": target, "readOnly": bool(vm.get("readOnly"))})
            targets.add(target)
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)
        hostname_file = self.dir / "etc-hostname"
        hostname_file.write_text((self.pod["spec"].get("hostname") or self.name)[:63] + "\n")
        extra = [("/tmp", tmp), ("/etc/hosts", self._hosts_file()), ("/etc/hostname", hostname_file)]
        # Containers run this workspace's code: when it lives under /tmp (a fresh CI clone often
        # does), the pod's private /tmp would hide it, so bind the workspace back over it.
        for keep in {_WORKSPACE, Path(sys.prefix).resolve()}:
            if keep.is_relative_to("/tmp"):
                extra.append((str(keep), keep))
        term = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        c.run_dir.mkdir(parents=True, exist_ok=True)
        tfile = c.run_dir / f"termination-{c.restart_count}"
        tfile.write_bytes(b"")
        tfile.chmod(0o666)
        extra.append((os.path.normpath(term), tfile))
        for target, src in extra:
            if target not in targets:
                mounts.append({"source": str(src), "target": target, "readOnly": False})
                targets.add(target)
        mounts.sort(key=lambda m: m["target"].count("/"))
        for m in mounts:
            nested = any(m["target"] != t and m["target"].startswith(t.rstrip("/") + "/") for t in targets)
            if not nested and not os.path.exists(m["target"]):
                self.host.ensure_mountpoint(m["target"], is_dir=Path(m["source"]).is_dir())
        return mounts

    async def _start(self, c: Container) -> None:
        image = str(c.spec.get("image") or "")
        resolved: ResolvedImage | None = self.cfg.resolve_image(image, self.restart_policy)
        now = time.monotonic()
        if resolved is None:
            if now < c.backoff_until:
                self.wake_at(c.backoff_until)
                return
            c.image_failures += 1
            delay = min(self.cfg.backoff_initial * 2 ** (c.image_failures - 1), self.cfg.backoff_max)
            c.backoff_until = now + delay
            c.state = "waiting"
            msg = (
                f'Failed to pull image "{image}": image is not mapped to a local entry point by the kubeloop '
                f"node agent (see {self.cfg.source[-1]}; fakeImages is off)"
            )
            if c.image_failures == 1:
                c.waiting_reason, c.waiting_message = "ErrImagePull", msg
                self.host.event(self.pod, "Warning", "Failed", msg)
            else:
                c.waiting_reason = "ImagePullBackOff"
                c.waiting_message = f'Back-off pulling image "{image}": ErrImagePull: {msg}'
                self.event_once(
                    f"pullbackoff:{c.name}", "Normal", "BackOff", f'Back-off pulling image "{image}"'
                )
            self.wake_at(c.backoff_until)
            return
        c.image_failures = 0
        c.image_id = resolved.image_id
        try:
            env = dict(resolved.env)
            env.update(await self._env(c))
            mounts = self._mounts(c)
        except ConfigError as exc:
            c.state, c.waiting_reason, c.waiting_message = "waiting", "CreateContainerConfigError", str(exc)
            self.event_once(f"config:{c.name}:{exc}", "Warning", "Failed", f"Error: {exc}")
            self.wake_at(time.monotonic() + 5)
            return
        venv = str(Path(sys.executable).parent)
        env.setdefault("PATH", f"{venv}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOSTNAME", self.pod["spec"].get("hostname") or self.name)
        env.setdefault("HOME", "/root")
        command = [expand(a, env) for a in c.spec.get("command") or []]
        args = [expand(a, env) for a in c.spec.get("args") or []]
        if resolved.fake:
            argv = list(resolved.cmd)
        elif command:
            argv = command + args
        else:
            argv = list(resolved.entrypoint) + (
                args if c.spec.get("args") is not None else list(resolved.cmd)
            )
        if not argv:
            c.state, c.waiting_reason = "waiting", "RunContainerError"
            c.waiting_message = "failed to create containerd task: no command specified"
            return
        ctx = (c.spec.get("securityContext") or {}) or {}
        pctx = self.pod["spec"].get("securityContext") or {}
        run_as_user = ctx.get("runAsUser", pctx.get("runAsUser"))
        run_as_group = ctx.get("runAsGroup", pctx.get("runAsGroup"))
        # The container runtime's default capability set, adjusted by securityContext (privileged: all).
        capabilities: list[str] | None = None
        if not ctx.get("privileged"):
            caps = ctx.get("capabilities") or {}
            drop = {str(c).upper().removeprefix("CAP_") for c in caps.get("drop") or []}
            add = {str(c).upper().removeprefix("CAP_") for c in caps.get("add") or []}
            base = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES)
            capabilities = sorted((base | add) - drop)
        c.run_dir.mkdir(parents=True, exist_ok=True)
        exit_file = c.run_dir / f"exit-{c.restart_count}.json"
        with contextlib.suppress(FileNotFoundError):
            exit_file.unlink()
        spec = {
            "argv": argv,
            "env": env,
            "workingDir": c.spec.get("workingDir") or "/",
            "hostname": (self.pod["spec"].get("hostname") or self.name)[:63],
            "mounts": mounts,
            "exitFile": str(exit_file),
            "runAsUser": run_as_user,
            "runAsGroup": run_as_group,
            "capabilities": capabilities,
        }
        spec_file = c.run_dir / f"spec-{c.restart_count}.json"
        spec_file.write_text(json.dumps(spec))
        spec_file.chmod(0o600)
        assert self.sandbox is not None
        cmd = [
            "ip", "netns", "exec", self.sandbox.netns,
            "unshare", "--mount", "--uts", "--propagation", "private", "--",
            sys.executable, "-I", "-S", str(LAUNCHER), str(spec_file),
        ]  # fmt: skip
        with open(c.log_path(), "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                cwd="/",
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            )
        proc.returncode = 0  # reaped by _watch_exit, not by Popen's finaliser
        c.pid, c.ticks = proc.pid, _proc_start_ticks(proc.pid)
        c.env = env
        c.state = "running"
        c.started_at = now_iso()
        c.finished_at = ""
        c.exit_code, c.signal, c.reason, c.message, c.killing = 0, 0, "", "", ""
        c.waiting_reason, c.waiting_message, c.backoff_until = "", "", 0.0
        c.ready = False
        c.started = not c.spec.get("startupProbe")
        c.exited.clear()
        c.persist()
        self._watch_exit(c, own_child=True)
        self._start_probes(c)
        self.host.event(self.pod, "Normal", "Started", f"Started container {c.name}")

    def _watch_exit(self, c: Container, *, own_child: bool) -> None:
        assert c.pid is not None
        pid = c.pid
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            status = self._reap(pid) if own_child else None
            loop.call_soon(self._finish, c, status)
            return

        def on_exit() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            status = self._reap(pid) if own_child else None
            if c.pid == pid:
                self._finish(c, status)

        loop.add_reader(fd, on_exit)

    @staticmethod
    def _reap(pid: int) -> int | None:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except ChildProcessError:
            return None

    def _finish(self, c: Container, wait_status: int | None) -> None:
        """The launcher of ``c`` exited: record how the container ended."""
        for t in c.probe_tasks:
            t.cancel()
        c.probe_tasks.clear()
        rec: Obj = {}
        exit_file = c.run_dir / f"exit-{c.restart_count}.json"
        with contextlib.suppress(FileNotFoundError, ValueError):
            rec = json.loads(exit_file.read_text())
        if rec:
            c.exit_code = int(rec.get("exitCode", 0))
            c.signal = int(rec.get("signal", 0))
            c.reason = str(rec.get("reason", ""))
            c.message = str(rec.get("message", ""))
            c.finished_at = str(rec.get("finishedAt") or now_iso())
        else:
            # The launcher itself was killed (SIGKILL after the grace period) or vanished.
            if wait_status is not None and os.WIFSIGNALED(wait_status):
                c.exit_code, c.signal = 128 + os.WTERMSIG(wait_status), os.WTERMSIG(wait_status)
            elif wait_status is not None:
                c.exit_code = os.waitstatus_to_exitcode(wait_status)
            else:
                c.exit_code, c.signal = 137, 9
            c.reason, c.message = "", ""
            c.finished_at = now_iso()
        if not c.reason:
            c.reason = "Completed" if c.exit_code == 0 else "Error"
        if c.reason != "StartError":
            msg = self._termination_message(c)
            if msg:
                c.message = msg
        c.state = "terminated"
        c.ready = False
        c.pid = None
        c.persist()
        c.exited.set()
        if c.reason == "StartError":
            self.host.event(self.pod, "Warning", "Failed", f"Error: {c.message}")
        self.poke()

    def _termination_message(self, c: Container) -> str:
        tfile = c.run_dir / f"termination-{c.restart_count}"
        msg = ""
        with contextlib.suppress(OSError):
            msg = tfile.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        if not msg and c.exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                data = c.log_path().read_bytes()[-2048:]
                msg = "\n".join(data.decode(errors="replace").splitlines()[-80:])
        return msg

    # ------------------------------------------------------------------ probes
    def _start_probes(self, c: Container) -> None:
        if c.init:
            return
        if c.spec.get("startupProbe"):
            c.probe_tasks.append(asyncio.create_task(self._probe_loop(c, "startup", c.spec["startupProbe"])))
        else:
            self._start_main_probes(c)

    def _start_main_probes(self, c: Container) -> None:
        if c.spec.get("readinessProbe"):
            c.probe_tasks.append(
                asyncio.create_task(self._probe_loop(c, "readiness", c.spec["readinessProbe"]))
            )
        else:
            c.ready = True
            self.poke()
        if c.spec.get("livenessProbe"):
            c.probe_tasks.append(
                asyncio.create_task(self._probe_loop(c, "liveness", c.spec["livenessProbe"]))
            )

    async def _probe_loop(self, c: Container, kind: str, probe: Obj) -> None:
        run_pid = c.pid
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        period = float(probe.get("periodSeconds") or 10)
        success_needed = int(probe.get("successThreshold") or 1)
        failure_needed = int(probe.get("failureThreshold") or 3)
        successes = failures = 0
        while c.pid == run_pid and c.state == "running":
            ok, detail = await self._probe_once(c, probe)
            if c.pid != run_pid or c.state != "running":
                return
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                self.host.event(
                    self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {detail}"
                )
            if kind == "readiness":
                if ok and successes >= success_needed and not c.ready:
                    c.ready = True
                    self.poke()
                elif not ok and failures >= failure_needed and c.ready:
                    c.ready = False
                    self.poke()
            elif kind == "startup":
                if ok:
                    c.started = True
                    self._start_main_probes(c)
                    self.poke()
                    return
                if failures >= failure_needed:
                    self.host.event(
                        self.pod,
                        "Normal",
                        "Killing",
                        f"Container {c.name} failed startup probe, will be restarted",
                    )
                    await self._kill(c, self._probe_grace(probe), "startup probe failed")
                    return
            elif kind == "liveness" and failures >= failure_needed:
                self.host.event(
                    self.pod,
                    "Normal",
                    "Killing",
                    f"Container {c.name} failed liveness probe, will be restarted",
                )
                await self._kill(c, self._probe_grace(probe), "liveness probe failed")
                return
            await asyncio.sleep(period)

    def _probe_grace(self, probe: Obj) -> float:
        g = probe.get("terminationGracePeriodSeconds")
        return float(g) if g is not None else self._grace()

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"named port {port!r} not found in container {c.name}")

    async def _probe_once(self, c: Container, probe: Obj) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in probe:
                return await asyncio.wait_for(self._http_probe(c, probe["httpGet"]), timeout)
            if "tcpSocket" in probe or "grpc" in probe:
                spec = probe.get("tcpSocket") or probe["grpc"]
                host = spec.get("host") or self.pod_ip
                port = self._port(c, spec["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                return True, ""
            if "exec" in probe:
                return await self._exec_probe(c, probe["exec"].get("command") or [], timeout)
        except TimeoutError:
            return False, f"timeout after {timeout:g}s"
        except (OSError, ValueError) as exc:
            return False, str(exc)
        return True, ""

    async def _http_probe(self, c: Container, spec: Obj) -> tuple[bool, str]:
        host = spec.get("host") or self.pod_ip
        port = self._port(c, spec["port"])
        path = spec.get("path") or "/"
        scheme = (spec.get("scheme") or "HTTP").upper()
        ctx = None
        if scheme == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        headers = {
            "Host": f"{host}:{port}",
            "User-Agent": "kube-probe/1.37",
            "Accept": "*/*",
            "Connection": "close",
        }
        for h in spec.get("httpHeaders") or []:
            headers[h["name"]] = h["value"]
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(req.encode())
        await writer.drain()
        line = await reader.readline()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        parts = line.decode(errors="replace").split()
        if len(parts) < 2 or not parts[1].isdigit():
            return False, f"malformed HTTP response {line[:80]!r}"
        code = int(parts[1])
        if 200 <= code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {code}"

    async def _exec_probe(self, c: Container, command: list[str], timeout: float) -> tuple[bool, str]:
        if not command or c.pid is None:
            return False, "no command"
        proc = await asyncio.create_subprocess_exec(
            "nsenter", "--target", str(c.pid), "--net", "--mount", "--uts", "--", *command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=c.env, cwd="/",
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"command timed out after {timeout:g}s"
        if proc.returncode == 0:
            return True, ""
        return (
            False,
            f"command {command!r} exited with {proc.returncode}: {out.decode(errors='replace')[-200:]}",
        )

    # ------------------------------------------------------------------ stopping
    def _grace(self) -> float:
        meta = self.pod["metadata"]
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g if g is not None else 30)

    async def _kill(self, c: Container, grace: float, why: str) -> None:
        if c.state != "running" or c.pid is None:
            return
        c.killing = why
        pid = c.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(c.exited.wait(), timeout=max(grace, 0.0) or 0.01)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.exited.wait(), timeout=10)

    async def _stop_all(self, why: str, grace: float) -> None:
        running = [c for c in self.all_containers if c.state == "running"]
        if not running:
            return
        for c in running:
            self.host.event(self.pod, "Normal", "Killing", f"Stopping container {c.name}")
        await asyncio.gather(*(self._kill(c, grace, why) for c in running))

    def _teardown_sandbox(self) -> None:
        if self.sandbox_torn_down:
            return
        network.sandbox_down(self.cfg, self.uid)
        self.host.ipam.release(self.uid)
        self.sandbox = None
        self.sandbox_torn_down = True
        self.save_meta()

    async def _terminate_pod(self) -> None:
        grace = self._grace()
        await self._stop_all("PodDeleted", grace)
        for c in self.all_containers:
            if c.state == "waiting":
                c.waiting_reason = c.waiting_reason or "ContainerCreating"
        await asyncio.to_thread(self._teardown_sandbox)
        if not self.gone:
            if self.ran_here and not self.terminal:
                self._compute_phase(deleting=True)
                with contextlib.suppress(ApiError):
                    await self._push_status()
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            try:
                await self.host.node_api.delete(self.pod_path, body)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.warning("final delete of %s/%s: %s", self.ns, self.name, exc)
                    self.wake_at(time.monotonic() + 2)
                    return
        shutil.rmtree(self.dir, ignore_errors=True)
        self.done = True
        self.host.forget(self.uid)

    # ------------------------------------------------------------------ status
    def _compute_phase(self, deleting: bool = False) -> None:
        if self.terminal:
            return
        policy = self.restart_policy
        init_failed = any(c.state == "terminated" and c.exit_code != 0 for c in self.init_containers)
        if not self.initialized:
            phase = "Failed" if policy == "Never" and init_failed else "Pending"
        else:
            running = waiting = stopped = succeeded = 0
            for c in self.containers:
                if c.state == "running":
                    running += 1
                elif c.state == "terminated":
                    stopped += 1
                    succeeded += c.exit_code == 0
                elif c.last_terminated:
                    stopped += 1
                else:
                    waiting += 1
            total = len(self.containers)
            if waiting:
                phase = "Pending"
            elif running:
                phase = "Running"
            elif stopped == total:
                if policy == "Always" and not deleting:
                    phase = "Running"
                elif succeeded == total:
                    phase = "Succeeded"
                elif policy == "OnFailure" and not deleting:
                    phase = "Running"
                else:
                    phase = "Failed"
            else:
                phase = "Pending"
        self.phase = phase
        if phase in ("Succeeded", "Failed") and not deleting:
            self.terminal = True
            self.save_meta()

    def _condition(self, ctype: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self.conditions.get(ctype)
        if prev is None:
            for c in (self.pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == ctype:
                    prev = c
        ltt = (
            prev["lastTransitionTime"]
            if prev and prev.get("status") == status and prev.get("lastTransitionTime")
            else now_iso()
        )
        cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": ltt}
        if reason and not ok:
            cond["reason"] = reason
        if message and not ok:
            cond["message"] = message
        self.conditions[ctype] = cond
        return cond

    def _container_status(self, c: Container) -> Obj:
        s: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": c.image_id,
            "restartCount": c.restart_count,
            "ready": c.ready and c.state == "running",
            "started": c.state == "running" and c.started,
            "lastState": {"terminated": c.last_terminated} if c.last_terminated else {},
        }
        if c.state == "running":
            s["state"] = {"running": {"startedAt": c.started_at}}
            s["containerID"] = c.container_id
        elif c.state == "terminated" and not (c.waiting_reason == "CrashLoopBackOff" and c.backoff_until):
            s["state"] = {"terminated": c.terminated_record()}
            s["containerID"] = c.container_id
        elif c.state == "terminated":
            s["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": c.waiting_message}}
            s["lastState"] = {"terminated": c.terminated_record()}
            s["containerID"] = c.container_id
        else:
            reason = c.waiting_reason or "ContainerCreating"
            if not c.init and not self.initialized and reason == "ContainerCreating":
                reason = "PodInitializing"
            w: Obj = {"reason": reason}
            if c.waiting_message:
                w["message"] = c.waiting_message
            s["state"] = {"waiting": w}
        if c.spec.get("restartPolicy") and c.init:
            s["restartPolicy"] = c.spec["restartPolicy"]
        return s

    async def _push_status(self) -> None:
        sandbox_ok = self.sandbox is not None
        unready = [c.name for c in self.containers if not (c.ready and c.state == "running")]
        ready = not unready and bool(self.containers)
        uninit = [c.name for c in self.init_containers if not (c.state == "terminated" and c.exit_code == 0)]
        completed = self.phase == "Succeeded"
        conds = [
            self._condition("PodReadyToStartContainers", sandbox_ok),
            self._condition(
                "Initialized",
                self.initialized or completed,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(uninit)}]",
            ),
            self._condition(
                "ContainersReady",
                ready,
                "PodCompleted" if completed else "ContainersNotReady",
                "" if completed else f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition(
                "Ready",
                ready,
                "PodCompleted" if completed else "ContainersNotReady",
                "" if completed else f"containers with unready status: [{' '.join(unready)}]",
            ),
        ]
        status: Obj = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": self.cfg.bridge_ip,
            "hostIPs": [{"ip": self.cfg.bridge_ip}],
            "startTime": self.start_time or now_iso(),
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.start_time == "":
            self.start_time = status["startTime"]
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if self.volume_error:
            for cs in status["containerStatuses"]:
                cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
        comparable = json.loads(json.dumps(status))
        if comparable == self.last_status:
            return
        # podIPs/hostIPs merge by ip in a strategic merge patch: replace them (a new sandbox has a new IP).
        body = json.loads(json.dumps(status))
        for key in ("podIPs", "hostIPs"):
            if key in body:
                body[key] = [*body[key], {"$patch": "replace"}]
        try:
            await self.host.node_api.patch(
                f"{self.pod_path}/status", {"metadata": {"uid": self.uid}, "status": body}
            )
            self.last_status = comparable
        except ApiError as exc:
            if exc.status == 404:
                self.gone = True
                self.wake.set()
                return
            log.warning("status of %s/%s: %s", self.ns, self.name, exc)
            self.wake_at(time.monotonic() + 2)

    def log_file(self, container: str, previous: bool) -> Path | None:
        for c in self.all_containers:
            if c.name == container:
                if previous:
                    return c.log_path(c.restart_count - 1) if c.restart_count > 0 else None
                return c.log_path()
        return None

    def container_running(self, container: str) -> bool:
        return any(c.name == container and c.state == "running" for c in self.all_containers)

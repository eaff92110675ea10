"""The kubelet part: one worker per pod bound to this node, reconciling like the kubelet's syncPod.

A worker creates the pod's sandbox (netns + IP), materialises its volumes, runs init containers one
after the other and then the containers, each through :mod:`launcher` in the pod's namespaces;
restarts them per restartPolicy with the kubelet's back-off; runs startup, readiness and liveness
probes (:mod:`probes`); reports phase, conditions and container states (:mod:`podstatus`); and on
deletion sends SIGTERM to each container's process group, SIGKILL after the grace period, tears the
sandbox down and deletes the pod object (grace 0, uid precondition). Container state is kept on disk
(:mod:`container`), so a restarted agent adopts running containers instead of starting them again.
What a container sees (environment, mounts, capabilities) is :mod:`containerenv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import network, podstatus
from .config import ResolvedImage
from .container import ConfigError, Container, Host, Obj, expand, proc_start_ticks
from .containerenv import capabilities, container_env, container_mounts
from .kubeapi import ApiError
from .podutil import now_iso, parse_time
from .probes import Prober
from .volumes import PodVolumes, VolumeError

log = logging.getLogger("nodeagent.pods")

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
MAX_TERMINATION_MESSAGE = 4096
MIN_GRACE_AFTER_PRE_STOP_S = 2.0  # the kubelet's minimumGracePeriodInSeconds

__all__ = ["PodWorker"]


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
        self.prober = Prober(self)

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
                if pid and ticks and proc_start_ticks(int(pid)) == int(ticks):
                    c.pid, c.ticks = int(pid), int(ticks)
                    c.exited.clear()
                    self._watch_exit(c, own_child=False)
                    c.started = not c.spec.get("startupProbe")
                    c.ready = False
                    self.prober.start(c)
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
                await self._stop_all("PodCompleted", grace=self.grace())
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
            await self._stop_all("PodCompleted", grace=self.grace())
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
            env.update(await container_env(self.host, self.pod, c, self.pod_ip))
            mounts = container_mounts(self.host, self.pod, c, self.dir, self.pod_ip, self.volumes.paths)
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
            "capabilities": capabilities(ctx),
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
        c.pid, c.ticks = proc.pid, proc_start_ticks(proc.pid)
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
        self.prober.start(c)
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

    # ------------------------------------------------------------------ stopping
    def grace(self) -> float:
        meta = self.pod["metadata"]
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g if g is not None else 30)

    async def kill(self, c: Container, grace: float, why: str) -> None:
        if c.state != "running" or c.pid is None:
            return
        c.killing = why
        pid = c.pid
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and grace > 0:
            # As the kubelet: the hook runs before SIGTERM and its time comes out of the grace period,
            # leaving SIGTERM at least MIN_GRACE_AFTER_PRE_STOP_S. A Service's endpoints drop the pod
            # while its hook runs, so a server sleeping there is still listening when the last
            # connections routed to it arrive.
            if c.pre_stop is None or c.pre_stop[0] != pid:
                c.pre_stop = (pid, asyncio.create_task(self.prober.pre_stop(c, hook, grace)))
            t0 = time.monotonic()
            await asyncio.shield(c.pre_stop[1])
            grace = max(grace - (time.monotonic() - t0), MIN_GRACE_AFTER_PRE_STOP_S)
            if c.pid != pid:
                return
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
        await asyncio.gather(*(self.kill(c, grace, why) for c in running))

    def _teardown_sandbox(self) -> None:
        if self.sandbox_torn_down:
            return
        network.sandbox_down(self.cfg, self.uid)
        self.host.ipam.release(self.uid)
        self.sandbox = None
        self.sandbox_torn_down = True
        self.save_meta()

    async def _terminate_pod(self) -> None:
        grace = self.grace()
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
        phase = podstatus.compute_phase(
            self.containers,
            self.init_containers,
            initialized=self.initialized,
            restart_policy=self.restart_policy,
            deleting=deleting,
        )
        self.phase = phase
        if phase in ("Succeeded", "Failed") and not deleting:
            self.terminal = True
            self.save_meta()

    async def _push_status(self) -> None:
        status = podstatus.pod_status(
            pod=self.pod,
            known_conditions=self.conditions,
            containers=self.containers,
            init_containers=self.init_containers,
            phase=self.phase,
            initialized=self.initialized,
            sandbox_ready=self.sandbox is not None,
            host_ip=self.cfg.bridge_ip,
            pod_ip=self.pod_ip,
            start_time=self.start_time,
            volume_error=self.volume_error,
        )
        if self.start_time == "":
            self.start_time = status["startTime"]
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

"""Startup, readiness and liveness probes (httpGet, tcpSocket, grpc as a TCP check, exec), run as
the kubelet runs them: one task per probe and container run, thresholds and periods from the spec,
readiness flips and kills (restart) reported back to the pod's worker."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Protocol

from .container import Container, Host, Obj


async def tcp_connect(host: str, port: int, timeout: float) -> None:
    """A TCP connection to host:port, closed at once (a tcpSocket probe); raises OSError or TimeoutError."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class ProbeOwner(Protocol):
    """What the probes need from the pod's worker."""

    host: Host
    pod: Obj
    pod_ip: str

    def poke(self) -> None:
        """Re-sync the pod now (a container's readiness or start state changed)."""

    def grace(self) -> float:
        """The pod's termination grace period in seconds."""
        ...

    async def kill(self, c: Container, grace: float, why: str) -> None:
        """SIGTERM the container, SIGKILL after ``grace`` seconds."""


class Prober:
    def __init__(self, owner: ProbeOwner) -> None:
        self.owner = owner

    def start(self, c: Container) -> None:
        """Start the probes of a container run that just started (or was adopted)."""
        if c.init:
            return
        if c.spec.get("startupProbe"):
            c.probe_tasks.append(asyncio.create_task(self._loop(c, "startup", c.spec["startupProbe"])))
        else:
            self._start_main(c)

    def _start_main(self, c: Container) -> None:
        if c.spec.get("readinessProbe"):
            c.probe_tasks.append(asyncio.create_task(self._loop(c, "readiness", c.spec["readinessProbe"])))
        else:
            c.ready = True
            self.owner.poke()
        if c.spec.get("livenessProbe"):
            c.probe_tasks.append(asyncio.create_task(self._loop(c, "liveness", c.spec["livenessProbe"])))

    async def _loop(self, c: Container, kind: str, probe: Obj) -> None:
        owner = self.owner
        run_pid = c.pid
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        period = float(probe.get("periodSeconds") or 10)
        success_needed = int(probe.get("successThreshold") or 1)
        failure_needed = int(probe.get("failureThreshold") or 3)
        successes = failures = 0
        while c.pid == run_pid and c.state == "running":
            ok, detail = await self._once(c, probe)
            if c.pid != run_pid or c.state != "running":
                return
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
                owner.host.event(
                    owner.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {detail}"
                )
            if kind == "readiness":
                if ok and successes >= success_needed and not c.ready:
                    c.ready = True
                    owner.poke()
                elif not ok and failures >= failure_needed and c.ready:
                    c.ready = False
                    owner.poke()
            elif kind == "startup":
                if ok:
                    c.started = True
                    self._start_main(c)
                    owner.poke()
                    return
                if failures >= failure_needed:
                    owner.host.event(
                        owner.pod,
                        "Normal",
                        "Killing",
                        f"Container {c.name} failed startup probe, will be restarted",
                    )
                    await owner.kill(c, self._grace(probe), "startup probe failed")
                    return
            elif kind == "liveness" and failures >= failure_needed:
                owner.host.event(
                    owner.pod,
                    "Normal",
                    "Killing",
                    f"Container {c.name} failed liveness probe, will be restarted",
                )
                await owner.kill(c, self._grace(probe), "liveness probe failed")
                return
            await asyncio.sleep(period)

    def _grace(self, probe: Obj) -> float:
        g = probe.get("terminationGracePeriodSeconds")
        return float(g) if g is not None else self.owner.grace()

    @staticmethod
    def _port(c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"named port {port!r} not found in container {c.name}")

    async def _once(self, c: Container, probe: Obj) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in probe:
                return await asyncio.wait_for(self._http(c, probe["httpGet"]), timeout)
            if "tcpSocket" in probe or "grpc" in probe:
                spec = probe.get("tcpSocket") or probe["grpc"]
                host = spec.get("host") or self.owner.pod_ip
                port = self._port(c, spec["port"])
                await tcp_connect(host, port, timeout)
                return True, ""
            if "exec" in probe:
                return await self._exec(c, probe["exec"].get("command") or [], timeout)
        except TimeoutError:
            return False, f"timeout after {timeout:g}s"
        except (OSError, ValueError) as exc:
            return False, str(exc)
        return True, ""

    async def pre_stop(self, c: Container, handler: Obj, budget: float) -> None:
        """Run a container's preStop handler (sleep, exec or httpGet) as the kubelet does before its
        SIGTERM: for at most ``budget`` seconds and no longer than the container lives. A failed or
        cut-short hook is a ``FailedPreStopHook`` event; the stop goes on either way."""
        owner = self.owner
        action: Any
        if "sleep" in handler:
            seconds = float(handler["sleep"].get("seconds") or 0)
            action = self._sleep(seconds)
        elif "exec" in handler:
            action = self._exec(c, handler["exec"].get("command") or [], budget)
        elif "httpGet" in handler:
            action = self._http(c, handler["httpGet"])
        else:
            # tcpSocket is accepted by the API for backward compatibility but never run by the kubelet.
            return
        run = asyncio.ensure_future(action)
        exited = asyncio.ensure_future(c.exited.wait())
        try:
            done, _ = await asyncio.wait({run, exited}, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (run, exited):
                t.cancel()
        if run in done:
            try:
                ok, why = run.result()
            except Exception as exc:  # whatever the hook met, the container must still be stopped
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                return
            detail = f"failed: {why}"
        elif exited in done:  # the container ended on its own: nothing left to stop
            return
        else:
            detail = f"did not complete within the grace period ({budget:g}s)"
        owner.host.event(
            owner.pod, "Warning", "FailedPreStopHook", f"PreStopHook of container {c.name} {detail}"
        )

    @staticmethod
    async def _sleep(seconds: float) -> tuple[bool, str]:
        await asyncio.sleep(seconds)
        return True, ""

    async def _http(self, c: Container, spec: Obj) -> tuple[bool, str]:
        host = spec.get("host") or self.owner.pod_ip
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

    @staticmethod
    async def _exec(c: Container, command: list[str], timeout: float) -> tuple[bool, str]:
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
        except asyncio.CancelledError:
            # A preStop hook cut short by the grace period: the command must not outlive it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode == 0:
            return True, ""
        return (
            False,
            f"command {command!r} exited with {proc.returncode}: {out.decode(errors='replace')[-200:]}",
        )

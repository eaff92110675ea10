"""One container of a pod as the node agent tracks it, and what a pod worker needs from its agent.

:class:`Container` holds the kubelet's view of a container (state, restarts, back-off, probes) and
persists it under the pod's directory, so that a restarted agent adopts running containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import network
from .config import Config
from .kubeapi import Api
from .podutil import now_iso

Obj = dict[str, Any]
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


def proc_start_ticks(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process: with the pid it identifies a
    process across agent restarts, so a recycled pid is not mistaken for a container. None once gone."""
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
    pre_stop: tuple[int, asyncio.Task[None]] | None = None
    """The preStop hook run for the process with this pid: a second kill waits for it, never reruns it."""

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

"""What every reconciler shares: settings, the API, the object store, metrics and per-object memory,
plus the two writes all kinds make the same way — status (only when it changed) and Events (named
deterministically, so a replay posts nothing twice).

One :class:`Runtime` exists per operator process; handler modules receive it at registration.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from kubeloop.storage import ObjectStore
from kubeloop_operator.builders.common import merge_diff
from kubeloop_operator.k8s import Kind, Kube
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.registry import Resolver
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.conditions import EventSpec
from kubeloop_operator.sweeper import Sweeper

log = logging.getLogger("kubeloop_operator")


def own_identity() -> str:
    """A peering identity like kopf's own: the pod (or host) and something unique to this process."""
    who = os.environ.get("POD_ID") or socket.gethostname()
    return f"{who}/{os.getpid()}-{secrets.token_hex(3)}"


IN_FLIGHT_S: Final = 10.0
"""How long a status we wrote may take to come back through the watch before we write it again."""


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``. Recursive: the API server
    merges nested objects, so a key a nested object lost (``failure.pod``, ``stable.modelDigest``)
    must be sent as null, or the stale value stays and every later reconcile sees a difference."""
    patch: dict[str, Any] = merge_diff(old, new)
    return patch


@dataclass
class ObjectMemory:
    """What the operator remembers about one resource between reconciles (lost on restart, by design:
    everything here is either re-derivable or only saves a request)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    written: dict[str, Any] | None = None
    written_at: float = 0.0
    children: dict[str, Any] = field(default_factory=dict)
    """Children this process created or adopted, by name, until the index shows them."""
    kept_logs: dict[str, Any] = field(default_factory=dict)
    last_progress_read: float = 0.0
    spec: tuple[int, Any] | None = None
    """ModelDeployment, DriftMonitor: (generation, parsed spec), parsed once per generation."""
    seen: Any = None
    """What the last derivation looked at; the same inputs again derive the same status."""
    final_since: float | None = None
    """When this process first saw the run finished (monotonic): bounds the TTL's wait for logs."""
    resolved: dict[str, Any] = field(default_factory=dict)
    """ModelDeployment: each track's model reference as last resolved (ref, outcome, monotonic time)."""


class Memory:
    def __init__(self) -> None:
        self._objects: dict[str, ObjectMemory] = {}
        self._lock = threading.Lock()

    def of(self, uid: str) -> ObjectMemory:
        with self._lock:
            m = self._objects.get(uid)
            if m is None:
                m = self._objects[uid] = ObjectMemory()
            return m

    def forget(self, uid: str) -> None:
        with self._lock:
            self._objects.pop(uid, None)

    def __len__(self) -> int:
        return len(self._objects)


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    metrics: Metrics
    store: ObjectStore | None = None
    memory: Memory = field(default_factory=Memory)
    resolver: Resolver | None = None
    """Model references -> pinned files (MLflow + object store); set when ModelDeployments register."""
    identity: str = field(default_factory=own_identity)
    """This process in kopf's peering object (kopf is given the same)."""
    sweepers: list[Sweeper] = field(default_factory=list)
    """One periodic-resync loop per kind that registers one; started by the lifecycle handlers."""

    @contextmanager
    def exclusive(self, uid: str) -> Iterator[ObjectMemory]:
        """One reconcile per object at a time (the resync loops and kopf's handler threads run side by side)."""
        mem = self.memory.of(uid)
        with mem.lock:
            yield mem

    def write_status(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        current: Mapping[str, Any],
        new: Mapping[str, Any],
        mem: ObjectMemory,
    ) -> bool:
        """Patch ``status`` to ``new`` unless it is what the object has (or what we just wrote and the
        watch has not shown yet). Returns whether a request was sent."""
        meta = body.get("metadata") or {}
        if dict(current) == dict(new):
            mem.written = None
            self.metrics.status_writes.labels(kind.kind, "unchanged").inc()
            return False
        if mem.written == dict(new) and time.monotonic() - mem.written_at < IN_FLIGHT_S:
            self.metrics.status_writes.labels(kind.kind, "unchanged").inc()
            return False
        patch = merge_patch(current, new)
        self.kube.patch_status(kind, meta.get("namespace"), str(meta.get("name")), patch)
        mem.written, mem.written_at = dict(new), time.monotonic()
        self.metrics.status_writes.labels(kind.kind, "written").inc()
        return True

    def post_events(self, body: Mapping[str, Any], events: Sequence[EventSpec]) -> None:
        """Post each event once (deterministic names); a failure to post is logged, never fatal."""
        meta = body.get("metadata") or {}
        for ev in events:
            try:
                posted = self.kube.post_event(
                    body,
                    name=ev.name(str(meta.get("name")), str(meta.get("uid"))),
                    type_=ev.type,
                    reason=ev.reason,
                    message=ev.message,
                )
            except Exception as e:  # an Event is worth a log line, not a failed reconcile
                log.warning(
                    "cannot post event %s on %s/%s: %s", ev.reason, meta.get("namespace"), meta.get("name"), e
                )
                continue
            if posted:
                self.metrics.events.labels(str(body.get("kind")), ev.type).inc()

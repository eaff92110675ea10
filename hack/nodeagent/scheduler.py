"""The scheduler part: binds pending pods (schedulerName default-scheduler) to this node when they fit.

Filters as kube-scheduler's default plugins do for one node: NodeUnschedulable, NodeName,
NodeAffinity (nodeSelector + required node affinity), TaintToleration (NoSchedule/NoExecute) and
NodeResourcesFit (cpu, memory, ephemeral-storage, extended resources such as nvidia.com/gpu, pod
count). A pod that does not fit gets ``PodScheduled=False, reason Unschedulable`` with the
scheduler's message and a FailedScheduling event, and is retried when pods on the node go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from fractions import Fraction
from typing import Any, Protocol

from .kubeapi import Api, ApiError, Informer
from .podutil import is_terminal, node_affinity_matches, now_iso, parse_quantity, pod_requests, tolerates

log = logging.getLogger("nodeagent.scheduler")
Obj = dict[str, Any]
DEFAULT_SCHEDULER = "default-scheduler"


class SchedHost(Protocol):
    def event(
        self, pod: Obj, etype: str, reason: str, message: str, *, component: str = "kubelet"
    ) -> None: ...


def _fmt(q: Fraction) -> str:
    return str(float(q))


class Scheduler:
    def __init__(
        self,
        host: SchedHost,
        api: Api,
        node_name: str,
        pending: Informer,
        node_pods: Informer,
        nodes: Informer,
    ) -> None:
        self.host = host
        self.api = api
        self.node_name = node_name
        self.pending = pending
        self.node_pods = node_pods
        self.nodes = nodes
        self.assumed: dict[str, dict[str, Fraction]] = {}
        self.wake = asyncio.Event()
        self.reported: dict[str, str] = {}
        pending.add_handler(lambda kind, obj, old: self.wake.set())
        node_pods.add_handler(self._on_node_pod)
        nodes.add_handler(lambda kind, obj, old: self.wake.set())

    def _on_node_pod(self, kind: str, obj: Obj, old: Obj | None) -> None:
        self.assumed.pop(obj["metadata"]["uid"], None)
        if (
            kind == "DELETED"
            or is_terminal(obj)
            or (old is not None and not is_terminal(old) and is_terminal(obj))
        ):
            self.wake.set()

    def _node(self) -> Obj | None:
        return self.nodes.store.get(self.node_name)

    def _used(self) -> tuple[dict[str, Fraction], int]:
        used: dict[str, Fraction] = {}
        count = 0
        seen: set[str] = set()
        for pod in self.node_pods.store.values():
            if is_terminal(pod):
                continue
            seen.add(pod["metadata"]["uid"])
            count += 1
            for k, v in pod_requests(pod).items():
                used[k] = used.get(k, Fraction(0)) + v
        for uid, req in self.assumed.items():
            if uid in seen:
                continue
            count += 1
            for k, v in req.items():
                used[k] = used.get(k, Fraction(0)) + v
        return used, count

    def fit(self, pod: Obj, node: Obj) -> tuple[bool, str, bool]:
        """(fits, reason for the message, whether preemption could help)."""
        spec = node.get("spec") or {}
        if spec.get("unschedulable"):
            tol = pod["spec"].get("tolerations") or []
            if not tolerates(tol, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
                return False, "1 node(s) were unschedulable", False
        for taint in spec.get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
                pod["spec"].get("tolerations") or [], taint
            ):
                val = f": {taint['value']}" if taint.get("value") else ""
                return False, f"1 node(s) had untolerated taint {{{taint['key']}{val}}}", False
        if not node_affinity_matches(pod, node):
            return False, "1 node(s) didn't match Pod's node affinity/selector", False
        alloc = {
            k: parse_quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()
        }
        used, count = self._used()
        if count + 1 > alloc.get("pods", Fraction(110)):
            return False, "1 Too many pods", True
        for res, want in sorted(pod_requests(pod).items()):
            if want <= 0:
                continue
            have = alloc.get(res, Fraction(0))
            if used.get(res, Fraction(0)) + want > have:
                return False, f"1 Insufficient {res}", True
        return True, "", False

    async def run(self) -> None:
        await asyncio.gather(
            self.pending.synced.wait(), self.node_pods.synced.wait(), self.nodes.synced.wait()
        )
        while True:
            self.wake.clear()
            try:
                await self._schedule_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=5.0)

    async def _schedule_all(self) -> None:
        node = self._node()
        if node is None:
            return
        pods = [
            p
            for p in self.pending.store.values()
            if not (p.get("spec") or {}).get("nodeName")
            and (p["spec"].get("schedulerName") or DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
            and not p["metadata"].get("deletionTimestamp")
            and not is_terminal(p)
            and p["metadata"]["uid"] not in self.assumed
        ]
        pending_uids = {p["metadata"]["uid"] for p in self.pending.store.values()}
        for uid in [u for u in self.reported if u not in pending_uids]:
            del self.reported[uid]
        pods.sort(
            key=lambda p: (-int(p["spec"].get("priority") or 0), p["metadata"].get("creationTimestamp", ""))
        )
        for pod in pods:
            ok, reason, preemptible = self.fit(pod, node)
            if ok:
                await self._bind(pod)
            else:
                await self._unschedulable(pod, reason, preemptible)

    async def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        t0 = time.monotonic()
        try:
            await self.api.post(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return  # gone or already bound
            log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], exc)
            return
        self.assumed[uid] = pod_requests(pod)
        self.reported.pop(uid, None)
        log.info("bound %s/%s in %.0f ms", meta["namespace"], meta["name"], (time.monotonic() - t0) * 1000)
        self.host.event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node_name}",
            component="default-scheduler",
        )

    async def _unschedulable(self, pod: Obj, reason: str, preemptible: bool) -> None:
        meta = pod["metadata"]
        why = (
            "No preemption victims found for incoming pod"
            if preemptible
            else "Preemption is not helpful for scheduling"
        )
        message = f"0/1 nodes are available: {reason}. preemption: 0/1 nodes are available: 1 {why}."
        uid = meta["uid"]
        current = next(
            (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
            None,
        )
        if self.reported.get(uid) == message and current and current.get("reason") == "Unschedulable":
            return
        patch = {
            "metadata": {"uid": uid},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                        "lastProbeTime": None,
                        "lastTransitionTime": current.get("lastTransitionTime")
                        if current and current.get("status") == "False"
                        else now_iso(),
                    }
                ]
            },
        }
        try:
            await self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", patch)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("marking %s/%s unschedulable: %s", meta["namespace"], meta["name"], exc)
            return
        if self.reported.get(uid) != message:
            self.host.event(pod, "Warning", "FailedScheduling", message, component="default-scheduler")
        self.reported[uid] = message

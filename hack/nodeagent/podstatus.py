"""The pod status the kubelet reports, computed from the worker's container records: the phase (as
kubelet's getPhase), the conditions (keeping lastTransitionTime while a status does not change) and
each container's status. Pure functions; the worker writes the result to the API."""

from __future__ import annotations

from collections.abc import Sequence

from .container import Container, Obj
from .podutil import now_iso


def compute_phase(
    containers: Sequence[Container],
    init_containers: Sequence[Container],
    *,
    initialized: bool,
    restart_policy: str,
    deleting: bool = False,
) -> str:
    """Pending, Running, Succeeded or Failed for the current container states."""
    init_failed = any(c.state == "terminated" and c.exit_code != 0 for c in init_containers)
    if not initialized:
        return "Failed" if restart_policy == "Never" and init_failed else "Pending"
    running = waiting = stopped = succeeded = 0
    for c in containers:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += c.exit_code == 0
        elif c.last_terminated:
            stopped += 1
        else:
            waiting += 1
    total = len(containers)
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped == total:
        if restart_policy == "Always" and not deleting:
            return "Running"
        if succeeded == total:
            return "Succeeded"
        if restart_policy == "OnFailure" and not deleting:
            return "Running"
        return "Failed"
    return "Pending"


def condition(
    known: dict[str, Obj], pod: Obj, ctype: str, ok: bool, reason: str = "", message: str = ""
) -> Obj:
    """A pod condition; ``lastTransitionTime`` carries over from the last one reported (``known``,
    else the pod's status) while the status stays the same. Records the result in ``known``."""
    status = "True" if ok else "False"
    prev = known.get(ctype)
    if prev is None:
        for c in (pod.get("status") or {}).get("conditions") or []:
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
    known[ctype] = cond
    return cond


def container_status(c: Container, *, pod_initialized: bool) -> Obj:
    """One entry of ``containerStatuses`` / ``initContainerStatuses``."""
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
        if not c.init and not pod_initialized and reason == "ContainerCreating":
            reason = "PodInitializing"
        w: Obj = {"reason": reason}
        if c.waiting_message:
            w["message"] = c.waiting_message
        s["state"] = {"waiting": w}
    if c.spec.get("restartPolicy") and c.init:
        s["restartPolicy"] = c.spec["restartPolicy"]
    return s


def pod_status(
    *,
    pod: Obj,
    known_conditions: dict[str, Obj],
    containers: Sequence[Container],
    init_containers: Sequence[Container],
    phase: str,
    initialized: bool,
    sandbox_ready: bool,
    host_ip: str,
    pod_ip: str,
    start_time: str,
    volume_error: str,
) -> Obj:
    """The whole ``status`` the agent reports for the pod."""
    unready = [c.name for c in containers if not (c.ready and c.state == "running")]
    ready = not unready and bool(containers)
    uninit = [c.name for c in init_containers if not (c.state == "terminated" and c.exit_code == 0)]
    completed = phase == "Succeeded"
    conds = [
        condition(known_conditions, pod, "PodReadyToStartContainers", sandbox_ready),
        condition(
            known_conditions,
            pod,
            "Initialized",
            initialized or completed,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(uninit)}]",
        ),
        condition(
            known_conditions,
            pod,
            "ContainersReady",
            ready,
            "PodCompleted" if completed else "ContainersNotReady",
            "" if completed else f"containers with unready status: [{' '.join(unready)}]",
        ),
        condition(
            known_conditions,
            pod,
            "Ready",
            ready,
            "PodCompleted" if completed else "ContainersNotReady",
            "" if completed else f"containers with unready status: [{' '.join(unready)}]",
        ),
    ]
    status: Obj = {
        "phase": phase,
        "conditions": conds,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time or now_iso(),
        "containerStatuses": [container_status(c, pod_initialized=initialized) for c in containers],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init_containers:
        status["initContainerStatuses"] = [
            container_status(c, pod_initialized=initialized) for c in init_containers
        ]
    if volume_error:
        for cs in status["containerStatuses"]:
            cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return status

"""Pods and Jobs as the indexes keep them (small frozen summaries, not whole bodies), and what is
wrong with a pod, named after its cause.

Shared by every kind that runs pods: the TrainingJob reconciler reads training pods with it, the
ModelDeployment reconciler reads server pods with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubeloop.contracts import JOB_COMPLETION_INDEX_ANNOTATION, JOB_COMPLETION_INDEX_LABEL, Labels

ContainerState = Literal["waiting", "running", "terminated", "unknown"]

IMAGE_PULL_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
CONFIG_REASONS: Final = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    name: str
    state: ContainerState
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    last_reason: str = ""
    last_exit_code: int | None = None
    last_message: str = ""


def _container(cs: Mapping[str, Any]) -> ContainerSummary:
    state = cs.get("state") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    common: dict[str, Any] = {
        "name": str(cs.get("name", "")),
        "restart_count": int(cs.get("restartCount") or 0),
        "last_reason": str(last.get("reason") or ""),
        "last_exit_code": last.get("exitCode"),
        "last_message": str(last.get("message") or ""),
    }
    if "terminated" in state:
        t = state["terminated"] or {}
        return ContainerSummary(
            state="terminated",
            reason=str(t.get("reason") or ""),
            message=str(t.get("message") or ""),
            exit_code=t.get("exitCode"),
            started_at=t.get("startedAt"),
            finished_at=t.get("finishedAt"),
            **common,
        )
    if "running" in state:
        return ContainerSummary(
            state="running", started_at=(state["running"] or {}).get("startedAt"), **common
        )
    if "waiting" in state:
        w = state["waiting"] or {}
        return ContainerSummary(
            state="waiting", reason=str(w.get("reason") or ""), message=str(w.get("message") or ""), **common
        )
    return ContainerSummary(state="unknown", **common)


@dataclass(frozen=True, slots=True)
class PodSummary:
    name: str
    uid: str
    owner_uid: str
    phase: str
    created: str = ""
    index: int | None = None
    deleting: bool = False
    reason: str = ""
    message: str = ""
    unschedulable: str | None = None
    start_time: str | None = None
    ip: str | None = None
    ready: bool = False
    containers: tuple[ContainerSummary, ...] = ()
    init_containers: tuple[ContainerSummary, ...] = ()

    def container(self, name: str) -> ContainerSummary | None:
        return next((c for c in self.containers if c.name == name), None)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def running(self) -> bool:
        return self.phase == "Running" and any(c.state == "running" for c in self.containers)

    @property
    def finished_at(self) -> str:
        return max((c.finished_at or "" for c in self.containers), default="") or self.created


def _index(meta: Mapping[str, Any]) -> int | None:
    for src in (meta.get("labels") or {}, meta.get("annotations") or {}):
        raw = src.get(JOB_COMPLETION_INDEX_LABEL) or src.get(JOB_COMPLETION_INDEX_ANNOTATION)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                return None
    return None


def summarize_pod(body: Mapping[str, Any]) -> PodSummary:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    unschedulable = None
    ready = False
    for cond in status.get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            unschedulable = str(cond.get("message") or "no node fits the pod")
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    return PodSummary(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        owner_uid=str((meta.get("labels") or {}).get(Labels.OWNER_UID, "")),
        phase=str(status.get("phase") or "Pending"),
        created=str(meta.get("creationTimestamp") or ""),
        index=_index(meta),
        deleting=bool(meta.get("deletionTimestamp")),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        unschedulable=unschedulable,
        start_time=status.get("startTime"),
        ip=status.get("podIP"),
        ready=ready,
        containers=tuple(_container(c) for c in status.get("containerStatuses") or []),
        init_containers=tuple(_container(c) for c in status.get("initContainerStatuses") or []),
    )


@dataclass(frozen=True, slots=True)
class JobCondition:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    time: str = ""


@dataclass(frozen=True, slots=True)
class JobSummary:
    name: str
    uid: str
    owner_uid: str
    suspend: bool
    backoff_limit: int | None
    active_deadline_seconds: int | None
    parallelism: int
    spec_generation: int | None = None
    active: int = 0
    ready: int = 0
    failed: int = 0
    succeeded: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    conditions: tuple[JobCondition, ...] = ()
    deleting: bool = False

    def condition(self, type_: str) -> JobCondition | None:
        return next((c for c in self.conditions if c.type == type_ and c.status == "True"), None)

    def spec_view(self) -> dict[str, Any]:
        """The mutable spec fields, as a live Job's ``spec`` has them."""
        return {
            "suspend": self.suspend,
            "backoffLimit": self.backoff_limit,
            "activeDeadlineSeconds": self.active_deadline_seconds,
        }


def summarize_job(body: Mapping[str, Any], spec_generation_annotation: str = "") -> JobSummary:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    owner_uid = next(
        (str(r.get("uid")) for r in meta.get("ownerReferences") or [] if r.get("controller")),
        str((meta.get("labels") or {}).get(Labels.OWNER_UID, "")),
    )
    gen_raw = (
        (meta.get("annotations") or {}).get(spec_generation_annotation)
        if spec_generation_annotation
        else None
    )
    return JobSummary(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        owner_uid=owner_uid,
        suspend=bool(spec.get("suspend")),
        backoff_limit=spec.get("backoffLimit"),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        parallelism=int(spec.get("parallelism") or 1),
        spec_generation=int(gen_raw) if gen_raw and str(gen_raw).isdigit() else None,
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        failed=int(status.get("failed") or 0),
        succeeded=int(status.get("succeeded") or 0),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        conditions=tuple(
            JobCondition(
                type=str(c.get("type")),
                status=str(c.get("status")),
                reason=str(c.get("reason") or ""),
                message=str(c.get("message") or ""),
                time=str(c.get("lastTransitionTime") or ""),
            )
            for c in status.get("conditions") or []
        ),
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True, slots=True)
class PodProblem:
    """What is wrong with a pod, named after its cause."""

    reason: str
    message: str
    container: str | None = None
    exit_code: int | None = None
    # True when the pod is done for (it failed); False when it is stuck but may still recover.
    final: bool = False


def _image_message(c: ContainerSummary) -> str:
    return f"container {c.name}: {c.reason}: {c.message}".rstrip(": ")


def pod_problem(pod: PodSummary) -> PodProblem | None:
    """The cause that keeps a pod from running, or that made it fail; None when nothing is wrong.

    Image pull errors are one reason, ImagePullBackOff, whichever of ErrImagePull/ImagePullBackOff the
    kubelet shows at the moment (it alternates), so a status does not flap while nothing changes."""
    if pod.deleting:
        return None
    if pod.phase == "Pending" and pod.unschedulable:
        return PodProblem("Unschedulable", pod.unschedulable)
    for c in (*pod.init_containers, *pod.containers):
        if c.state == "waiting":
            if c.reason in IMAGE_PULL_REASONS:
                return PodProblem("ImagePullBackOff", _image_message(c), c.name)
            if c.reason in CONFIG_REASONS:
                return PodProblem(c.reason, f"container {c.name}: {c.message}", c.name)
            if c.reason == "CrashLoopBackOff":
                root = "OOMKilled" if c.last_reason == "OOMKilled" else "CrashLoopBackOff"
                detail = f" (last exit code {c.last_exit_code}, {c.last_reason or 'Error'})"
                return PodProblem(
                    root,
                    f"container {c.name} keeps crashing{detail}: {c.last_message or c.message}".rstrip(": "),
                    c.name,
                    c.last_exit_code,
                )
        if c.state == "terminated" and (c.exit_code or 0) != 0:
            reason = "OOMKilled" if c.reason == "OOMKilled" else "Error"
            return PodProblem(reason, c.message, c.name, c.exit_code, final=pod.phase == "Failed")
    if pod.phase == "Failed":
        return PodProblem(pod.reason or "PodFailed", pod.message or "the pod failed", final=True)
    return None

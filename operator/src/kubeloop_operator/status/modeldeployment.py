"""A ModelDeployment's status from its Deployments, its server pods and its resolved models (pure).

Ready never lies. ``Ready`` is True only when, for every track, the model reference is resolved, the
Deployment runs the desired template (the config hash that pins the version) and has caught up with
it (``observedGeneration``), and both the Deployment controller and the pods themselves say that
exactly the desired number of replicas run that template, all of them Ready — and a server pod is
Ready only when its model-ready endpoint answers for the pinned name and version. Old pods still
around, a pod not ready, a missing Deployment: Ready is False, and says which.

Failures are named after their cause, most specific first: the server's own reason from its
termination message (``ModelLoadFailed: <why>``), then what the kubelet says (CrashLoopBackOff,
ImagePullBackOff, CreateContainerConfigError, Unschedulable …), a Deployment that cannot create pods
(FailedCreate) or has stopped progressing (ProgressDeadlineExceeded), and a model reference that
does not resolve (ModelNotFound, AliasNotFound, RegistryUnavailable …). Any of them makes the phase
Failed — never Progressing forever — while the pods that do serve go on serving.

``lastFailure`` keeps the most recent failure, also after recovery; its time is when it was first
seen on that pod (or for that reference), so an unchanged world derives an unchanged status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from kubeloop.contracts import Labels
from kubeloop.resources import Condition, ModelDeploymentSpec, ModelDeploymentStatus
from kubeloop.resources.modeldeployment import CanaryStatus, LastFailure, TrackStatus
from kubeloop_operator.builders.modeldeployment import (
    CONFIG_HASH,
    CONTAINER,
    MODEL_VERSION_LABEL,
    TRACK_LABEL,
    TRACKS,
    ResolvedModel,
    Track,
    live_hash,
    owned_hash,
    split_percent,
)
from kubeloop_operator.status.conditions import EventSpec, Want, merge, one_line, rfc3339
from kubeloop_operator.status.pods import PodSummary, pod_problem, summarize_pod

CONDITION_TYPES: Final = ("ModelResolved", "Available", "Progressing", "Ready")
# "ModelLoadFailed: the file is not ONNX" — the server's one-line termination message.
_SERVER_REASON = re.compile(r"^\s*([A-Z][A-Za-z0-9]{2,63}): (.+)$", re.S)


# --- what the indexes keep ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeploymentCondition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentSummary:
    name: str
    uid: str
    owner_uid: str
    track: str
    generation: int
    observed_generation: int
    spec_replicas: int
    config_hash: str
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    conditions: tuple[DeploymentCondition, ...] = ()
    deleting: bool = False
    owned_hash: str = ""
    """The hash of the fields the operator owns as they are live (``builders.modeldeployment.owned_hash``):
    differs from the built Deployment's after a hand edit, which leaves ``config_hash`` as it was."""

    def condition(self, type_: str) -> DeploymentCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentSummary:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    lbl = meta.get("labels") or {}
    return DeploymentSummary(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        owner_uid=str(lbl.get(Labels.OWNER_UID, "")),
        track=str(lbl.get(TRACK_LABEL, "")),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        spec_replicas=int(spec["replicas"]) if spec.get("replicas") is not None else 1,
        config_hash=str((meta.get("annotations") or {}).get(CONFIG_HASH, "")),
        replicas=int(status.get("replicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        conditions=tuple(
            DeploymentCondition(
                type=str(c.get("type")),
                status=str(c.get("status")),
                reason=str(c.get("reason") or ""),
                message=str(c.get("message") or ""),
            )
            for c in status.get("conditions") or []
        ),
        deleting=bool(meta.get("deletionTimestamp")),
        owned_hash=owned_hash(body),
    )


@dataclass(frozen=True, slots=True)
class ServerPod:
    """A server pod: its summary plus the track, template hash and version its labels carry."""

    pod: PodSummary
    track: str
    config_hash: str
    version: str


def summarize_server_pod(body: Mapping[str, Any]) -> ServerPod:
    lbl = (body.get("metadata") or {}).get("labels") or {}
    return ServerPod(
        pod=summarize_pod(body),
        track=str(lbl.get(TRACK_LABEL, "")),
        config_hash=str(lbl.get(CONFIG_HASH, "")),
        version=str(lbl.get(MODEL_VERSION_LABEL, "")),
    )


@dataclass(frozen=True, slots=True)
class ChildSummary:
    """A Service or HPA: enough to know it exists and whether it is the desired one."""

    name: str
    uid: str
    owner_uid: str
    config_hash: str
    deleting: bool = False
    live_hash: str = ""
    """The same hash over the live spec: differs from ``config_hash`` after a hand edit."""

    @property
    def drifted(self) -> bool:
        return bool(self.live_hash) and self.live_hash != self.config_hash


def summarize_child(body: Mapping[str, Any]) -> ChildSummary:
    meta = body.get("metadata") or {}
    return ChildSummary(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        owner_uid=str((meta.get("labels") or {}).get(Labels.OWNER_UID, "")),
        config_hash=str((meta.get("annotations") or {}).get(CONFIG_HASH, "")),
        deleting=bool(meta.get("deletionTimestamp")),
        live_hash=live_hash(body),
    )


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolveFailure:
    """A model reference that did not resolve (reason, message)."""

    ref: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ChildError:
    """A child the API server refused: its answer."""

    what: str
    reason: str
    message: str


@dataclass(frozen=True)
class TrackPlan:
    """What one track should be: its replicas, the model and template hash it should run."""

    track: Track
    deployment: str
    replicas: int
    model: ResolvedModel | ResolveFailure | None
    config_hash: str | None
    """The desired template's hash; None when the model is not resolved (the template stays)."""


@dataclass(frozen=True)
class Observed:
    now: datetime
    generation: int
    spec: ModelDeploymentSpec
    current: ModelDeploymentStatus
    plans: Mapping[Track, TrackPlan]
    deployments: Mapping[str, DeploymentSummary]
    """By track."""
    pods: Sequence[ServerPod] = ()
    url: str | None = None
    grpc_url: str | None = None
    selector: str | None = None
    child_errors: Sequence[ChildError] = ()
    requested_canary_percent: int | None = None


@dataclass
class TrackState:
    """How far one track is, from the Deployment controller's and the pods' own view."""

    plan: TrackPlan
    deployment: DeploymentSummary | None
    pods: list[ServerPod] = field(default_factory=list)

    @property
    def live(self) -> list[ServerPod]:
        return [p for p in self.pods if not p.pod.deleting]

    @property
    def updated(self) -> list[ServerPod]:
        return [p for p in self.live if self.plan.config_hash and p.config_hash == self.plan.config_hash]

    @property
    def ready(self) -> list[ServerPod]:
        return [p for p in self.live if p.pod.ready]

    def complete(self) -> bool:
        """Every desired replica runs the desired template and is Ready; nothing else is left."""
        d, want = self.deployment, self.plan.replicas
        if d is None and want == 0:  # nothing wanted (a removed canary): done once its pods are gone
            return not self.live
        if self.plan.config_hash is None or not isinstance(self.plan.model, ResolvedModel) or d is None:
            return False
        return (
            not d.deleting
            and d.config_hash == self.plan.config_hash
            and d.spec_replicas == want
            and d.observed_generation >= d.generation
            and d.updated_replicas == want
            and d.replicas == want
            and d.ready_replicas == want
            and d.available_replicas == want
            and len(self.live) == want
            and all(p.pod.ready and p.config_hash == self.plan.config_hash for p in self.live)
        )

    def summary(self) -> str:
        v = self.plan.model.version if isinstance(self.plan.model, ResolvedModel) else ""
        on = f" on version {v}" if v else ""
        return f"{len([p for p in self.updated if p.pod.ready])} of {self.plan.replicas} ready{on}"


@dataclass
class Derived:
    status: ModelDeploymentStatus
    events: list[EventSpec]
    complete: dict[str, bool]


# --- parsing -----------------------------------------------------------------------------------------


def parse_status(raw: Mapping[str, Any] | None) -> ModelDeploymentStatus:
    try:
        return ModelDeploymentStatus.model_validate(dict(raw or {}))
    except ValidationError:
        return ModelDeploymentStatus()


def dump(status: ModelDeploymentStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def server_reason(text: str) -> tuple[str, str] | None:
    """(reason, message) from the server's termination message ``<Reason>: <message>``."""
    m = _SERVER_REASON.match(text or "")
    return (m[1], one_line(m[2], 2048)) if m else None


def pod_failure(sp: ServerPod) -> tuple[str, str] | None:
    """What keeps a server pod from serving, named after its cause; None when nothing is wrong.

    A server container that exited is restarted by the kubelet (restartPolicy Always), runs for a
    moment, exits again: between its crashes it is *running*. Until it is Ready it is still the same
    crash loop, so the status does not flap with every restart."""
    if sp.pod.deleting:
        return None
    c = sp.pod.container(CONTAINER)
    problem = pod_problem(sp.pod)
    crashed = (
        c is not None
        and not sp.pod.ready
        and (
            c.state == "terminated"
            or (c.restart_count > 0 and (c.last_reason != "" or c.last_exit_code is not None))
        )
    )
    if problem is None and not crashed:
        return None
    if c is not None and (
        crashed or (problem is not None and problem.reason in ("Error", "CrashLoopBackOff"))
    ):
        said = server_reason(c.message) or server_reason(c.last_message)
        if said is not None:  # no restart count in the message: it would change with every restart
            return said[0], f"pod {sp.pod.name}: {said[1]}"
    if problem is not None and problem.reason not in ("Error", "CrashLoopBackOff"):
        return problem.reason, f"pod {sp.pod.name}: {one_line(problem.message, 2048) or problem.reason}"
    if c is not None and "OOMKilled" in (c.reason, c.last_reason):
        return (
            "OOMKilled",
            f"pod {sp.pod.name}: container {CONTAINER} was killed for exceeding its memory limit",
        )
    # Exited (any code: a server is not meant to end) and restarted with back-off: a crash loop.
    code = c.exit_code if c is not None and c.state == "terminated" else (c.last_exit_code if c else None)
    why = (c.reason if c is not None and c.state == "terminated" else (c.last_reason if c else "")) or "Error"
    return (
        "CrashLoopBackOff",
        f"pod {sp.pod.name}: container {CONTAINER} keeps exiting (exit code {code}, {why})",
    )


# --- derivation --------------------------------------------------------------------------------------


def _failures(o: Observed, states: Mapping[Track, TrackState]) -> list[tuple[Track, str | None, str, str]]:
    """Every current failure as (track, pod, reason, message), most relevant first: the pods of the
    desired template, then older pods, then the Deployment, then the model reference."""
    out: list[tuple[Track, str | None, str, str]] = []
    for track, st in states.items():
        pods = sorted(
            st.live,
            key=lambda p: (p.config_hash != st.plan.config_hash, p.pod.created, p.pod.name),
        )
        for sp in pods:
            f = pod_failure(sp)
            if f is not None:
                out.append((track, sp.pod.name, f[0], f[1]))
        d = st.deployment
        if d is not None:
            rf = d.condition("ReplicaFailure")
            if rf is not None and rf.status == "True":
                out.append((track, None, rf.reason or "FailedCreate", one_line(rf.message, 2048)))
            pr = d.condition("Progressing")
            if pr is not None and pr.status == "False" and pr.reason == "ProgressDeadlineExceeded":
                out.append((track, None, "ProgressDeadlineExceeded", one_line(pr.message, 2048)))
        if isinstance(st.plan.model, ResolveFailure):
            out.append((track, None, st.plan.model.reason, st.plan.model.message))
    for err in o.child_errors:
        out.append(("stable", None, err.reason, f"{err.what}: {err.message}"))
    return out


def _last_failure(o: Observed, failures: list[tuple[Track, str | None, str, str]]) -> LastFailure | None:
    prev = o.current.last_failure
    if not failures:
        return prev
    for track, pod, reason, _ in failures:  # the one reported already, while it lasts
        if prev is not None and (prev.track, prev.pod, prev.reason) == (track, pod, reason):
            return prev
    track, pod, reason, message = failures[0]
    return LastFailure(
        reason=reason, message=one_line(message, 4096), time=rfc3339(o.now), track=track, pod=pod
    )


def _track_status(st: TrackState, total_ready: int, current: TrackStatus | None) -> dict[str, Any]:
    m = st.plan.model
    ready = len(st.ready)
    out: dict[str, Any] = {
        "deployment": st.plan.deployment,
        "replicas": st.plan.replicas,
        "updated_replicas": len(st.updated),
        "ready_replicas": ready,
        "weight": round(100 * ready / total_ready) if total_ready else 0,
    }
    if isinstance(m, ResolvedModel):
        out.update(model_version=m.version or None, model_uri=m.uri, model_digest=m.digest)
    elif current is not None:  # not resolved now: what is pinned stays reported
        out.update(
            model_version=current.model_version,
            model_uri=current.model_uri,
            model_digest=current.model_digest,
        )
    return out


def _resolved_message(plans: Mapping[Track, TrackPlan]) -> str:
    parts = []
    for track, p in plans.items():
        m = p.model
        if isinstance(m, ResolvedModel):
            via = f"{m.alias} -> " if m.alias else ""
            ver = f"version {m.version} " if m.version else ""
            parts.append(f"{track}: {via}{m.name} {ver}({m.uri}{', ' + m.digest if m.digest else ''})")
    return "; ".join(parts)


def derive(o: Observed) -> Derived:
    """The status the ModelDeployment should have now, and the events its change deserves."""
    spec, cur = o.spec, o.current
    states: dict[Track, TrackState] = {
        t: TrackState(o.plans[t], o.deployments.get(t), [p for p in o.pods if p.track == t])
        for t in TRACKS
        if t in o.plans
    }
    for p in o.pods:  # pods of a track no longer planned (a canary being removed) still count
        if p.track == "canary" and "canary" not in states:
            states["canary"] = TrackState(TrackPlan("canary", "", 0, None, None), o.deployments.get("canary"))
        if p.track == "canary" and not o.plans.get("canary"):
            states["canary"].pods.append(p)
    complete = {str(t): st.complete() for t, st in states.items()}
    failures = _failures(o, states)
    last_failure = _last_failure(o, failures)
    resolve_failures = [
        (t, st.plan.model) for t, st in states.items() if isinstance(st.plan.model, ResolveFailure)
    ]
    total_ready = sum(len(st.ready) for st in states.values())
    total_replicas = sum(st.deployment.replicas for st in states.values() if st.deployment)
    desired_total = sum(st.plan.replicas for st in states.values())
    all_complete = all(complete.values()) and not o.child_errors
    suspended = spec.suspend

    if resolve_failures:
        t, rf = resolve_failures[0]
        assert isinstance(rf, ResolveFailure)
        resolved = Want("ModelResolved", False, rf.reason, f"{t}: {rf.message}")
    else:
        resolved = Want("ModelResolved", True, "Resolved", _resolved_message(o.plans))

    if total_ready:
        available = Want(
            "Available", True, "ReplicasReady", f"{total_ready} replica(s) ready behind Service endpoints"
        )
    elif suspended:
        available = Want("Available", False, "Suspended", "spec.suspend is true: no replicas run")
    elif desired_total == 0:
        available = Want("Available", False, "ScaledToZero", "0 replicas desired")
    else:
        available = Want("Available", False, "NoReplicasReady", "no replica is ready")

    progress_msg = "; ".join(f"{t}: {st.summary()}" for t, st in states.items() if st.plan.deployment)
    blocking = failures[0] if failures else None
    if last_failure is not None and blocking is not None:
        for f in failures:  # keep saying what was reported while it lasts (kubelet messages vary)
            if (f[0], f[1], f[2]) == (last_failure.track, last_failure.pod, last_failure.reason):
                blocking = (f[0], f[1], f[2], last_failure.message)
                break
    if suspended:
        progressing = Want("Progressing", False, "Suspended", "spec.suspend is true")
        ready = Want("Ready", False, "Suspended", "spec.suspend is true: scaled to zero")
        phase = "Suspended"
    elif all_complete and not resolve_failures:
        progressing = Want("Progressing", False, "RolloutComplete", progress_msg)
        what = progress_msg if desired_total else "scaled to zero (0 replicas desired)"
        ready = Want("Ready", True, "Ready", what)
        phase = "Ready"
    elif blocking is not None:
        bt, _, breason, bmsg = blocking
        stuck = f"{bt} track stuck: {bmsg}"
        progressing = Want("Progressing", False, breason, stuck)
        ready = Want("Ready", False, breason, stuck)
        phase = "Failed"
    else:
        progressing = Want("Progressing", True, "RollingOut", progress_msg or "creating the Deployments")
        ready = Want("Ready", False, "RollingOut", progress_msg or "creating the Deployments")
        phase = "Progressing" if any(st.deployment for st in states.values()) else "Pending"

    stable = states.get("stable")
    sm = stable.plan.model if stable is not None else None
    top: dict[str, Any] = {}
    if isinstance(sm, ResolvedModel):
        top = {
            "model_name": sm.name,
            "model_version": sm.version or None,
            "model_uri": sm.uri,
            "model_digest": sm.digest,
            "baseline_uri": sm.baseline_uri,
        }
    else:
        top = {
            "model_name": cur.model_name,
            "model_version": cur.model_version,
            "model_uri": cur.model_uri,
            "model_digest": cur.model_digest,
            "baseline_uri": cur.baseline_uri,
        }
    canary_state = states.get("canary")
    canary: CanaryStatus | None = None
    if canary_state is not None and (spec.canary is not None or canary_state.live or canary_state.deployment):
        ts = _track_status(canary_state, total_ready, cur.canary)
        stable_n = o.plans["stable"].replicas if "stable" in o.plans else 0
        canary = CanaryStatus(
            **ts,
            traffic_percent=split_percent(stable_n, canary_state.plan.replicas)
            if spec.canary is not None
            else 0,
        )
    status = ModelDeploymentStatus(
        observed_generation=o.generation,
        phase=phase,
        replicas=total_replicas,
        ready_replicas=total_ready,
        selector=o.selector,
        url=o.url,
        grpc_url=o.grpc_url,
        stable=TrackStatus(**_track_status(stable, total_ready, cur.stable)) if stable is not None else None,
        canary=canary,
        conditions=merge(
            cur.conditions, [resolved, available, progressing, ready], generation=o.generation, now=o.now
        ),
        last_failure=last_failure,
        **{k: v for k, v in top.items() if v is not None},
    )
    return Derived(status=status, events=_events(o, status, complete), complete=complete)


def _events(o: Observed, new: ModelDeploymentStatus, complete: Mapping[str, bool]) -> list[EventSpec]:
    old = o.current
    out: list[EventSpec] = []
    nf, of = new.last_failure, old.last_failure
    if nf is not None and nf != of:
        out.append(
            EventSpec("Warning", nf.reason, nf.message, f"failure/{nf.track}/{nf.pod}/{nf.reason}/{nf.time}")
        )
    was_ready = _cond(old.conditions, "Ready")
    is_ready = _cond(new.conditions, "Ready")
    hashes = "/".join(f"{t}={p.config_hash}" for t, p in sorted(o.plans.items()))
    if is_ready == "True" and was_ready != "True":
        msg = next((c.message for c in new.conditions if c.type == "Ready"), "")
        out.append(EventSpec("Normal", "RolloutComplete", msg or "ready", f"ready/{hashes}"))
    if str(new.phase) != str(old.phase) and new.phase == "Suspended":
        out.append(
            EventSpec("Normal", "Suspended", "scaled to zero (spec.suspend)", f"suspended/{o.generation}")
        )
    if old.phase == "Suspended" and new.phase != "Suspended":
        out.append(EventSpec("Normal", "Resumed", "spec.suspend is false again", f"resumed/{o.generation}"))
    return out


def _cond(conds: Sequence[Condition], type_: str) -> str | None:
    c = next((c for c in conds if c.type == type_), None)
    return str(c.status) if c is not None else None


def invalid_spec(current: ModelDeploymentStatus, generation: int, message: str, now: datetime) -> Derived:
    """A spec the API server accepted but the model refuses (e.g. an older CRD): Failed, nothing changed."""
    failure = LastFailure(reason="InvalidSpec", message=one_line(message, 4096), time=rfc3339(now))
    prev = current.last_failure
    if prev is not None and prev.reason == "InvalidSpec" and prev.message == failure.message:
        failure = prev
    conds = merge(
        current.conditions,
        [
            Want("ModelResolved", False, "InvalidSpec", failure.message),
            Want("Available", _cond(current.conditions, "Available") == "True", "InvalidSpec", ""),
            Want("Progressing", False, "InvalidSpec", failure.message),
            Want("Ready", False, "InvalidSpec", failure.message),
        ],
        generation=generation,
        now=now,
    )
    status = current.model_copy(
        update={
            "observed_generation": generation,
            "phase": "Failed",
            "conditions": conds,
            "last_failure": failure,
        }
    )
    events = (
        []
        if prev == failure
        else [EventSpec("Warning", "InvalidSpec", failure.message, f"invalid/{generation}")]
    )
    return Derived(status=status, events=events, complete={})

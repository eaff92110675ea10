"""The ModelDeployment reconciler: model references resolved and pinned, Service, HPA and one
Deployment per track in line with the spec, a removed canary taken away once the stable track has
fully rolled, status derived and written when it changed.

Resolution is cached per track in the object's memory: a spec change resolves at once, the alias
poll (and a TrainingJob moving the alias) resolves again, a failed resolution is retried at most
every ``RESOLVE_RETRY_S``, and a registry or store that is unreachable keeps what is pinned. Every
other reconcile (resync, child events) reads no registry and writes nothing unless something changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from kubeloop import podenv
from kubeloop.resources import ModelDeploymentSpec, ModelDeploymentStatus, ModelRef, format_validation_error
from kubeloop_operator.builders.common import Owner
from kubeloop_operator.builders.modeldeployment import (
    TRACKS,
    ResolvedModel,
    ServerPodConfig,
    Track,
    build_deployment,
    build_hpa,
    build_service,
    deployment_name,
    deployment_patch,
    desired_replicas,
    manifest_hash,
    owned_hash,
    ref_key,
    selector,
    spec_patch,
    urls,
)
from kubeloop_operator.errors import retry_later
from kubeloop_operator.k8s import (
    DEPLOYMENT,
    HPA,
    MODELDEPLOYMENT,
    SERVICE,
    Kind,
    KubeError,
    NameConflictError,
)
from kubeloop_operator.registry import ResolveError
from kubeloop_operator.runtime import ObjectMemory, Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.conditions import EventSpec, reason_word
from kubeloop_operator.status.modeldeployment import (
    ChildError,
    ChildSummary,
    DeploymentSummary,
    Derived,
    Observed,
    ResolveFailure,
    ServerPod,
    TrackPlan,
    TrackState,
    derive,
    dump,
    invalid_spec,
    parse_status,
    summarize_child,
    summarize_deployment,
)

log = logging.getLogger("kubeloop_operator.modeldeployment")

KIND: Final = "ModelDeployment"
CREATED_HINT_S: Final = 15.0
"""How long a child this process just wrote counts as the truth before the index shows it."""
RESOLVE_RETRY_S: Final = 5.0
"""A reference that did not resolve is tried again at most this often."""
TRANSIENT: Final = frozenset({"RegistryUnavailable", "StorageUnavailable"})
"""Resolution failures that keep what is pinned (the registry or store is down, not the model gone)."""


@dataclass(frozen=True)
class MdView:
    """The children of one ModelDeployment, as the in-memory indexes have them."""

    deployments: Sequence[DeploymentSummary] = field(default_factory=tuple)
    pods: Sequence[ServerPod] = field(default_factory=tuple)
    services: Sequence[ChildSummary] = field(default_factory=tuple)
    hpas: Sequence[ChildSummary] = field(default_factory=tuple)


def server_pod_config(settings: OperatorSettings) -> ServerPodConfig:
    endpoint = settings.pods_s3_endpoint
    store = (
        podenv.ObjectStoreAccess.from_secret(
            endpoint,
            settings.credentials_secret,
            bucket=settings.bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        if endpoint
        else None
    )
    return ServerPodConfig(
        image=settings.server_image,
        image_pull_policy=settings.image_pull_policy,
        store=store,
        max_surge=settings.rollout_max_surge,
    )


def reconcile(rt: Runtime, body: Mapping[str, Any], view: MdView, *, resolve: bool = False) -> None:
    """Bring one ModelDeployment's children and status up to date. ``resolve``: look its model
    references up again now (alias poll, an alias moved). Raises kopf.TemporaryError when the API
    server refused a child for now (after the status says so)."""
    owner = Owner.from_body(body)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # garbage collection takes the children
    mem = rt.memory.of(owner.uid)
    parsed = mem.spec
    if parsed is None or parsed[0] != owner.generation:
        try:
            parsed = (owner.generation, ModelDeploymentSpec.model_validate(body.get("spec") or {}))
        except ValidationError as e:
            with rt.exclusive(owner.uid) as mem:
                now, current = datetime.now(UTC), parse_status(body.get("status"))
                message = format_validation_error(e, "spec")
                _publish(rt, body, current, invalid_spec(current, owner.generation, message, now), mem)
            return
    spec: ModelDeploymentSpec = parsed[1]
    # The registry and the store are asked outside the object's lock: a slow MLflow never holds up
    # the reconciles that pod events bring meanwhile (they use what is resolved already).
    _resolve_all(rt, mem, owner, spec, parse_status(body.get("status")), force=resolve)
    with rt.exclusive(owner.uid) as mem:
        if mem.spec is not None and mem.spec[0] > owner.generation:
            return  # a newer generation has been reconciled: this event is history
        mem.spec = parsed
        now = datetime.now(UTC)
        current = parse_status(body.get("status"))
        models = _cached(mem, spec)
        replicas = desired_replicas(spec)
        cfg = server_pod_config(rt.settings)
        events: list[EventSpec] = []
        errors: list[ChildError] = []
        plans: dict[Track, TrackPlan] = {}
        manifests: dict[Track, dict[str, Any]] = {}
        for t in TRACKS:
            if t == "canary" and spec.canary is None:
                continue
            m = models.get(t)
            man = (
                build_deployment(owner, spec, t, m, replicas[t], cfg)
                if isinstance(m, ResolvedModel)
                else None
            )
            if man is not None:
                manifests[t] = man
            plans[t] = TrackPlan(
                t, deployment_name(owner.name, t), replicas[t], m, manifest_hash(man) if man else None
            )

        _ensure_child(rt, mem, owner, SERVICE, build_service(owner), view.services, errors)
        hpa = build_hpa(owner, spec)
        if hpa is not None:
            _ensure_child(rt, mem, owner, HPA, hpa, view.hpas, errors)
        else:
            for h in view.hpas:
                if h.owner_uid == owner.uid and not h.deleting:
                    rt.kube.delete(HPA, owner.namespace, h.name, uid=h.uid)
                    mem.children.pop(_key(HPA, h.name), None)
                    log.info(
                        "deleted HorizontalPodAutoscaler %s/%s (no autoscaling)", owner.namespace, h.name
                    )

        url, grpc_url = urls(owner)
        pods = [p for p in view.pods if p.pod.owner_uid == owner.uid]

        def derive_with(deps: Mapping[str, DeploymentSummary], cur: ModelDeploymentStatus) -> Derived:
            return derive(
                Observed(
                    now=now,
                    generation=owner.generation,
                    spec=spec,
                    current=cur,
                    plans=plans,
                    deployments=deps,
                    pods=pods,
                    url=url,
                    grpc_url=grpc_url,
                    selector=selector(owner),
                    child_errors=errors,
                    requested_canary_percent=spec.canary.traffic_percent if spec.canary else None,
                )
            )

        lives = {t: _deployment(view, mem, deployment_name(owner.name, t)) for t in TRACKS}
        coming = {t: _coming(mem, plans[t], manifests.get(t), lives[t]) for t in plans}
        if _is_ready(current) and any(c is not None for c in coming.values()):
            # Ready goes False *before* a Deployment changes, never after: no window in which the
            # status says Ready while a new template or replica count is already on its way.
            ahead: dict[str, DeploymentSummary] = {t: d for t, d in lives.items() if d is not None}
            ahead.update({t: d for t, c in coming.items() if c is not None for d in c})
            pre = derive_with(ahead, current)
            if not _is_ready(pre.status):
                _publish(rt, body, current, Derived(pre.status, [], pre.complete), mem)
                current = pre.status
        deployments: dict[str, DeploymentSummary] = {}
        for t in TRACKS:
            live = lives[t]
            if t in plans:
                live = _ensure_deployment(rt, mem, owner, plans[t], manifests.get(t), live, errors, events)
            if live is not None:
                deployments[t] = live
        if spec.canary is None and "canary" in deployments:
            canary = deployments["canary"]
            stable_done = TrackState(
                plans["stable"], deployments.get("stable"), [p for p in pods if p.track == "stable"]
            )
            if stable_done.complete() and not canary.deleting:
                # The stable track serves everything now: the canary may go.
                rt.kube.delete(DEPLOYMENT, owner.namespace, canary.name, uid=canary.uid)
                mem.children.pop(_key(DEPLOYMENT, canary.name), None)
                log.info("deleted canary Deployment %s/%s", owner.namespace, canary.name)
                del deployments["canary"]
            else:  # keep it serving, unchanged, until then
                plans["canary"] = TrackPlan("canary", canary.name, canary.spec_replicas, None, None)
        derived = derive_with(deployments, current)
        derived.events[:0] = events
        _publish(rt, body, current, derived, mem)
        if errors:
            raise retry_later(
                f"cannot create the children of {owner.namespace}/{owner.name}: {errors[0].message}"
            )


def _is_ready(status: ModelDeploymentStatus) -> bool:
    return any(c.type == "Ready" and str(c.status) == "True" for c in status.conditions)


def _coming(
    mem: ObjectMemory, plan: TrackPlan, manifest: dict[str, Any] | None, live: DeploymentSummary | None
) -> tuple[DeploymentSummary, ...] | None:
    """What the track's Deployment is about to become (a new template or replica count not yet seen by
    its controller, or a hand edit put back), or None when nothing is about to change. A Deployment
    still to be created is absent: ``()``."""
    if live is None:
        return () if manifest is not None else None
    new_hash = plan.config_hash if manifest is not None else live.config_hash
    if (
        new_hash == live.config_hash
        and plan.replicas == live.spec_replicas
        and not (manifest is not None and _drifted(mem, manifest, live))
    ):
        return None
    return (
        replace(
            live, config_hash=new_hash or "", spec_replicas=plan.replicas, generation=live.generation + 1
        ),
    )


def _publish(
    rt: Runtime, body: Mapping[str, Any], current: ModelDeploymentStatus, derived: Derived, mem: ObjectMemory
) -> None:
    rt.post_events(body, derived.events)
    rt.write_status(MODELDEPLOYMENT, body, dump(current), dump(derived.status), mem)
    uid = str((body.get("metadata") or {}).get("uid"))
    rt.metrics.set_phase(KIND, uid, str(derived.status.phase) if derived.status.phase else None)


# --- resolution --------------------------------------------------------------------------------------


def _refs(spec: ModelDeploymentSpec) -> dict[Track, ModelRef]:
    refs: dict[Track, ModelRef] = {"stable": spec.model}
    if spec.canary is not None:
        refs["canary"] = spec.canary.model
    return refs


def _pinned(
    current: ModelDeploymentStatus, track: Track, ref: ModelRef, served_as: str
) -> ResolvedModel | None:
    """What the status pins for ``track`` (after a restart: a registered version keeps its digest)."""
    ts = current.stable if track == "stable" else current.canary
    if ts is None or ts.model_uri is None or ts.model_version is None:
        return None
    return ResolvedModel(
        ref=ref_key(ref),
        name=ref.name or served_as,
        version=ts.model_version,
        uri=ts.model_uri,
        digest=ts.model_digest,
    )


_RESOLVING: dict[str, threading.Lock] = {}
_RESOLVING_LOCK = threading.Lock()


def _resolve_lock(uid: str) -> threading.Lock:
    with _RESOLVING_LOCK:
        lock = _RESOLVING.get(uid)
        if lock is None:
            lock = _RESOLVING[uid] = threading.Lock()
        return lock


def forget(uid: str) -> None:
    """A deleted ModelDeployment: drop what this module keeps for it."""
    with _RESOLVING_LOCK:
        _RESOLVING.pop(uid, None)


def _due(mem: ObjectMemory, refs: Mapping[Track, ModelRef]) -> bool:
    """Whether some reference has no usable resolution: never resolved, or failed a while ago."""
    for t, ref in refs.items():
        entry = mem.resolved.get(t)
        if entry is None or entry[0] != ref_key(ref):
            return True
        if not isinstance(entry[1], ResolvedModel) and time.monotonic() - entry[2] >= RESOLVE_RETRY_S:
            return True
    return False


def _cached(mem: ObjectMemory, spec: ModelDeploymentSpec) -> dict[Track, ResolvedModel | ResolveFailure]:
    out: dict[Track, ResolvedModel | ResolveFailure] = {}
    for t, ref in _refs(spec).items():
        key = ref_key(ref)
        entry = mem.resolved.get(t)
        if entry is not None and entry[0] == key:
            out[t] = entry[1]
        else:  # another reconcile is resolving it right now
            out[t] = ResolveFailure(key, "Resolving", f"{key} is being resolved")
    return out


def _resolve_all(
    rt: Runtime,
    mem: ObjectMemory,
    owner: Owner,
    spec: ModelDeploymentSpec,
    current: ModelDeploymentStatus,
    *,
    force: bool,
) -> None:
    """Resolve what is due (or everything, with ``force``) into the object's memory. One resolution
    per object at a time; a reconcile with nothing due does not wait for another's."""
    refs = _refs(spec)
    needed = force or _due(mem, refs)
    if not needed:
        return
    lock = _resolve_lock(owner.uid)
    with lock:
        for t in [t for t in mem.resolved if t not in refs]:
            mem.resolved.pop(t, None)
        if not force and not _due(mem, refs):  # resolved by the reconcile we waited for
            return
        resolver = rt.resolver
        for t, ref in refs.items():
            key = ref_key(ref)
            entry = mem.resolved.get(t)
            same = entry is not None and entry[0] == key
            if same and not force:
                assert entry is not None
                if isinstance(entry[1], ResolvedModel) or time.monotonic() - entry[2] < RESOLVE_RETRY_S:
                    continue
            before = entry[1] if same and entry is not None and isinstance(entry[1], ResolvedModel) else None
            outcome: ResolvedModel | ResolveFailure
            if resolver is None:
                outcome = ResolveFailure(key, "RegistryNotConfigured", "no resolver")
            else:
                try:
                    outcome = resolver.resolve(
                        ref, owner.name, before or _pinned(current, t, ref, owner.name)
                    )
                except ResolveError as e:
                    if before is not None and e.reason in TRANSIENT:
                        log.warning(
                            "%s/%s %s: %s; keeping version %s",
                            owner.namespace,
                            owner.name,
                            t,
                            e,
                            before.version,
                        )
                        outcome = before
                    else:
                        outcome = ResolveFailure(key, e.reason, e.message)
            if before is not None and isinstance(outcome, ResolvedModel) and outcome != before:
                log.info(
                    "%s/%s %s: %s now resolves to version %s (was %s)",
                    owner.namespace,
                    owner.name,
                    t,
                    key,
                    outcome.version,
                    before.version,
                )
            mem.resolved[t] = (key, outcome, time.monotonic())


# --- children ---------------------------------------------------------------------------------------------


def _key(kind: Kind, name: str) -> str:
    """Children are remembered by kind and name: the Service and the HPA share a name."""
    return f"{kind.plural}/{name}"


def _recent(mem: ObjectMemory, key: str) -> Any:
    entry = mem.children.get(key)
    if entry is None or time.monotonic() - entry[0] > CREATED_HINT_S:
        return None
    return entry[1]


def _deployment(view: MdView, mem: ObjectMemory, name: str) -> DeploymentSummary | None:
    """The index's Deployment, unless this process has just written a newer one (the watch lags)."""
    indexed = next((d for d in view.deployments if d.name == name), None)
    hint = _recent(mem, _key(DEPLOYMENT, name))
    if isinstance(hint, DeploymentSummary) and (indexed is None or hint.generation > indexed.generation):
        return hint
    return indexed


def _child_error(what: str, e: KubeError) -> ChildError:
    reason = (
        "NameConflict"
        if isinstance(e, NameConflictError)
        else (reason_word(e.reason, "CreateFailed") if e.status else "APIUnreachable")
    )
    return ChildError(what, reason, e.message)


def _ensure_child(
    rt: Runtime,
    mem: ObjectMemory,
    owner: Owner,
    kind: Kind,
    manifest: dict[str, Any],
    indexed: Sequence[ChildSummary],
    errors: list[ChildError],
) -> None:
    """A Service or HPA: created when missing, brought back to the desired spec when it drifted (a
    spec change, or a hand edit of the fields we set)."""
    name = str(manifest["metadata"]["name"])
    key = _key(kind, name)
    live = next((c for c in indexed if c.name == name and c.owner_uid == owner.uid), None) or _recent(
        mem, key
    )
    want = manifest_hash(manifest)
    try:
        if live is None:
            obj, created = rt.kube.create(manifest)
            if created:
                log.info("created %s %s/%s", kind.kind, owner.namespace, name)
            live = summarize_child(obj)
            mem.children[key] = (time.monotonic(), live)
        if isinstance(live, ChildSummary) and (live.config_hash != want or live.drifted):
            current = rt.kube.get(kind, owner.namespace, name)
            if current is None:
                mem.children.pop(key, None)
                return
            patch = spec_patch(current, manifest)
            if patch:
                current = rt.kube.patch(kind, owner.namespace, name, patch)
                log.info("updated %s %s/%s", kind.kind, owner.namespace, name)
            mem.children[key] = (time.monotonic(), summarize_child(current))
    except KubeError as e:
        errors.append(_child_error(f"{kind.kind} {name}", e))


def _ensure_deployment(
    rt: Runtime,
    mem: ObjectMemory,
    owner: Owner,
    plan: TrackPlan,
    manifest: dict[str, Any] | None,
    live: DeploymentSummary | None,
    errors: list[ChildError],
    events: list[EventSpec],
) -> DeploymentSummary | None:
    """Create the track's Deployment, roll it to the desired template, or scale it. Without a resolved
    model the template stays as it is (the pods keep serving what they serve) and only replicas follow."""
    name = plan.deployment
    try:
        if manifest is None:
            if live is not None and live.spec_replicas != plan.replicas and not live.deleting:
                obj = rt.kube.patch(DEPLOYMENT, owner.namespace, name, {"spec": {"replicas": plan.replicas}})
                live = _remember(mem, obj)
            return live
        model = plan.model if isinstance(plan.model, ResolvedModel) else None
        what = (
            f"version {model.version}"
            if model is not None and model.version
            else (model.uri if model else "")
        )
        if live is None:
            obj, created = rt.kube.create(manifest)
            live = _remember(mem, obj)
            if created:
                log.info("created Deployment %s/%s (%s)", owner.namespace, name, what)
                rt.metrics.rollouts.labels(KIND, plan.track).inc()
                events.append(
                    EventSpec(
                        "Normal",
                        "RolloutStarted",
                        f"{plan.track}: Deployment {name} created, serving {what} ({plan.replicas} replicas)",
                        f"rollout/{plan.track}/{plan.config_hash}",
                    )
                )
        if live.deleting:
            return live
        if live.config_hash != plan.config_hash:
            current = rt.kube.get(DEPLOYMENT, owner.namespace, name)
            if current is None:
                mem.children.pop(_key(DEPLOYMENT, name), None)
                return None
            before = ((current.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {})
            live = _remember(
                mem, rt.kube.patch(DEPLOYMENT, owner.namespace, name, deployment_patch(current, manifest))
            )
            was = before.get("kubeloop.io/model-version", "?")
            log.info("rolling Deployment %s/%s to %s (was %s)", owner.namespace, name, what, was)
            rt.metrics.rollouts.labels(KIND, plan.track).inc()
            events.append(
                EventSpec(
                    "Normal",
                    "RolloutStarted",
                    f"{plan.track}: rolling out {what} (was version {was}) over {plan.replicas} replicas",
                    f"rollout/{plan.track}/{plan.config_hash}",
                )
            )
        elif _drifted(mem, manifest, live):
            live = _put_back(rt, mem, owner, plan, manifest, live, events)
        elif live.spec_replicas != plan.replicas:
            obj = rt.kube.patch(DEPLOYMENT, owner.namespace, name, {"spec": {"replicas": plan.replicas}})
            live = _remember(mem, obj)
            log.info("scaled Deployment %s/%s to %d", owner.namespace, name, plan.replicas)
    except KubeError as e:
        errors.append(_child_error(f"Deployment {name}", e))
    return live


def _remember(mem: ObjectMemory, obj: Mapping[str, Any]) -> DeploymentSummary:
    d = summarize_deployment(obj)
    mem.children[_key(DEPLOYMENT, d.name)] = (time.monotonic(), d)
    return d


# A hand edit put back: (what was built, what the live Deployment still has after our patch), when
# the API server keeps an owned field differently from how it was written (a normal form that
# owned_fields lacks). Patching again could not help: it is not repeated until either side changes.
_UNFIXABLE: Final = "unfixable"


def _drifted(mem: ObjectMemory, manifest: Mapping[str, Any], live: DeploymentSummary) -> bool:
    """Whether someone edited the fields of the Deployment the operator owns (``kubectl edit`` keeps
    the config-hash annotation: the live fields themselves are compared)."""
    if not live.owned_hash or live.deleting:
        return False
    want = owned_hash(manifest)
    if live.owned_hash == want:
        return False
    stuck = mem.children.get(f"{_UNFIXABLE}/{live.name}")
    return not (stuck is not None and stuck[1] == (want, live.owned_hash))


def _put_back(
    rt: Runtime,
    mem: ObjectMemory,
    owner: Owner,
    plan: TrackPlan,
    manifest: dict[str, Any],
    live: DeploymentSummary,
    events: list[EventSpec],
) -> DeploymentSummary | None:
    """Restore the fields of a Deployment edited by hand to what the builder makes (one patch, the
    template the ModelDeployment asks for rolls out again); everything else on it stays."""
    name = plan.deployment
    current = rt.kube.get(DEPLOYMENT, owner.namespace, name)
    if current is None:
        mem.children.pop(_key(DEPLOYMENT, name), None)
        return None
    patch = deployment_patch(current, manifest)
    if not patch:  # the index lagged behind a change already undone
        return _remember(mem, current)
    edited = sorted(patch.get("spec", {}).get("template", {}).get("spec", {})) or sorted(
        patch.get("spec", {})
    )
    fixed = _remember(mem, rt.kube.patch(DEPLOYMENT, owner.namespace, name, patch))
    want = owned_hash(manifest)
    if fixed.owned_hash != want:
        mem.children[f"{_UNFIXABLE}/{name}"] = (time.monotonic(), (want, fixed.owned_hash))
        log.warning(
            "Deployment %s/%s still differs from what was written after putting it back; not patching "
            "it again until it or its ModelDeployment changes",
            owner.namespace,
            name,
        )
    log.warning(
        "Deployment %s/%s was edited outside its ModelDeployment (%s): put back",
        owner.namespace,
        name,
        ", ".join(edited),
    )
    events.append(
        EventSpec(
            "Warning",
            "DriftReverted",
            f"{plan.track}: Deployment {name} was edited outside the ModelDeployment "
            f"({', '.join(edited)}); restored to the ModelDeployment's template",
            f"drift/{plan.track}/{live.owned_hash}",
        )
    )
    return fixed

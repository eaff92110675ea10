"""ModelDeployment handlers. Each runs the same level-based reconciler:

* ``event``: every watch event of a ModelDeployment (creation, spec changes such as ``kubectl scale``,
  the operator's start), at once; the echo of our own status write costs a comparison;
* child events: every change of one of its Deployments or server pods (a pod turning Ready, a
  container crashing) reconciles the owner at once, so ``Ready`` follows the pods within a watch
  round trip rather than a resync period;
* the kind's :class:`~kubeloop_operator.sweeper.Sweeper` (one loop for all ModelDeployments, not a kopf
  timer per object): ``resync`` every ``resync_seconds`` — retries, convergence after a crash; writes
  nothing when nothing changed — and ``alias`` every ``alias_poll_seconds`` for references that can
  move (an alias, a URI whose file may be replaced): resolves them again and rolls out what changed;
* a TrainingJob whose run moved an alias (``status.promoted``) resolves the ModelDeployments that
  follow that alias at once, without waiting for the poll.

Children are read from indexes of their own (Deployments, server pods, Services, HPAs labelled
``app.kubernetes.io/component=serving``); the ModelDeployments themselves are indexed too, so a child
event or a TrainingJob can reach its ModelDeployment without a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

import kopf

from kubeloop.contracts import MANAGED_BY_OPERATOR, Labels
from kubeloop.resources import GROUP, VERSION
from kubeloop_operator.builders.modeldeployment import COMPONENT
from kubeloop_operator.reconcile.modeldeployment import KIND, MdView, forget, reconcile
from kubeloop_operator.registry import open_resolver
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.status.modeldeployment import (
    ChildSummary,
    DeploymentSummary,
    ServerPod,
    summarize_child,
    summarize_deployment,
    summarize_server_pod,
)
from kubeloop_operator.sweeper import Sweeper

log = logging.getLogger("kubeloop_operator.modeldeployment")

PLURAL: Final = "modeldeployments"
MDS: Final = "kubeloop_modeldeployments"
DEPLOYMENTS: Final = "kubeloop_serving_deployments"
PODS: Final = "kubeloop_serving_pods"
SERVICES: Final = "kubeloop_serving_services"
HPAS: Final = "kubeloop_serving_hpas"
SERVING: Final = {Labels.MANAGED_BY: MANAGED_BY_OPERATOR, Labels.COMPONENT: COMPONENT}
# Watched with a server-side selector on the operator's label (pods and Services already are).
SELECTED: Final = (("apps", "v1", "deployments"), ("autoscaling", "v2", "horizontalpodautoscalers"))


def _owner(body: Mapping[str, Any]) -> str | None:
    uid = ((body.get("metadata") or {}).get("labels") or {}).get(Labels.OWNER_UID)
    return str(uid) if uid else None


def _values(index: Any, key: str) -> list[Any]:
    store = index.get(key) if index is not None else None
    return list(store) if store is not None else []


def view_of(kwargs: Mapping[str, Any], uid: str) -> MdView:
    return MdView(
        deployments=tuple(_values(kwargs.get(DEPLOYMENTS), uid)),
        pods=tuple(_values(kwargs.get(PODS), uid)),
        services=tuple(_values(kwargs.get(SERVICES), uid)),
        hpas=tuple(_values(kwargs.get(HPAS), uid)),
    )


def _modeldeployments(kwargs: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    index = kwargs.get(MDS)
    if index is None:
        return
    for key in list(index):
        yield from _values(index, key)


def _movable(body: Mapping[str, Any]) -> bool:
    """References the alias poll re-resolves: aliases, and URIs (the file may be replaced in place)."""
    spec = body.get("spec") or {}
    refs = [spec.get("model") or {}, (spec.get("canary") or {}).get("model") or {}]
    return any(r.get("alias") or r.get("uri") for r in refs)


def _follows(md: Mapping[str, Any], model: str, alias: str) -> bool:
    spec = md.get("spec") or {}
    refs = [spec.get("model") or {}, (spec.get("canary") or {}).get("model") or {}]
    return any(r.get("name") == model and r.get("alias") == alias for r in refs)


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    s = rt.settings
    m = rt.metrics
    if rt.resolver is None:
        rt.resolver = open_resolver(s, rt.store, m)

    def run(
        handler: str, body: Mapping[str, Any], kwargs: Mapping[str, Any], *, resolve: bool = False
    ) -> None:
        uid = str((body.get("metadata") or {}).get("uid"))
        with m.handler(KIND, handler):
            reconcile(rt, body, view_of(kwargs, uid), resolve=resolve)

    def periodic(body: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        run("alias" if fast else "resync", body, indexes, resolve=fast)

    sweeper = Sweeper(
        KIND,
        periodic,
        interval=s.resync_seconds,
        fast_interval=s.alias_poll_seconds,
        fast_when=_movable,
        concurrency=max(1, s.max_workers // 4),
    )
    rt.sweepers.append(sweeper)

    def run_owner(handler: str, child: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
        uid = _owner(child)
        owner = next(iter(_values(kwargs.get(MDS), uid)), None) if uid else None
        if owner is not None:
            run(handler, owner, kwargs)

    @kopf.on.startup(registry=registry)
    def select_children(settings: kopf.OperatorSettings, **_: Any) -> None:
        for group, version, plural in SELECTED:
            settings.watching.label_selectors[(group, version, plural)] = (
                f"{Labels.MANAGED_BY}={MANAGED_BY_OPERATOR}"
            )

    # --- indexes ---------------------------------------------------------------------------------------

    @kopf.index(GROUP, VERSION, PLURAL, id=MDS, registry=registry)
    async def kubeloop_modeldeployments(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
        # Each watch event brings a new object: keeping its parts keeps a consistent snapshot.
        return {str(body.metadata.uid): dict(body)}

    @kopf.index("apps", "v1", "deployments", labels=SERVING, id=DEPLOYMENTS, registry=registry)
    async def kubeloop_serving_deployments(body: kopf.Body, **_: Any) -> dict[str, DeploymentSummary] | None:
        d = summarize_deployment(body)
        return {d.owner_uid: d} if d.owner_uid else None

    @kopf.index("", "v1", "pods", labels=SERVING, id=PODS, registry=registry)
    async def kubeloop_serving_pods(body: kopf.Body, **_: Any) -> dict[str, ServerPod] | None:
        p = summarize_server_pod(body)
        return {p.pod.owner_uid: p} if p.pod.owner_uid else None

    @kopf.index("", "v1", "services", labels=SERVING, id=SERVICES, registry=registry)
    async def kubeloop_serving_services(body: kopf.Body, **_: Any) -> dict[str, ChildSummary] | None:
        c = summarize_child(body)
        return {c.owner_uid: c} if c.owner_uid else None

    @kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=SERVING, id=HPAS, registry=registry)
    async def kubeloop_serving_hpas(body: kopf.Body, **_: Any) -> dict[str, ChildSummary] | None:
        c = summarize_child(body)
        return {c.owner_uid: c} if c.owner_uid else None

    # --- the ModelDeployment ------------------------------------------------------------------------------

    @kopf.on.event(GROUP, VERSION, PLURAL, id="event", registry=registry)
    def on_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        if type == "DELETED":
            uid = str(body.metadata.uid)
            sweeper.forget(uid)
            rt.memory.forget(uid)
            forget(uid)
            m.set_phase(KIND, uid, None)
            return
        sweeper.event(body, lambda: run("event", body, kwargs))

    # --- its children -------------------------------------------------------------------------------------

    @kopf.on.event("apps", "v1", "deployments", labels=SERVING, id="modeldeployment", registry=registry)
    def on_deployment(body: kopf.Body, **kwargs: Any) -> None:
        run_owner("deployment", body, kwargs)

    @kopf.on.event("", "v1", "pods", labels=SERVING, id="modeldeployment", registry=registry)
    def on_pod(body: kopf.Body, **kwargs: Any) -> None:
        run_owner("pod", body, kwargs)

    # --- an alias moved by a TrainingJob ---------------------------------------------------------------

    seen: set[tuple[str, str]] = set()
    seen_lock = threading.Lock()

    @kopf.on.event(GROUP, VERSION, "trainingjobs", id="modeldeployment-alias", registry=registry)
    def on_trainingjob(type: str, body: kopf.Body, **kwargs: Any) -> None:
        uid = str(body.metadata.uid)
        if type == "DELETED":
            with seen_lock:
                for key in [k for k in seen if k[0] == uid]:
                    seen.discard(key)
            return
        st = body.get("status") or {}
        if st.get("promoted") is not True or not st.get("modelVersion"):
            return
        key = (uid, str(st.get("modelVersion")))
        with seen_lock:
            if key in seen:
                return
            seen.add(key)
        spec = body.get("spec") or {}
        model = str((spec.get("registry") or {}).get("modelName") or body.metadata.name)
        alias_name = str((spec.get("promotion") or {}).get("alias") or "champion")
        ns = body.metadata.namespace
        for md in _modeldeployments(kwargs):
            if (md.get("metadata") or {}).get("namespace") == ns and _follows(md, model, alias_name):
                log.info(
                    "TrainingJob %s/%s moved %s@%s to version %s: resolving ModelDeployment %s",
                    ns,
                    body.metadata.name,
                    model,
                    alias_name,
                    key[1],
                    (md.get("metadata") or {}).get("name"),
                )
                run("alias-moved", md, kwargs, resolve=True)

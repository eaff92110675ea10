"""In-memory indexes of the children the operator manages, keyed by their owner's UID.

The reconcilers read Jobs, pods and Services from here instead of asking the API server, so a resync
of an unchanged resource costs no request at all. Only objects labelled
``app.kubernetes.io/managed-by=kubeloop-operator`` are watched (a server-side label selector, set at
start-up by :mod:`.lifecycle`); each is stored as a small summary, not its whole body.

Index functions here and in the other handler modules are ``async``: they are pure and take
microseconds, and kopf runs a synchronous one in its thread pool, where each pod and Job event would
wait behind the reconcilers' API calls (in a burst of creations, thousands of queued events and their
bodies at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from kubeloop.contracts import MANAGED_BY_OPERATOR, Labels
from kubeloop_operator.builders.common import service_owned_hash
from kubeloop_operator.builders.trainingjob import SPEC_GENERATION_ANNOTATION
from kubeloop_operator.reconcile import ChildView, ServiceSummary
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.status.pods import JobSummary, PodSummary, summarize_job, summarize_pod

JOBS: Final = "kubeloop_jobs"
PODS: Final = "kubeloop_pods"
SERVICES: Final = "kubeloop_services"
MANAGED: Final = {Labels.MANAGED_BY: MANAGED_BY_OPERATOR}
# (group, version, plural) of every indexed kind: lifecycle puts the server-side selector on them.
WATCHED: Final = (("batch", "v1", "jobs"), ("", "v1", "pods"), ("", "v1", "services"))


def _owner(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata") or {}
    uid = (meta.get("labels") or {}).get(Labels.OWNER_UID)
    return str(uid) if uid else None


def summarize_service(body: Mapping[str, Any]) -> ServiceSummary | None:
    owner = _owner(body)
    if owner is None:
        return None
    meta = body.get("metadata") or {}
    return ServiceSummary(str(meta.get("name")), str(meta.get("uid")), owner, service_owned_hash(body))


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    del rt  # the indexes need nothing but the bodies

    @kopf.index("batch", "v1", "jobs", labels=MANAGED, id=JOBS, registry=registry)
    async def kubeloop_jobs(body: kopf.Body, **_: Any) -> dict[str, JobSummary] | None:
        s = summarize_job(body, SPEC_GENERATION_ANNOTATION)
        return {s.owner_uid: s} if s.owner_uid else None

    @kopf.index("", "v1", "pods", labels=MANAGED, id=PODS, registry=registry)
    async def kubeloop_pods(body: kopf.Body, **_: Any) -> dict[str, PodSummary] | None:
        owner = _owner(body)
        return {owner: summarize_pod(body)} if owner else None

    @kopf.index("", "v1", "services", labels=MANAGED, id=SERVICES, registry=registry)
    async def kubeloop_services(body: kopf.Body, **_: Any) -> dict[str, ServiceSummary] | None:
        s = summarize_service(body)
        return {s.owner_uid: s} if s is not None else None


def _values(index: Any, uid: str) -> list[Any]:
    store = index.get(uid) if index is not None else None
    return list(store) if store is not None else []


def children_of(kwargs: Mapping[str, Any], uid: str) -> ChildView:
    """The children of ``uid`` from the index kwargs kopf passes to every handler."""
    return ChildView(
        jobs=tuple(_values(kwargs.get(JOBS), uid)),
        pods=tuple(_values(kwargs.get(PODS), uid)),
        services=tuple(_values(kwargs.get(SERVICES), uid)),
    )

"""DriftMonitor handlers. Each runs the same level-based reconciler:

* ``event``: every watch event of a DriftMonitor — its creation, a spec change, and above all a check
  job's status write, which is how a drifted result reaches the retraining decision within moments;
* ``resync`` every ``resync_seconds``, from the kind's :class:`~kubeloop_operator.sweeper.Sweeper` (one
  loop for all DriftMonitors, not a kopf timer per object): follows the retrain's TrainingJob, the
  ModelDeployment and the CronJob, retries what failed, and writes nothing when nothing changed;
  a change of the monitor's CronJob (a hand edit, which the resync puts back) brings it forward.

Three in-memory indexes feed it without API requests: the monitors' CronJobs and retraining
TrainingJobs (by owner UID; both carry ``kubeloop.io/owner-kind=driftmonitor``) and every
ModelDeployment's resolved version (by namespace and name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from kubeloop.contracts import Labels
from kubeloop.resources import GROUP, VERSION
from kubeloop_operator.builders.driftmonitor import SPEC_HASH_ANNOTATION, owned_hash
from kubeloop_operator.reconcile.driftmonitor import KIND, MonitorView, forget, reconcile
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.status.conditions import parse_time
from kubeloop_operator.status.driftmonitor import CronJobView, DeploymentView, RetrainView
from kubeloop_operator.sweeper import Sweeper

PLURAL: Final = "driftmonitors"
CRONJOBS: Final = "kubeloop_drift_cronjobs"
RETRAINS: Final = "kubeloop_drift_retrains"
DEPLOYMENTS: Final = "kubeloop_drift_deployments"
OWNED: Final = {Labels.OWNER_KIND: "driftmonitor"}


def _owner(body: Mapping[str, Any]) -> str | None:
    uid = ((body.get("metadata") or {}).get("labels") or {}).get(Labels.OWNER_UID)
    return str(uid) if uid else None


def summarize_cronjob(body: Mapping[str, Any]) -> CronJobView | None:
    owner = _owner(body)
    if owner is None:
        return None
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return CronJobView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        owner_uid=owner,
        spec_hash=str((meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION, "")),
        suspend=bool(spec.get("suspend")),
        last_schedule_time=status.get("lastScheduleTime"),
        active=len(status.get("active") or []),
        schedule=str(spec["schedule"]) if spec.get("schedule") is not None else None,
        owned_hash=owned_hash(body),
    )


def summarize_retrain(body: Mapping[str, Any]) -> RetrainView | None:
    owner = _owner(body)
    if owner is None:
        return None
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    version = status.get("modelVersion")
    return RetrainView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        owner_uid=owner,
        created=parse_time(meta.get("creationTimestamp")),
        phase=status.get("phase"),
        model_version=int(version) if isinstance(version, int) else None,
        promoted=status.get("promoted"),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _first(index: Any, key: Any) -> Any:
    if index is None:
        return None
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _all(index: Any, key: Any) -> tuple[Any, ...]:
    if index is None:
        return ()
    store = index.get(key)
    return tuple(store) if store is not None else ()


def view_of(kwargs: Mapping[str, Any], body: Mapping[str, Any]) -> MonitorView:
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid"))
    deployment = str((body.get("spec") or {}).get("deployment") or "")
    cron = _first(kwargs.get(CRONJOBS), uid)
    return MonitorView(
        cronjob=cron,
        retrains=_all(kwargs.get(RETRAINS), uid),
        deployment=_first(kwargs.get(DEPLOYMENTS), (str(meta.get("namespace")), deployment)),
        deployment_known=kwargs.get(DEPLOYMENTS) is not None,
    )


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    s = rt.settings
    m = rt.metrics

    @kopf.on.startup(registry=registry)
    def drift_watch_selectors(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Only the monitors' CronJobs are watched (server-side), not every CronJob of the cluster.
        settings.watching.label_selectors[("batch", "v1", "cronjobs")] = f"{Labels.OWNER_KIND}=driftmonitor"

    @kopf.index("batch", "v1", "cronjobs", labels=OWNED, id=CRONJOBS, registry=registry)
    async def kubeloop_drift_cronjobs(body: kopf.Body, **_: Any) -> dict[str, CronJobView] | None:
        v = summarize_cronjob(body)
        return {v.owner_uid: v} if v is not None else None

    @kopf.index(GROUP, VERSION, "trainingjobs", labels=OWNED, id=RETRAINS, registry=registry)
    async def kubeloop_drift_retrains(body: kopf.Body, **_: Any) -> dict[str, RetrainView] | None:
        v = summarize_retrain(body)
        return {v.owner_uid: v} if v is not None else None

    @kopf.index(GROUP, VERSION, "modeldeployments", id=DEPLOYMENTS, registry=registry)
    async def kubeloop_drift_deployments(body: kopf.Body, **_: Any) -> dict[tuple[str, str], DeploymentView]:
        meta = body.get("metadata") or {}
        version = (body.get("status") or {}).get("modelVersion")
        view = DeploymentView(name=str(meta.get("name")), model_version=str(version) if version else None)
        return {(str(meta.get("namespace")), str(meta.get("name"))): view}

    def run(handler: str, body: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
        with m.handler(KIND, handler):
            reconcile(rt, body, view_of(kwargs, body))

    sweeper = Sweeper(
        KIND,
        lambda body, _fast, indexes: run("resync", body, indexes),
        interval=s.resync_seconds,
        concurrency=max(1, s.max_workers // 4),
    )
    rt.sweepers.append(sweeper)

    @kopf.on.event("batch", "v1", "cronjobs", labels=OWNED, id="drift-cronjob", registry=registry)
    async def on_cronjob(body: kopf.Body, **_: Any) -> None:
        # A hand edit keeps our annotation but changes the CronJob: its monitor's resync comes now,
        # not a period later (one that changed nothing writes nothing).
        uid = _owner(body)
        if uid is not None:
            sweeper.retry(uid, 0.0)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="event", registry=registry)
    def on_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        if type == "DELETED":
            uid = str(body.metadata.uid)
            sweeper.forget(uid)
            forget(rt, uid)
            return
        sweeper.event(body, lambda: run("event", body, kwargs))

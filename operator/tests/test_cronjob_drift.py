"""A DriftMonitor's CronJob edited by hand in its job template (``kubectl edit``: the check's image,
env, resources) is put back, once; fields the API server defaults are no drift. Until now only
``suspend`` and ``schedule`` were compared live: the rest kept the spec-hash annotation and survived."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest
from kubeloop_operator.builders import common
from kubeloop_operator.builders import driftmonitor as b
from kubeloop_operator.builders.driftmonitor import cronjob_name
from kubeloop_operator.handlers import driftmonitor as handlers_dm
from kubeloop_operator.handlers.driftmonitor import summarize_cronjob
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.reconcile.driftmonitor import reconcile
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.settings import OperatorSettings
from test_deployment_drift import _leaves
from test_reconcile_driftmonitor import FakeKube, body, monitor, view, world, writes
from test_reconcile_modeldeployment import _merge

from kubeloop import podenv
from kubeloop.contracts import Labels
from kubeloop.resources import DriftMonitorSpec

__all__ = ["world"]  # the fixture, imported for its name

OWNER = common.Owner("kubeloop.io/v1alpha1", "DriftMonitor", "ns", "watch", "uid-watch")


def built() -> dict[str, Any]:
    spec = DriftMonitorSpec.model_validate({"deployment": "bc", "schedule": "*/5 * * * *"})
    store = podenv.ObjectStoreAccess.from_secret("minio.kubeloop-system:9000", "kubeloop-s3")
    return b.build_cronjob(OWNER, spec, b.DriftCheckPodConfig("kubeloop/operator:1", "IfNotPresent", store))


def stored(cron: dict[str, Any]) -> dict[str, Any]:
    """``cron`` as the API server returns it: defaults filled in, quantities canonical."""
    live = copy.deepcopy(cron)
    live["metadata"].update(uid="c-1", generation=1)
    job = live["spec"]["jobTemplate"]
    job["metadata"]["creationTimestamp"] = None
    pod = job["spec"]["template"]["spec"]
    pod.update(dnsPolicy="ClusterFirst", schedulerName="default-scheduler", securityContext={})
    pod.setdefault("terminationGracePeriodSeconds", 30)
    pod["serviceAccount"] = pod["serviceAccountName"]
    for c in pod["containers"]:
        c["terminationMessagePath"] = "/dev/termination-log"
        for e in c["env"]:
            ref = (e.get("valueFrom") or {}).get("fieldRef")
            if ref is not None:
                ref.setdefault("apiVersion", "v1")
    live["status"] = {}
    return live


def test_what_the_api_server_adds_is_no_drift_and_an_edited_job_template_is() -> None:
    cron = built()
    assert b.owned_hash(stored(cron)) == b.owned_hash(cron)
    assert summarize_cronjob(stored(cron)).owned_hash == b.owned_hash(cron)  # type: ignore[union-attr]
    edited = stored(cron)
    edited["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    assert b.owned_hash(edited) != b.owned_hash(cron)
    fixed = copy.deepcopy(edited)
    _merge(fixed, b.cronjob_patch(cron, edited))
    assert b.owned_hash(fixed) == b.owned_hash(cron)
    assert b.owned_hash(stored(fixed)) == b.owned_hash(cron)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c, pod: c.update(image="evil/check:latest"),
        lambda c, pod: c["env"].append({"name": "DEBUG", "value": "1"}),
        lambda c, pod: c["resources"]["limits"].update(memory="64Gi"),
        lambda c, pod: pod.update(volumes=[{"name": "x", "emptyDir": {}}]),
    ],
)
def test_the_reconciler_puts_an_edited_job_template_back_once(
    world: tuple[Runtime, FakeKube], edit: Any
) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    cron = kube.objects[("cronjobs", cronjob_name("watch"))]
    want = copy.deepcopy(cron["spec"])
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    edit(pod["containers"][0], pod)
    kube.writes.clear()
    for _ in range(3):  # once: no flapping
        reconcile(rt, body(kube), view(kube))
    assert writes(kube, "patch", "create") == [("patch", "cronjobs", cronjob_name("watch"))]
    assert cron["spec"] == want


def test_a_change_of_a_monitors_cronjob_brings_its_resync_forward() -> None:
    # The CronJob is only indexed, not reconciled on: without this, a hand edit lasts until the
    # monitor's next periodic resync.
    rt = Runtime(settings=OperatorSettings(standalone=True), kube=None, metrics=Metrics())  # type: ignore[arg-type]
    registry = kopf.OperatorRegistry()
    handlers_dm.register(registry, rt)
    sweeper = rt.sweepers[0]
    sweeper.remember({"metadata": {"uid": "uid-watch", "name": "watch", "namespace": "ns"}, "spec": {}})
    assert sweeper._entries["uid-watch"].resync_at > sweeper.clock() + 1
    on_cron = [
        h
        for h in registry._watching.get_all_handlers()
        if h.selector is not None and "cronjobs" in (h.selector.plural, h.selector.any_name)
    ]
    assert len(on_cron) == 1
    cron = stored(built())
    cron["metadata"]["labels"][Labels.OWNER_UID] = "uid-watch"
    asyncio.run(on_cron[0].fn(body=cron))  # type: ignore[arg-type,call-arg]
    assert sweeper._entries["uid-watch"].resync_at <= sweeper.clock()


def test_the_projection_keeps_every_field_the_builder_sets() -> None:
    # A field build_cronjob sets but owned_fields leaves out could be edited by hand unnoticed (and a
    # spec change of it would not reach the CronJob: the patch carries only owned fields).
    cron = built()
    assert _leaves(cron["spec"]) - _leaves(b.owned_fields(cron)) == set()

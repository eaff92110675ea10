"""The DriftMonitor reconciler against a fake API server: children created once and patched only when
the spec changes them, the decision written (with the resourceVersion) before the TrainingJob is
created, a conflict re-read, a decided-but-not-created retrain finished after a restart, an old watch
event never resurrecting a retrain, and nothing written for an unchanged world."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeloop_operator import k8s
from kubeloop_operator.builders.driftmonitor import cronjob_name
from kubeloop_operator.handlers.driftmonitor import summarize_cronjob
from kubeloop_operator.k8s import KubeError
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.reconcile.driftmonitor import MonitorView, reconcile
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.driftmonitor import DeploymentView, RetrainView, retrain_name
from prometheus_client import generate_latest

NS = "team-a"
TEMPLATE = {
    "dataset": {"uri": "s3://kubeloop/datasets/bc/", "target": "target"},
    "task": "classification",
    "registry": {"modelName": "bc"},
}


def _merge(dst: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


class FakeKube:
    """Objects by (plural, name) with resourceVersions; records every write in order."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.rv = itertools.count(100)
        self.conflict_next_status = False

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))

    def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        kind = k8s.kind_of(manifest)
        key = (kind.plural, manifest["metadata"]["name"])
        self.writes.append(("create", kind.plural, key[1]))
        if key in self.objects:
            return self.objects[key], False
        obj = copy.deepcopy(manifest)
        obj["metadata"].update(uid=f"uid-{key[1]}", generation=1)
        self._bump(obj)
        self.objects[key] = obj
        return obj, True

    def get(self, kind: k8s.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind.plural, name))
        return copy.deepcopy(obj) if obj is not None else None

    def patch(self, kind: k8s.Kind, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self.objects[(kind.plural, name)]
        _merge(obj, copy.deepcopy(patch))
        self._bump(obj)
        self.writes.append(("patch", kind.plural, name))
        return copy.deepcopy(obj)

    def patch_status(
        self,
        kind: k8s.Kind,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        obj = self.objects.get((kind.plural, name))
        if obj is None:
            return None
        if self.conflict_next_status or (
            resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]
        ):
            self.conflict_next_status = False
            self.writes.append(("conflict", kind.plural, name))
            raise KubeError(409, "Conflict", "the object has been modified")
        obj.setdefault("status", {})
        _merge(obj["status"], copy.deepcopy(status))
        self._bump(obj)
        self.writes.append(("status", kind.plural, name))
        return copy.deepcopy(obj)

    def post_event(self, involved: Any, *, name: str, type_: str, reason: str, message: str) -> bool:
        self.writes.append(("event", reason, name))
        return True

    # --- the check job's side -----------------------------------------------------------------------

    def check(self, name: str, at: datetime, *, drifted: bool = True, n: int = 1) -> None:
        t = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = self.objects[("driftmonitors", name)]
        obj.setdefault("status", {}).update(
            lastCheckTime=t,
            consecutiveDrifts=n,
            lastResult={"drifted": drifted, "share": 0.9, "samples": 900, "time": t, "modelVersion": "1"},
        )
        self._bump(obj)


def monitor(kube: FakeKube, name: str = "watch", **retrain: Any) -> dict[str, Any]:
    obj, _ = kube.create(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "deployment": "bc",
                "schedule": "*/5 * * * *",
                "retrain": {"template": TEMPLATE, "cooldown": "1h", "maxPerDay": 3, **retrain},
            },
        }
    )
    kube.writes.clear()
    return obj


@pytest.fixture
def world() -> tuple[Runtime, FakeKube]:
    kube = FakeKube()
    settings = OperatorSettings(standalone=True)
    return Runtime(settings=settings, kube=kube, metrics=Metrics()), kube  # type: ignore[arg-type]


def view(kube: FakeKube, name: str = "watch") -> MonitorView:
    """What the indexes would hold: the CronJob, the owned retrains, the ModelDeployment."""
    uid = f"uid-{name}"
    cron = kube.objects.get(("cronjobs", cronjob_name(name)))
    cv = summarize_cronjob(cron) if cron is not None else None
    retrains = [
        RetrainView(
            o["metadata"]["name"],
            o["metadata"]["uid"],
            uid,
            created=datetime.now(UTC),
            phase=(o.get("status") or {}).get("phase"),
        )
        for (plural, _), o in kube.objects.items()
        if plural == "trainingjobs"
        and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
    ]
    return MonitorView(cronjob=cv, retrains=tuple(retrains), deployment=DeploymentView("bc", "1"))


def body(kube: FakeKube, name: str = "watch") -> dict[str, Any]:
    obj = kube.get(k8s.DRIFTMONITOR, NS, name)
    assert obj is not None
    return obj


def writes(kube: FakeKube, *verbs: str) -> list[tuple[str, str, str]]:
    return [w for w in kube.writes if w[0] in verbs]


def test_children_once_then_nothing_for_an_unchanged_world(world: tuple[Runtime, FakeKube]) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    assert [w[1] for w in writes(kube, "create")] == ["serviceaccounts", "roles", "rolebindings", "cronjobs"]
    st = body(kube)["status"]
    assert st["phase"] == "Active"
    kube.writes.clear()
    for _ in range(3):
        reconcile(rt, body(kube), view(kube))
    assert kube.writes == []  # idle: no write, no create


def test_a_spec_change_patches_the_cronjob_and_the_role(world: tuple[Runtime, FakeKube]) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    obj = kube.objects[("driftmonitors", "watch")]
    obj["spec"].update(suspend=True, deployment="other")
    obj["metadata"]["generation"] = 2
    kube.writes.clear()
    reconcile(rt, body(kube), view(kube))
    assert ("patch", "cronjobs", cronjob_name("watch")) in kube.writes
    assert ("patch", "roles", "watch-drift-check") in kube.writes
    assert kube.objects[("cronjobs", cronjob_name("watch"))]["spec"]["suspend"] is True
    assert kube.objects[("roles", "watch-drift-check")]["rules"][2]["resourceNames"] == ["other"]
    assert body(kube)["status"]["phase"] == "Suspended"


def test_a_cronjob_suspended_or_rescheduled_by_hand_is_put_back_once(world: tuple[Runtime, FakeKube]) -> None:
    # `kubectl patch cronjob --suspend` leaves our spec-hash annotation as it was: the live fields
    # themselves must be compared, or the checks stop for good while the status says Scheduled.
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    cron = kube.objects[("cronjobs", cronjob_name("watch"))]
    for edit in ({"suspend": True}, {"schedule": "0 0 1 1 *"}):
        cron["spec"].update(edit)
        kube.writes.clear()
        reconcile(rt, body(kube), view(kube))
        assert writes(kube, "patch", "create") == [("patch", "cronjobs", cronjob_name("watch"))]
        assert (cron["spec"]["suspend"], cron["spec"]["schedule"]) == (False, "*/5 * * * *")
        kube.writes.clear()
        for _ in range(2):  # repaired once: no flapping
            reconcile(rt, body(kube), view(kube))
        assert kube.writes == []


def test_the_decision_is_written_before_the_retrain_is_created(world: tuple[Runtime, FakeKube]) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    t = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    kube.check("watch", t)
    kube.writes.clear()
    reconcile(rt, body(kube), view(kube))
    order = [w for w in kube.writes if w[0] in ("status", "create")]
    name = retrain_name("watch", t)
    assert order == [("status", "driftmonitors", "watch"), ("create", "trainingjobs", name)]
    tj = kube.objects[("trainingjobs", name)]
    assert tj["metadata"]["ownerReferences"][0]["uid"] == "uid-watch"
    assert tj["spec"]["dataset"]["uri"] == "s3://kubeloop/datasets/bc/"
    st = body(kube)["status"]
    assert st["lastRetrain"]["trainingJob"] == name
    assert st["lastDecision"]["reason"] == "RetrainCreated"
    # replays create nothing more
    kube.writes.clear()
    for _ in range(3):
        reconcile(rt, body(kube), view(kube))
    assert writes(kube, "create") == []
    assert body(kube)["status"]["lastRetrain"]["state"] == "Running"


def test_a_conflict_is_re_read_and_re_decided(world: tuple[Runtime, FakeKube]) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    t = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    kube.check("watch", t)
    stale = body(kube)
    kube.check("watch", t + timedelta(minutes=1), n=2)  # the next check lands before our write
    kube.writes.clear()
    reconcile(rt, stale, view(kube))
    assert kube.writes[0][0] == "conflict"
    created = [w[2] for w in writes(kube, "create")]
    assert created == [retrain_name("watch", t + timedelta(minutes=1))]  # decided on the fresh status


def test_a_restart_finishes_a_decided_retrain_and_an_old_event_resurrects_nothing(
    world: tuple[Runtime, FakeKube],
) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    t = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    kube.check("watch", t)
    name = retrain_name("watch", t)
    # a crash after the write-ahead: the status says Pending, no TrainingJob exists
    obj = kube.objects[("driftmonitors", "watch")]
    at = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    pending = {"trainingJob": name, "time": at, "checkTime": at, "state": "Pending"}
    obj["status"].update(
        lastDecision={"checkTime": at, "action": "Retrain", "reason": "RetrainCreated", "message": ""},
        lastRetrain=pending,
        retrains=[pending],
    )
    old_event = body(kube)
    rt2 = Runtime(settings=rt.settings, kube=kube, metrics=Metrics())  # type: ignore[arg-type]
    reconcile(rt2, body(kube), view(kube))
    assert [w[2] for w in writes(kube, "create") if w[1] == "trainingjobs"] == [name]
    # the retrain ended and was recorded; an old watch event showing it Pending creates nothing
    kube.objects[("trainingjobs", name)]["status"] = {"phase": "Succeeded"}
    reconcile(rt2, body(kube), view(kube))
    assert body(kube)["status"]["lastRetrain"]["state"] == "Succeeded"
    del kube.objects[("trainingjobs", name)]  # and deleted by a user
    kube.writes.clear()
    rt3 = Runtime(settings=rt.settings, kube=kube, metrics=Metrics())  # type: ignore[arg-type]
    reconcile(rt3, old_event, view(kube))
    assert writes(kube, "create") == []


def test_a_missing_reference_is_a_skip_and_a_refused_spec_a_failed_retrain(
    world: tuple[Runtime, FakeKube],
) -> None:
    rt, kube = world
    _obj, _ = kube.create(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "metadata": {"name": "ref", "namespace": NS},
            "spec": {
                "deployment": "bc",
                "schedule": "*/5 * * * *",
                "retrain": {"trainingJobRef": {"name": "gone"}},
            },
        }
    )
    reconcile(rt, body(kube, "ref"), view(kube, "ref"))
    kube.check("ref", datetime(2025, 3, 4, 12, 0, tzinfo=UTC))
    reconcile(rt, body(kube, "ref"), view(kube, "ref"))
    st = body(kube, "ref")["status"]
    assert st["lastDecision"]["reason"] == "RetrainSourceNotFound"
    assert "lastRetrain" not in st
    assert not [w for w in kube.writes if w[:2] == ("create", "trainingjobs")]

    # the referenced TrainingJob exists, but the API server refuses the copy for good
    kube.objects[("trainingjobs", "gone")] = {"metadata": {"name": "gone", "uid": "u"}, "spec": {"bad": True}}

    def refuse(manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if manifest["kind"] == "TrainingJob":
            raise KubeError(422, "Invalid", "spec.bad: field not declared in schema")
        return FakeKube.create(kube, manifest)

    kube.create = refuse  # type: ignore[method-assign]
    kube.check("ref", datetime(2025, 3, 4, 12, 5, tzinfo=UTC), n=2)
    reconcile(rt, body(kube, "ref"), view(kube, "ref"))
    st = body(kube, "ref")["status"]
    assert st["lastRetrain"]["state"] == "Failed"
    assert st["lastDecision"]["reason"] == "RetrainRefused"
    assert "field not declared" in st["lastDecision"]["message"]
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["Retraining"]["reason"] == "RetrainRefused"


def test_the_gauges_hold_the_latest_scores_with_a_bounded_set_of_features(
    world: tuple[Runtime, FakeKube],
) -> None:
    rt, kube = world
    monitor(kube)
    reconcile(rt, body(kube), view(kube))
    obj = kube.objects[("driftmonitors", "watch")]
    obj["status"]["lastResult"] = {
        "drifted": True,
        "share": 0.5,
        "samples": 1234,
        "time": "2025-03-04T12:00:00Z",
        "features": [
            {"name": f"f{i:02d}", "psi": i / 100, "jensenShannon": i / 200, "drifted": i % 2 == 0}
            for i in range(40)
        ],
    }
    obj["status"]["lastCheckTime"] = "2025-03-04T12:00:00Z"
    reconcile(rt, body(kube), view(kube))
    text = generate_latest(rt.metrics.registry).decode()
    assert 'kubeloop_operator_drift_samples{monitor="watch",namespace="team-a"} 1234.0' in text
    assert 'kubeloop_operator_drift_drifted{monitor="watch",namespace="team-a"} 1.0' in text
    psi = [ln for ln in text.splitlines() if ln.startswith("kubeloop_operator_drift_feature_psi{")]
    assert len(psi) == 16
    assert 'feature="f38"' in "".join(psi)  # drifted and highest first
    assert 'feature="f39"' not in "".join(psi)
    reconcile(
        rt, {**body(kube), "metadata": {**body(kube)["metadata"], "deletionTimestamp": "x"}}, view(kube)
    )
    assert "kubeloop_operator_drift_samples{" not in generate_latest(rt.metrics.registry).decode()


def test_an_identity_name_taken_by_someone_else_is_refused_naming_its_owner(
    world: tuple[Runtime, FakeKube],
) -> None:
    rt, kube = world
    monitor(kube)
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "watch-drift-check", "namespace": NS},
    }
    kube.objects[("serviceaccounts", "watch-drift-check")] = sa
    with pytest.raises(Exception, match="controlled by nobody"):
        reconcile(rt, body(kube), view(kube))
    assert kube.objects[("serviceaccounts", "watch-drift-check")] == sa  # not adopted, not overwritten
    assert writes(kube, "create", "patch") == []
    messages = [c["message"] for c in body(kube)["status"]["conditions"]]
    assert any(
        "ServiceAccount team-a/watch-drift-check already exists and is controlled by nobody" in m
        for m in messages
    )

    sa["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u-1", "controller": True}
    ]
    with pytest.raises(Exception, match=r"controlled by ConfigMap cm \(uid u-1\)"):
        reconcile(rt, body(kube), view(kube))
    # left by an earlier DriftMonitor of this name (deleted, created again): the garbage collector's
    sa["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "name": "watch",
            "uid": "old",
            "controller": True,
        }
    ]
    with pytest.raises(
        Exception, match=r"of an earlier DriftMonitor watch \(uid old\) of this name is still there"
    ):
        reconcile(rt, body(kube), view(kube))
    assert writes(kube, "create", "patch") == []

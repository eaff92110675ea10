"""DriftMonitor status derivation and the retraining guards, as pure functions of spec, status,
the retrains that exist, and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeloop_operator.status.conditions import Want, rfc3339
from kubeloop_operator.status.driftmonitor import (
    CHECK_FIELDS,
    OPERATOR_FIELDS,
    CheckProblem,
    CheckRecord,
    DeploymentView,
    Derived,
    Observed,
    RetrainView,
    apply_check,
    decide,
    derive,
    dump,
    invalid,
    merge_conditions,
    parse_status,
    retrain_name,
    status_patch,
)

from kubeloop.resources import DriftMonitorSpec, DriftMonitorStatus, DriftSummary, FeatureDriftSummary

T0 = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)
TEMPLATE: dict[str, Any] = {
    "dataset": {"uri": "s3://kubeloop/datasets/bc/", "target": "target"},
    "task": "classification",
    "registry": {"modelName": "bc"},
}


def spec(**retrain: Any) -> DriftMonitorSpec:
    doc: dict[str, Any] = {"deployment": "bc", "schedule": "* * * * *"}
    if retrain.pop("none", False):
        return DriftMonitorSpec.model_validate(doc)
    suspend = retrain.pop("suspend", False)
    doc["retrain"] = {"template": TEMPLATE, "cooldown": "6h", "maxPerDay": 2, **retrain}
    doc["suspend"] = suspend
    return DriftMonitorSpec.model_validate(doc)


def check(
    status: DriftMonitorStatus, at: datetime, *, drifted: bool = True, version: str = "3", model: str = "bc"
) -> DriftMonitorStatus:
    summary = DriftSummary(
        drifted=drifted,
        share=0.75 if drifted else 0.0,
        samples=1000,
        model_version=version,
        features=[
            FeatureDriftSummary(name="a", psi=0.9 if drifted else 0.01, jensen_shannon=0.3, drifted=drifted)
        ],
        baseline_uri=f"s3://kubeloop/models/{model}/{version}/baseline.json",
    )
    return apply_check(status, CheckRecord(time=at, summary=summary), generation=1)


def observe(status: DriftMonitorStatus, now: datetime, s: DriftMonitorSpec, **kw: Any) -> Observed:
    kw.setdefault("cronjob_ready", True)
    kw.setdefault("deployment", DeploymentView("bc", "3"))
    return Observed(now=now, name="watch", generation=1, spec=s, current=status, **kw)


class Operator:
    """The operator's loop over status, as the reconciler runs it: derive, 'write', create what is
    decided — with an in-memory cluster of retrain TrainingJobs."""

    def __init__(self, s: DriftMonitorSpec) -> None:
        self.spec = s
        self.status = DriftMonitorStatus()
        self.created: dict[str, RetrainView] = {}
        self.creates = 0

    def views(self) -> list[RetrainView]:
        return list(self.created.values())

    def reconcile(self, now: datetime, *, crash_before_create: bool = False) -> Derived:
        d = derive(observe(self.status, now, self.spec, retrains=self.views()))
        self.status = d.status  # the write-ahead
        if d.create_retrain is not None and not crash_before_create:
            name = d.create_retrain.training_job
            self.creates += 1
            if name not in self.created:  # a second create of the same name meets 409 and adopts
                self.created[name] = RetrainView(name, f"uid-{name}", "mon-uid", created=now, phase="Pending")
        return d

    def finish(self, name: str, phase: str = "Succeeded", version: int = 4) -> None:
        v = self.created[name]
        self.created[name] = RetrainView(v.name, v.uid, v.owner_uid, v.created, phase, version, True)


def test_a_drifted_check_creates_one_retrain_named_after_it() -> None:
    op = Operator(spec())
    op.status = check(op.status, T0)
    d = op.reconcile(T0 + timedelta(seconds=2))
    assert d.decided
    assert d.create_retrain is not None
    name = retrain_name("watch", T0)
    assert name == "watch-retrain-20250304-120000"
    assert d.create_retrain.training_job == name
    assert d.create_retrain.state == "Pending"
    assert op.status.last_decision is not None
    assert op.status.last_decision.action == "Retrain"
    assert op.status.last_decision.check_time == rfc3339(T0)
    assert [e.reason for e in d.events] == ["RetrainCreated", "DriftDetected"]
    # replays of the same check (watch events, resyncs, a restart) decide nothing new
    for i in range(5):
        d = op.reconcile(T0 + timedelta(seconds=3 + i))
        assert not d.decided
    assert list(op.created) == [name]
    assert op.status.last_retrain is not None
    assert op.status.last_retrain.state == "Running"
    cond = {c.type: c for c in op.status.conditions}
    assert (cond["Retraining"].status, cond["Retraining"].reason) == ("True", "RetrainRunning")
    assert op.status.phase == "Drifted"


def test_ten_drifted_checks_inside_the_cooldown_give_exactly_one_retrain() -> None:
    op = Operator(spec(cooldown="6h", maxPerDay=10))
    reasons = []
    for i in range(10):
        op.status = check(op.status, T0 + timedelta(minutes=i))
        op.reconcile(T0 + timedelta(minutes=i, seconds=5))
        assert op.status.last_decision is not None
        reasons.append(op.status.last_decision.reason)
        if i == 2:
            op.finish(next(iter(op.created)))  # finished early: the cooldown still holds
    assert len(op.created) == 1
    assert reasons[0] == "RetrainCreated"
    assert reasons[1:3] == ["RetrainRunning", "RetrainRunning"]
    assert set(reasons[3:]) == {"CooldownActive"}
    assert op.status.consecutive_drifts == 10
    cond = {c.type: c for c in op.status.conditions}
    assert cond["Retraining"].reason == "CooldownActive"
    assert "ends at 2025-03-04T18:00:05Z" in cond["Retraining"].message


def test_after_the_cooldown_the_next_drift_retrains_again_until_max_per_day() -> None:
    op = Operator(spec(cooldown="1h", maxPerDay=2))
    t = T0
    for hour in range(4):
        t = T0 + timedelta(hours=hour, minutes=1)
        op.status = check(op.status, t)
        op.reconcile(t + timedelta(seconds=1))
        for name in op.created:
            if op.created[name].phase != "Succeeded":
                op.finish(name)
        op.reconcile(t + timedelta(seconds=2))
    assert len(op.created) == 2
    assert op.status.last_decision is not None
    assert op.status.last_decision.reason == "MaxPerDayReached"
    assert "retrain.maxPerDay (2)" in op.status.last_decision.message
    assert len(op.status.retrains) == 2
    # a day after the first, one is possible again; the 24-hour list is pruned
    t = T0 + timedelta(hours=24, minutes=2)
    op.status = check(op.status, t)
    op.reconcile(t + timedelta(seconds=1))
    assert len(op.created) == 3
    assert [r.training_job for r in op.status.retrains] == sorted(op.created)[1:]


def test_max_per_day_without_cooldown_and_no_overlap() -> None:
    op = Operator(spec(cooldown="0s", maxPerDay=3, skipWhileRunning=True))
    for i in range(10):
        t = T0 + timedelta(minutes=i)
        op.status = check(op.status, t)
        op.reconcile(t + timedelta(seconds=1))
        running = [v for v in op.created.values() if not v.final]
        assert len(running) <= 1  # never two at once
        if i % 2 == 1:
            for name in list(op.created):
                if not op.created[name].final:
                    op.finish(name, "Failed")
            op.reconcile(t + timedelta(seconds=2))
    assert len(op.created) == 3
    assert op.status.last_decision is not None
    assert op.status.last_decision.reason == "MaxPerDayReached"


def test_overlap_is_allowed_only_when_asked() -> None:
    op = Operator(spec(cooldown="0s", maxPerDay=5, skipWhileRunning=False))
    for i in range(3):
        op.status = check(op.status, T0 + timedelta(minutes=i))
        op.reconcile(T0 + timedelta(minutes=i, seconds=1))
    assert len(op.created) == 3
    assert not any(v.final for v in op.created.values())


def test_a_crash_between_decision_and_create_is_finished_by_the_next_reconcile() -> None:
    op = Operator(spec(cooldown="0s", maxPerDay=10, skipWhileRunning=False))
    op.status = check(op.status, T0)
    d = op.reconcile(T0 + timedelta(seconds=1), crash_before_create=True)
    assert d.create_retrain is not None
    assert not op.created
    # meanwhile the next check comes in (also drifted): it waits, it must not replace the pending record
    op.status = check(op.status, T0 + timedelta(minutes=1))
    d = op.reconcile(T0 + timedelta(minutes=1, seconds=1))
    first = retrain_name("watch", T0)
    assert d.create_retrain is not None
    assert d.create_retrain.training_job == first
    assert list(op.created) == [first]
    # once the first exists, the waiting check is decided: a second retrain, named after it
    op.reconcile(T0 + timedelta(minutes=1, seconds=2))
    second = retrain_name("watch", T0 + timedelta(minutes=1))
    assert op.status.last_decision is not None
    assert op.status.last_decision.check_time == rfc3339(T0 + timedelta(minutes=1))
    assert list(op.created) == [first, second]
    op.reconcile(T0 + timedelta(minutes=1, seconds=3))
    assert op.creates == 2


def test_a_pending_retrain_blocks_a_second_one_while_it_runs() -> None:
    op = Operator(spec())  # skipWhileRunning: the check after the crash is skipped, not stacked
    op.status = check(op.status, T0)
    op.reconcile(T0 + timedelta(seconds=1), crash_before_create=True)
    op.status = check(op.status, T0 + timedelta(minutes=1))
    op.reconcile(T0 + timedelta(minutes=1, seconds=1))
    op.reconcile(T0 + timedelta(minutes=1, seconds=2))
    assert list(op.created) == [retrain_name("watch", T0)]
    assert op.status.last_decision is not None
    assert op.status.last_decision.reason == "RetrainRunning"


def test_a_lost_status_cannot_let_a_second_retrain_through() -> None:
    """The guards read the TrainingJobs that exist too: with the status's record gone (restored from
    a backup, hand-edited), a retrain made 10 minutes ago still holds the cooldown."""
    made = RetrainView("watch-retrain-x", "u1", "mon", created=T0 - timedelta(minutes=10), phase="Succeeded")
    status = check(DriftMonitorStatus(), T0)
    got = decide("watch", spec(cooldown="1h"), status, [made], T0 + timedelta(seconds=1))
    assert got is not None
    assert got[0].reason == "CooldownActive"
    assert got[1] is None
    running = RetrainView("watch-retrain-y", "u2", "mon", created=T0 - timedelta(hours=9), phase="Running")
    got = decide("watch", spec(cooldown="1h"), status, [running], T0)
    assert got is not None
    assert got[0].reason == "RetrainRunning"


@pytest.mark.parametrize(
    ("s", "reason"),
    [
        (spec(none=True), "RetrainDisabled"),
        (spec(enabled=False), "RetrainDisabled"),
        (spec(suspend=True), "Suspended"),
        (spec(consecutiveDrifts=3), "NotEnoughDrifts"),
    ],
)
def test_guards_that_skip(s: DriftMonitorSpec, reason: str) -> None:
    status = check(DriftMonitorStatus(), T0)
    got = decide("watch", s, status, [], T0)
    assert got is not None
    assert got[0].action == "Skip"
    assert got[0].reason == reason
    assert got[1] is None


def test_consecutive_drifts_are_awaited() -> None:
    op = Operator(spec(consecutiveDrifts=3))
    for i in range(3):
        op.status = check(op.status, T0 + timedelta(minutes=i))
        op.reconcile(T0 + timedelta(minutes=i, seconds=1))
    assert len(op.created) == 1
    assert op.status.last_decision is not None
    assert op.status.last_decision.check_time == rfc3339(T0 + timedelta(minutes=2))


def test_a_drift_streak_across_a_model_version_change_does_not_qualify() -> None:
    """Drifted checks count as consecutive only while they scored the same version against the same
    baseline: after a retrain promotes version 4, version 3's drifts say nothing about version 4."""
    op = Operator(spec(consecutiveDrifts=2))
    op.status = check(op.status, T0, version="3")
    op.reconcile(T0 + timedelta(seconds=1))
    assert op.status.consecutive_drifts == 1
    op.status = check(op.status, T0 + timedelta(minutes=1), version="4")  # the deployment rolled to 4
    assert op.status.consecutive_drifts == 1
    d = op.reconcile(T0 + timedelta(minutes=1, seconds=1))
    assert d.create_retrain is None
    assert op.status.last_decision is not None
    assert op.status.last_decision.reason == "NotEnoughDrifts"
    assert op.created == {}
    # a second drifted check of the same version does qualify
    op.status = check(op.status, T0 + timedelta(minutes=2), version="4")
    assert op.status.consecutive_drifts == 2
    d = op.reconcile(T0 + timedelta(minutes=2, seconds=1))
    assert d.create_retrain is not None
    assert list(op.created) == [retrain_name("watch", T0 + timedelta(minutes=2))]


def test_a_deployment_repointed_to_another_model_restarts_the_streak() -> None:
    """Same version number, another registered model (another baseline): a new streak."""
    status = check(DriftMonitorStatus(), T0, model="bc")
    status = check(status, T0 + timedelta(minutes=1), model="bc")
    assert status.consecutive_drifts == 2
    status = check(status, T0 + timedelta(minutes=2), model="churn")
    assert status.consecutive_drifts == 1
    status = check(status, T0 + timedelta(minutes=3), model="churn", drifted=False)
    assert status.consecutive_drifts == 0


def test_a_check_without_result_keeps_the_streak_of_the_version_scored() -> None:
    """A check that could not score (the deployment had not resolved its version during a rollout)
    neither breaks nor extends the streak; the next scored check compares with the last one scored."""
    status = check(DriftMonitorStatus(), T0, version="3")
    status = apply_check(
        status,
        CheckRecord(time=T0 + timedelta(minutes=1), error=CheckProblem("ModelVersionUnknown", "rolling")),
        generation=1,
    )
    assert status.consecutive_drifts == 1
    assert check(status, T0 + timedelta(minutes=2), version="3").consecutive_drifts == 2
    assert check(status, T0 + timedelta(minutes=2), version="4").consecutive_drifts == 1


def test_a_check_with_too_few_samples_keeps_the_streak_of_the_version_scored() -> None:
    """A quiet hour (fewer logged predictions than window.minSamples) is no evidence either way: it
    neither breaks nor extends a drift streak of the same model, and a new model's quiet hour ends the
    old model's streak."""

    def quiet(status: DriftMonitorStatus, at: datetime, version: str) -> DriftMonitorStatus:
        summary = DriftSummary(
            drifted=False,
            share=0.0,
            samples=3,
            insufficient_data=True,
            model_version=version,
            features=[],
            baseline_uri=f"s3://kubeloop/models/bc/{version}/baseline.json",
        )
        return apply_check(status, CheckRecord(time=at, summary=summary), generation=1)

    status = check(DriftMonitorStatus(), T0, version="3")
    status = check(status, T0 + timedelta(minutes=1), version="3")
    status = quiet(status, T0 + timedelta(minutes=2), "3")
    assert status.consecutive_drifts == 2
    assert check(status, T0 + timedelta(minutes=3), version="3").consecutive_drifts == 3
    status = quiet(status, T0 + timedelta(minutes=3), "4")
    assert status.consecutive_drifts == 0
    assert check(status, T0 + timedelta(minutes=4), version="4").consecutive_drifts == 1


def test_no_drift_decides_nothing() -> None:
    status = check(DriftMonitorStatus(), T0, drifted=False)
    assert decide("watch", spec(), status, [], T0) is None
    d = derive(observe(status, T0, spec()))
    assert not d.decided
    assert d.create_retrain is None
    cond = {c.type: c for c in d.status.conditions}
    assert cond["Retraining"].reason == "NoDrift"
    assert d.status.phase == "Active"


def test_the_retrain_is_followed_to_its_end() -> None:
    op = Operator(spec())
    op.status = check(op.status, T0)
    op.reconcile(T0 + timedelta(seconds=1))
    name = next(iter(op.created))
    op.finish(name, "Succeeded", version=7)
    d = op.reconcile(T0 + timedelta(minutes=3))
    last = op.status.last_retrain
    assert last is not None
    assert (last.state, last.model_version, last.promoted) == ("Succeeded", 7, True)
    cond = {c.type: c for c in op.status.conditions}
    assert (cond["Retraining"].status, cond["Retraining"].reason) == ("False", "RetrainSucceeded")
    assert "version 7, promoted" in cond["Retraining"].message
    assert [e.reason for e in d.events] == ["RetrainSucceeded"]
    del op.created[name]  # deleted by a user: recorded, never re-created
    d = op.reconcile(T0 + timedelta(minutes=4))
    assert op.status.last_retrain is not None
    assert op.status.last_retrain.state == "Succeeded"
    assert d.create_retrain is None


def test_a_retrain_deleted_while_running_is_said_and_not_recreated() -> None:
    op = Operator(spec())
    op.status = check(op.status, T0)
    op.reconcile(T0 + timedelta(seconds=1))
    op.reconcile(T0 + timedelta(seconds=2))
    op.created.clear()
    d = op.reconcile(T0 + timedelta(seconds=3))
    assert op.status.last_retrain is not None
    assert op.status.last_retrain.state == "Deleted"
    assert d.create_retrain is None
    assert {c.type: c.reason for c in op.status.conditions}["Retraining"] == "RetrainDeleted"


def test_a_missing_retrain_source_is_a_skip_with_its_reason() -> None:
    from kubeloop_operator.status.driftmonitor import CheckProblem

    status = check(DriftMonitorStatus(), T0)
    d = derive(
        observe(status, T0, spec(), retrain_source_problem=CheckProblem("RetrainSourceNotFound", "no tj"))
    )
    assert d.create_retrain is None
    assert d.status.last_decision is not None
    assert d.status.last_decision.reason == "RetrainSourceNotFound"


def test_deployment_missing_suspend_and_invalid_spec_are_conditions_and_phases() -> None:
    status = check(DriftMonitorStatus(), T0, drifted=False)
    d = derive(observe(status, T0, spec(), deployment=None))
    cond = {c.type: c for c in d.status.conditions}
    assert (cond["DeploymentFound"].status, cond["DeploymentFound"].reason) == (
        "False",
        "ModelDeploymentNotFound",
    )
    assert d.status.phase == "Failed"
    assert any(e.reason == "ModelDeploymentNotFound" for e in d.events)
    again = derive(observe(d.status, T0 + timedelta(seconds=10), spec(), deployment=None))
    assert again.events == []  # said once, not on every resync
    d = derive(observe(status, T0, spec(suspend=True)))
    cond = {c.type: c for c in d.status.conditions}
    assert (cond["Scheduled"].status, cond["Scheduled"].reason) == ("False", "Suspended")
    assert d.status.phase == "Suspended"
    d = invalid(DriftMonitorStatus(), 3, "spec.schedule: bad", T0, "watch")
    assert d.status.phase == "Failed"
    assert d.status.observed_generation == 3
    assert {c.type: c.reason for c in d.status.conditions}["Scheduled"] == "InvalidSpec"
    fresh = derive(observe(DriftMonitorStatus(), T0, spec(), cronjob_ready=False))
    assert fresh.status.phase == "Pending"


def test_conditions_of_the_other_writer_are_kept_in_order() -> None:
    checked = check(DriftMonitorStatus(), T0)
    d = derive(observe(checked, T0 + timedelta(seconds=1), spec()))
    types = [c.type for c in d.status.conditions]
    assert types == ["Scheduled", "DeploymentFound", "Checked", "InputsValid", "Drifted", "Retraining"]
    again = check(d.status, T0 + timedelta(minutes=1), drifted=False)
    assert [c.type for c in again.conditions] == types
    kept = {c.type: c for c in again.conditions}
    assert kept["Scheduled"] == {c.type: c for c in d.status.conditions}["Scheduled"]
    merged = merge_conditions(
        again.conditions, [Want("Scheduled", True, "CronJobReady", "x")], generation=1, now=T0
    )
    assert {c.type: c.last_transition_time for c in merged}["Scheduled"] == rfc3339(T0 + timedelta(seconds=1))


def test_each_writer_patches_only_its_fields() -> None:
    before = check(DriftMonitorStatus(), T0)
    d = derive(observe(before, T0, spec()))
    patch = status_patch(dump(before), dump(d.status), OPERATOR_FIELDS)
    assert set(patch) <= {*OPERATOR_FIELDS, "conditions"}
    assert "lastResult" not in patch
    after = check(d.status, T0 + timedelta(minutes=1))
    patch = status_patch(dump(d.status), dump(after), CHECK_FIELDS)
    assert set(patch) <= {*CHECK_FIELDS, "conditions"}
    assert "lastRetrain" not in patch
    assert status_patch(dump(after), dump(after), CHECK_FIELDS) == {}


def test_an_idle_monitor_derives_the_status_it_has() -> None:
    status = check(DriftMonitorStatus(), T0, drifted=False)
    first = derive(observe(status, T0, spec()))
    second = derive(observe(first.status, T0 + timedelta(minutes=7), spec()))
    assert dump(second.status) == dump(first.status)
    assert second.events == []


def test_history_is_bounded_and_unreadable_status_counts_as_empty() -> None:
    status = DriftMonitorStatus()
    for i in range(30):
        status = check(status, T0 + timedelta(minutes=i), drifted=i % 2 == 0)
    assert len(status.history) == 20
    assert status.history[-1].time == rfc3339(T0 + timedelta(minutes=29))
    assert parse_status({"consecutiveDrifts": -4}) == DriftMonitorStatus()
    assert len(retrain_name("m" * 63, T0)) <= 56


def test_a_new_retrain_record_does_not_inherit_the_old_ones_version() -> None:
    # lastRetrain is replaced by a new record (no version yet): a merge patch must null what the old
    # record had, or the API server keeps the previous retrain's version and promotion on it.
    old = dump(
        DriftMonitorStatus.model_validate(
            {
                "lastRetrain": {
                    "trainingJob": "m-retrain-1",
                    "time": rfc3339(T0),
                    "state": "Succeeded",
                    "modelVersion": 3,
                    "promoted": True,
                }
            }
        )
    )
    new = dump(
        DriftMonitorStatus.model_validate(
            {"lastRetrain": {"trainingJob": "m-retrain-2", "time": rfc3339(T0), "state": "Pending"}}
        )
    )
    patch = status_patch(old, new, OPERATOR_FIELDS)
    assert patch["lastRetrain"]["modelVersion"] is None
    assert patch["lastRetrain"]["promoted"] is None


def test_a_check_older_than_the_last_one_recorded_is_history_not_the_last_result() -> None:
    """Two checks can run at once (a manual `kubectl create job --from=cronjob/...` beside the
    scheduled one). When the older one records last, the status must not go back in time: its result
    would replace the newer one as lastResult, and the operator would decide again, about a stale check."""
    op = Operator(spec(skipWhileRunning=False, cooldown="0s"))
    newer, older = T0 + timedelta(minutes=5), T0 + timedelta(minutes=4)
    op.status = check(op.status, newer)
    first = op.reconcile(newer + timedelta(seconds=2))
    assert first.create_retrain is not None
    assert first.create_retrain.training_job == retrain_name("watch", newer)
    op.finish(first.create_retrain.training_job, phase="Running")

    op.status = check(op.status, older)  # the older check finishes last
    assert op.status.last_check_time == rfc3339(newer)
    assert op.status.last_result is not None
    assert op.status.last_result.time == rfc3339(newer)
    assert op.status.consecutive_drifts == 1
    assert [h.time for h in op.status.history] == [rfc3339(older), rfc3339(newer)]
    second = op.reconcile(newer + timedelta(seconds=10))
    assert second.create_retrain is None
    assert not second.decided
    assert op.creates == 1

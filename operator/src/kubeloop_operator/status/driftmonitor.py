"""DriftMonitor status, derived purely: what a drift check adds to it, and what the operator makes of it.

Two writers share the status, each owning its own fields, and both write with the object's
``resourceVersion`` as a precondition (a lost update is impossible, a conflict is re-read and redone):

* the check job (``kubeloop-drift-check``): ``lastCheckTime``, ``lastResult``, ``consecutiveDrifts``,
  ``history`` and the conditions ``Checked``, ``InputsValid`` and ``Drifted`` (:func:`apply_check`);
* the operator: ``observedGeneration``, ``phase``, ``lastDecision``, ``lastRetrain``, ``retrains`` and
  the conditions ``Scheduled``, ``DeploymentFound`` and ``Retraining`` (:func:`derive`).

Retraining is decided once per drifted check (``lastDecision.checkTime`` equals ``lastResult.time``
afterwards), by :func:`decide`, a pure function of the spec, the status, the retrains that exist and
the time. The guards (cooldown, maxPerDay, no retrain while one runs) read the status *and* the
TrainingJobs this monitor owns, so neither a lost status write nor a lagging index lets a second
retrain through. A decision to retrain is written to status (``lastRetrain.state: Pending``) before
the TrainingJob is created under a name derived from the check: a crash in between is finished by
the next reconcile, and a replay meets the name it already created.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from kubeloop.resources import (
    HISTORY_LIMIT,
    Condition,
    DriftHistoryEntry,
    DriftMonitorSpec,
    DriftMonitorStatus,
    DriftSummary,
    LastRetrain,
    RetrainDecision,
    RetrainSpec,
    parse_duration,
)
from kubeloop_operator.builders.common import child_name, merge_diff
from kubeloop_operator.status.conditions import EventSpec, Want, merge, one_line, parse_time, rfc3339

# --- conditions and their owners ---------------------------------------------------------------------

SCHEDULED: Final = "Scheduled"
DEPLOYMENT_FOUND: Final = "DeploymentFound"
CHECKED: Final = "Checked"
INPUTS_VALID: Final = "InputsValid"
DRIFTED: Final = "Drifted"
RETRAINING: Final = "Retraining"
CONDITION_ORDER: Final = (SCHEDULED, DEPLOYMENT_FOUND, CHECKED, INPUTS_VALID, DRIFTED, RETRAINING)
CHECK_CONDITIONS: Final = frozenset({CHECKED, INPUTS_VALID, DRIFTED})
OPERATOR_CONDITIONS: Final = frozenset({SCHEDULED, DEPLOYMENT_FOUND, RETRAINING})

CHECK_FIELDS: Final = ("lastCheckTime", "lastResult", "consecutiveDrifts", "history")
OPERATOR_FIELDS: Final = ("observedGeneration", "phase", "lastDecision", "lastRetrain", "retrains")

RETRAINS_WINDOW: Final = timedelta(hours=24)
RETRAINS_LIMIT: Final = 100
FINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


def parse_status(raw: Any) -> DriftMonitorStatus:
    """The status as the model reads it; an unreadable status (hand-edited) counts as empty."""
    try:
        return DriftMonitorStatus.model_validate(raw or {})
    except ValueError:
        return DriftMonitorStatus()


def dump(status: DriftMonitorStatus) -> dict[str, Any]:
    out: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def merge_conditions(
    old: Sequence[Condition], wanted: Iterable[Want], *, generation: int, now: datetime
) -> list[Condition]:
    """``wanted`` merged into ``old`` (transition times kept while a status stays), keeping the
    conditions of the other writer as they are; in :data:`CONDITION_ORDER`."""
    wanted = list(wanted)
    mine = {c.type: c for c in merge(old, wanted, generation=generation, now=now)}
    others = {c.type: c for c in old if c.type not in mine}
    both = {**others, **mine}
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(both.values(), key=lambda c: (order.get(c.type, len(order)), c.type))


def condition(status: DriftMonitorStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


# --- the check job's part ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckProblem:
    """Why a check gave no result, or why one prediction-log part was skipped."""

    reason: str
    message: str


@dataclass(frozen=True)
class CheckRecord:
    """One drift check as the status records it: a result (``summary``), or ``error`` when there is none."""

    time: datetime
    summary: DriftSummary | None = None
    error: CheckProblem | None = None
    skipped: tuple[CheckProblem, ...] = ()
    note: str = ""
    """Said in the Checked condition's message (e.g. that the report could not be written)."""


SKIPPED_SHOWN: Final = 5


def _skipped_want(skipped: Sequence[CheckProblem], parts: int) -> Want:
    if not skipped:
        return Want(INPUTS_VALID, True, "AllPartsRead", f"{parts} prediction-log part(s) read")
    reasons = sorted({p.reason for p in skipped})
    reason = reasons[0] if len(reasons) == 1 else "PartsSkipped"
    shown = "; ".join(p.message for p in skipped[:SKIPPED_SHOWN])
    more = f"; and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    return Want(
        INPUTS_VALID,
        False,
        reason,
        f"{len(skipped)} of {parts + len(skipped)} prediction-log part(s) skipped, the rest scored: {shown}{more}",
    )


def scored_model(summary: DriftSummary) -> tuple[str | None, str | None]:
    """What a result scored: the model version and the baseline it was scored against (the baseline
    tells apart two models with the same version number, when the deployment is repointed)."""
    return summary.model_version, summary.baseline_uri


def _consecutive_drifts(status: DriftMonitorStatus, summary: DriftSummary) -> int:
    """Drifted checks in a row *of the same model*: a retrain that promotes a new version (or anyone
    repointing the ModelDeployment) starts a new streak, or the old version's drifts would make the new
    version's first drifted check qualify for ``retrain.consecutiveDrifts``. A check without a result
    leaves the streak alone, so the result before it (``lastResult``) is the one compared with. So does a
    check with too few samples (a quiet hour tells nothing either way), unless it scored another model."""
    before = status.last_result
    same_model = before is not None and scored_model(before) == scored_model(summary)
    if summary.insufficient_data:
        return status.consecutive_drifts if same_model else 0
    if not summary.drifted:
        return 0
    return status.consecutive_drifts + 1 if same_model else 1


def _history_entry(rec: CheckRecord, when: str) -> DriftHistoryEntry:
    """One check in the bounded history: its result, or why it has none."""
    s = rec.summary
    if s is not None:
        return DriftHistoryEntry(time=when, drifted=s.drifted, share=s.share, samples=s.samples)
    reason = (rec.error or CheckProblem("CheckFailed", "")).reason
    return DriftHistoryEntry(time=when, drifted=False, reason=reason[:128])


def apply_check(status: DriftMonitorStatus, rec: CheckRecord, generation: int) -> DriftMonitorStatus:
    """The status after one check (only the check's fields and conditions change). A check older than
    the last one recorded (two ran at once, the older finished last) only joins the history: the
    status never goes back in time, and the operator never decides about a check already superseded."""
    now = rec.time
    when = rfc3339(now)
    last = parse_time(status.last_check_time)
    if last is not None and now < last:
        entry = _history_entry(rec, when)
        ordered = sorted([*status.history, entry], key=lambda h: parse_time(h.time) or now)
        return status.model_copy(update={"history": ordered[-HISTORY_LIMIT:]})
    wants: list[Want] = []
    history = list(status.history)
    update: dict[str, Any] = {"last_check_time": when}
    s = rec.summary
    if s is not None:
        drifted_features = [f.name for f in s.features if f.drifted]
        shown = ", ".join(drifted_features[:8]) + (" …" if len(drifted_features) > 8 else "")
        if s.insufficient_data:
            wants.append(
                Want(
                    CHECKED,
                    True,
                    "InsufficientData",
                    f"{s.samples} logged prediction(s) of version {s.model_version} in the window; "
                    "fewer than window.minSamples, so nothing is flagged",
                )
            )
            wants.append(Want(DRIFTED, None, "InsufficientData", "not enough logged predictions to tell"))
        else:
            wants.append(
                Want(
                    CHECKED,
                    True,
                    "Scored",
                    f"{s.samples} logged prediction(s) of version {s.model_version} scored against "
                    f"{s.baseline_uri}" + (f"; {rec.note}" if rec.note else ""),
                )
            )
            wants.append(
                Want(
                    DRIFTED,
                    s.drifted,
                    "DriftDetected" if s.drifted else "NoDrift",
                    f"{s.share:.0%} of the features drifted" + (f": {shown}" if shown else ""),
                )
            )
        wants.append(_skipped_want(rec.skipped, s.parts))
        update["last_result"] = s.model_copy(update={"time": when})
        update["consecutive_drifts"] = _consecutive_drifts(status, s)
    else:
        err = rec.error or CheckProblem("CheckFailed", "the check produced no result")
        wants.append(Want(CHECKED, False, err.reason, err.message))
    history.append(_history_entry(rec, when))
    update["history"] = history[-HISTORY_LIMIT:]
    update["conditions"] = merge_conditions(status.conditions, wants, generation=generation, now=now)
    return status.model_copy(update=update)


# --- what the operator sees ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrainView:
    """A retraining TrainingJob this monitor owns, as the index has it."""

    name: str
    uid: str
    owner_uid: str
    created: datetime | None = None
    phase: str | None = None
    model_version: int | None = None
    promoted: bool | None = None
    deleting: bool = False

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


@dataclass(frozen=True, slots=True)
class CronJobView:
    name: str
    uid: str
    owner_uid: str
    spec_hash: str
    suspend: bool
    last_schedule_time: str | None = None
    active: int = 0
    schedule: str | None = None
    """The live schedule (None: not known). With ``suspend``, what a hand edit changes without
    touching the spec-hash annotation."""
    owned_hash: str = ""
    """The hash of the fields the operator owns as they are live (``builders.driftmonitor.owned_hash``):
    differs from the built CronJob's after a hand edit of its job template too."""


@dataclass(frozen=True, slots=True)
class DeploymentView:
    """The monitored ModelDeployment (None in :class:`Observed` when it does not exist)."""

    name: str
    model_version: str | None = None


@dataclass(frozen=True, slots=True)
class ChildProblem:
    """A child that could not be created or updated (the API server's answer)."""

    reason: str
    message: str
    permanent: bool = False


@dataclass(frozen=True)
class Observed:
    now: datetime
    name: str
    generation: int
    spec: DriftMonitorSpec | None
    current: DriftMonitorStatus
    invalid_spec: str | None = None
    cronjob_ready: bool = False
    child_problem: ChildProblem | None = None
    deployment: DeploymentView | None = None
    deployment_known: bool = True
    retrains: Sequence[RetrainView] = field(default_factory=tuple)
    retrain_source_problem: CheckProblem | None = None
    """Why the retrain spec cannot be had now (trainingJobRef missing); a retrain decided now waits."""


@dataclass(frozen=True)
class Derived:
    status: DriftMonitorStatus
    create_retrain: LastRetrain | None = None
    """A retrain decided (now or before a crash) whose TrainingJob must exist: create it (409: adopt)."""
    decided: bool = False
    """Whether a decision was taken in this derivation (it must be written before anything is created)."""
    events: list[EventSpec] = field(default_factory=list)


def retrain_name(monitor: str, check_time: datetime) -> str:
    """The retraining TrainingJob of the check at ``check_time``: one name per check, so a replay or a
    restarted operator can never create a second."""
    return child_name(monitor, f"retrain-{check_time:%Y%m%d-%H%M%S}", max_len=56)


def _retrain_times(status: DriftMonitorStatus, views: Sequence[RetrainView]) -> dict[str, datetime]:
    """Every retrain known, by name, with its creation time: the status's record and what exists."""
    out: dict[str, datetime] = {}
    for r in [*status.retrains, *([status.last_retrain] if status.last_retrain else [])]:
        t = parse_time(r.time)
        if t is not None:
            out[r.training_job] = min(t, out.get(r.training_job, t))
    for v in views:
        if v.created is not None:
            out[v.name] = min(v.created, out.get(v.name, v.created))
    return out


def running_retrain(status: DriftMonitorStatus, views: Sequence[RetrainView]) -> str | None:
    """The name of a retrain of this monitor that has not finished, if any."""
    for v in views:
        if not v.final and not v.deleting:
            return v.name
    last = status.last_retrain
    if last is not None and last.state in ("Pending", "Running"):
        return last.training_job
    return None


def decide(
    name: str,
    spec: DriftMonitorSpec,
    status: DriftMonitorStatus,
    views: Sequence[RetrainView],
    now: datetime,
) -> tuple[RetrainDecision, LastRetrain | None] | None:
    """The decision about the last check, or None when there is nothing to decide (no drift, or this
    check was decided already, or a retrain decided before is still being created). Guards, in order:
    retraining configured and enabled, monitor not suspended, enough drifted checks in a row, no
    retrain running, cooldown over, maxPerDay."""
    result = status.last_result
    if result is None or not result.drifted or result.time is None:
        return None
    if status.last_decision is not None and status.last_decision.check_time == result.time:
        return None
    if status.last_retrain is not None and status.last_retrain.state == "Pending":
        # The retrain decided before is written but not created yet: deciding now would replace its
        # record and lose it. The latest check is decided once it exists.
        return None
    check_time = parse_time(result.time) or now

    def skip(reason: str, message: str) -> tuple[RetrainDecision, None]:
        return RetrainDecision(
            check_time=result.time or rfc3339(now), action="Skip", reason=reason, message=one_line(message)
        ), None

    retrain: RetrainSpec | None = spec.retrain
    if retrain is None or not retrain.enabled:
        return skip(
            "RetrainDisabled", "drift detected; spec.retrain is not set or not enabled: only reported"
        )
    if spec.suspend:
        return skip("Suspended", "drift detected while the monitor is suspended: no retrain")
    if status.consecutive_drifts < retrain.consecutive_drifts:
        return skip(
            "NotEnoughDrifts",
            f"{status.consecutive_drifts} drifted check(s) in a row of version {result.model_version}; "
            f"retrain.consecutiveDrifts is {retrain.consecutive_drifts}",
        )
    running = running_retrain(status, views)
    if running is not None and retrain.skip_while_running:
        return skip("RetrainRunning", f"drift detected while retrain {running} is still running")
    times = _retrain_times(status, views)
    if times:
        last_name, last = max(times.items(), key=lambda kv: kv[1])
        cooldown = timedelta(seconds=parse_duration(retrain.cooldown))
        if now - last < cooldown:
            return skip(
                "CooldownActive",
                f"drift detected; the last retrain ({last_name}, {rfc3339(last)}) is within the cooldown of "
                f"{retrain.cooldown}, which ends at {rfc3339(last + cooldown)}",
            )
    recent = sorted(t for t in times.values() if now - t < RETRAINS_WINDOW)
    if len(recent) >= retrain.max_per_day:
        return skip(
            "MaxPerDayReached",
            f"drift detected; {len(recent)} retrain(s) in the last 24 h reach retrain.maxPerDay "
            f"({retrain.max_per_day}); the next is possible at {rfc3339(recent[0] + RETRAINS_WINDOW)}",
        )
    tj = retrain_name(name, check_time)
    record = LastRetrain(training_job=tj, time=rfc3339(now), check_time=result.time, state="Pending")
    return RetrainDecision(
        check_time=result.time,
        action="Retrain",
        reason="RetrainCreated",
        message=one_line(
            f"drift detected at {result.time} ({result.share:.0%} of the features drifted): retraining "
            f"as TrainingJob {tj}"
        ),
    ), record


def _follow(last: LastRetrain, views: Sequence[RetrainView]) -> LastRetrain:
    """The last retrain's state from its TrainingJob (Deleted once it is gone after being seen)."""
    view = next((v for v in views if v.name == last.training_job), None)
    if view is None:
        if last.state in (None, "Running"):
            return last.model_copy(update={"state": "Deleted"})
        return last  # Pending: not created yet (or the index lags); final: kept as it ended
    state: Literal["Running", "Succeeded", "Failed"]
    state = "Succeeded" if view.phase == "Succeeded" else "Failed" if view.phase == "Failed" else "Running"
    return last.model_copy(
        update={
            "state": state,
            "model_version": view.model_version if view.model_version is not None else last.model_version,
            "promoted": view.promoted if view.promoted is not None else last.promoted,
        }
    )


def _prune(retrains: Sequence[LastRetrain], now: datetime) -> list[LastRetrain]:
    keep = []
    for r in retrains:
        t = parse_time(r.time)
        if t is not None and now - t < RETRAINS_WINDOW:
            keep.append(r)
    return keep[-RETRAINS_LIMIT:]


def _retraining_want(status: DriftMonitorStatus, spec: DriftMonitorSpec | None) -> Want:
    last = status.last_retrain
    decision = status.last_decision
    if last is not None and last.state == "Pending":
        return Want(RETRAINING, True, "RetrainPending", f"creating retrain TrainingJob {last.training_job}")
    if last is not None and last.state == "Running":
        return Want(RETRAINING, True, "RetrainRunning", f"retrain TrainingJob {last.training_job} is running")
    if decision is not None and decision.action == "Skip":
        return Want(RETRAINING, False, decision.reason, decision.message)
    if last is not None and last.state == "Succeeded":
        promoted = (
            "promoted"
            if last.promoted
            else "not promoted (the promotion rule kept the current version)"
            if last.promoted is False
            else "promotion unknown"
        )
        version = f"version {last.model_version}" if last.model_version is not None else "a new version"
        return Want(
            RETRAINING,
            False,
            "RetrainSucceeded",
            f"retrain TrainingJob {last.training_job} registered {version}, {promoted}",
        )
    if last is not None and last.state == "Failed":
        return Want(RETRAINING, False, "RetrainFailed", f"retrain TrainingJob {last.training_job} failed")
    if last is not None and last.state == "Deleted":
        return Want(
            RETRAINING, False, "RetrainDeleted", f"retrain TrainingJob {last.training_job} was deleted"
        )
    if spec is None or spec.retrain is None or not spec.retrain.enabled:
        return Want(RETRAINING, False, "RetrainDisabled", "spec.retrain is not set or not enabled")
    return Want(RETRAINING, False, "NoDrift", "no drift has called for a retrain")


def with_retraining(
    status: DriftMonitorStatus, spec: DriftMonitorSpec | None, generation: int, now: datetime
) -> DriftMonitorStatus:
    """``status`` with its Retraining condition re-derived (after the retrain's record changed)."""
    wanted = [_retraining_want(status, spec)]
    return status.model_copy(
        update={"conditions": merge_conditions(status.conditions, wanted, generation=generation, now=now)}
    )


def _phase(
    o: Observed, status: DriftMonitorStatus
) -> Literal["Pending", "Active", "Drifted", "Suspended", "Failed"]:
    if o.invalid_spec is not None:
        return "Failed"
    if o.spec is not None and o.spec.suspend:
        return "Suspended"
    checked = condition(status, CHECKED)
    if (o.deployment_known and o.deployment is None) or (checked is not None and checked.status == "False"):
        return "Failed"
    if o.child_problem is not None and o.child_problem.permanent:
        return "Failed"
    if status.last_result is not None and status.last_result.drifted:
        return "Drifted"
    if status.last_result is not None or o.cronjob_ready:
        return "Active"
    return "Pending"


def derive(o: Observed) -> Derived:
    """The operator's fields of the status from what it observed, plus the retrain to create."""
    cur = o.current
    status = cur
    events: list[EventSpec] = []
    wants: list[Want] = []
    create: LastRetrain | None = None
    decided = False
    if o.invalid_spec is not None:
        wants.append(Want(SCHEDULED, False, "InvalidSpec", o.invalid_spec))
    elif o.spec is not None and o.spec.suspend:
        wants.append(Want(SCHEDULED, False, "Suspended", "spec.suspend is true: no checks run"))
    elif o.child_problem is not None:
        wants.append(Want(SCHEDULED, False, o.child_problem.reason, o.child_problem.message))
    elif o.cronjob_ready and o.spec is not None:
        wants.append(Want(SCHEDULED, True, "CronJobReady", f"checks run on the schedule {o.spec.schedule!r}"))
    else:
        wants.append(Want(SCHEDULED, False, "Creating", "creating the check's CronJob"))

    if o.spec is not None and o.deployment_known:
        if o.deployment is None:
            wants.append(
                Want(
                    DEPLOYMENT_FOUND,
                    False,
                    "ModelDeploymentNotFound",
                    f"ModelDeployment {o.spec.deployment} does not exist in this namespace; checks report "
                    "no result until it does",
                )
            )
            before = condition(cur, DEPLOYMENT_FOUND)
            if before is None or before.status != "False":  # on the transition only: no request per resync
                events.append(
                    EventSpec(
                        "Warning",
                        "ModelDeploymentNotFound",
                        f"ModelDeployment {o.spec.deployment} does not exist",
                        f"{o.generation}/{o.spec.deployment}",
                    )
                )
        else:
            version = o.deployment.model_version
            wants.append(
                Want(
                    DEPLOYMENT_FOUND,
                    True,
                    "Found",
                    f"ModelDeployment {o.deployment.name} serves version {version}"
                    if version
                    else f"ModelDeployment {o.deployment.name} has not resolved a model version yet",
                )
            )

    # the last retrain follows its TrainingJob; the 24-hour list is pruned
    if cur.last_retrain is not None:
        followed = _follow(cur.last_retrain, o.retrains)
        if followed != cur.last_retrain:
            status = status.model_copy(update={"last_retrain": followed})
            if followed.state in ("Succeeded", "Failed"):
                events.append(
                    EventSpec(
                        "Normal" if followed.state == "Succeeded" else "Warning",
                        f"Retrain{followed.state}",
                        f"retrain TrainingJob {followed.training_job} {followed.state.lower()}"
                        + (
                            f": version {followed.model_version}"
                            if followed.model_version is not None
                            else ""
                        )
                        + (", promoted" if followed.promoted else ""),
                        followed.training_job,
                    )
                )
    pruned = _prune(status.retrains, o.now)
    if pruned != status.retrains:
        status = status.model_copy(update={"retrains": pruned})

    if o.spec is not None:
        decision = decide(o.name, o.spec, status, o.retrains, o.now)
        if decision is not None:
            choice, record = decision
            if record is not None and o.retrain_source_problem is not None:
                # The TrainingJob cannot be built now (its source is missing): skipped, said why.
                choice = choice.model_copy(
                    update={
                        "action": "Skip",
                        "reason": o.retrain_source_problem.reason,
                        "message": one_line(o.retrain_source_problem.message),
                    }
                )
                record = None
            decided = True
            update: dict[str, Any] = {"last_decision": choice}
            if record is not None:
                update["last_retrain"] = record
                update["retrains"] = _prune([*status.retrains, record], o.now)
                events.append(EventSpec("Normal", "RetrainCreated", choice.message, choice.check_time))
            else:
                events.append(EventSpec("Normal", "RetrainSkipped", choice.message, choice.check_time))
            events.append(
                EventSpec(
                    "Warning", "DriftDetected", f"drift detected at {choice.check_time}", choice.check_time
                )
            )
            status = status.model_copy(update=update)
    last = status.last_retrain
    if last is not None and last.state == "Pending":
        create = last
    wants.append(_retraining_want(status, o.spec))
    status = status.model_copy(
        update={
            "observed_generation": o.generation,
            "conditions": merge_conditions(status.conditions, wants, generation=o.generation, now=o.now),
        }
    )
    status = status.model_copy(update={"phase": _phase(o, status)})
    return Derived(status=status, create_retrain=create, decided=decided, events=events)


def invalid(current: DriftMonitorStatus, generation: int, message: str, now: datetime, name: str) -> Derived:
    return derive(
        Observed(
            now=now,
            name=name,
            generation=generation,
            spec=None,
            current=current,
            invalid_spec=message,
            deployment_known=False,
        )
    )


def status_patch(old: dict[str, Any], new: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """The merge patch of one writer: its ``fields`` that changed, and the conditions list when it
    changed (the other writer's conditions in it are as read; the resourceVersion precondition makes
    sure they still are). Empty when nothing changed."""
    # Per field, the recursive diff: a nested key the new value lacks (lastRetrain.modelVersion of
    # the retrain before) must go as null, or the API server's merge keeps it.
    return {
        k: merge_diff(old.get(k), new.get(k)) for k in (*fields, "conditions") if old.get(k) != new.get(k)
    }

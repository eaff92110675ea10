"""A TrainingJob's status from its Job, its pods and what their logs said (pure).

The rules, in the order they apply:

* A finished run (Succeeded or Failed) keeps its result: later observations (children removed by
  the TTL, pods gone) never rewrite it. Only a log tail that arrives late is added.
* Failed: the cause is named, most specific first — the deadline, the trainer's own reason from its
  termination message (its errors a retry cannot fix fail the run at once, without retries), OOMKilled, then the
  Job's BackoffLimitExceeded with the last pod's exit code and message.
* Succeeded: the trainer's summary from the rank-0 pod's termination message (metrics, run id,
  version, URIs, whether the alias moved).
* Suspended while the Job is suspended; Running while pods run and nothing blocks them; otherwise
  Pending, with ``failure`` naming what blocks the pods (Unschedulable, ImagePullBackOff, …) — such a
  cause may clear (a node joins, the image appears), so it does not end the run by itself; the
  run's ``activeDeadlineSeconds`` bounds it.
* Nothing in the result depends on the clock unless something changed, so an unchanged world gives
  an identical status and the operator writes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from kubeloop.contracts import TRAINER_NO_RETRY_EXIT_CODES, TrainingFailure, TrainingSummary
from kubeloop.resources import (
    LOG_TAIL_MAX_BYTES,
    Condition,
    Failure,
    Phase,
    Progress,
    Task,
    TrainingJobSpec,
    TrainingJobStatus,
)
from kubeloop_operator.status.conditions import EventSpec, Want, merge, one_line, parse_time, rfc3339
from kubeloop_operator.status.pods import JobSummary, PodSummary, pod_problem

CONTAINER: Final = "trainer"
TERMINAL: Final = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})
CONDITION_TYPES: Final = ("Created", "Running", "Succeeded", "Failed", "Suspended")
PROGRESS_EVENTS: Final = frozenset({"epoch", "resumed"})
_STATUS_INT_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ChildError:
    """A child could not be created: the API server's answer."""

    reason: str
    message: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class KeptLog:
    """A failed pod's log, kept: its last lines and where the whole of it went."""

    tail: str
    uri: str | None


@dataclass(frozen=True, slots=True)
class ProgressReading:
    epoch: int
    epochs: int
    eta_seconds: int | None


@dataclass(frozen=True)
class Observed:
    """Everything the derivation looks at."""

    now: datetime
    generation: int
    spec: TrainingJobSpec
    current: TrainingJobStatus
    job_name: str
    job: JobSummary | None
    pods: Sequence[PodSummary] = ()
    create_error: ChildError | None = None
    progress: ProgressReading | None = None
    kept_logs: Mapping[str, KeptLog] = field(default_factory=dict)


@dataclass
class Derived:
    status: TrainingJobStatus
    events: list[EventSpec]
    # The trainer reported an error a retry cannot fix while the Job may still retry it: stop the Job.
    stop_job: bool = False


# --- parsing ------------------------------------------------------------------------------------------


def parse_status(raw: Mapping[str, Any] | None) -> TrainingJobStatus:
    """The status as stored; anything unreadable counts as no status (it is then rewritten)."""
    try:
        return TrainingJobStatus.model_validate(dict(raw or {}))
    except ValidationError:
        return TrainingJobStatus()


def dump(status: TrainingJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def is_terminal(status: TrainingJobStatus) -> bool:
    return status.phase is not None and str(status.phase) in TERMINAL


def is_final(status: TrainingJobStatus, generation: int) -> bool:
    """Finished for good. A run that failed before any Job existed (its Job was refused, or its spec)
    is retried once the spec changes."""
    if not is_terminal(status):
        return False
    created = next((c for c in status.conditions if c.type == "Created"), None)
    never_ran = created is None or str(created.status) != "True"
    return not (never_ran and status.observed_generation != generation)


def trainer_failure(pod: PodSummary) -> TrainingFailure | None:
    c = pod.container(CONTAINER)
    if c is None or not c.message.lstrip().startswith("{"):
        return None
    try:
        return TrainingFailure.model_validate_json(c.message)
    except ValidationError:
        return None


def trainer_summary(pod: PodSummary) -> TrainingSummary | None:
    c = pod.container(CONTAINER)
    if c is None or not c.message.lstrip().startswith("{"):
        return None
    try:
        return TrainingSummary.model_validate_json(c.message)
    except ValidationError:
        return None


def parse_progress(log_text: str) -> ProgressReading | None:
    """The latest epoch the trainer printed (one JSON object per line on stdout), with an ETA from
    the mean duration of the last epochs seen; None when the text has no progress line."""
    last: dict[str, Any] | None = None
    seconds: list[float] = []
    for line in log_text.splitlines():
        line = line.strip()
        if not line.startswith("{") or '"event"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("event") not in PROGRESS_EVENTS:
            continue
        if not all(
            isinstance(doc.get(k), int) and 0 <= doc[k] <= _STATUS_INT_MAX for k in ("epoch", "epochs")
        ):
            continue  # not an epoch count the status (int64) can hold
        last = doc
        took = doc.get("seconds")
        # json reads Infinity and NaN; a log line is not trusted to give a usable duration.
        if doc["event"] == "epoch" and isinstance(took, int | float) and math.isfinite(took) and took >= 0:
            seconds.append(float(took))
    if last is None:
        return None
    epoch, epochs = max(0, int(last["epoch"])), max(0, int(last["epochs"]))
    eta = None
    if seconds and epochs >= epoch:
        recent = seconds[-5:]
        estimate = (epochs - epoch) * (sum(recent) / len(recent))
        eta = math.ceil(estimate) if estimate <= _STATUS_INT_MAX else None
    return ProgressReading(epoch=min(epoch, epochs) if epochs else epoch, epochs=epochs, eta_seconds=eta)


def tail(text: str, lines: int, limit: int = LOG_TAIL_MAX_BYTES) -> str:
    """The last ``lines`` lines of ``text``, at most ``limit`` bytes (cut at a line start)."""
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    data = kept.encode()
    if len(data) <= limit:
        return kept
    cut = data[-(limit - 4) :].decode(errors="ignore")
    nl = cut.find("\n")
    return "…\n" + (cut[nl + 1 :] if 0 <= nl < len(cut) - 1 else cut)


def ttl_expired(spec: TrainingJobSpec, status: TrainingJobStatus, now: datetime) -> bool:
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = parse_time(status.completion_time)
    # Compared in seconds, not as done + ttl: the CRD allows any int64, far past what a datetime holds.
    return (
        ttl is not None and is_terminal(status) and done is not None and (now - done).total_seconds() >= ttl
    )


def failed_pods(pods: Sequence[PodSummary]) -> list[PodSummary]:
    """Failed pods, oldest failure first."""
    return sorted((p for p in pods if p.phase == "Failed"), key=lambda p: (p.finished_at, p.name))


def primary_metric(spec: TrainingJobSpec, metrics: Mapping[str, float]) -> str | None:
    if spec.promotion is not None:
        name = spec.promotion.metric
    else:
        name = "accuracy" if str(spec.task) == Task.CLASSIFICATION.value else "r2"
    value = metrics.get(name)
    return None if value is None else f"{name}={value:.4f}"


# --- derivation -----------------------------------------------------------------------------------


def _failure_from_pod(o: Observed, pod: PodSummary, reason: str, message: str, code: int | None) -> Failure:
    kept = o.kept_logs.get(pod.name)
    return Failure(
        reason=reason,
        message=one_line(message, 4096),
        exit_code=code,
        pod=pod.name,
        container=CONTAINER,
        log_tail=kept.tail if kept else None,
        log_uri=kept.uri if kept else None,
        time=pod.finished_at or rfc3339(o.now),
    )


def _terminal_failure(o: Observed, job: JobSummary, failed: list[PodSummary]) -> Failure:
    """The cause of a failed run, most specific first."""
    cond = job.condition("Failed") or job.condition("FailureTarget")
    job_reason = cond.reason if cond else ""
    job_time = (cond.time if cond else "") or rfc3339(o.now)
    last = failed[-1] if failed else None
    deadline = o.spec.run_policy.active_deadline_seconds
    n = max(job.failed, len(failed))
    if job_reason == "DeadlineExceeded":
        base = Failure(
            reason="DeadlineExceeded",
            message=f"the run exceeded activeDeadlineSeconds ({deadline} s) and was stopped",
            time=job_time,
        )
        if last is None:
            return base
        kept = o.kept_logs.get(last.name)
        return base.model_copy(
            update={
                "pod": last.name,
                "container": CONTAINER,
                "log_tail": kept.tail if kept else None,
                "log_uri": kept.uri if kept else None,
            }
        )
    if last is not None:
        tf = trainer_failure(last)
        c = last.container(CONTAINER)
        if tf is not None:
            attempts = f" ({n} pods failed)" if n > 1 else ""
            return _failure_from_pod(o, last, tf.reason, tf.message + attempts, tf.exit_code)
        if c is not None and c.reason == "OOMKilled":
            return _failure_from_pod(
                o,
                last,
                "OOMKilled",
                f"container {CONTAINER} of pod {last.name} was killed for exceeding its memory limit "
                f"(exit code {c.exit_code}); {n} pod(s) failed, backoffLimit {o.spec.run_policy.backoff_limit}",
                c.exit_code,
            )
        code = c.exit_code if c is not None else None
        said = one_line(c.message, 512) if c is not None and c.message else "no termination message"
        if job_reason == "PodFailurePolicy" and code in TRAINER_NO_RETRY_EXIT_CODES:
            # Failed on this pod by the pod failure policy, before any retry: no backoffLimit involved
            # (the trainer died before writing its termination message, or argparse refused its args).
            return _failure_from_pod(
                o,
                last,
                "PodFailurePolicy",
                f"pod {last.name} exited with code {code}, an error a retry cannot fix: no retry; {said}",
                code,
            )
        return _failure_from_pod(
            o,
            last,
            "BackoffLimitExceeded"
            if job_reason in ("BackoffLimitExceeded", "PodFailurePolicy", "")
            else job_reason,
            f"{n} pod(s) failed, more than backoffLimit {o.spec.run_policy.backoff_limit}; the last, "
            f"{last.name}, exited with code {code}: {said}",
            code,
        )
    return Failure(
        reason=job_reason or "JobFailed", message=cond.message if cond else "the Job failed", time=job_time
    )


def _no_retry_pod(failed: list[PodSummary]) -> PodSummary | None:
    for p in reversed(failed):
        tf = trainer_failure(p)
        if tf is not None and tf.exit_code in TRAINER_NO_RETRY_EXIT_CODES:
            return p
    return None


def _progress(o: Observed) -> Progress | None:
    cur = o.current.progress
    r = o.progress
    if r is None or (cur is not None and cur.epoch == r.epoch and cur.epochs == r.epochs):
        return cur
    percent = min(100, (100 * r.epoch) // r.epochs) if r.epochs else 0
    return Progress(
        epoch=r.epoch,
        epochs=r.epochs,
        percent=percent,
        eta_seconds=r.eta_seconds,
        updated_time=rfc3339(o.now),
    )


def _conditions(
    o: Observed, phase: str, created: Want, running: Want, failure: Failure | None, success_msg: str
) -> list[Condition]:
    suspended = phase == Phase.SUSPENDED.value
    was_suspended = str(o.current.phase) == Phase.SUSPENDED.value
    wants = [
        created,
        running,
        Want(
            "Succeeded",
            phase == Phase.SUCCEEDED.value,
            "TrainingSucceeded" if phase == Phase.SUCCEEDED.value else "NotFinished",
            success_msg,
        ),
        Want(
            "Failed",
            phase == Phase.FAILED.value,
            failure.reason if phase == Phase.FAILED.value and failure else "NoFailure",
            failure.message if phase == Phase.FAILED.value and failure else "",
        ),
        Want(
            "Suspended",
            suspended,
            "Suspended" if suspended else ("Resumed" if was_suspended else "NotSuspended"),
            "spec.runPolicy.suspend is true: the Job is suspended and runs no pods"
            if suspended
            else ("the Job was resumed" if was_suspended else ""),
        ),
    ]
    if not suspended and not was_suspended:
        prev = next((c for c in o.current.conditions if c.type == "Suspended"), None)
        if prev is not None and prev.reason == "Resumed":  # keep saying so: nothing changed since
            wants[-1] = Want("Suspended", False, "Resumed", prev.message)
    return merge(o.current.conditions, wants, generation=o.generation, now=o.now)


def derive(o: Observed) -> Derived:
    """The status the TrainingJob should have now, and the events its change deserves."""
    cur = o.current
    if is_final(cur, o.generation):
        return _keep_terminal(o)
    if is_terminal(cur):  # a refused run whose spec changed: start over
        o = replace(o, current=TrainingJobStatus(conditions=cur.conditions))
        cur = o.current
    job, spec = o.job, o.spec
    nodes = spec.distributed.nodes
    failed = failed_pods(o.pods)
    active = [p for p in o.pods if not p.deleting and not p.finished]
    running = [p for p in active if p.running]
    failure: Failure | None = None
    success_msg = ""
    stop_job = False
    s: dict[str, Any] = {
        "observed_generation": o.generation,
        "job_name": o.job_name,
        "start_time": cur.start_time,
        "progress": _progress(o),
        "failed_pods": max(job.failed if job else 0, len(failed)) or None,
    }
    if job is None:
        err = o.create_error
        if err is not None:
            created = Want("Created", False, err.reason, f"cannot create Job {o.job_name}: {err.message}")
            if err.permanent:
                phase = Phase.FAILED.value
                failure = Failure(reason=err.reason, message=err.message, time=rfc3339(o.now))
                s["completion_time"] = rfc3339(o.now)
            else:
                phase = Phase.SUSPENDED.value if spec.run_policy.suspend else Phase.PENDING.value
        else:
            created = Want("Created", False, "Creating", f"creating Job {o.job_name}")
            phase = Phase.SUSPENDED.value if spec.run_policy.suspend else Phase.PENDING.value
        running_want = Want("Running", False, "NotStarted", "the Job does not exist yet")
    else:
        created = Want("Created", True, "JobCreated", f"Job {job.name} created")
        final = _no_retry_pod(failed)
        if job.condition("Failed") or job.condition("FailureTarget") or final is not None:
            phase = Phase.FAILED.value
            failure = _terminal_failure(
                o, job, failed if final is None else [*failed[: failed.index(final)], final]
            )
            stop_job = final is not None and not (job.condition("Failed") or job.condition("FailureTarget"))
            s["completion_time"] = failure.time or rfc3339(o.now)
            running_want = Want("Running", False, "Failed", "the run failed")
        elif job.condition("Complete"):
            phase = Phase.SUCCEEDED.value
            s.update(_success(o, job))
            success_msg = _success_message(o, s)
            running_want = Want("Running", False, "Completed", "the run finished")
        elif job.suspend:
            phase = Phase.SUSPENDED.value
            running_want = Want("Running", False, "Suspended", "the Job is suspended")
        else:
            problem = next(
                (
                    pp
                    for pp in (pod_problem(p) for p in sorted(active, key=lambda p: (p.index or 0, p.name)))
                    if pp
                ),
                None,
            )
            blocked = next(
                (
                    p
                    for p in sorted(active, key=lambda p: (p.index or 0, p.name))
                    if pod_problem(p) is not None
                ),
                None,
            )
            if problem is not None and blocked is not None:
                phase = Phase.PENDING.value
                prev = cur.failure
                if prev is not None and prev.reason == problem.reason and prev.pod == blocked.name:
                    failure = prev  # same cause on the same pod: keep it as first reported
                else:
                    failure = Failure(
                        reason=problem.reason,
                        message=one_line(problem.message, 4096),
                        exit_code=problem.exit_code,
                        pod=blocked.name,
                        container=problem.container,
                        time=rfc3339(o.now),
                    )
                running_want = Want(
                    "Running", False, problem.reason, f"pod {blocked.name}: {failure.message}"
                )
            elif running:
                phase = Phase.RUNNING.value
                attempt = f"; {len(failed)} earlier pod(s) failed" if failed else ""
                running_want = Want(
                    "Running", True, "PodsRunning", f"{len(running)} of {nodes} pod(s) running{attempt}"
                )
                if s["start_time"] is None:
                    s["start_time"] = (
                        job.start_time or min(p.start_time or "" for p in running) or rfc3339(o.now)
                    )
            else:
                phase = Phase.PENDING.value
                running_want = Want("Running", False, "PodsPending", "waiting for the pods to start")
    if phase == Phase.FAILED.value and failure is not None and s.get("completion_time") is None:
        s["completion_time"] = failure.time or rfc3339(o.now)
    if phase in TERMINAL and s["start_time"] is None and job is not None:
        s["start_time"] = job.start_time
    status = TrainingJobStatus(
        phase=Phase(phase),
        conditions=_conditions(o, phase, created, running_want, failure, success_msg),
        failure=failure,
        **{k: v for k, v in s.items() if v is not None},
    )
    return Derived(status=status, events=_events(o, status), stop_job=stop_job)


def _success(o: Observed, job: JobSummary) -> dict[str, Any]:
    done = [p for p in o.pods if p.phase == "Succeeded"]
    done.sort(key=lambda p: (p.index if p.index is not None else 1 << 30, p.name))
    summary = next((sm for sm in (trainer_summary(p) for p in done) if sm is not None), None)
    out: dict[str, Any] = {"completion_time": job.completion_time or rfc3339(o.now)}
    prog = o.current.progress or Progress()
    out["progress"] = Progress(
        epoch=prog.epoch or o.spec.training.epochs,
        epochs=prog.epochs or o.spec.training.epochs,
        percent=100,
        eta_seconds=0,
        updated_time=prog.updated_time or rfc3339(o.now),
    )
    if summary is None:
        return out
    out.update(
        metrics=dict(summary.metrics),
        primary_metric=primary_metric(o.spec, summary.metrics),
        mlflow_run_id=summary.mlflow_run_id,
        model_version=summary.model_version,
        model_uri=summary.model_uri,
        baseline_uri=summary.baseline_uri,
        promoted=summary.promoted if o.spec.promotion is not None else None,
    )
    return out


def _success_message(o: Observed, s: Mapping[str, Any]) -> str:
    if s.get("model_version") is None:
        return "the Job completed, but the trainer wrote no summary (bring-your-own image?)"
    name = o.spec.registry.model_name if o.spec.registry else "the model"
    msg = f"{name} version {s['model_version']} registered"
    if o.spec.promotion is not None:
        alias = o.spec.promotion.alias
        msg += f"; alias {alias} moved to it" if s.get("promoted") else f"; alias {alias} not moved"
    return msg


def _keep_terminal(o: Observed) -> Derived:
    """A finished run keeps its result; only its generation and a late log tail are updated."""
    cur = o.current
    update: dict[str, Any] = {"observed_generation": o.generation}
    f = cur.failure
    if f is not None and f.pod and f.log_tail is None and f.pod in o.kept_logs:
        kept = o.kept_logs[f.pod]
        update["failure"] = f.model_copy(update={"log_tail": kept.tail, "log_uri": kept.uri})
    conditions = [c.model_copy(update={"observed_generation": o.generation}) for c in cur.conditions]
    update["conditions"] = conditions
    status = cur.model_copy(update=update)
    return Derived(status=status, events=[])


def _events(o: Observed, new: TrainingJobStatus) -> list[EventSpec]:
    old = o.current
    out: list[EventSpec] = []
    gen = o.generation
    old_created = next((c for c in old.conditions if c.type == "Created"), None)
    new_created = next((c for c in new.conditions if c.type == "Created"), None)
    # The Job's creation itself is the Created condition (and the Job controller's own Events): no
    # Event here, it would cost a write on every TrainingJob's creation path.
    if (
        new_created is not None
        and str(new_created.status) != "True"
        and new_created.reason not in ("Creating", "JobCreated")
        and (old_created is None or old_created.reason != new_created.reason)
    ):
        out.append(
            EventSpec(
                "Warning", new_created.reason, new_created.message, f"create/{gen}/{new_created.reason}"
            )
        )
    nf, of = new.failure, old.failure
    if nf is not None and (of is None or (of.reason, of.pod) != (nf.reason, nf.pod)):
        where = f"pod {nf.pod}: " if nf.pod else ""
        code = f" (exit code {nf.exit_code})" if nf.exit_code is not None else ""
        out.append(
            EventSpec("Warning", nf.reason, f"{where}{nf.message}{code}", f"failure/{nf.pod}/{nf.reason}")
        )
    if (new.failed_pods or 0) > (old.failed_pods or 0) and str(new.phase) != Phase.FAILED.value:
        last = failed_pods(o.pods)[-1:] or []
        for p in last:
            c = p.container(CONTAINER)
            exit_code = c.exit_code if c else None
            out.append(
                EventSpec(
                    "Warning",
                    "PodFailed",
                    f"pod {p.name} failed (exit code {exit_code}); the Job retries it",
                    f"podfailed/{p.name}",
                )
            )
    if new.phase != old.phase:
        phase = str(new.phase)
        if phase == Phase.RUNNING.value:
            out.append(EventSpec("Normal", "Running", "training pods are running", f"running/{gen}"))
        elif phase == Phase.SUCCEEDED.value:
            msg = next((c.message for c in new.conditions if c.type == "Succeeded"), "")
            out.append(EventSpec("Normal", "Succeeded", msg or "the run succeeded", "succeeded"))
        elif phase == Phase.SUSPENDED.value:
            out.append(
                EventSpec("Normal", "Suspended", "the Job is suspended: no pods run", f"suspended/{gen}")
            )
        if str(old.phase) == Phase.SUSPENDED.value and phase != Phase.SUSPENDED.value:
            out.append(EventSpec("Normal", "Resumed", "the Job was resumed", f"resumed/{gen}"))
    return out


def invalid_spec(current: TrainingJobStatus, generation: int, message: str, now: datetime) -> Derived:
    """A spec the API server accepted but the model refuses (e.g. an older CRD): Failed, no children."""
    failure = Failure(reason="InvalidSpec", message=one_line(message, 4096), time=rfc3339(now))
    if (
        current.failure is not None
        and current.failure.reason == "InvalidSpec"
        and current.failure.message == failure.message
    ):
        failure = current.failure
    conds = merge(
        current.conditions,
        [
            Want("Created", False, "InvalidSpec", "no Job is created for an invalid spec"),
            Want("Running", False, "InvalidSpec", ""),
            Want("Succeeded", False, "InvalidSpec", ""),
            Want("Failed", True, "InvalidSpec", failure.message),
            Want("Suspended", False, "NotSuspended", ""),
        ],
        generation=generation,
        now=now,
    )
    status = TrainingJobStatus(
        observed_generation=generation,
        phase=Phase.FAILED,
        conditions=conds,
        failure=failure,
        completion_time=current.completion_time or rfc3339(now),
    )
    events = (
        []
        if current.failure == failure
        else [EventSpec("Warning", "InvalidSpec", failure.message, f"invalid/{generation}")]
    )
    return Derived(status=status, events=events)

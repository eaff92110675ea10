"""The DriftMonitor reconciler: the check's identity and CronJob in place and in line with the spec;
the status's operator fields derived (:func:`kubeloop_operator.status.driftmonitor.derive`); and the
retraining a drifted check calls for, guarded and created exactly once.

Exactly once, across restarts and replays: a decision to retrain is first written to status
(``lastRetrain.state: Pending``, ``lastDecision`` for that check) with the resourceVersion the
decision was made from, so a concurrent write (the check job's, another replica's) makes it fail and
be re-made from the fresh status. Only then is the TrainingJob created, under the name derived from
the check; a crash in between leaves a Pending retrain that the next reconcile creates, and a create
that meets its own earlier object adopts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from kubeloop import podenv
from kubeloop.resources import DriftMonitorSpec, LastRetrain, format_validation_error
from kubeloop_operator.builders import driftmonitor as b
from kubeloop_operator.builders.common import Owner
from kubeloop_operator.errors import retry_later
from kubeloop_operator.k8s import (
    CRONJOB,
    DRIFTMONITOR,
    ROLE,
    ROLE_BINDING,
    SERVICE_ACCOUNT,
    TRAININGJOB,
    KubeError,
    NameConflictError,
    check_adoptable,
)
from kubeloop_operator.metrics import DriftScores
from kubeloop_operator.runtime import IN_FLIGHT_S, ObjectMemory, Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.conditions import parse_time, reason_word
from kubeloop_operator.status.driftmonitor import (
    OPERATOR_FIELDS,
    CheckProblem,
    ChildProblem,
    CronJobView,
    DeploymentView,
    Derived,
    Observed,
    RetrainView,
    derive,
    dump,
    invalid,
    parse_status,
    status_patch,
    with_retraining,
)

log = logging.getLogger("kubeloop_operator.driftmonitor")

KIND: Final = "DriftMonitor"
CREATED_HINT_S: Final = 15.0
"""How long a child this process just created counts as existing before the index shows it."""
IDENTITY_RECHECK_S: Final = 600.0
"""How often the check's ServiceAccount, Role and RoleBinding are read back (someone may delete them)."""
CONFLICT_ATTEMPTS: Final = 4


@dataclass(frozen=True)
class MonitorView:
    """What the indexes know about one monitor: its CronJob, its retrains, its ModelDeployment."""

    cronjob: CronJobView | None = None
    retrains: Sequence[RetrainView] = field(default_factory=tuple)
    deployment: DeploymentView | None = None
    deployment_known: bool = True


def check_pod_config(settings: OperatorSettings) -> b.DriftCheckPodConfig:
    return b.DriftCheckPodConfig(
        image=settings.drift_check_image,
        image_pull_policy=settings.image_pull_policy,
        store=podenv.ObjectStoreAccess.from_secret(
            settings.pods_s3_endpoint,
            settings.credentials_secret,
            bucket=settings.bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        ),
        deadline_seconds=settings.drift_check_deadline_seconds,
        memory_limit=str(settings.drift_check_memory_limit),
    )


def reconcile(rt: Runtime, body: Mapping[str, Any], view: MonitorView) -> None:
    """Bring one DriftMonitor's children and status up to date, and retrain when a check calls for it."""
    owner = Owner.from_body(body)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        forget(rt, owner.uid)
        return
    with rt.exclusive(owner.uid) as mem:
        if mem.spec is None or mem.spec[0] != owner.generation:
            try:
                mem.spec = (owner.generation, DriftMonitorSpec.model_validate(body.get("spec") or {}))
            except ValidationError as e:
                now = datetime.now(UTC)
                derived = invalid(
                    parse_status(body.get("status")),
                    owner.generation,
                    format_validation_error(e, "spec"),
                    now,
                    owner.name,
                )
                _write(rt, owner, body, derived, mem)
                return
        spec: DriftMonitorSpec = mem.spec[1]
        problem = _ensure_identity(rt, owner, spec, mem)
        cron_ready = False
        if problem is None:
            cron_ready, problem = _ensure_cronjob(rt, owner, spec, view.cronjob, mem)
        retrains = _with_hints(view.retrains, mem, owner.uid)
        current_body: Mapping[str, Any] = body
        for attempt in range(CONFLICT_ATTEMPTS):
            observed = Observed(
                now=datetime.now(UTC),
                name=owner.name,
                generation=owner.generation,
                spec=spec,
                current=parse_status(current_body.get("status")),
                cronjob_ready=cron_ready,
                child_problem=problem,
                deployment=view.deployment,
                deployment_known=view.deployment_known,
                retrains=retrains,
            )
            derived = derive(observed)
            source: dict[str, Any] | None = None
            if derived.create_retrain is not None:
                # The retrain's spec is read only when one is to be created: the template, or
                # trainingJobRef's spec as it is now. Missing for a decision made now: a skip, said why.
                source, source_problem = _retrain_source(rt, owner, spec)
                if source_problem is not None and derived.decided:
                    derived = derive(replace(observed, retrain_source_problem=source_problem))
            try:
                written = _write(rt, owner, current_body, derived, mem)
            except KubeError as e:
                if e.status != 409 or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                fresh = rt.kube.get(DRIFTMONITOR, owner.namespace, owner.name)
                if fresh is None:
                    return
                current_body = fresh
                mem.written = None
                continue
            if derived.create_retrain is not None:
                _create_retrain(rt, owner, written, derived, source, mem)
            break
        if problem is not None and not problem.permanent:
            raise retry_later(
                f"cannot set up the drift check of {owner.namespace}/{owner.name}: {problem.message}"
            )


def forget(rt: Runtime, uid: str) -> None:
    rt.memory.forget(uid)
    rt.metrics.set_phase(KIND, uid, None)
    rt.metrics.drift.set(uid, None)


# --- children ----------------------------------------------------------------------------------------


def _problem(e: KubeError) -> ChildProblem:
    if isinstance(e, NameConflictError):
        return ChildProblem("NameConflict", e.message)
    reason = reason_word(e.reason, "CreateFailed") if e.status else "APIUnreachable"
    return ChildProblem(reason, e.message, permanent=e.permanent)


def _ensure_identity(
    rt: Runtime, owner: Owner, spec: DriftMonitorSpec, mem: ObjectMemory
) -> ChildProblem | None:
    """The check's ServiceAccount, Role (following spec.deployment) and RoleBinding: read back at
    most every IDENTITY_RECHECK_S, created when missing, the Role patched when its rules changed."""
    role = b.build_role(owner, spec)
    want = b.spec_hash(role)
    seen = mem.children.get("identity")
    if seen is not None and seen[1] == want and time.monotonic() - seen[0] < IDENTITY_RECHECK_S:
        return None
    try:
        for manifest, kind in (
            (b.build_service_account(owner), SERVICE_ACCOUNT),
            (role, ROLE),
            (b.build_role_binding(owner), ROLE_BINDING),
        ):
            name = str(manifest["metadata"]["name"])
            existing = rt.kube.get(kind, owner.namespace, name)
            if existing is None:
                rt.kube.create(manifest)
                log.info("created %s %s/%s", kind.kind, owner.namespace, name)
                continue
            check_adoptable(manifest, existing)
            if kind is ROLE and b.spec_hash(existing) != want:
                rt.kube.patch(ROLE, owner.namespace, name, b.role_patch(role))
                log.info("updated Role %s/%s (deployment %s)", owner.namespace, name, spec.deployment)
    except KubeError as e:
        return _problem(e)
    mem.children["identity"] = (time.monotonic(), want)
    return None


_UNFIXABLE: Final = "unfixable:"


def _cron_drifted(mem: ObjectMemory, cron: Mapping[str, Any], seen: CronJobView) -> bool:
    """Whether the CronJob's owned fields (its job template's too) were edited by hand: ``kubectl
    edit`` keeps the spec-hash annotation, so they are compared as they are live."""
    if not seen.owned_hash:
        return False
    want = b.owned_hash(cron)
    stuck = mem.children.get(f"{_UNFIXABLE}{seen.name}")
    return seen.owned_hash != want and not (stuck is not None and stuck[1] == (want, seen.owned_hash))


def _ensure_cronjob(
    rt: Runtime, owner: Owner, spec: DriftMonitorSpec, seen: CronJobView | None, mem: ObjectMemory
) -> tuple[bool, ChildProblem | None]:
    """The CronJob exists and matches the spec (schedule, suspend, image, settings). A hand edit
    (``kubectl patch``, ``kubectl edit``) keeps our spec-hash annotation, so the fields we own are
    compared as they are live, and put back."""
    cron = b.build_cronjob(owner, spec, check_pod_config(rt.settings))
    name = b.cronjob_name(owner.name)
    want = b.spec_hash(cron)
    hint = mem.children.get(name)
    if seen is None and hint is not None and time.monotonic() - hint[0] <= CREATED_HINT_S:
        if hint[1] == want:
            return True, None
        seen = CronJobView(name, "", owner.uid, spec_hash=str(hint[1]), suspend=spec.suspend)
    try:
        if seen is None:
            obj, created = rt.kube.create(cron)
            if created:
                log.info("created CronJob %s/%s", owner.namespace, name)
            current = b.spec_hash(obj)
            if current != want:
                rt.kube.patch(CRONJOB, owner.namespace, name, b.cronjob_patch(cron))
        elif (
            seen.spec_hash != want
            or seen.suspend != spec.suspend
            or (seen.schedule is not None and seen.schedule != spec.schedule)
            or _cron_drifted(mem, cron, seen)
        ):
            live = rt.kube.get(CRONJOB, owner.namespace, name)
            if live is None:  # deleted since the index saw it
                rt.kube.create(cron)
                log.info("created CronJob %s/%s", owner.namespace, name)
            elif patch := b.cronjob_patch(cron, live):
                obj = rt.kube.patch(CRONJOB, owner.namespace, name, patch)
                if b.owned_hash(obj) != b.owned_hash(cron):
                    # The API server keeps a field differently from how it was written: patching
                    # again could not help, and would write on every resync.
                    mem.children[f"{_UNFIXABLE}{name}"] = (
                        time.monotonic(),
                        (b.owned_hash(cron), b.owned_hash(obj)),
                    )
                if seen.spec_hash == want:
                    log.warning(
                        "CronJob %s/%s was edited outside its DriftMonitor: put back", owner.namespace, name
                    )
                else:
                    log.info(
                        "updated CronJob %s/%s (schedule %r, suspend %s)",
                        owner.namespace,
                        name,
                        spec.schedule,
                        spec.suspend,
                    )
        else:
            return True, None
    except KubeError as e:
        return False, _problem(e)
    mem.children[name] = (time.monotonic(), want)
    return True, None


def _with_hints(views: Sequence[RetrainView], mem: ObjectMemory, owner_uid: str) -> tuple[RetrainView, ...]:
    """The indexed retrains, plus those this process created moments ago that the index lacks."""
    out = list(views)
    names = {v.name for v in views}
    for name, entry in list(mem.children.items()):
        if not name.startswith("retrain:"):
            continue
        tj = name.removeprefix("retrain:")
        if tj in names or time.monotonic() - entry[0] > CREATED_HINT_S:
            continue
        out.append(RetrainView(name=tj, uid=str(entry[1]), owner_uid=owner_uid, created=None, phase=None))
    return tuple(out)


# --- retraining ------------------------------------------------------------------------------------------


def _retrain_source(
    rt: Runtime, owner: Owner, spec: DriftMonitorSpec
) -> tuple[dict[str, Any] | None, CheckProblem | None]:
    """The spec a retrain is created with: the template, or trainingJobRef's spec as it is now."""
    if spec.retrain is None:
        return None, None
    template = b.retrain_spec_from_template(spec)
    if template is not None:
        return template, None
    ref = spec.retrain.training_job_ref
    if ref is None:
        return None, None
    source = rt.kube.get(TRAININGJOB, owner.namespace, ref.name)
    if source is None or not source.get("spec"):
        return None, CheckProblem(
            "RetrainSourceNotFound",
            f"drift detected, but retrain.trainingJobRef names TrainingJob {ref.name}, which does not exist",
        )
    return dict(source["spec"]), None


def _create_retrain(
    rt: Runtime,
    owner: Owner,
    body: Mapping[str, Any],
    derived: Derived,
    source: dict[str, Any] | None,
    mem: ObjectMemory,
) -> None:
    record: LastRetrain | None = derived.create_retrain
    if record is None:
        return
    hint = mem.children.get(f"retrain:{record.training_job}")
    if hint is not None and time.monotonic() - hint[0] <= CREATED_HINT_S:
        return
    if not derived.decided:
        # Decided earlier (a restart, a replay): the body may be an old watch event, so the record is
        # read back before anything is created from it.
        fresh = rt.kube.get(DRIFTMONITOR, owner.namespace, owner.name)
        last = parse_status((fresh or {}).get("status")).last_retrain
        if (
            fresh is None
            or last is None
            or (last.training_job, last.state) != (record.training_job, "Pending")
        ):
            return
        body = fresh
    if source is None:  # decided, but its source TrainingJob is gone since: it cannot be made
        _retrain_failed(
            rt,
            owner,
            body,
            derived,
            "RetrainSourceNotFound",
            f"retrain TrainingJob {record.training_job} cannot be created: its spec's source is gone",
            mem,
        )
        return
    status = derived.status
    report = status.last_result.report_uri if status.last_result is not None else None
    manifest = b.build_retrain(owner, source, record, report)
    try:
        obj, created = rt.kube.create(manifest)
    except KubeError as e:
        if not e.permanent:
            raise retry_later(
                f"cannot create retrain TrainingJob {owner.namespace}/{record.training_job}: {e.message}"
            ) from e
        message = f"the API server refused retrain TrainingJob {record.training_job}: {e.message}"
        _retrain_failed(rt, owner, body, derived, "RetrainRefused", message, mem)
        return
    uid = str((obj.get("metadata") or {}).get("uid"))
    mem.children[f"retrain:{record.training_job}"] = (time.monotonic(), uid)
    if created:
        log.info("created retrain TrainingJob %s/%s", owner.namespace, record.training_job)
    else:
        log.info("retrain TrainingJob %s/%s existed already: adopted", owner.namespace, record.training_job)


def _retrain_failed(
    rt: Runtime,
    owner: Owner,
    body: Mapping[str, Any],
    derived: Derived,
    reason: str,
    message: str,
    mem: ObjectMemory,
) -> None:
    """A decided retrain that cannot be created for good (the API server refuses the copied spec, or
    its source is gone) is recorded as failed with why: neither retried forever, nor blocking the
    decisions after it, nor hidden."""
    status = derived.status
    last = status.last_retrain
    if last is None:
        return
    decision = status.last_decision
    update: dict[str, Any] = {"last_retrain": last.model_copy(update={"state": "Failed"})}
    if decision is not None and decision.check_time == last.check_time:
        update["last_decision"] = decision.model_copy(
            update={"action": "Skip", "reason": reason, "message": message[:1024]}
        )
    spec = mem.spec[1] if mem.spec is not None else None
    changed = with_retraining(status.model_copy(update=update), spec, owner.generation, datetime.now(UTC))
    failed = Derived(status=changed, events=[])
    log.warning("%s/%s: %s", owner.namespace, owner.name, message)
    _write(rt, owner, body, failed, mem)


# --- status ---------------------------------------------------------------------------------------------


def _write(
    rt: Runtime,
    owner: Owner,
    body: Mapping[str, Any],
    derived: Derived,
    mem: ObjectMemory,
) -> Mapping[str, Any]:
    """Post the events and patch the operator's fields of the status when they changed, with the
    resourceVersion they were derived from (a 409 propagates: the caller re-reads and re-derives).
    Returns the object as it is after the write (``body`` when nothing was written)."""
    meta = body.get("metadata") or {}
    old = dump(parse_status(body.get("status")))
    new = dump(derived.status)
    patch = status_patch(old, new, OPERATOR_FIELDS)
    after: Mapping[str, Any] = body
    if patch and not (mem.written == new and time.monotonic() - mem.written_at < IN_FLIGHT_S):
        rv = str(meta.get("resourceVersion") or "") or None
        obj = rt.kube.patch_status(DRIFTMONITOR, owner.namespace, owner.name, patch, resource_version=rv)
        mem.written, mem.written_at = new, time.monotonic()
        after = obj if obj is not None else body
        rt.metrics.status_writes.labels(KIND, "written").inc()
    else:
        rt.metrics.status_writes.labels(KIND, "unchanged").inc()
    rt.post_events(body, derived.events)
    rt.metrics.set_phase(KIND, owner.uid, derived.status.phase)
    rt.metrics.drift.set(owner.uid, _scores(owner, derived))
    return after


def _scores(owner: Owner, derived: Derived) -> DriftScores | None:
    s = derived.status
    r = s.last_result
    if r is None:
        return None
    t = parse_time(s.last_check_time)
    return DriftScores(
        owner.namespace,
        owner.name,
        drifted=r.drifted,
        share=r.share,
        samples=r.samples,
        consecutive=s.consecutive_drifts,
        last_check=t.timestamp() if t is not None else None,
        features=[(f.name, f.psi, f.jensen_shannon, f.drifted) for f in r.features],
    )

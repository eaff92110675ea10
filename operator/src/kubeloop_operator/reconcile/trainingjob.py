"""The TrainingJob reconciler: Service and Job in place, Job fields in line with the spec, failed
pods' logs kept, progress read, status derived and written when it changed, children removed after
``ttlSecondsAfterFinished``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from kubeloop import podenv
from kubeloop.contracts import training_log
from kubeloop.resources import TrainingJobSpec, TrainingJobStatus, format_validation_error
from kubeloop.storage import StorageError
from kubeloop_operator import k8s
from kubeloop_operator.builders.common import Owner, owned_patch, service_owned, service_owned_hash
from kubeloop_operator.builders.trainingjob import (
    CONTAINER,
    SPEC_GENERATION_ANNOTATION,
    TrainerPodConfig,
    build_children,
    build_rendezvous_service,
    job_drift,
    job_name,
    rendezvous_service_name,
)
from kubeloop_operator.errors import retry_later
from kubeloop_operator.k8s import JOB, SERVICE, TRAININGJOB, KubeError, NameConflictError
from kubeloop_operator.reconcile import ChildView
from kubeloop_operator.runtime import ObjectMemory, Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.conditions import reason_word
from kubeloop_operator.status.pods import JobSummary, PodSummary, summarize_job
from kubeloop_operator.status.trainingjob import (
    ChildError,
    Derived,
    KeptLog,
    Observed,
    ProgressReading,
    derive,
    dump,
    failed_pods,
    invalid_spec,
    is_final,
    parse_progress,
    parse_status,
    tail,
    ttl_expired,
)

log = logging.getLogger("kubeloop_operator.trainingjob")

KIND: Final = "TrainingJob"
CREATED_HINT_S: Final = 15.0
"""How long a child this process just created counts as existing before the index shows it."""
PROGRESS_TAIL_LINES: Final = 200
LOG_GRACE_S: Final = 300.0
PROGRESS_MAX_BYTES: Final = 256 * 1024


def trainer_pod_config(settings: OperatorSettings) -> TrainerPodConfig:
    return TrainerPodConfig(
        image=settings.trainer_image,
        image_pull_policy=settings.image_pull_policy,
        store=podenv.ObjectStoreAccess.from_secret(
            settings.pods_s3_endpoint,
            settings.credentials_secret,
            bucket=settings.bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        ),
        mlflow_tracking_uri=settings.pods_mlflow_tracking_uri,
    )


def reconcile(rt: Runtime, body: Mapping[str, Any], view: ChildView, *, progress: bool = False) -> None:
    """Bring one TrainingJob's children and status up to date. Raises kopf.TemporaryError when the
    API server refused a child for now (after the status says so)."""
    owner = Owner.from_body(body)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # being deleted: garbage collection takes the children; nothing to create or report
    with rt.exclusive(owner.uid) as mem:
        now = datetime.now(UTC)
        current = parse_status(body.get("status"))
        # Parsed on every run (~45 us) rather than kept per object: at 500 TrainingJobs the parsed
        # models would be a few MiB of the operator's memory.
        try:
            spec = TrainingJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            message = format_validation_error(e, "spec")
            _publish(rt, body, dump(current), invalid_spec(current, owner.generation, message, now), mem)
            return
        jname = job_name(owner.name)
        job = view.job(jname) or _hint(mem, jname)
        create_error: ChildError | None = None
        final = is_final(current, owner.generation)
        if not final:
            job, create_error = _ensure_children(rt, owner, spec, view, mem, job)
            if job is not None:
                job = _sync_job(rt, owner, spec, job)
            _sync_service(rt, owner, spec, view, mem)
        pods = [p for p in view.pods if p.owner_uid == owner.uid]
        kept = _keep_logs(rt, owner, pods, mem, current.failure.pod if current.failure else None, final)
        reading = _read_progress(rt, owner, pods, mem, force=progress) if not final else None
        seen = (
            (body.get("metadata") or {}).get("resourceVersion"),
            job,
            tuple(pods),
            tuple(kept),
            reading,
            create_error,
        )
        if seen == mem.seen:  # nothing new since the last derivation: same status, nothing to write
            if ttl_expired(spec, current, now) and _logs_kept(current, pods, mem):
                _cleanup(rt, owner, view)
            return
        derived = derive(
            Observed(
                now=now,
                generation=owner.generation,
                spec=spec,
                current=current,
                job_name=jname,
                job=job,
                pods=pods,
                create_error=create_error,
                progress=reading,
                kept_logs=kept,
            )
        )
        if derived.stop_job and job is not None:
            _stop(rt, owner, job)
        _publish(rt, body, dump(current), derived, mem)
        mem.seen = seen
        if ttl_expired(spec, derived.status, now) and _logs_kept(derived.status, pods, mem):
            _cleanup(rt, owner, view)
        if create_error is not None and not create_error.permanent:
            raise retry_later(
                f"cannot create the children of {owner.namespace}/{owner.name}: {create_error.message}"
            )


def _publish(
    rt: Runtime, body: Mapping[str, Any], current: dict[str, Any], derived: Derived, mem: ObjectMemory
) -> None:
    rt.post_events(body, derived.events)
    rt.write_status(TRAININGJOB, body, current, dump(derived.status), mem)
    uid = str((body.get("metadata") or {}).get("uid"))
    rt.metrics.set_phase(KIND, uid, str(derived.status.phase) if derived.status.phase else None)


def _recent(mem: ObjectMemory, name: str) -> bool:
    entry = mem.children.get(name)
    return entry is not None and time.monotonic() - entry[0] <= CREATED_HINT_S


def _hint(mem: ObjectMemory, name: str) -> JobSummary | None:
    if not _recent(mem, name):
        return None
    summary = mem.children[name][1]
    return summary if isinstance(summary, JobSummary) else None


def _ensure_children(
    rt: Runtime,
    owner: Owner,
    spec: TrainingJobSpec,
    view: ChildView,
    mem: ObjectMemory,
    job: JobSummary | None,
) -> tuple[JobSummary | None, ChildError | None]:
    """Create what is missing, Service before Job (the pods' Service links must include it)."""
    if job is not None and (
        spec.distributed.nodes <= 1 or view.has_service(rendezvous_service_name(owner.name))
    ):
        return job, None
    for manifest in build_children(owner, spec, trainer_pod_config(rt.settings)):
        name = str(manifest["metadata"]["name"])
        kind = k8s.kind_of(manifest)
        if kind is JOB and job is not None:
            continue
        if kind is SERVICE and (view.has_service(name) or _recent(mem, name)):
            continue
        try:
            obj, created = rt.kube.create(manifest)
        except NameConflictError as e:
            return job, ChildError("NameConflict", e.message, permanent=False)
        except KubeError as e:
            reason = reason_word(e.reason, "CreateFailed") if e.status else "APIUnreachable"
            return job, ChildError(reason, e.message, permanent=e.permanent)
        if created:
            log.info("created %s %s/%s", kind.kind, owner.namespace, name)
        if kind is JOB:
            job = summarize_job(obj, SPEC_GENERATION_ANNOTATION)
            mem.children[name] = (time.monotonic(), job)
        else:
            mem.children[name] = (time.monotonic(), None)
    return job, None


_UNFIXABLE: Final = "unfixable:"


def _sync_service(
    rt: Runtime, owner: Owner, spec: TrainingJobSpec, view: ChildView, mem: ObjectMemory
) -> None:
    """The rendezvous Service's selector and ports follow what is built: a hand edit keeps every
    annotation, so its owned fields are compared as they are live, and put back (once)."""
    svc = build_rendezvous_service(owner, spec)
    if svc is None:
        return
    name = str(svc["metadata"]["name"])
    seen = view.service(name)
    want = service_owned_hash(svc)
    if seen is None or seen.owner_uid != owner.uid or not seen.owned_hash or seen.owned_hash == want:
        return
    stuck = mem.children.get(f"{_UNFIXABLE}{name}")
    if stuck is not None and stuck[1] == (want, seen.owned_hash):
        return
    live = rt.kube.get(SERVICE, owner.namespace, name)
    if live is None:
        return
    patch = owned_patch(service_owned(live), service_owned(svc), svc["spec"])
    if not patch:
        return
    obj = rt.kube.patch(SERVICE, owner.namespace, name, {"spec": patch})
    if service_owned_hash(obj) != want:
        # The API server keeps a field differently from how it was written: patching again could
        # not help, and would write on every resync.
        mem.children[f"{_UNFIXABLE}{name}"] = (time.monotonic(), (want, service_owned_hash(obj)))
    log.warning("Service %s/%s was edited outside its TrainingJob: put back", owner.namespace, name)


def _sync_job(rt: Runtime, owner: Owner, spec: TrainingJobSpec, job: JobSummary) -> JobSummary:
    """Suspend/resume, deadline and backoff limit follow the spec while the Job runs."""
    if job.deleting or job.condition("Complete") or job.condition("Failed") or job.condition("FailureTarget"):
        return job
    patch = job_drift(job.spec_view(), spec)
    if not patch:
        return job
    obj = rt.kube.patch(JOB, owner.namespace, job.name, patch)
    log.info("updated Job %s/%s: %s", owner.namespace, job.name, patch["spec"])
    return summarize_job(obj, SPEC_GENERATION_ANNOTATION)


def _stop(rt: Runtime, owner: Owner, job: JobSummary) -> None:
    """An error a retry cannot fix (the spec, the data, a diverged run): a backoff limit of 0 makes the Job controller fail
    the Job now and stop its other pods (the pod failure policy already does it for one process)."""
    if job.backoff_limit == 0:
        return
    try:
        rt.kube.patch(JOB, owner.namespace, job.name, {"spec": {"backoffLimit": 0}})
    except KubeError as e:
        log.warning(
            "cannot stop Job %s/%s after an error a retry cannot fix: %s", owner.namespace, job.name, e
        )


def _keep_logs(
    rt: Runtime, owner: Owner, pods: list[PodSummary], mem: ObjectMemory, failure_pod: str | None, final: bool
) -> dict[str, KeptLog]:
    """Every failed pod's log goes to object storage and its tail into memory, once, before anything
    deletes the pod. A finished run only needs the pod its failure names."""
    s = rt.settings
    for pod in failed_pods(pods):
        if pod.name in mem.kept_logs or (final and pod.name != failure_pod):
            continue
        try:
            text = rt.kube.read_log(
                owner.namespace, pod.name, CONTAINER, tail_lines=1_000_000, limit_bytes=s.log_max_bytes
            )
        except KubeError as e:
            log.warning("cannot read the log of %s/%s: %s", owner.namespace, pod.name, e)
            continue
        if text is None:
            continue
        uri: str | None = None
        if rt.store is not None:
            ref = training_log(owner.namespace, owner.name, pod.name, s.bucket)
            try:
                rt.store.put(ref, text.encode(), "text/plain; charset=utf-8")
                uri = ref.uri
            except StorageError as e:
                log.warning("cannot keep the log of %s/%s in %s: %s", owner.namespace, pod.name, ref.uri, e)
        mem.kept_logs[pod.name] = KeptLog(tail=tail(text, s.log_tail_lines), uri=uri)
    return dict(mem.kept_logs)


def _read_progress(
    rt: Runtime, owner: Owner, pods: list[PodSummary], mem: ObjectMemory, *, force: bool
) -> ProgressReading | None:
    """The rank-0 pod's latest progress line, at most every ``progress_seconds``."""
    rank0 = next((p for p in pods if p.running and p.index in (0, None)), None)
    if rank0 is None:
        return None
    due = time.monotonic() - mem.last_progress_read >= 0.8 * rt.settings.progress_seconds
    if not (force or due):
        return None
    mem.last_progress_read = time.monotonic()
    try:
        text = rt.kube.read_log(
            owner.namespace,
            rank0.name,
            CONTAINER,
            tail_lines=PROGRESS_TAIL_LINES,
            limit_bytes=PROGRESS_MAX_BYTES,
        )
    except KubeError as e:
        log.debug("cannot read progress of %s/%s: %s", owner.namespace, rank0.name, e)
        return None
    return parse_progress(text) if text else None


def _logs_kept(status: TrainingJobStatus, pods: list[PodSummary], mem: ObjectMemory) -> bool:
    """The TTL waits for the failed pod's log to be kept, while the pod is there to read it from
    (and at most LOG_GRACE_S after this process first saw the run finished, in case its log can
    never be read)."""
    f = status.failure
    if f is None or f.pod is None or f.log_tail is not None or not any(p.name == f.pod for p in pods):
        return True
    if mem.final_since is None:
        mem.final_since = time.monotonic()
    return time.monotonic() - mem.final_since > LOG_GRACE_S


def _cleanup(rt: Runtime, owner: Owner, view: ChildView) -> None:
    """ttlSecondsAfterFinished: the Job (its pods with it) and the Service go; the status stays."""
    for job in view.jobs:
        deleted = job.owner_uid == owner.uid and not job.deleting
        if deleted and rt.kube.delete(JOB, owner.namespace, job.name, propagation="Background", uid=job.uid):
            log.info("ttlSecondsAfterFinished: deleted Job %s/%s", owner.namespace, job.name)
    for svc in view.services:
        if svc.owner_uid == owner.uid:
            rt.kube.delete(SERVICE, owner.namespace, svc.name, uid=svc.uid)
    # Pods whose Job is already gone (the index may still list them while GC works) are left to GC.

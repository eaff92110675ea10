"""The check job around :func:`~kubeloop_operator.driftcheck.check.run_check`: what it reads from the
API server, and the one write it makes (the DriftMonitor's status)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubeloop.resources import DriftMonitorSpec, format_validation_error
from kubeloop.storage import ObjectStore, S3Config, StorageError
from kubeloop_operator.driftcheck.check import CheckInputs, run_check
from kubeloop_operator.driftcheck.logs import PartReader, SpoolError
from kubeloop_operator.driftcheck.settings import DriftCheckSettings
from kubeloop_operator.k8s import DRIFTMONITOR, MODELDEPLOYMENT, Kube, KubeError
from kubeloop_operator.status.driftmonitor import (
    CHECK_FIELDS,
    CheckProblem,
    CheckRecord,
    apply_check,
    dump,
    parse_status,
    status_patch,
)

log = logging.getLogger("kubeloop_operator.driftcheck")


def open_store(settings: DriftCheckSettings) -> ObjectStore:
    from kubeloop.storage.s3 import S3Store

    return S3Store(
        S3Config(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    )


def record_check(
    kube: Kube,
    namespace: str,
    name: str,
    monitor: Mapping[str, Any],
    rec: CheckRecord,
    retries: int,
) -> bool:
    """Patch the check's fields into the monitor's status, re-reading on a conflict. False when the
    monitor is gone, or when the object read again is another monitor of the same name (another uid:
    deleted and created again during the check), whose spec this check did not score."""
    uid = (monitor.get("metadata") or {}).get("uid")
    obj: Mapping[str, Any] | None = monitor
    for attempt in range(retries):
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            log.warning(
                "DriftMonitor %s/%s was re-created during the check (uid %s, checked %s): result dropped",
                namespace,
                name,
                meta.get("uid"),
                uid,
            )
            return False
        current = parse_status(obj.get("status"))
        new = apply_check(current, rec, int(meta.get("generation") or 1))
        patch = status_patch(dump(current), dump(new), CHECK_FIELDS)
        if not patch:
            return True
        try:
            kube.patch_status(
                DRIFTMONITOR, namespace, name, patch, resource_version=str(meta.get("resourceVersion"))
            )
            return True
        except KubeError as e:
            if e.status != 409 or attempt == retries - 1:
                raise
            log.info("status of %s/%s changed meanwhile; re-reading (%d)", namespace, name, attempt + 1)
            obj = kube.get(DRIFTMONITOR, namespace, name)
    return False


def run(settings: DriftCheckSettings, now: datetime) -> int:
    ns, name = settings.namespace, settings.monitor
    try:
        kube = Kube.connect(settings.kubeconfig, timeout_s=settings.kube_timeout_s, pool_size=2)
    except Exception as e:
        log.error("cannot load Kubernetes credentials: %s", e)
        return 1
    armed = True

    def on_sigterm(signum: int, _frame: object) -> None:
        if armed:
            raise Interrupted(signal.Signals(signum).name)
        log.warning("SIGTERM while the status is written: the write is finished first")

    monitor: Mapping[str, Any] | None = None
    try:
        with _handling_sigterm(on_sigterm):
            try:
                monitor = kube.get(DRIFTMONITOR, ns, name)
                if monitor is None:
                    log.warning("DriftMonitor %s/%s does not exist (deleted?): nothing to check", ns, name)
                    return 0
                rec, code = _check(settings, kube, monitor, now)
            except Interrupted as e:
                log.error("%s/%s: stopped by %s before the check finished", ns, name, e)
                if monitor is None:
                    return 1
                rec, code = CheckRecord(time=now, error=_interrupted(str(e))), 1
            armed = False  # the pod's grace period is for this write
            if not record_check(kube, ns, name, monitor, rec, settings.conflict_retries):
                log.warning(
                    "DriftMonitor %s/%s was deleted during the check: its result is dropped", ns, name
                )
            return code
    except KubeError as e:
        log.error("the API server refused or failed: %s", e)
        return 1
    finally:
        kube.close()


class Interrupted(BaseException):
    """SIGTERM arrived before the check finished. A BaseException, as KeyboardInterrupt, so that no
    handler of the check's own errors takes it for one."""


def _interrupted(signal_name: str) -> CheckProblem:
    return CheckProblem(
        "CheckInterrupted",
        f"the check was stopped by {signal_name} before it finished (the Job's activeDeadlineSeconds "
        "passed, or its pod was deleted): no result",
    )


@contextmanager
def _handling_sigterm(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGTERM while the block runs (only the main thread may set one), then the
    handler before it again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check(
    settings: DriftCheckSettings, kube: Kube, monitor: Mapping[str, Any], now: datetime
) -> tuple[CheckRecord, int]:
    ns, name = settings.namespace, settings.monitor
    try:
        spec = DriftMonitorSpec.model_validate(monitor.get("spec") or {})
    except ValidationError as e:
        return CheckRecord(time=now, error=CheckProblem("InvalidSpec", format_validation_error(e, "spec"))), 0
    try:
        deployment = kube.get(MODELDEPLOYMENT, ns, spec.deployment)
    except KubeError as e:
        if e.status != 403:
            raise
        # The Role names the deployment; it follows a spec change on the operator's next reconcile.
        problem = CheckProblem(
            "ModelDeploymentUnreadable",
            f"the check may not read ModelDeployment {spec.deployment} yet (its Role is being updated): {e.message}",
        )
        return CheckRecord(time=now, error=problem), 1
    try:
        store = open_store(settings)
        reader = PartReader(
            store,
            batch_rows=settings.batch_rows,
            max_memory_part_bytes=settings.max_memory_part_bytes,
            spool_dir=settings.spool_dir,
        )
        rec = run_check(store, CheckInputs(ns, name, spec, deployment, settings.bucket), now, reader)
    except StorageError as e:
        log.error("object storage failed: %s", e)
        return CheckRecord(time=now, error=CheckProblem("StorageUnavailable", str(e)[:900])), 1
    except SpoolError as e:
        log.error("%s", e)
        return CheckRecord(time=now, error=CheckProblem("SpoolFailed", str(e)[:900])), 1
    except Exception as e:
        # A bug, or input nobody foresaw: the status must still say the check failed and why, or
        # it keeps showing the previous result as if this check had never run.
        log.exception("%s/%s: the check failed unexpectedly", ns, name)
        message = f"the check failed unexpectedly: {type(e).__name__}: {e}"
        return CheckRecord(time=now, error=CheckProblem("CheckFailed", message[:900])), 1
    if rec.error is not None:
        log.warning("%s/%s: no result: %s: %s", ns, name, rec.error.reason, rec.error.message)
    return rec, 0

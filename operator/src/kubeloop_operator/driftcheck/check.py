"""One drift check, without the Kubernetes API: the deployed version and its frozen baseline, the
window's prediction logs scored with :mod:`kubeloop.drift`, the report written to object storage,
and a :class:`~kubeloop_operator.status.driftmonitor.CheckRecord` for the status.

Inputs that make a result impossible (no ModelDeployment, no resolved version, no baseline) are a
record with ``error`` — a condition on the DriftMonitor — never an exception, and so is a window
whose every prediction-log part had to be skipped (``LogsUnreadable``, naming the parts). Too few
logged rows is a result (``insufficientData``). Only the object store failing raises (:class:`StorageError`): then
there is no honest result to report, and the job's retry may find the store back.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubeloop.contracts import ObjectRef, drift_report, predictions_prefix
from kubeloop.drift import Baseline, BaselineError, DriftResult
from kubeloop.resources import DriftMonitorSpec, parse_duration
from kubeloop.storage import ObjectNotFoundError, ObjectStore, StorageError
from kubeloop_operator.driftcheck.logs import PartReader, score_parts, window_parts
from kubeloop_operator.status.conditions import rfc3339
from kubeloop_operator.status.driftmonitor import CheckProblem, CheckRecord

log = logging.getLogger("kubeloop_operator.driftcheck")


@dataclass(frozen=True)
class CheckInputs:
    """What the check reads from the cluster: the monitor's spec and the ModelDeployment (None: absent)."""

    namespace: str
    monitor: str
    spec: DriftMonitorSpec
    deployment: Mapping[str, Any] | None
    bucket: str


@dataclass(frozen=True)
class DeployedModel:
    version: str
    model_uri: str
    baseline: ObjectRef


def baseline_ref(model_uri: str) -> ObjectRef | None:
    """The baseline beside a model's ONNX file (``models/<name>/<version>/baseline.json``, DESIGN §3);
    None when the model is not in object storage."""
    try:
        ref = ObjectRef.parse(model_uri)
    except ValueError:
        return None
    return ObjectRef(ref.bucket, posixpath.join(posixpath.dirname(ref.key), "baseline.json"))


def _parse(uri: str) -> ObjectRef | None:
    try:
        return ObjectRef.parse(uri)
    except ValueError:
        return None


def deployed_model(inputs: CheckInputs) -> DeployedModel | CheckProblem:
    """The version the ModelDeployment serves, from its status (``modelVersion``, ``modelUri`` and,
    when the registry names it, ``baselineUri``); read by name, so a status without them is a reason."""
    name = inputs.spec.deployment
    md = inputs.deployment
    if md is None:
        return CheckProblem(
            "ModelDeploymentNotFound",
            f"ModelDeployment {name} does not exist in namespace {inputs.namespace}",
        )
    status = md.get("status") or {}
    version = status.get("modelVersion")
    uri = status.get("modelUri")
    if version in (None, "") or not uri:
        return CheckProblem(
            "ModelVersionUnknown",
            f"ModelDeployment {name} has not resolved its model yet (status.modelVersion/modelUri are empty)",
        )
    # The registry names the version's baseline (status.baselineUri); else it lies beside the model.
    named = status.get("baselineUri")
    ref = _parse(str(named)) if named else baseline_ref(str(uri))
    if ref is None and named:
        return CheckProblem(
            "BaselineNotFound",
            f"ModelDeployment {name} names status.baselineUri {named}, which is not in object storage "
            "(an s3://bucket/key URI is needed)",
        )
    if ref is None:
        return CheckProblem(
            "BaselineNotFound",
            f"ModelDeployment {name} serves {uri}, which is not in object storage: a drift check needs the "
            "baseline a Kubeloop TrainingJob writes beside the model",
        )
    return DeployedModel(version=str(version), model_uri=str(uri), baseline=ref)


def load_baseline(store: ObjectStore, ref: ObjectRef) -> Baseline | CheckProblem:
    try:
        blob = store.get(ref)
    except ObjectNotFoundError:
        return CheckProblem("BaselineNotFound", f"baseline {ref.uri} does not exist")
    try:
        return Baseline.from_json(blob)
    except BaselineError as e:
        return CheckProblem("BaselineInvalid", f"baseline {ref.uri} is not a valid baseline: {str(e)[:600]}")


def thresholds(spec: DriftMonitorSpec) -> dict[str, Any]:
    m = spec.metrics
    return {
        "psi_threshold": m.psi.threshold if m.psi.enabled else None,
        "js_threshold": m.jensen_shannon.threshold if m.jensen_shannon.enabled else None,
        "drift_share": spec.drift_share,
        "min_samples": spec.window.min_samples,
    }


def run_check(
    store: ObjectStore, inputs: CheckInputs, now: datetime, reader: PartReader | None = None
) -> CheckRecord:
    """Score the window ending ``now``; write the report; return what the status should record."""
    model = deployed_model(inputs)
    if isinstance(model, CheckProblem):
        return CheckRecord(time=now, error=model)
    baseline = load_baseline(store, model.baseline)
    if isinstance(baseline, CheckProblem):
        return CheckRecord(time=now, error=baseline)
    start = now - timedelta(seconds=parse_duration(inputs.spec.window.lookback))
    prefix = predictions_prefix(inputs.namespace, inputs.spec.deployment, model.version, inputs.bucket)
    parts = window_parts(store, prefix, start, now)
    scored = score_parts(reader or PartReader(store), parts, baseline, start, now)
    if scored.skipped and not scored.parts:
        return CheckRecord(time=now, error=unreadable(scored.skipped, model.version))
    result = scored.accumulator.result(**thresholds(inputs.spec))
    report_ref = drift_report(inputs.namespace, inputs.monitor, now, inputs.bucket)
    note = ""
    report_uri: str | None = report_ref.uri
    try:
        store.put(
            report_ref,
            json.dumps(
                report(inputs, model, start, now, scored.parts, scored.skipped, result), indent=1
            ).encode(),
            "application/json",
        )
    except StorageError as e:  # the result still reaches the status; the report is what is lost
        log.warning("cannot write the report %s: %s", report_ref.uri, e)
        note, report_uri = f"the report could not be written to {report_ref.uri}: {e}", None
    summary = result.summary(model_version=model.version, report_uri=report_uri).model_copy(
        update={
            "time": rfc3339(now),
            "baseline_uri": model.baseline.uri,
            "parts": scored.parts,
            "skipped_parts": len(scored.skipped),
        }
    )
    log.info(
        "checked %s/%s: version %s, %d part(s) (%d skipped), %d row(s), drifted=%s share=%.2f",
        inputs.namespace,
        inputs.monitor,
        model.version,
        scored.parts,
        len(scored.skipped),
        result.samples,
        result.drifted,
        result.share,
    )
    return CheckRecord(time=now, summary=summary, skipped=tuple(scored.skipped), note=note)


UNREADABLE_SHOWN = 5


def unreadable(skipped: list[CheckProblem], version: str) -> CheckProblem:
    """Why a window whose every part was skipped has no result: scoring none of its rows is not "too
    few predictions", and the last real result must not be replaced by an empty one."""
    shown = "; ".join(p.message for p in skipped[:UNREADABLE_SHOWN])
    more = f"; and {len(skipped) - UNREADABLE_SHOWN} more" if len(skipped) > UNREADABLE_SHOWN else ""
    return CheckProblem(
        "LogsUnreadable",
        f"none of the {len(skipped)} prediction-log part(s) of version {version} in the window could be "
        f"scored: {shown}{more}",
    )


def report(
    inputs: CheckInputs,
    model: DeployedModel,
    start: datetime,
    end: datetime,
    parts: int,
    skipped: list[CheckProblem],
    result: DriftResult,
) -> dict[str, Any]:
    """The full report (DESIGN §3: ``drift/<namespace>/<monitor>/<timestamp>.json``)."""
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftReport",
        "namespace": inputs.namespace,
        "monitor": inputs.monitor,
        "deployment": inputs.spec.deployment,
        "modelVersion": model.version,
        "modelUri": model.model_uri,
        "baselineUri": model.baseline.uri,
        "window": {"start": rfc3339(start), "end": rfc3339(end), "lookback": inputs.spec.window.lookback},
        "parts": {"scored": parts, "skipped": [{"reason": p.reason, "message": p.message} for p in skipped]},
        "result": json.loads(result.to_json()),
    }

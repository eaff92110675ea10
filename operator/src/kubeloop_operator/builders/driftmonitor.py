"""DriftMonitor -> its check's identity (ServiceAccount, Role, RoleBinding) and CronJob; and the
retraining TrainingJob a drifted check calls for. Pure: spec in, manifests out.

The check pod may do exactly one write: patch the status of its own DriftMonitor. Its Role names the
monitor and the ModelDeployment (``resourceNames``) and grants ``get`` on them and ``get``/``patch``
on the monitor's ``status`` subresource, nothing else; its object-store credentials come from the
credentials Secret through the pod's environment (the kubelet reads the Secret, the pod's identity
cannot). Thresholds and the window are read from the DriftMonitor when the check runs, so editing
them changes no child.

Each manifest carries a hash of its desired content (``kubeloop.io/spec-hash``): the reconciler patches
a child only when the hash differs, which costs no request when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubeloop import podenv
from kubeloop.contracts import DriftCheckEnv, Labels
from kubeloop.resources import API_VERSION, GROUP, DriftMonitorSpec, LastRetrain, TrainingJob
from kubeloop_operator.builders.common import (
    Owner,
    child_name,
    label_value,
    labels,
    metadata,
    own_keys,
    owned_patch,
    owned_pod_template,
)

COMPONENT: Final = "drift-check"
APP_NAME: Final = "kubeloop-drift-check"
CONTAINER: Final = "drift-check"
RETRAIN_COMPONENT: Final = "retrain"
SPEC_HASH_ANNOTATION: Final = "kubeloop.io/spec-hash"
CHECK_TIME_ANNOTATION: Final = "kubeloop.io/drift-check-time"
REPORT_ANNOTATION: Final = "kubeloop.io/drift-report"
MONITOR_LABEL: Final = "kubeloop.io/driftmonitor"
# The CronJob controller appends an 11-character suffix to Job names, which must stay within 63.
CRONJOB_NAME_MAX: Final = 52


@dataclass(frozen=True, slots=True)
class DriftCheckPodConfig:
    """The operator-wide part of a check pod: image, object store, limits."""

    image: str
    image_pull_policy: str
    store: podenv.ObjectStoreAccess
    deadline_seconds: int = 1800
    memory_limit: str = "768Mi"


# The check pod's memory request; the operator refuses to start with a memory limit below it
# (KUBELOOP_OPERATOR_DRIFT_CHECK_MEMORY_LIMIT), which the API server would refuse in every CronJob.
CHECK_MEMORY_REQUEST: Final = "128Mi"


def cronjob_name(monitor: str) -> str:
    return child_name(monitor, "drift-check", max_len=CRONJOB_NAME_MAX)


def checker_name(monitor: str) -> str:
    """Name of the check's ServiceAccount, Role and RoleBinding."""
    return child_name(monitor, "drift-check")


def _hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """What the reconciler compares: the hash stamped on a built manifest."""
    return str(((manifest.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION, ""))


def _stamp(manifest: dict[str, Any], *content_keys: str) -> dict[str, Any]:
    content = {k: manifest.get(k) for k in content_keys}
    manifest["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = _hash(content)
    return manifest


def child_labels(owner: Owner) -> dict[str, str]:
    return labels(owner, name=APP_NAME, component=COMPONENT, extra={MONITOR_LABEL: label_value(owner.name)})


def pod_labels(owner: Owner) -> dict[str, str]:
    """Labels of the check's Jobs and pods. Not ``managed-by``: the operator's child indexes (Jobs and
    pods of TrainingJobs) select on it, and a check's pods are the CronJob controller's business."""
    return {
        Labels.NAME: APP_NAME,
        Labels.COMPONENT: COMPONENT,
        Labels.PART_OF: "kubeloop",
        MONITOR_LABEL: label_value(owner.name),
    }


def check_env(owner: Owner, cfg: DriftCheckPodConfig) -> list[dict[str, Any]]:
    s = cfg.store
    env: podenv.Env = {
        DriftCheckEnv.NAMESPACE: owner.namespace,
        DriftCheckEnv.MONITOR: owner.name,
        DriftCheckEnv.BUCKET: s.bucket,
        DriftCheckEnv.S3_ENDPOINT: s.endpoint,
        DriftCheckEnv.S3_ACCESS_KEY: s.access_key,
        DriftCheckEnv.S3_SECRET_KEY: s.secret_key,
        DriftCheckEnv.S3_SECURE: "true" if s.secure else "false",
    }
    if s.region:
        env[DriftCheckEnv.S3_REGION] = s.region
    return podenv.to_k8s_env(env)


def build_service_account(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner, checker_name(owner.name), child_labels(owner)),
    }


def role_rules(monitor: str, deployment: str) -> list[dict[str, Any]]:
    """Read the monitor and its ModelDeployment, write the monitor's status: nothing else."""
    return [
        {"apiGroups": [GROUP], "resources": ["driftmonitors"], "resourceNames": [monitor], "verbs": ["get"]},
        {
            "apiGroups": [GROUP],
            "resources": ["driftmonitors/status"],
            "resourceNames": [monitor],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": [GROUP],
            "resources": ["modeldeployments"],
            "resourceNames": [deployment],
            "verbs": ["get"],
        },
    ]


def build_role(owner: Owner, spec: DriftMonitorSpec) -> dict[str, Any]:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner, checker_name(owner.name), child_labels(owner)),
        "rules": role_rules(owner.name, spec.deployment),
    }
    return _stamp(role, "rules")


def build_role_binding(owner: Owner) -> dict[str, Any]:
    name = checker_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(owner, name, child_labels(owner)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def build_cronjob(owner: Owner, spec: DriftMonitorSpec, cfg: DriftCheckPodConfig) -> dict[str, Any]:
    """The check on the monitor's schedule: one at a time (Forbid), suspended with the monitor."""
    plabels = pod_labels(owner)
    container = {
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "env": check_env(owner, cfg),
        "resources": {
            "requests": {"cpu": "100m", "memory": CHECK_MEMORY_REQUEST},
            "limits": {"memory": cfg.memory_limit},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(owner, cronjob_name(owner.name), child_labels(owner)),
        "spec": {
            "schedule": spec.schedule,
            "suspend": spec.suspend,
            "concurrencyPolicy": "Forbid",
            # A check that could not start within a minute of its time waits for the next one.
            "startingDeadlineSeconds": 60,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": dict(plabels)},
                "spec": {
                    # Bad inputs are results (exit 0); a failure is the cluster or the store: one retry.
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": cfg.deadline_seconds,
                    "template": {
                        "metadata": {"labels": dict(plabels)},
                        "spec": {
                            "serviceAccountName": checker_name(owner.name),
                            "automountServiceAccountToken": True,
                            "restartPolicy": "Never",
                            "containers": [container],
                        },
                    },
                },
            },
        },
    }
    return _stamp(cron, "spec")


def build_children(owner: Owner, spec: DriftMonitorSpec, cfg: DriftCheckPodConfig) -> list[dict[str, Any]]:
    """In creation order: the identity first, so the first check's pod can act as it."""
    return [
        build_service_account(owner),
        build_role(owner, spec),
        build_role_binding(owner),
        build_cronjob(owner, spec, cfg),
    ]


# The fields of a CronJob's spec and of its job template's spec that build_cronjob sets (the pod template
# is projected by common.owned_pod_template, restartPolicy with it: the builder sets it).
_CRONJOB_FIELDS: Final = (
    "schedule",
    "timeZone",
    "suspend",
    "concurrencyPolicy",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
)
_JOB_FIELDS: Final = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")


def owned_fields(cron: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a CronJob (built or live) the operator owns, in normal form: equal for a built
    CronJob and the same one as the API server keeps it, different after a hand edit of one of them
    (``kubectl edit`` keeps the spec-hash annotation)."""
    spec = cron.get("spec") or {}
    out: dict[str, Any] = {k: spec[k] for k in _CRONJOB_FIELDS if spec.get(k) is not None}
    jt = spec.get("jobTemplate") or {}
    jspec = jt.get("spec") or {}
    job: dict[str, Any] = {k: jspec[k] for k in _JOB_FIELDS if jspec.get(k) is not None}
    job["template"] = owned_pod_template(jspec.get("template"), extra=("restartPolicy",))
    jmeta = {f: own_keys((jt.get("metadata") or {}).get(f)) for f in ("labels", "annotations")}
    out["jobTemplate"] = {"metadata": {k: v for k, v in jmeta.items() if v}, "spec": job}
    return out


def owned_hash(cron: Mapping[str, Any]) -> str:
    return _hash(owned_fields(cron))


def cronjob_patch(cron: Mapping[str, Any], live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merge patch that brings an existing CronJob to ``cron`` (built by :func:`build_cronjob`):
    with the ``live`` one, only the fields it owns that differ (keys a hand edit added removed, what
    the API server defaulted and others added kept); without, the whole spec."""
    spec = cron["spec"] if live is None else owned_patch(owned_fields(live), owned_fields(cron), cron["spec"])
    patch: dict[str, Any] = {"spec": spec} if spec else {}
    if (live is None or spec_hash(live) != spec_hash(cron)) and spec_hash(cron):
        patch["metadata"] = {"annotations": {SPEC_HASH_ANNOTATION: spec_hash(cron)}}
    return patch


def role_patch(role: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: spec_hash(role)}}, "rules": role["rules"]}


def retrain_spec_from_template(spec: DriftMonitorSpec) -> dict[str, Any] | None:
    """The template's TrainingJob spec as a manifest's spec (None without a template)."""
    if spec.retrain is None or spec.retrain.template is None:
        return None
    out: dict[str, Any] = spec.retrain.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def build_retrain(
    owner: Owner, source_spec: Mapping[str, Any], record: LastRetrain, report_uri: str | None
) -> dict[str, Any]:
    """The retraining TrainingJob: the source spec as it is now, owned by the monitor, named after the
    check that triggered it (``record.training_job``)."""
    annotations = {CHECK_TIME_ANNOTATION: record.check_time or record.time}
    if report_uri:
        annotations[REPORT_ANNOTATION] = report_uri
    return {
        "apiVersion": API_VERSION,
        "kind": TrainingJob.kind,
        "metadata": metadata(
            owner,
            record.training_job,
            labels(
                owner,
                name="kubeloop-retrain",
                component=RETRAIN_COMPONENT,
                extra={MONITOR_LABEL: label_value(owner.name)},
            ),
            annotations,
        ),
        "spec": dict(source_spec),
    }

"""TrainingJob -> one Indexed batch/v1 Job (+ a rendezvous Service when it spans several pods).

Rendezvous: torchrun's rank-0 store must be reachable by name from every pod before any pod knows
another's IP. The Service selects only the pod of completion index 0 and the pods find it through
the kubelet's Service link (``<SERVICE>_SERVICE_HOST``), which needs no cluster DNS: that is what
the local node agent offers, and it works unchanged on any cluster. A headless Service would need
DNS for ``<job>-0.<service>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from kubeloop import podenv
from kubeloop.contracts import (
    JOB_COMPLETION_INDEX_LABEL,
    JOB_NAME_LABEL,
    RENDEZVOUS_PORT,
    TRAINER_NO_RETRY_EXIT_CODES,
    Labels,
)
from kubeloop.resources import TrainingJobSpec
from kubeloop_operator.builders.common import (
    Owner,
    container_resources,
    dns_label_name,
    label_value,
    labels,
    metadata,
    service_env_prefix,
    tolerations,
)

CONTAINER: Final = "trainer"
COMPONENT: Final = "training"
APP_NAME: Final = "kubeloop-trainer"
# The Job controller names an Indexed Job's pods' hostnames <job>-<index> (at most 63 characters).
JOB_NAME_MAX: Final = 56
SPEC_GENERATION_ANNOTATION: Final = "kubeloop.io/spec-generation"


@dataclass(frozen=True, slots=True)
class TrainerPodConfig:
    """The operator-wide part of a trainer pod: image, services, credentials Secret."""

    image: str
    image_pull_policy: str
    store: podenv.ObjectStoreAccess
    mlflow_tracking_uri: str


def job_name(tj_name: str) -> str:
    return dns_label_name(tj_name, max_len=JOB_NAME_MAX)


def rendezvous_service_name(tj_name: str) -> str:
    return dns_label_name(job_name(tj_name), "rdzv", letter_first=True)


def uses_torchrun(spec: TrainingJobSpec) -> bool:
    """torchrun starts the processes when there is more than one of them (pods or GPUs per pod)."""
    return spec.distributed.nodes > 1 or spec.distributed.gpus_per_node > 1


def child_labels(owner: Owner, spec: TrainingJobSpec) -> dict[str, str]:
    extra = {Labels.TRAININGJOB: label_value(owner.name)}
    if spec.queue_name:
        extra[Labels.KUEUE_QUEUE_NAME] = spec.queue_name
    return labels(owner, name=APP_NAME, component=COMPONENT, extra=extra)


def desired_suspend(spec: TrainingJobSpec) -> bool:
    """A Job for a Kueue queue starts suspended: Kueue unsuspends it once the workload is admitted."""
    return spec.run_policy.suspend or spec.queue_name is not None


def trainer_env(owner: Owner, spec: TrainingJobSpec, cfg: TrainerPodConfig) -> list[dict[str, Any]]:
    env = podenv.trainer_env(
        spec,
        podenv.TrainerContext(
            namespace=owner.namespace,
            name=owner.name,
            uid=owner.uid,
            store=cfg.store,
            mlflow_tracking_uri=cfg.mlflow_tracking_uri,
        ),
    )
    d = spec.distributed
    if d.nodes > 1 or d.gpus_per_node > 1 or spec.model.image is not None:
        # Also for bring-your-own images, which may start torchrun themselves.
        if d.nodes > 1:
            master = f"$({service_env_prefix(rendezvous_service_name(owner.name))}_SERVICE_HOST)"
        else:
            master = "127.0.0.1"
        env.update(
            podenv.torchrun_env(
                podenv.Torchrun(nnodes=d.nodes, nproc_per_node=max(1, d.gpus_per_node), master_addr=master)
            )
        )
    return podenv.to_k8s_env(env)


def trainer_container(owner: Owner, spec: TrainingJobSpec, cfg: TrainerPodConfig) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.model.image or cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "env": trainer_env(owner, spec, cfg),
        # A crash without a termination message still tells its cause (the log's last lines).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.model.image is not None:
        c["command"] = list(spec.model.command or [])
        if spec.model.args is not None:
            c["args"] = list(spec.model.args)
    elif uses_torchrun(spec):
        c["command"] = ["python", "-m", "torch.distributed.run"]
        c["args"] = ["-m", "kubeloop_trainer"]
    resources = container_resources(spec.resources, spec.distributed.gpus_per_node)
    if resources:
        c["resources"] = resources
    if spec.distributed.nodes > 1:
        c["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    return c


def pod_failure_policy(spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The built-in trainer's errors that a retry cannot fix fail the Job at once; evictions and preemptions
    do not count against backoffLimit. Bring-your-own images have their own exit codes: none."""
    if spec.model.image is not None:
        return None
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": sorted(TRAINER_NO_RETRY_EXIT_CODES),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_job(owner: Owner, spec: TrainingJobSpec, cfg: TrainerPodConfig) -> dict[str, Any]:
    """The Indexed Job: ``completions = parallelism = nodes``, one trainer container per pod."""
    lbl = child_labels(owner, spec)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [trainer_container(owner, spec, cfg)],
        # Trainer pods talk to the object store and MLflow only: no API credentials in them.
        "automountServiceAccountToken": False,
        "enableServiceLinks": True,
        "terminationGracePeriodSeconds": 30,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = tolerations(spec.tolerations)
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    rp = spec.run_policy
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.distributed.nodes,
        "parallelism": spec.distributed.nodes,
        "backoffLimit": rp.backoff_limit,
        "suspend": desired_suspend(spec),
        "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
    }
    if rp.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = rp.active_deadline_seconds
    policy = pod_failure_policy(spec)
    if policy is not None:
        job_spec["podFailurePolicy"] = policy
        job_spec["podReplacementPolicy"] = "Failed"
    # No ttlSecondsAfterFinished here: the operator deletes the children itself once the final
    # status (and the failed pods' logs) are recorded, so nothing is lost to an early cleanup.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            owner, job_name(owner.name), lbl, {SPEC_GENERATION_ANNOTATION: str(owner.generation)}
        ),
        "spec": job_spec,
    }


def build_rendezvous_service(owner: Owner, spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The Service in front of the rank-0 pod's torchrun store; None for a single pod."""
    if spec.distributed.nodes <= 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, rendezvous_service_name(owner.name), child_labels(owner, spec)),
        "spec": {
            "selector": {JOB_NAME_LABEL: job_name(owner.name), JOB_COMPLETION_INDEX_LABEL: "0"},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
            # Rendezvous happens before any readiness could be known.
            "publishNotReadyAddresses": True,
        },
    }


def build_children(owner: Owner, spec: TrainingJobSpec, cfg: TrainerPodConfig) -> list[dict[str, Any]]:
    """In creation order: the Service first, so the pods' Service links include it."""
    svc = build_rendezvous_service(owner, spec)
    return [*([svc] if svc is not None else []), build_job(owner, spec, cfg)]


def job_drift(job_spec: dict[str, Any], spec: TrainingJobSpec) -> dict[str, Any]:
    """The merge patch that brings a live Job's mutable fields back to the spec (empty: none)."""
    rp = spec.run_policy
    patch: dict[str, Any] = {}
    suspend_now = bool(job_spec.get("suspend"))
    if spec.queue_name is None:
        if suspend_now != rp.suspend:
            patch["suspend"] = rp.suspend
    elif rp.suspend and not suspend_now:  # Kueue owns unsuspending; the user may still suspend
        patch["suspend"] = True
    if job_spec.get("activeDeadlineSeconds") != rp.active_deadline_seconds:
        patch["activeDeadlineSeconds"] = rp.active_deadline_seconds
    if job_spec.get("backoffLimit") != rp.backoff_limit:
        patch["backoffLimit"] = rp.backoff_limit
    return {"spec": patch} if patch else {}

"""Pure builders: TrainingJob -> Indexed Job (+ rendezvous Service), no cluster needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeloop_operator.builders import common
from kubeloop_operator.builders import trainingjob as b

from kubeloop import podenv
from kubeloop.contracts import TRAINER_NO_RETRY_EXIT_CODES, Labels, TorchrunEnv, TrainerEnv
from kubeloop.resources import TrainingJob, TrainingJobSpec

ROOT = Path(__file__).resolve().parents[2]
OWNER = common.Owner("kubeloop.io/v1alpha1", "TrainingJob", "team-a", "breast-cancer", "uid-123", 4)
CFG = b.TrainerPodConfig(
    image="kubeloop/trainer:0.1.0",
    image_pull_policy="IfNotPresent",
    store=podenv.ObjectStoreAccess.from_secret("minio.kubeloop-system:9000", "kubeloop-s3"),
    mlflow_tracking_uri="http://mlflow.kubeloop-system:5000",
)


def example_spec(**changes: Any) -> TrainingJobSpec:
    manifest = yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())
    spec = manifest["spec"]
    for path, value in changes.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return TrainingJob.from_manifest(manifest).spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_job_runs_the_trainer_image_with_its_contract() -> None:
    spec = example_spec()
    job = b.build_job(OWNER, spec, CFG)
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    meta = job["metadata"]
    assert meta["name"] == "breast-cancer"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "TrainingJob",
            "name": "breast-cancer",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["annotations"][b.SPEC_GENERATION_ANNOTATION] == "4"
    js = job["spec"]
    assert (js["completionMode"], js["completions"], js["parallelism"]) == ("Indexed", 1, 1)
    assert js["backoffLimit"] == 2
    assert js["activeDeadlineSeconds"] == 3600
    assert js["suspend"] is False
    assert "ttlSecondsAfterFinished" not in js  # the operator runs the TTL itself, after keeping logs
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["name"] == "trainer"
    assert c["image"] == "kubeloop/trainer:0.1.0"
    assert "command" not in c
    assert "args" not in c
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    env = env_of(c)
    assert TrainingJobSpec.model_validate(json.loads(env[TrainerEnv.SPEC])) == spec
    assert (env[TrainerEnv.NAMESPACE], env[TrainerEnv.NAME], env[TrainerEnv.UID]) == (
        "team-a",
        "breast-cancer",
        "uid-123",
    )
    assert env[TrainerEnv.S3_ACCESS_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "accessKey"}}
    assert env[TrainerEnv.S3_SECRET_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "secretKey"}}
    assert env[TrainerEnv.MLFLOW_TRACKING_URI] == "http://mlflow.kubeloop-system:5000"
    assert TorchrunEnv.NNODES not in env  # one process: no torchrun
    labels = js["template"]["metadata"]["labels"]
    assert labels[Labels.OWNER_UID] == "uid-123"
    assert labels[Labels.TRAININGJOB] == "breast-cancer"
    assert labels[Labels.MANAGED_BY] == "kubeloop-operator"
    assert meta["labels"] == labels


def test_user_errors_fail_the_job_without_retry_and_disruptions_do_not_count() -> None:
    policy = b.build_job(OWNER, example_spec(), CFG)["spec"]["podFailurePolicy"]
    fail, ignore = policy["rules"]
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": sorted(TRAINER_NO_RETRY_EXIT_CODES),
    }
    assert {11, 24, 2} <= set(fail["onExitCodes"]["values"])
    assert 1 not in fail["onExitCodes"]["values"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_two_nodes_get_torchrun_a_rendezvous_service_and_ranks_from_the_completion_index() -> None:
    spec = example_spec(distributed__nodes=2)
    children = b.build_children(OWNER, spec, CFG)
    assert [c["kind"] for c in children] == ["Service", "Job"]  # Service first: the pods' links need it
    svc, job = children
    assert svc["metadata"]["name"] == "breast-cancer-rdzv"
    assert svc["spec"]["selector"] == {
        "batch.kubernetes.io/job-name": "breast-cancer",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    assert svc["spec"]["ports"][0]["port"] == 29500
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-123"
    js = job["spec"]
    assert (js["completions"], js["parallelism"]) == (2, 2)
    (c,) = js["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "torch.distributed.run"]
    assert c["args"] == [
        "-m",
        "kubeloop_trainer",
    ]
    env = env_of(c)
    assert env[TorchrunEnv.NNODES] == "2"
    assert env[TorchrunEnv.NPROC_PER_NODE] == "1"
    assert env[TorchrunEnv.NODE_RANK] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env[TorchrunEnv.MASTER_ADDR] == "$(BREAST_CANCER_RDZV_SERVICE_HOST)"
    assert env[TorchrunEnv.MASTER_PORT] == "29500"
    assert c["ports"] == [{"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}]
    assert js["template"]["spec"]["enableServiceLinks"] is True


def test_gpus_scheduling_and_queue_reach_the_pods() -> None:
    spec = example_spec(
        distributed__gpusPerNode=2,
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        priorityClassName="training",
        queueName="team-queue",
    )
    job = b.build_job(OWNER, spec, CFG)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert c["command"][-1] == "torch.distributed.run"  # 2 processes in one pod
    assert env_of(c)[TorchrunEnv.MASTER_ADDR] == "127.0.0.1"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert job["spec"]["suspend"] is True  # Kueue unsuspends on admission


def test_bring_your_own_image_keeps_its_command_and_has_no_exit_code_policy() -> None:
    spec = example_spec(model={"image": "busybox:1.36", "command": ["sh", "-c"], "args": ["exit 3"]})
    job = b.build_job(OWNER, spec, CFG)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert (c["image"], c["command"], c["args"]) == ("busybox:1.36", ["sh", "-c"], ["exit 3"])
    assert "podFailurePolicy" not in job["spec"]
    assert env_of(c)[TorchrunEnv.NNODES] == "1"  # it may start torchrun itself


def test_suspend_and_run_policy_reach_the_job_and_drift_is_patched() -> None:
    spec = example_spec(runPolicy={"suspend": True, "backoffLimit": 0})
    job = b.build_job(OWNER, spec, CFG)
    assert job["spec"]["suspend"] is True
    assert job["spec"]["backoffLimit"] == 0
    assert "activeDeadlineSeconds" not in job["spec"]
    live = {"suspend": True, "backoffLimit": 0, "activeDeadlineSeconds": None}
    assert b.job_drift(live, spec) == {}
    resumed = example_spec(runPolicy={"suspend": False, "backoffLimit": 0, "activeDeadlineSeconds": 60})
    assert b.job_drift(live, resumed) == {"spec": {"suspend": False, "activeDeadlineSeconds": 60}}


def test_queued_jobs_are_never_unsuspended_by_the_operator() -> None:
    spec = example_spec(queueName="q")
    live = {"suspend": True, "backoffLimit": 2, "activeDeadlineSeconds": 3600}
    assert b.job_drift(live, spec) == {}  # Kueue admits it
    user_suspends = example_spec(
        queueName="q", runPolicy={"suspend": True, "backoffLimit": 2, "activeDeadlineSeconds": 3600}
    )
    assert b.job_drift({**live, "suspend": False}, user_suspends) == {"spec": {"suspend": True}}


@pytest.mark.parametrize("length", [40, 56, 57, 120, 253])
def test_names_are_deterministic_bounded_and_distinct(length: int) -> None:
    name = ("a" * (length - 1)) + "b"
    other = ("a" * (length - 1)) + "c"
    jn = b.job_name(name)
    assert jn == b.job_name(name)
    assert len(jn) <= b.JOB_NAME_MAX
    assert jn != b.job_name(other)
    svc = b.rendezvous_service_name(name)
    assert len(svc) <= 63
    assert svc.endswith("-rdzv")
    assert svc != b.rendezvous_service_name(other)
    assert len(common.label_value(name)) <= 63


def test_label_values_and_service_links_follow_kubernetes_rules() -> None:
    assert common.label_value("my.tj-1") == "my.tj-1"
    long = common.label_value("x" * 100)
    assert len(long) <= 63
    assert long[0].isalnum()
    assert long[-1].isalnum()
    assert common.service_env_prefix("breast-cancer-rdzv") == "BREAST_CANCER_RDZV"


_DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


@pytest.mark.parametrize("name", ["my.tj", "7-layers", "v1.2.3", "9" * 253, "a" * 60 + ".b"])
def test_any_valid_trainingjob_name_gives_children_the_api_server_accepts(name: str) -> None:
    # A TrainingJob's name is a DNS subdomain (dots, a leading digit, 253 characters). The Indexed
    # Job's name must make pod hostnames <job>-<index> (DNS-1123 labels) and a Service's name must be
    # a DNS-1035 label (a letter first, no dots).
    import re

    jn = b.job_name(name)
    assert re.fullmatch(_DNS1123_LABEL, jn)
    assert len(f"{jn}-255") <= 63
    svc = b.rendezvous_service_name(name)
    assert re.fullmatch(_DNS1035_LABEL, svc)
    assert len(svc) <= 63
    assert svc.endswith("-rdzv")
    # distinct owners keep distinct children ("my.tj" and "my-tj" may both exist)
    twin = name.replace(".", "-") if "." in name else None
    if twin is not None:
        assert b.job_name(twin) != jn
        assert b.rendezvous_service_name(twin) != svc
    # names that were valid keep their children's names (a restarted operator adopts them)
    assert b.job_name("breast-cancer") == "breast-cancer"
    assert b.rendezvous_service_name("breast-cancer") == "breast-cancer-rdzv"


def test_extended_resources_in_requests_get_their_limit_beside_the_gpus() -> None:
    # gpusPerNode sets nvidia.com/gpu; any other non-overcommitable resource requested alone gets the
    # limit the API server requires of it, and cpu keeps being overcommitted.
    spec = example_spec(
        distributed__gpusPerNode=2,
        resources={"requests": {"cpu": "1", "example.com/fpga": 1}, "limits": {"cpu": 4}},
    )
    c = b.build_job(OWNER, spec, CFG)["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["requests"] == {"cpu": "1", "example.com/fpga": "1", "nvidia.com/gpu": "2"}
    assert c["resources"]["limits"] == {"cpu": "4", "example.com/fpga": "1", "nvidia.com/gpu": "2"}

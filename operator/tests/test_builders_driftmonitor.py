"""Pure builders of a DriftMonitor's children and of its retraining TrainingJob."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubeloop_operator.builders import driftmonitor as b
from kubeloop_operator.builders.common import Owner
from kubeloop_operator.status.driftmonitor import retrain_name

from kubeloop import podenv
from kubeloop.contracts import DriftCheckEnv, Labels
from kubeloop.resources import DriftMonitor, DriftMonitorSpec, LastRetrain, TrainingJob

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner("kubeloop.io/v1alpha1", "DriftMonitor", "team-a", "breast-cancer", "dm-uid", 2)
CFG = b.DriftCheckPodConfig(
    image="kubeloop/drift-check:0.1.0",
    image_pull_policy="IfNotPresent",
    store=podenv.ObjectStoreAccess.from_secret("minio.kubeloop-system:9000", "kubeloop-s3"),
)


def example(**changes: Any) -> DriftMonitorSpec:
    manifest = yaml.safe_load((ROOT / "examples/driftmonitor.yaml").read_text())
    manifest["spec"].update(changes)
    return DriftMonitor.from_manifest(manifest).spec


def test_cronjob_runs_the_check_on_the_schedule_one_at_a_time() -> None:
    cron = b.build_cronjob(OWNER, example(), CFG)
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    meta = cron["metadata"]
    assert meta["name"] == "breast-cancer-drift-check"
    assert meta["ownerReferences"][0]["uid"] == "dm-uid"
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"][Labels.OWNER_KIND] == "driftmonitor"
    assert meta["labels"][Labels.OWNER_UID] == "dm-uid"
    spec = cron["spec"]
    assert spec["schedule"] == "0 * * * *"
    assert spec["suspend"] is False
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]
    assert Labels.MANAGED_BY not in pod["metadata"]["labels"]  # out of the TrainingJob indexes
    assert Labels.MANAGED_BY not in spec["jobTemplate"]["metadata"]["labels"]
    assert pod["spec"]["serviceAccountName"] == "breast-cancer-drift-check"
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "kubeloop/drift-check:0.1.0"
    assert c["resources"]["limits"]["memory"] == "768Mi"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env[DriftCheckEnv.NAMESPACE] == "team-a"
    assert env[DriftCheckEnv.MONITOR] == "breast-cancer"
    assert env[DriftCheckEnv.S3_ENDPOINT] == "minio.kubeloop-system:9000"
    assert env[DriftCheckEnv.S3_ACCESS_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "accessKey"}}
    assert env[DriftCheckEnv.S3_SECRET_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "secretKey"}}
    assert not any("threshold" in k.lower() for k in env)  # read from the monitor when the check runs


def test_suspend_and_schedule_change_the_cronjob_and_its_hash_thresholds_do_not() -> None:
    base = b.build_cronjob(OWNER, example(), CFG)
    suspended = b.build_cronjob(OWNER, example(suspend=True), CFG)
    assert suspended["spec"]["suspend"] is True
    assert b.spec_hash(suspended) != b.spec_hash(base)
    assert b.spec_hash(b.build_cronjob(OWNER, example(schedule="*/5 * * * *"), CFG)) != b.spec_hash(base)
    same = b.build_cronjob(OWNER, example(driftShare=0.9, window={"lookback": "1h", "minSamples": 5}), CFG)
    assert b.spec_hash(same) == b.spec_hash(base)
    patch = b.cronjob_patch(suspended)
    assert patch["spec"]["suspend"] is True
    assert patch["metadata"]["annotations"][b.SPEC_HASH_ANNOTATION] == b.spec_hash(suspended)


def test_the_checks_role_allows_one_write_the_status_of_its_own_monitor() -> None:
    role = b.build_role(OWNER, example())
    rules = role["rules"]
    writes = [
        (r["resources"], r["resourceNames"]) for r in rules if set(r["verbs"]) - {"get", "list", "watch"}
    ]
    assert writes == [(["driftmonitors/status"], ["breast-cancer"])]
    assert all(r.get("resourceNames") for r in rules)  # never a whole resource type
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    assert {tuple(r["resources"]): r["resourceNames"] for r in rules} == {
        ("driftmonitors",): ["breast-cancer"],
        ("driftmonitors/status",): ["breast-cancer"],
        ("modeldeployments",): ["breast-cancer"],
    }
    assert not any("secrets" in r["resources"] for r in rules)
    other = b.build_role(OWNER, example(deployment="other"))
    assert b.spec_hash(other) != b.spec_hash(role)
    binding = b.build_role_binding(OWNER)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "breast-cancer-drift-check", "namespace": "team-a"}
    ]
    kinds = [m["kind"] for m in b.build_children(OWNER, example(), CFG)]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "CronJob"]


def test_long_names_stay_within_kubernetes_limits_and_distinct() -> None:
    long = Owner("kubeloop.io/v1alpha1", "DriftMonitor", "ns", "m" * 63, "u", 1)
    other = Owner("kubeloop.io/v1alpha1", "DriftMonitor", "ns", "m" * 62 + "n", "v", 1)
    assert len(b.cronjob_name(long.name)) <= 52
    assert b.cronjob_name(long.name) != b.cronjob_name(other.name)
    assert len(b.checker_name(long.name)) <= 63


def test_the_retrain_is_the_templates_trainingjob_owned_by_the_monitor() -> None:
    template = yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())["spec"]
    spec = example(retrain={"template": template, "cooldown": "1h", "maxPerDay": 3})
    source = b.retrain_spec_from_template(spec)
    assert source is not None
    record = LastRetrain(
        training_job="breast-cancer-retrain-20250304-120000",
        time="2025-03-04T12:00:03Z",
        check_time="2025-03-04T12:00:00Z",
        state="Pending",
    )
    tj = b.build_retrain(
        OWNER, source, record, "s3://kubeloop/drift/team-a/breast-cancer/20250304T120000Z.json"
    )
    assert (tj["apiVersion"], tj["kind"]) == ("kubeloop.io/v1alpha1", "TrainingJob")
    meta = tj["metadata"]
    assert meta["name"] == "breast-cancer-retrain-20250304-120000"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "name": "breast-cancer",
            "uid": "dm-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"][Labels.OWNER_KIND] == "driftmonitor"
    assert meta["labels"][Labels.OWNER_UID] == "dm-uid"
    assert meta["annotations"][b.CHECK_TIME_ANNOTATION] == "2025-03-04T12:00:00Z"
    assert meta["annotations"][b.REPORT_ANNOTATION].endswith("20250304T120000Z.json")
    parsed = TrainingJob.from_manifest(tj)  # a valid TrainingJob, the template's spec
    assert parsed.spec.dataset.uri == template["dataset"]["uri"]
    assert parsed.spec.registry.model_name == "breast-cancer"
    assert retrain_name("breast-cancer", datetime(2025, 3, 4, 12, 0)) == meta["name"]


def test_a_reference_is_not_a_template() -> None:
    assert b.retrain_spec_from_template(example()) is None


def test_the_memory_request_the_operator_setting_is_checked_against_is_the_cronjob_s() -> None:
    from kubeloop_operator.reconcile.driftmonitor import check_pod_config
    from kubeloop_operator.settings import OperatorSettings

    cfg = check_pod_config(OperatorSettings(drift_check_memory_limit="256Mi"))
    pod = b.build_cronjob(OWNER, example(), cfg)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["memory"] == b.CHECK_MEMORY_REQUEST
    assert resources["limits"]["memory"] == "256Mi"

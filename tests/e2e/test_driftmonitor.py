"""DriftMonitor on the local cluster (issue #14, acceptance 4, and the check's identity): the operator
as a process, the check as a real pod of the monitor's CronJob (a Job made from its template, as
``kubectl create job --from=cronjob/…`` does), prediction logs and baselines in MinIO.

Bad inputs, each a clear condition and no crash: a missing baseline, prediction-log parts with a
feature missing, of the wrong type, or corrupt (skipped and counted, the rest scored), and a
ModelDeployment that does not exist.

The ModelDeployments here are suspended and pinned to a file that does not exist, so no server runs;
their status (the resolved version) is set by the test, as the ModelDeployment reconciler sets it.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeloop_operator import k8s
from kubeloop_operator.builders.driftmonitor import checker_name, cronjob_name

from kubeloop.contracts import (
    PREDICTION_LOG_MODEL_VERSION,
    PREDICTION_LOG_PREDICTION,
    PREDICTION_LOG_TIMESTAMP,
    ObjectRef,
    model_baseline,
    model_onnx,
    predictions_part,
)
from kubeloop.drift import build_baseline
from kubeloop.storage import S3Config
from kubeloop.storage.s3 import S3Store

from .conftest import Kl, OperatorProcess

pytestmark = pytest.mark.e2e

NEVER = "0 0 1 1 *"  # checks run only when the test makes a Job from the CronJob


def store_of(kl: Kl) -> S3Store:
    m = kl.platform.minio
    return S3Store(S3Config(endpoint=m.url, access_key=m.access_key, secret_key=m.secret_key))


def breast_cancer() -> dict[str, np.ndarray[Any, Any]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    return {str(c): frame[c].to_numpy(dtype=np.float64) for c in frame.columns}


def log_part(
    columns: dict[str, np.ndarray[Any, Any]], rows: int, version: str, *, shift: float = 1.0, seed: int = 0
) -> pa.Table:
    """Prediction-log rows as the server writes them: sampled rows of the table (features scaled by
    ``shift``), then the timestamp, version and prediction columns."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(next(iter(columns.values()))), rows)
    data: dict[str, Any] = {name: pa.array(col[idx] * shift) for name, col in columns.items()}
    now = datetime.now(UTC)
    data[PREDICTION_LOG_TIMESTAMP] = pa.array([now] * rows, type=pa.timestamp("us", tz="UTC"))
    data[PREDICTION_LOG_MODEL_VERSION] = pa.array([version] * rows)
    data[PREDICTION_LOG_PREDICTION] = pa.array(["1"] * rows)
    return pa.table(data)


def put_part(store: S3Store, ns: str, md: str, version: str, table: pa.Table | bytes, name: str) -> ObjectRef:
    ref = predictions_part(ns, md, version, datetime.now(UTC).date(), name)
    if isinstance(table, bytes):
        blob = table
    else:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        blob = buf.getvalue()
    store.put(ref, blob, "application/vnd.apache.parquet")
    return ref


def model_deployment(kl: Kl, name: str, model: str, version: str) -> None:
    """A suspended ModelDeployment whose status says it serves ``model`` ``version`` (as the
    ModelDeployment reconciler pins it)."""
    uri = model_onnx(model, int(version)).uri
    kl.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"uri": uri}, "replicas": 1, "suspend": True},
        }
    )
    pin_version(kl, name, model, version)


def pin_version(kl: Kl, name: str, model: str, version: str) -> None:
    kl.kube.patch_status(
        k8s.MODELDEPLOYMENT,
        kl.namespace,
        name,
        {"modelVersion": version, "modelUri": model_onnx(model, int(version)).uri},
    )


def drift_monitor(name: str, deployment: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftMonitor",
        "metadata": {"name": name},
        "spec": {
            "deployment": deployment,
            "schedule": NEVER,
            "window": {"lookback": "1h", "minSamples": 200},
            **spec,
        },
    }


def run_check_now(kl: Kl, monitor: str, suffix: str) -> str:
    """A Job from the monitor's CronJob template, as ``kubectl create job --from=cronjob/…`` makes."""
    cron_name = cronjob_name(monitor)
    cron = kl.wait(f"CronJob {cron_name}", lambda: kl.get(cron_name, k8s.CRONJOB), 60)
    tmpl = cron["spec"]["jobTemplate"]
    name = f"{cron_name}-{suffix}"[:63]
    kl.kube.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": kl.namespace,
                "labels": dict(tmpl["metadata"].get("labels") or {}),
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "CronJob",
                        "name": cron_name,
                        "uid": cron["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": tmpl["spec"],
        }
    )
    return name


def wait_job(kl: Kl, name: str, timeout: float) -> dict[str, Any]:
    try:
        return kl.wait(f"check Job {name}", lambda: job_done(kl, name), timeout)
    except AssertionError as e:
        pods = kl.objects(k8s.POD, f"batch.kubernetes.io/job-name={name}")
        detail = [json.dumps(p.get("status"), indent=1)[:3000] for p in pods]
        logs = [kl.kubectl("logs", p["metadata"]["name"], check=False)[-3000:] for p in pods]
        job = json.dumps((kl.get(name, k8s.JOB) or {}).get("status"), indent=1)
        raise AssertionError(f"{e}\njob: {job}\npods: {detail}\nlogs: {logs}") from None


def job_done(kl: Kl, name: str) -> dict[str, Any] | None:
    job = kl.get(name, k8s.JOB) or {}
    st = job.get("status") or {}
    return st if st.get("succeeded") or st.get("failed") else None


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def can_i(kl: Kl, sa: str, *args: str) -> bool:
    out = kl.kubectl("auth", "can-i", f"--as=system:serviceaccount:{kl.namespace}:{sa}", *args, check=False)
    return out.strip() == "yes"


def test_bad_inputs_are_conditions_the_check_may_only_write_its_status_and_suspend_stops_it(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    kubeloop_operator.start()
    store = store_of(kl)
    ns = kl.namespace
    model = f"dm-{ns}"
    cols = breast_cancer()
    store.put(model_baseline(model, 1), build_baseline(cols).to_json().encode(), "application/json")
    good = [
        put_part(store, ns, "md-good", "1", log_part(cols, 300, "1", seed=s), f"good-{s}") for s in (1, 2)
    ]
    corrupt = put_part(store, ns, "md-good", "1", b"PAR1 not a parquet file PAR1", "corrupt")
    t = log_part(cols, 100, "1", seed=3)
    missing = put_part(store, ns, "md-good", "1", t.drop_columns(["mean radius"]), "missing")
    wrong = put_part(
        store,
        ns,
        "md-good",
        "1",
        t.set_column(t.schema.get_field_index("worst area"), "worst area", pa.array(["big"] * 100)),
        "wrong",
    )
    model_deployment(kl, "md-good", model, "1")
    model_deployment(kl, "md-nobase", model, "2")  # version 2 has no baseline
    monitors = {
        "dm-good": drift_monitor("dm-good", "md-good"),
        "dm-nobase": drift_monitor("dm-nobase", "md-nobase"),
        "dm-nomd": drift_monitor("dm-nomd", "md-absent"),
    }
    for m in monitors.values():
        kl.apply(m)
    kl.apply(drift_monitor("dm-sus", "md-a", schedule="*/5 * * * *"))
    for name in monitors:
        kl.wait(
            f"{name} scheduled",
            lambda name=name: cond(kl.status(name, k8s.DRIFTMONITOR), "Scheduled").get("status") == "True",
            60,
        )
    pin_version(kl, "md-good", model, "1")
    pin_version(kl, "md-nobase", model, "2")
    t0 = time.monotonic()
    jobs = {name: run_check_now(kl, name, kl.token) for name in monitors}
    for name, job in jobs.items():
        st = wait_job(kl, job, 180)
        assert st.get("succeeded") == 1, f"{name}: the check exited non-zero: {st}"
    checked = {
        name: kl.wait(
            f"{name} checked",
            lambda name=name: (
                kl.status(name, k8s.DRIFTMONITOR).get("lastCheckTime") and kl.status(name, k8s.DRIFTMONITOR)
            ),
            30,
        )
        for name in monitors
    }
    print(f"RESULT e2e_driftcheck_bad_inputs_seconds={time.monotonic() - t0:.1f}")

    # skipped and counted, the rest scored
    st = checked["dm-good"]
    r = st["lastResult"]
    assert (r["samples"], r["parts"], r["skippedParts"]) == (600, 2, 3), r
    assert r["insufficientData"] is False
    assert (cond(st, "Checked")["status"], cond(st, "Checked")["reason"]) == ("True", "Scored")
    inputs = cond(st, "InputsValid")
    assert (inputs["status"], inputs["reason"]) == ("False", "PartsSkipped")
    for ref, what in (
        (corrupt, "not a readable Parquet file"),
        (missing, "'mean radius'"),
        (wrong, "'worst area'"),
    ):
        assert ref.uri in inputs["message"], inputs["message"]
        assert what in inputs["message"], inputs["message"]
    report = json.loads(store.get(ObjectRef.parse(r["reportUri"])))
    assert report["result"]["samples"] == 600
    assert len(report["parts"]["skipped"]) == 3
    assert all(g.uri not in inputs["message"] for g in good)

    # a missing baseline
    st = checked["dm-nobase"]
    c = cond(st, "Checked")
    assert (c["status"], c["reason"]) == ("False", "BaselineNotFound")
    assert f"models/{model}/2/baseline.json" in c["message"]
    assert "lastResult" not in st
    assert st["history"][-1]["reason"] == "BaselineNotFound"

    # a ModelDeployment that does not exist: the check says so, and so does the operator
    st = checked["dm-nomd"]
    assert (cond(st, "Checked")["status"], cond(st, "Checked")["reason"]) == (
        "False",
        "ModelDeploymentNotFound",
    )
    st = kl.wait(
        "dm-nomd DeploymentFound=False",
        lambda: (
            (s := kl.status("dm-nomd", k8s.DRIFTMONITOR))
            and cond(s, "DeploymentFound").get("status") == "False"
            and s
        ),
        30,
    )
    assert cond(st, "DeploymentFound")["reason"] == "ModelDeploymentNotFound"
    assert "md-absent" in cond(st, "DeploymentFound")["message"]
    kl.wait(
        "dm-nomd phase Failed", lambda: kl.status("dm-nomd", k8s.DRIFTMONITOR).get("phase") == "Failed", 30
    )
    assert any(e["reason"] == "ModelDeploymentNotFound" for e in kl.events("dm-nomd", "DriftMonitor"))

    # nothing crashed: every check exited 0, the operator is alive and logged no traceback
    assert kubeloop_operator.running
    assert kubeloop_operator.healthy()
    assert "Traceback" not in kubeloop_operator.log()

    # the check's identity: the status of its own monitor, and reading what it needs; nothing else
    sa = checker_name("dm-good")
    assert can_i(kl, sa, "patch", "driftmonitors.kubeloop.io/dm-good", "--subresource=status")
    assert can_i(kl, sa, "get", "modeldeployments.kubeloop.io/md-good")
    assert not can_i(kl, sa, "patch", "driftmonitors.kubeloop.io/dm-good")  # its spec
    assert not can_i(kl, sa, "patch", "driftmonitors.kubeloop.io/dm-nobase", "--subresource=status")
    assert not can_i(kl, sa, "get", "modeldeployments.kubeloop.io/md-nobase")
    assert not can_i(kl, sa, "create", "trainingjobs.kubeloop.io")
    assert not can_i(kl, sa, "get", "secrets")
    assert not can_i(kl, sa, "list", "driftmonitors.kubeloop.io")

    # the metrics carry the latest scores, one set per monitor
    metrics = kubeloop_operator.metrics()
    assert f'kubeloop_operator_drift_samples{{monitor="dm-good",namespace="{ns}"}} 600.0' in metrics

    # suspend stops the checks (the CronJob is suspended); a changed deployment follows into the Role,
    # a changed schedule into the CronJob
    cron_name = cronjob_name("dm-sus")
    cron = kl.wait("CronJob", lambda: kl.get(cron_name, k8s.CRONJOB), 60)
    assert cron["spec"]["suspend"] is False
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    kl.patch_spec("dm-sus", {"suspend": True, "deployment": "md-b"}, k8s.DRIFTMONITOR)
    kl.wait(
        "CronJob suspended",
        lambda: (kl.get(cron_name, k8s.CRONJOB) or {}).get("spec", {}).get("suspend") is True,
        30,
    )
    st = kl.wait(
        "phase Suspended",
        lambda: (s := kl.status("dm-sus", k8s.DRIFTMONITOR)).get("phase") == "Suspended" and s,
        30,
    )
    assert cond(st, "Scheduled")["reason"] == "Suspended"
    kl.wait(
        "Role follows spec.deployment",
        lambda: can_i(kl, checker_name("dm-sus"), "get", "modeldeployments.kubeloop.io/md-b"),
        60,
    )
    assert not can_i(kl, checker_name("dm-sus"), "get", "modeldeployments.kubeloop.io/md-a")
    kl.patch_spec("dm-sus", {"suspend": False, "schedule": "*/7 * * * *"}, k8s.DRIFTMONITOR)
    kl.wait(
        "CronJob resumed with the new schedule",
        lambda: (kl.get(cron_name, k8s.CRONJOB) or {}).get("spec", {}).get("schedule") == "*/7 * * * *",
        30,
    )
    assert kl.get(cron_name, k8s.CRONJOB)["spec"]["suspend"] is False  # type: ignore[index]

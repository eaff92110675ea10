"""The whole loop on the local cluster, no manual step (issue #14, acceptance 1): a TrainingJob makes
the champion; a ModelDeployment follows it; a DriftMonitor checks every minute (its CronJob's pods,
scheduled by the controller manager); unshifted traffic -> no drift; shifted traffic (and its labelled
feedback appended under the dataset prefix) -> drift -> exactly one retraining TrainingJob -> a new
version promoted -> the ModelDeployment serves it -> the next check scores against its baseline.

Traffic goes only to the Service's ClusterIP. Timings are printed as a RESULT line (``-s``).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import numpy as np
import pytest
from kubeloop_operator import k8s

from kubeloop.contracts import Labels

from .conftest import Kl, OperatorProcess
from .serving import is_ready, put_object, service_ip, wait_md

pytestmark = pytest.mark.e2e

QUICK = {"epochs": 4, "batchSize": 64, "learningRate": 0.003, "earlyStopping": {"enabled": False}, "seed": 7}
PROMOTE = {"metric": "accuracy", "threshold": 0.5, "alias": "champion", "requireImprovement": False}
SHIFT = 3.0
ROWS = 5000  # the server writes a prediction-log part as soon as this many rows are buffered


def breast_cancer() -> Any:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame


def send(ip: str, frame: Any, rows: int, *, shift: float = 1.0, seed: int = 0) -> list[str]:
    """``rows`` records sampled from ``frame`` (features times ``shift``) through /forward_batch, in
    batches of 500; returns the model versions that answered."""
    rng = np.random.default_rng(seed)
    feats = frame.drop(columns=["target"])
    versions: list[str] = []
    for start in range(0, rows, 500):
        idx = rng.integers(0, len(feats), min(500, rows - start))
        records = [{k: float(v) * shift for k, v in row.items()} for _, row in feats.iloc[idx].iterrows()]
        conn = http.client.HTTPConnection(ip, 8080, timeout=30)
        try:
            conn.request(
                "POST",
                "/forward_batch",
                body=json.dumps(records),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (resp.status, body[:300])
            versions.append(str(json.loads(body).get("model_version")))
        finally:
            conn.close()
    return versions


def retrains(kl: Kl, monitor: str) -> list[dict[str, Any]]:
    uid = kl.get(monitor, k8s.DRIFTMONITOR)["metadata"]["uid"]  # type: ignore[index]
    return kl.objects(k8s.TRAININGJOB, f"{Labels.OWNER_UID}={uid}")


def test_drift_retrains_promotes_and_rolls_out_with_no_human(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    kubeloop_operator.start()
    marks = {"start": time.monotonic()}
    frame = breast_cancer()
    prefix = f"datasets/{kl.namespace}/loop/"
    put_object(kl, prefix + "base.csv", frame.to_csv(index=False).encode())
    dataset = f"s3://{kl.platform.minio.bucket}/{prefix}"

    # --- the champion, and a ModelDeployment following it
    tj = kl.training_job("bc", training=QUICK, promotion=PROMOTE, resources={"requests": {"cpu": "100m"}})
    tj["spec"]["dataset"]["uri"] = dataset
    model = tj["spec"]["registry"]["modelName"]
    kl.apply(tj)
    st = kl.wait_phase("bc", "Succeeded", 300)
    assert st["promoted"] is True
    v1 = str(st["modelVersion"])
    marks["trained"] = time.monotonic()
    kl.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "bc"},
            "spec": {
                "model": {"name": model, "alias": "champion"},
                "replicas": 1,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                "predictionLogging": {"enabled": True, "sampleRate": 1.0},
            },
        }
    )
    wait_md(kl, "bc", f"Ready on version {v1}", lambda s: is_ready(s) and s.get("modelVersion") == v1, 180)
    marks["serving"] = time.monotonic()

    # --- the monitor: a check every minute, retraining from the same spec on the dataset prefix
    template = dict(tj["spec"])
    kl.apply(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "DriftMonitor",
            "metadata": {"name": "bc"},
            "spec": {
                "deployment": "bc",
                "schedule": "* * * * *",
                "window": {"lookback": "1h", "minSamples": 500},
                "retrain": {"template": template, "cooldown": "1h", "maxPerDay": 2},
            },
        }
    )
    ip = service_ip(kl, "bc")

    def result(check: Any) -> Any:
        def poll() -> dict[str, Any] | None:
            r = kl.status("bc", k8s.DRIFTMONITOR).get("lastResult") or {}
            return r if check(r) else None

        return poll

    # --- unshifted traffic: a check finds no drift
    assert set(send(ip, frame, ROWS, seed=1)) == {v1}
    r = kl.wait(
        "a check of the unshifted traffic",
        result(lambda r: r.get("modelVersion") == v1 and r.get("samples", 0) >= ROWS),
        150,
        interval=1,
    )
    assert r["drifted"] is False, r
    assert not retrains(kl, "bc")
    marks["no_drift"] = time.monotonic()

    # --- shifted traffic, and its labelled feedback appended under the dataset prefix
    assert set(send(ip, frame, ROWS, shift=SHIFT, seed=2)) == {v1}
    feedback = frame.copy()
    feedback[feedback.columns.drop("target")] *= SHIFT
    put_object(kl, prefix + "feedback-1.csv", feedback.to_csv(index=False).encode())
    r = kl.wait(
        "a check of the shifted traffic",
        result(lambda r: r.get("modelVersion") == v1 and r.get("samples", 0) >= 2 * ROWS),
        150,
        interval=1,
    )
    assert r["drifted"] is True, r
    drift_time, drift_share = r["time"], r["share"]
    marks["drift"] = time.monotonic()

    # --- exactly one retrain, promoted, rolled out
    tjs = kl.wait("the retraining TrainingJob", lambda: retrains(kl, "bc"), 60)
    assert len(tjs) == 1
    name = tjs[0]["metadata"]["name"]
    st = kl.wait_phase(name, "Succeeded", 300)
    assert st["promoted"] is True
    v2 = str(st["modelVersion"])
    assert v2 != v1
    marks["retrained"] = time.monotonic()
    wait_md(kl, "bc", f"Ready on version {v2}", lambda s: is_ready(s) and s.get("modelVersion") == v2, 180)
    marks["rolled_out"] = time.monotonic()
    dm = kl.status("bc", k8s.DRIFTMONITOR)
    assert dm["lastRetrain"]["trainingJob"] == name
    assert dm["lastRetrain"]["checkTime"] == drift_time  # the retrain is the drifted check's

    # --- the next check scores the new version's logs against the new version's baseline
    assert set(send(ip, frame, ROWS, shift=SHIFT, seed=3)) == {v2}
    r = kl.wait(
        f"a check of version {v2}",
        result(lambda r: r.get("modelVersion") == v2 and r.get("samples", 0) >= ROWS),
        150,
        interval=1,
    )
    assert r["baselineUri"] == f"s3://kubeloop/models/{model}/{v2}/baseline.json"
    marks["rechecked"] = time.monotonic()
    assert [t["metadata"]["name"] for t in retrains(kl, "bc")] == [name]  # still exactly one
    dm = kl.status("bc", k8s.DRIFTMONITOR)
    assert dm["lastRetrain"]["state"] == "Succeeded"
    assert dm["lastRetrain"]["modelVersion"] == int(v2)
    t0 = marks["start"]
    steps = " ".join(f"{k}_s={v - t0:.0f}" for k, v in marks.items() if k != "start")
    print(
        f"RESULT e2e_loop {steps} v1={v1} v2={v2} drift_share={drift_share:.2f} "
        f"new_baseline_drifted={r['drifted']} new_baseline_share={r['share']:.2f}"
    )

"""ModelDeployment on the local cluster, end to end (issue #13): the real API server and
controller-manager (Deployments, ReplicaSets, EndpointSlices, the HPA controller), the real server as
pods under the node agent, MinIO and MLflow, and the operator as a process.

Traffic goes only to the Services' ClusterIPs (the node agent's nat rules). Figures are printed as
``RESULT …`` lines (run with ``-s`` to see them).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from kubeloop_operator import k8s
from kubeloop_testing import foreign_models as fm

from .conftest import Kl, OperatorProcess
from .serving import (
    cond,
    is_ready,
    md_status,
    model_deployment,
    put_object,
    server_pods,
    service_ip,
    wait_md,
)

pytestmark = pytest.mark.e2e

MD = k8s.MODELDEPLOYMENT


def _oip_infer(ip: str, model: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same inference over OIP REST and OIP gRPC, through the Service."""
    dt = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    with httpclient.InferenceServerClient(url=f"{ip}:8080") as http:
        meta = http.get_model_metadata(model)
        outs = [o["name"] for o in meta["outputs"]]
        inputs = []
        for name, arr in feeds.items():
            inp = httpclient.InferInput(name, list(arr.shape), dt[arr.dtype])
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        res = http.infer(model, inputs)
        rest = {o: res.as_numpy(o) for o in outs}
    grpc = grpcclient.InferenceServerClient(url=f"{ip}:8081")
    try:
        ginputs = []
        for name, arr in feeds.items():
            inp = grpcclient.InferInput(name, list(arr.shape), dt[arr.dtype])
            inp.set_data_from_numpy(arr)
            ginputs.append(inp)
        gres = grpc.infer(model, ginputs)
        grpc_out = {o: gres.as_numpy(o) for o in outs}
    finally:
        grpc.close()
    return rest, grpc_out


def test_failures_are_named_foreign_onnx_answers_oip_and_scale_hpa_suspend_work(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    """Acceptance 4 (a bad URI, a corrupt ONNX file: Ready False + lastFailure within 60 s), 5 (a
    foreign ONNX file through model.uri answers OIP REST and gRPC as onnxruntime does) and 6
    (kubectl scale, an HPA from autoscaling reading the scale subresource, suspend)."""
    kubeloop_operator.start()
    base = f"tests/{kl.namespace}"
    foreign = fm.packed_mlp(n_features=8)
    foreign_uri = put_object(kl, f"{base}/foreign.onnx", foreign)
    corrupt_uri = put_object(kl, f"{base}/corrupt.onnx", b"not an ONNX graph\n" * 64)
    missing_uri = f"s3://{kl.platform.minio.bucket}/{base}/missing.onnx"
    t0 = time.monotonic()
    kl.apply(model_deployment("bad-uri", {"uri": missing_uri}))
    kl.apply(model_deployment("corrupt", {"uri": corrupt_uri}))
    kl.apply(model_deployment("foreign", {"uri": foreign_uri}))

    # --- failures: named, within 60 s, never Progressing forever
    seconds: dict[str, float] = {}
    for name, reason in (("bad-uri", "ModelNotFound"), ("corrupt", "ModelLoadFailed")):
        st = wait_md(
            kl,
            name,
            f"Ready False with lastFailure {reason}",
            lambda s, r=reason: (
                (s.get("lastFailure") or {}).get("reason") == r  # type: ignore[misc]
                and cond(s, "Ready").get("status") == "False"
            ),
            60 - (time.monotonic() - t0),
        )
        seconds[name] = time.monotonic() - t0
        assert st["phase"] == "Failed"
        assert cond(st, "Ready")["reason"] == reason
        assert cond(st, "Progressing")["status"] == "False"
        assert st["lastFailure"]["time"]
    bad = md_status(kl, "bad-uri")
    assert missing_uri in bad["lastFailure"]["message"]
    assert cond(bad, "ModelResolved")["status"] == "False"
    assert not kl.objects(k8s.DEPLOYMENT, "kubeloop.io/owner-name=bad-uri"), "a missing model got pods"
    corrupt = md_status(kl, "corrupt")
    assert "corrupt" in corrupt["lastFailure"]["message"] or "ONNX" in corrupt["lastFailure"]["message"]
    assert corrupt["lastFailure"]["track"] == "stable"
    assert corrupt["lastFailure"]["pod"]
    reasons = {e["reason"] for e in kl.events("corrupt", "ModelDeployment")}
    assert "ModelLoadFailed" in reasons, reasons
    # Its resync and alias poll are the operator's own loop, not kopf timers: no finalizer (kopf puts one
    # on every object it runs timers for).
    assert not ((kl.get("corrupt", k8s.MODELDEPLOYMENT) or {}).get("metadata") or {}).get("finalizers")
    print(f"RESULT md_failure_seconds bad_uri={seconds['bad-uri']:.1f} corrupt_onnx={seconds['corrupt']:.1f}")

    # --- a foreign ONNX file answers OIP, REST and gRPC, as onnxruntime does
    st = wait_md(kl, "foreign", "Ready", is_ready, 120)
    digest = "sha256:" + hashlib.sha256(foreign).hexdigest()
    assert st["modelDigest"] == digest
    assert st["modelUri"] == foreign_uri
    assert st["modelVersion"] == digest[7:19]
    assert st["modelName"] == "foreign"
    assert st["url"] == f"http://foreign.{kl.namespace}.svc:8080"
    assert st["grpcUrl"] == f"foreign.{kl.namespace}.svc:8081"
    ip = service_ip(kl, "foreign")
    feeds = fm.packed_mlp_inputs(7, n_features=8)
    rest, grpc_out = _oip_infer(ip, "foreign", feeds)
    expected = fm.ort_outputs(foreign, feeds)
    for name, arr in expected.items():
        np.testing.assert_array_equal(rest[name], arr)
        np.testing.assert_array_equal(grpc_out[name], arr)

    # --- kubectl scale (the scale subresource)
    kl.kubectl("scale", "md/foreign", "--replicas=2")
    st = wait_md(
        kl,
        "foreign",
        "2 ready replicas after kubectl scale",
        lambda s: is_ready(s) and s.get("readyReplicas") == 2,
        120,
    )
    assert st["replicas"] == 2
    assert st["stable"]["replicas"] == 2
    assert kl.kubectl("get", "md", "foreign", "-o", "jsonpath={.spec.replicas}").strip() == "2"

    # --- an HPA from autoscaling, acting on the ModelDeployment's scale subresource
    kl.patch_spec("foreign", {"autoscaling": {"minReplicas": 2, "maxReplicas": 3}}, MD)
    hpa = kl.wait("the HPA", lambda: kl.get("foreign", k8s.HPA), 30)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "foreign",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 3)
    # The HPA controller reads the scale subresource (status.replicas and status.selector).
    hpa = kl.wait(
        "the HPA controller to read the scale subresource",
        lambda: (
            (h := kl.get("foreign", k8s.HPA)) and (h.get("status") or {}).get("currentReplicas") == 2 and h
        ),
        90,
    )

    # --- suspend: 0 pods, and the phase says so; resume
    kl.patch_spec("foreign", {"suspend": True}, MD)
    st = wait_md(
        kl, "foreign", "Suspended", lambda s: s.get("phase") == "Suspended" and s.get("replicas") == 0, 60
    )
    assert cond(st, "Ready")["reason"] == "Suspended"
    kl.wait("no server pods", lambda: not server_pods(kl, "foreign"), 90)
    assert kl.kubectl("get", "md", "foreign").splitlines()[1].split()[1] == "Suspended"
    kl.patch_spec("foreign", {"suspend": False, "autoscaling": None}, MD)
    wait_md(kl, "foreign", "Ready again", lambda s: is_ready(s) and s.get("readyReplicas") == 2, 120)
    kl.wait("the HPA to go", lambda: kl.get("foreign", k8s.HPA) is None, 30)


# --- acceptance 1, 2 and 4 (Ready never lies): an alias that moves -------------------------------------

QUICK = {"epochs": 3, "batchSize": 64, "learningRate": 0.003, "earlyStopping": {"enabled": False}}
PROMOTE = {"metric": "accuracy", "threshold": 0.5, "alias": "champion", "requireImprovement": False}
TJ_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}


def _breast_cancer_rows(n: int) -> tuple[list[dict[str, float]], dict[str, np.ndarray]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).iloc[:n]
    records = [{k: float(v) for k, v in row.items()} for _, row in frame.iterrows()]
    feeds = {c: frame[[c]].to_numpy(dtype=np.float32) for c in frame.columns}
    return records, feeds


def _post(ip: str, path: str, body: Any) -> Any:
    import http.client
    import json

    conn = http.client.HTTPConnection(ip, 8080, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, (resp.status, data[:300])
        return json.loads(data)
    finally:
        conn.close()


def test_an_alias_moved_by_a_trainingjob_rolls_out_under_load_without_a_failed_request(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    """Acceptance 1 (a TrainingJob promotes champion; the example ModelDeployment reaches Ready and
    its Service answers /forward, OIP REST and OIP gRPC as onnxruntime does on the registered file;
    status shows version, URI and digest), 2 (a second TrainingJob moves the alias: the deployment
    rolls within 30 s of the move, with 0 failed requests among >= 1,000 sent at c=8 during the
    rollout, each naming the version that answered) and 4 (Ready sampled every second never lies)."""
    import json

    import yaml

    from .conftest import ROOT
    from .serving import Load, Sampler, alias_version, get_object

    # Both replicas of the new version start at once (maxSurge 100 %; the default, 25 %, rolls them
    # one by one: about 30 s for two on a busy 2-core machine). No request may fail either way: old
    # pods go only after new ones are Ready (maxUnavailable 0).
    kubeloop_operator.start(rollout_max_surge="100%")
    t_start = time.monotonic()
    tj1 = kl.training_job(
        "champion-1", training={**QUICK, "seed": 7}, promotion=PROMOTE, resources=TJ_RESOURCES
    )
    model = tj1["spec"]["registry"]["modelName"]
    kl.apply(tj1)
    st1 = kl.wait_phase("champion-1", "Succeeded", 300)
    assert st1["promoted"] is True
    assert st1["modelVersion"] == 1
    t_trained = time.monotonic()

    md = yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
    md["metadata"] = {"name": "breast-cancer"}
    md["spec"]["model"]["name"] = model
    md["spec"]["resources"] = {"requests": {"cpu": "50m", "memory": "128Mi"}}
    kl.apply(md)
    st = wait_md(
        kl, "breast-cancer", "Ready on version 1", lambda s: is_ready(s) and s.get("modelVersion") == "1", 180
    )
    t_ready1 = time.monotonic()
    onnx = get_object(kl, st["modelUri"])
    assert st["modelUri"] == st1["modelUri"]
    assert st["modelDigest"] == "sha256:" + hashlib.sha256(onnx).hexdigest()
    assert st["baselineUri"] == st1["baselineUri"]
    assert st["stable"]["replicas"] == 2
    assert st["readyReplicas"] == 2
    pods = server_pods(kl, "breast-cancer")
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert (env["KUBELOOP_SERVER_MODEL_VERSION"], env["KUBELOOP_SERVER_MODEL_URI"]) == ("1", st["modelUri"])
    assert env["KUBELOOP_SERVER_MODEL_DIGEST"] == st["modelDigest"]

    # --- predictions through the Service equal in-process onnxruntime on the registered file
    ip = service_ip(kl, "breast-cancer")
    records, feeds = _breast_cancer_rows(8)
    expected = fm.ort_outputs(onnx, feeds)
    for rec, probs in zip(records, expected["probabilities"], strict=True):
        got = _post(ip, "/forward", rec)
        assert got["model_version"] == "1"
        np.testing.assert_allclose(list(got["probabilities"].values()), probs, rtol=1e-6, atol=1e-7)
    rest, grpc_out = _oip_infer(ip, model, feeds)
    for out in (rest, grpc_out):
        np.testing.assert_array_equal(out["probabilities"], expected["probabilities"])
        assert [x.decode() if isinstance(x, bytes) else x for x in out["label"].tolist()] == expected[
            "label"
        ].tolist()

    # --- a second TrainingJob moves the alias while the Service is under load
    sampler = Sampler(kl, "breast-cancer").start()
    # The load starts before the second TrainingJob exists: a quick training can finish, move the alias and
    # see the rollout through within seconds, and a load started later (it once began at the training's
    # 60 %) met only the rollout's end. At least 1,000 requests must fall between the alias move and Ready
    # on the new version, which took 2.1 s in one CI run: 800/s leaves room.
    load = Load(
        ip,
        json.dumps(records[0]).encode(),
        concurrency=8,
        max_requests=400_000,
        max_seconds=420,
        max_rate=800.0,
    ).start()
    try:
        tj2 = kl.training_job(
            "champion-2", training={**QUICK, "seed": 8}, promotion=PROMOTE, resources=TJ_RESOURCES
        )
        tj2["spec"]["registry"]["modelName"] = model
        kl.apply(tj2)
        kl.wait("the alias to move", lambda: alias_version(kl, model, "champion") == 2, 300, 0.25)
        t_move = time.monotonic()
        wait_md(kl, "breast-cancer", "version 2 pinned", lambda s: s.get("modelVersion") == "2", 60)
        t_pinned = time.monotonic()
        st = wait_md(
            kl,
            "breast-cancer",
            "Ready on version 2",
            lambda s: is_ready(s) and s["stable"].get("modelVersion") == "2",
            180,
        )
        t_ready2 = time.monotonic()
        # at least 1,000 requests during the rollout (the alias move to Ready)
        in_window = [r for r in load.snapshot() if t_move <= r.started <= t_ready2]
        time.sleep(3)
    finally:
        load.stop()
        sampler.stop()
    replies = load.snapshot()
    failures = [r for r in replies if r.status != 200]
    versions = load.versions()
    after = load.versions(since=t_ready2 + 2)
    rollout_versions = load.versions(since=t_move, until=t_ready2)
    print(
        f"RESULT md_rollout requests={len(replies)} during_rollout={len(in_window)} failed={len(failures)} "
        f"rate_per_s={load.rate():.0f} "
        f"versions={dict(versions)} during_rollout_versions={dict(rollout_versions)} after_ready={dict(after)} "
        f"alias_move_to_pinned_s={t_pinned - t_move:.1f} alias_move_to_ready_s={t_ready2 - t_move:.1f} "
        f"train1_s={t_trained - t_start:.0f} md_ready1_s={t_ready1 - t_trained:.1f} "
        f"sampler_samples={sampler.samples} ready_samples={sampler.ready_samples} "
        f"mismatches={len(sampler.mismatches)} lies={len(sampler.lies)}"
    )
    assert failures == [], load.explain(failures)
    assert set(versions) <= {"1", "2"}, versions
    assert set(after) == {"2"}, after
    assert len(in_window) >= 1000, f"only {len(in_window)} requests during the rollout"
    assert t_ready2 - t_move <= 30, f"rolled out {t_ready2 - t_move:.1f} s after the alias moved"
    assert sampler.ready_samples > 0
    assert sampler.lies == [], sampler.lies
    for m in sampler.mismatches:  # Ready read just before a pod change reached the operator: shown, not a lie
        print(f"sampler mismatch (one sample): {m}")
    assert st["modelUri"] != st1["modelUri"]
    assert st["modelDigest"] != "sha256:" + hashlib.sha256(onnx).hexdigest()
    reasons = [e["reason"] for e in kl.events("breast-cancer", "ModelDeployment")]
    assert reasons.count("RolloutStarted") >= 2, reasons
    assert "RolloutComplete" in reasons, reasons


# --- acceptance 3: a canary --------------------------------------------------------------------------


def test_a_canary_gets_its_share_a_failing_canary_gets_none_and_promotion_leaves_no_gap(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    """Acceptance 3: 25 % over 4 replicas splits 3 + 1; responses come from both versions in that
    proportion (the split is exact for 4 replicas; each connection picks a ready endpoint at random,
    so the tolerance is sampling noise: 4 sigma of a binomial); a canary whose model fails to load
    gets no traffic and is reported; promoting the canary by editing the spec rolls the stable track
    to it with no failed request."""
    import json

    from kubeloop_testing.onnx_models import mlp_model, random_records

    from .serving import Load, register_version

    # All replicas of a rollout at once (maxSurge 100 %): the promotion below rolls 4 replicas, and the
    # guarantee under test (no gap) comes from maxUnavailable 0 and readiness, whatever the surge.
    kubeloop_operator.start(rollout_max_surge="100%")
    model = f"canary-{kl.namespace}"[:63]
    v1 = register_version(kl, model, mlp_model(n_numeric=4, classes=("a", "b"), version="1", seed=1))
    v2 = register_version(kl, model, mlp_model(n_numeric=4, classes=("a", "b"), version="2", seed=2))
    bad = put_object(
        kl, f"tests/{kl.namespace}/truncated.onnx", mlp_model(n_numeric=4, classes=("a", "b"))[:200]
    )
    canary = {"model": {"name": model, "version": v2}, "trafficPercent": 25}
    kl.apply(model_deployment("split", {"name": model, "version": v1}, replicas=4, canary=canary))
    # a second deployment whose canary cannot load, side by side
    kl.apply(
        model_deployment(
            "bad-canary",
            {"name": model, "version": v1},
            replicas=1,
            canary={"model": {"uri": bad}, "trafficPercent": 50},
        )
    )
    st = wait_md(kl, "split", "Ready with its canary", is_ready, 240)
    assert (st["stable"]["replicas"], st["canary"]["replicas"]) == (3, 1)
    assert (st["stable"]["modelVersion"], st["canary"]["modelVersion"]) == (str(v1), str(v2))
    assert st["canary"]["trafficPercent"] == 25
    assert (st["stable"]["weight"], st["canary"]["weight"]) == (75, 25)
    assert st["readyReplicas"] == 4

    body = json.dumps(random_records(1, n_numeric=4, seed=3)[0]).encode()
    n = 1200
    load = Load(service_ip(kl, "split"), body, concurrency=8, max_seconds=240).run(n)
    counts = load.versions()
    n = len(load.snapshot())
    share = counts[str(v2)] / n
    sigma = (0.25 * 0.75 / n) ** 0.5
    print(
        f"RESULT md_canary requests={n} rate_per_s={load.rate():.0f} failed={len(load.failures)} versions={dict(counts)} "
        f"canary_share={share:.3f} expected=0.250 tolerance={4 * sigma:.3f}"
    )
    assert load.failures == [], load.explain(load.failures)
    assert set(counts) == {str(v1), str(v2)}
    assert abs(share - 0.25) <= 4 * sigma

    # --- the failing canary: reported, never answers
    st = wait_md(
        kl,
        "bad-canary",
        "the canary's ModelLoadFailed",
        lambda s: (s.get("lastFailure") or {}).get("reason") == "ModelLoadFailed",
        60,
    )
    assert st["lastFailure"]["track"] == "canary"
    assert cond(st, "Ready")["status"] == "False"
    assert st["phase"] == "Failed"
    assert cond(st, "Available")["status"] == "True"
    assert (st["canary"]["readyReplicas"], st["canary"]["weight"], st["stable"]["weight"]) == (0, 0, 100)
    load = Load(service_ip(kl, "bad-canary"), body, concurrency=8, max_seconds=120).run(300)
    bad_counts = load.versions()
    print(f"RESULT md_failing_canary requests=300 failed={len(load.failures)} versions={dict(bad_counts)}")
    assert load.failures == [], load.explain(load.failures)
    assert set(bad_counts) == {str(v1)}

    # --- promotion: the stable track rolls to the canary's version with no gap
    load = Load(service_ip(kl, "split"), body, concurrency=8, max_seconds=300).start()
    try:
        t_patch = time.monotonic()
        gen = kl.patch_spec("split", {"model": {"version": v2}, "canary": None}, MD)["metadata"]["generation"]
        st = wait_md(kl, "split", "Ready on the promoted version", lambda s: is_ready(s, gen), 240)
        t_done = time.monotonic()
        time.sleep(3)
    finally:
        load.stop()
    counts = load.versions()
    print(
        f"RESULT md_promotion requests={len(load.snapshot())} failed={len(load.failures)} "
        f"versions={dict(counts)} after_ready={dict(load.versions(since=t_done + 2))} "
        f"promotion_to_ready_s={t_done - t_patch:.1f}"
    )
    assert load.failures == [], load.explain(load.failures)
    assert set(load.versions(since=t_done + 2)) == {str(v2)}
    assert st["stable"]["modelVersion"] == str(v2)
    assert st["stable"]["replicas"] == 4
    assert "canary" not in st
    kl.wait("the canary Deployment to go", lambda: kl.get("split-canary", k8s.DEPLOYMENT) is None, 60)

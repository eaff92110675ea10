"""The operator's robustness with ModelDeployments in the mix (issue #13, acceptance 7; the TrainingJob
checks are issue #12's): kill -9 at random while ModelDeployments and TrainingJobs are created,
updated and deleted, then every one converges with no duplicate child and no orphan; once converged,
the operator writes nothing while idle (the API server's audit log), though its alias timer keeps
asking MLflow. A crash-looping server is in the mix: it is reported within 60 s and, still
crash-looping, causes no write either.

In the suite: 3 rounds over 8 ModelDeployments and 4 TrainingJobs, 20 s idle;
``make e2e-modeldeployment-robustness``: 20 rounds over 40 + 10, 120 s idle
(``KUBELOOP_E2E_MD_CHAOS_ROUNDS``, ``KUBELOOP_E2E_MD_CHAOS_MDS``, ``KUBELOOP_E2E_MD_CHAOS_TJS``,
``KUBELOOP_E2E_MD_IDLE_SECONDS``).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from kubeloop_operator import k8s
from kubeloop_testing.onnx_models import mlp_model

from kubeloop.contracts import Labels

from .conftest import OPERATOR_SA, Kl, OperatorProcess, audit_writes, kill_once_during, owner_uid
from .serving import cond, md_status, model_deployment, put_object, register_version, wait_md

pytestmark = pytest.mark.e2e

UNPULLABLE = "kubeloop-test/never-pulled:1"
# No server image at all: a container that exits at once, over and over (CrashLoopBackOff).
CRASHING_SERVER = "busybox:1.36"
MANAGED = f"{Labels.MANAGED_BY}=kubeloop-operator"


def _reconciles(metrics: str, kind: str) -> float:
    pattern = rf'^kubeloop_operator_reconciles_total\{{[^}}]*kind="{kind}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, metrics, re.M))


def _registry_calls(metrics: str) -> float:
    return sum(
        float(v)
        for v in re.findall(
            r"^kubeloop_operator_registry_requests_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.M
        )
    )


def _env(dep: dict[str, Any], name: str) -> str | None:
    for e in dep["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        if e["name"] == name:
            return str(e.get("value"))
    return None


def test_kill_9_with_modeldeployments_in_the_mix_converges_and_then_writes_nothing_while_idle(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    rounds = int(os.environ.get("KUBELOOP_E2E_MD_CHAOS_ROUNDS", "3"))
    total_md = int(os.environ.get("KUBELOOP_E2E_MD_CHAOS_MDS", "8"))
    total_tj = int(os.environ.get("KUBELOOP_E2E_MD_CHAOS_TJS", "4"))
    window = float(os.environ.get("KUBELOOP_E2E_MD_IDLE_SECONDS", "20"))
    rng = random.Random(int(os.environ.get("KUBELOOP_E2E_MD_CHAOS_SEED", "13")))
    uri = put_object(kl, f"tests/{kl.namespace}/model.onnx", mlp_model(n_numeric=4, classes=("a", "b")))
    model = f"chaos-{kl.namespace}"[:63]
    register_version(kl, model, mlp_model(n_numeric=4, classes=("a", "b"), version="1"), alias="champion")
    op = kubeloop_operator.start(server_image=CRASHING_SERVER, alias_poll_seconds=5)

    # A crash-looping server (the only MD with pods), and one that follows an alias (its timer polls).
    kl.apply(model_deployment("crashing", {"uri": uri}, replicas=1))
    kl.apply(model_deployment("follower", {"name": model, "alias": "champion"}, replicas=0))

    mds: dict[str, dict[str, Any]] = {}  # name -> expected spec parts (replicas 0: no pods)
    tjs: dict[str, bool] = {}  # name -> suspend
    deleted: set[str] = set()
    created_md = created_tj = kills = ops = 0
    per_round_md = -(-total_md // rounds)
    per_round_tj = -(-total_tj // rounds)
    t0 = time.monotonic()

    def act(action: str, name: str) -> None:
        nonlocal created_md, created_tj
        if action == "create-md" and name not in mds:
            want = {"maxBatchSize": rng.randint(1, 64), "suspend": rng.random() < 0.3}
            spec: dict[str, Any] = {
                "replicas": 0,
                "batching": {"maxBatchSize": want["maxBatchSize"]},
                "suspend": want["suspend"],
            }
            if rng.random() < 0.3:
                spec["canary"] = {"model": {"uri": uri}, "trafficPercent": 25}
            kl.apply(model_deployment(name, {"uri": uri}, **spec))
            mds[name] = want
            created_md += 1
        elif action == "create-tj" and name not in tjs:
            s = rng.random() < 0.5
            kl.apply(
                kl.training_job(
                    name,
                    model={"image": UNPULLABLE, "command": ["train"]},
                    runPolicy={"suspend": s, "backoffLimit": 1},
                    resources={"requests": {"cpu": "10m", "memory": "16Mi"}},
                )
            )
            tjs[name] = s
            created_tj += 1
        elif action == "update-md" and name not in deleted:
            want = {"maxBatchSize": rng.randint(1, 64), "suspend": rng.random() < 0.3}
            kl.patch_spec(
                name,
                {"batching": {"maxBatchSize": want["maxBatchSize"]}, "suspend": want["suspend"]},
                k8s.MODELDEPLOYMENT,
            )
            mds[name] = want
        elif action == "update-tj" and name not in deleted:
            tjs[name] = not tjs[name]
            kl.patch_spec(name, {"runPolicy": {"suspend": tjs[name]}})
        elif action == "delete-md" and name not in deleted:
            kl.delete(name, k8s.MODELDEPLOYMENT)
            deleted.add(name)

    for _ in range(rounds):
        kill_at = time.monotonic() + rng.uniform(0.1, 2.5)
        batch: list[tuple[str, str]] = [
            ("create-md", f"md{created_md + i}") for i in range(min(per_round_md, total_md - created_md))
        ]
        batch += [
            ("create-tj", f"tj{created_tj + i}") for i in range(min(per_round_tj, total_tj - created_tj))
        ]
        live_md = [n for n in mds if n not in deleted]
        live_tj = [n for n in tjs if n not in deleted]
        batch += [
            ("update-md", n) for n in rng.sample(live_md, k=min(len(live_md), max(1, per_round_md // 2)))
        ]
        batch += [("update-tj", n) for n in rng.sample(live_tj, k=min(len(live_tj), 1))]
        batch += [("delete-md", n) for n in rng.sample(live_md, k=min(len(live_md) // 3, 1))]
        rng.shuffle(batch)
        kill_once_during(op, rng, kill_at, batch, act)
        ops += len(batch)
        kills += 1
    alive = {n: w for n, w in mds.items() if n not in deleted}

    def verdict() -> dict[str, Any]:
        objs = {m["metadata"]["name"]: m for m in kl.objects(k8s.MODELDEPLOYMENT)}
        uids = {m["metadata"]["uid"] for m in objs.values()} | {
            t["metadata"]["uid"] for t in kl.objects(k8s.TRAININGJOB)
        }
        deps = kl.objects(k8s.DEPLOYMENT, MANAGED)
        per_track = Counter((owner_uid(d), d["metadata"]["labels"].get("kubeloop.io/track")) for d in deps)
        services = kl.objects(k8s.SERVICE, f"{MANAGED},{Labels.COMPONENT}=serving")
        per_svc = Counter(owner_uid(s) for s in services)
        jobs = kl.objects(k8s.JOB, MANAGED)
        per_job = Counter(owner_uid(j) for j in jobs)
        converged = 0
        for name, want in alive.items():
            m = objs.get(name)
            if m is None:
                continue
            st = m.get("status") or {}
            mine = [d for d in deps if owner_uid(d) == m["metadata"]["uid"]]
            stable = next(
                (d for d in mine if d["metadata"]["labels"].get("kubeloop.io/track") == "stable"), None
            )
            ok = (
                st.get("observedGeneration") == m["metadata"]["generation"]
                and st.get("phase") == ("Suspended" if want["suspend"] else "Ready")
                and stable is not None
                and stable["spec"]["replicas"] == 0
                and _env(stable, "KUBELOOP_SERVER_MAX_BATCH_SIZE") == str(want["maxBatchSize"])
                and per_svc[m["metadata"]["uid"]] == 1
            )
            converged += ok
        tj_ok = 0
        for name, s in tjs.items():
            t = kl.get(name)
            if t is None:
                continue
            st = t.get("status") or {}
            mine = [j for j in jobs if owner_uid(j) == t["metadata"]["uid"]]
            tj_ok += (
                st.get("observedGeneration") == t["metadata"]["generation"]
                and (st.get("phase") == "Suspended") == s
                and len(mine) == 1
                and bool(mine[0]["spec"].get("suspend")) == s
            )
        children = [*deps, *services, *kl.objects(k8s.HPA, MANAGED), *jobs]
        orphans = [
            c["metadata"]["name"]
            for c in children
            if c["metadata"]["labels"].get(Labels.OWNER_UID) not in uids
        ]
        return {
            "converged": converged,
            "tj_converged": tj_ok,
            "duplicates": sum(
                n - 1 for n in [*per_track.values(), *per_svc.values(), *per_job.values()] if n > 1
            ),
            "orphans": orphans,
            "leftover_deleted": sorted(set(objs) & deleted),
        }

    def done() -> dict[str, Any] | None:
        v = verdict()
        ok = v["converged"] == len(alive) and v["tj_converged"] == len(tjs) and not v["orphans"]
        return v if ok and not v["leftover_deleted"] else None

    try:
        final = kl.wait("convergence after the last restart", done, 240, 2)
    except AssertionError:
        final = verdict()
    converge_s = time.monotonic() - t0
    print(
        f"RESULT md_chaos rounds={rounds} modeldeployments={created_md} trainingjobs={created_tj} ops={ops} "
        f"kills={kills} duplicates={final['duplicates']} converged={final['converged']}/{len(alive)} "
        f"tj_converged={final['tj_converged']}/{len(tjs)} orphans={len(final['orphans'])} "
        f"deleted_left={len(final['leftover_deleted'])} seconds={converge_s:.0f}"
    )
    assert final["duplicates"] == 0
    assert final["converged"] == len(alive)
    assert final["tj_converged"] == len(tjs)
    assert final["orphans"] == []
    assert final["leftover_deleted"] == []

    # --- the crash-looping server is reported (it has been looping all along)
    st = wait_md(
        kl,
        "crashing",
        "CrashLoopBackOff",
        lambda s: (s.get("lastFailure") or {}).get("reason") == "CrashLoopBackOff",
        60,
    )
    created = kl.get("crashing", k8s.MODELDEPLOYMENT)["metadata"]["creationTimestamp"]  # type: ignore[index]
    crash_s = _t(st["lastFailure"]["time"]) - _t(created)  # reported within 60 s of its creation
    assert crash_s <= 60, f"the crash loop was reported {crash_s:.0f} s after the ModelDeployment was created"
    assert cond(st, "Ready")["status"] == "False"
    assert st["phase"] == "Failed"
    assert wait_md(kl, "follower", "Ready", lambda s: s.get("phase") == "Ready", 60)["modelVersion"] == "1"

    # --- idle: nothing to do, nothing written
    last_write = [time.monotonic()]

    def quiet() -> bool:
        recent = audit_writes(
            kl.platform.kube_cluster,
            datetime.fromtimestamp(time.time() - 10, UTC),
            namespace=kl.namespace,
            user=OPERATOR_SA,
        )
        if recent:
            last_write[0] = time.monotonic()
        return time.monotonic() - last_write[0] >= 10

    kl.wait("the operator's writes to settle", quiet, 120, 1)
    since = datetime.now(UTC)
    before = op.metrics()
    time.sleep(window)
    after = op.metrics()
    writes = [
        w
        for w in audit_writes(kl.platform.kube_cluster, since, user=OPERATOR_SA)
        if (w.get("objectRef") or {}).get("namespace") == kl.namespace
    ]
    md_reconciles = _reconciles(after, "ModelDeployment") - _reconciles(before, "ModelDeployment")
    registry_calls = _registry_calls(after) - _registry_calls(before)
    print(
        f"RESULT md_idle modeldeployments={len(alive) + 2} trainingjobs={len(tjs)} window_s={window:.0f} "
        f"writes={len(writes)} md_reconciles={md_reconciles:.0f} registry_calls={registry_calls:.0f} "
        f"crash_loop_reported_s={crash_s:.1f} restarts={_restarts(kl)}"
    )
    detail = [
        (
            w["verb"],
            w["objectRef"].get("resource"),
            w["objectRef"].get("subresource"),
            w["objectRef"].get("name"),
        )
        for w in writes
    ]
    assert writes == [], f"writes while idle: {detail}"
    assert md_reconciles > 0  # resync and alias timers ran and wrote nothing
    assert registry_calls > 0  # the alias was looked up again, and had not moved
    assert md_status(kl, "crashing")["lastFailure"] == st["lastFailure"]


def _t(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _restarts(kl: Kl) -> int:
    pods = kl.objects(k8s.POD, "kubeloop.io/owner-name=crashing")
    return sum(
        c.get("restartCount", 0) for p in pods for c in (p.get("status") or {}).get("containerStatuses") or []
    )

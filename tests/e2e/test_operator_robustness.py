"""The operator under stress (issue #12, acceptance 5 and 6) and its replicas (peering).

* Crash safety: kill -9 at random moments while TrainingJobs are created, updated and deleted; after
  the last restart every TrainingJob converges, with no duplicate Job and no orphaned child.
  In the suite: 3 rounds over 10 TrainingJobs; ``make e2e-operator-chaos``: 20 rounds over 50
  (``KUBELOOP_E2E_CHAOS_ROUNDS``, ``KUBELOOP_E2E_CHAOS_TJS``).
* Idle: once converged, the operator makes no write request, measured in the API server's audit log.
  In the suite: 10 TrainingJobs, 30 s; ``make e2e-operator-idle``: 50, 120 s
  (``KUBELOOP_E2E_IDLE_TJS``, ``KUBELOOP_E2E_IDLE_SECONDS``).
* Peering: two replicas, distinct priorities, exactly one active; the other takes over.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubeloop_operator import k8s

from kubeloop.contracts import Labels

from .conftest import (
    OPERATOR_SA,
    Kl,
    OperatorProcess,
    audit_writes,
    drain,
    kill_once_during,
    operator_for,
    owner_uid,
)

pytestmark = pytest.mark.e2e

BUSYBOX = "busybox:1.36"
UNPULLABLE = "kubeloop-test/never-pulled:1"
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


def _tj(kl: Kl, name: str, *, image: str, command: list[str], **run_policy: Any) -> dict[str, Any]:
    return kl.training_job(
        name, model={"image": image, "command": command}, runPolicy=run_policy, resources=SMALL
    )


def _peering(kl: Kl, name: str) -> None:
    kl.platform.kubectl.apply(
        [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]
    )


def _reconciles(metrics: str) -> float:
    return sum(
        float(v)
        for v in re.findall(r"^kubeloop_operator_reconciles_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.M)
    )


# --- crash safety ---------------------------------------------------------------------------------


def test_kill_9_at_random_while_trainingjobs_change_converges_without_duplicates_or_orphans(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    rounds = int(os.environ.get("KUBELOOP_E2E_CHAOS_ROUNDS", "3"))
    total = int(os.environ.get("KUBELOOP_E2E_CHAOS_TJS", "10"))
    rng = random.Random(int(os.environ.get("KUBELOOP_E2E_CHAOS_SEED", "12")))
    op = kubeloop_operator.start()
    suspend: dict[str, bool] = {}
    deleted: set[str] = set()
    created = kills = ops = 0
    per_round = -(-total // rounds)
    t0 = time.monotonic()

    def act(action: str, name: str) -> None:
        nonlocal created
        if action == "create" and name not in suspend:
            s = rng.random() < 0.5
            kl.apply(_tj(kl, name, image=UNPULLABLE, command=["train"], suspend=s, backoffLimit=1))
            suspend[name] = s
            created += 1
        elif action == "update" and name not in deleted:
            s = not suspend[name]
            kl.patch_spec(
                name, {"runPolicy": {"suspend": s, "activeDeadlineSeconds": rng.randint(600, 9000)}}
            )
            suspend[name] = s
        elif action == "delete" and name not in deleted:
            kl.delete(name)
            deleted.add(name)

    for _ in range(rounds):
        kill_at = time.monotonic() + rng.uniform(0.1, 3.0)
        batch: list[tuple[str, str]] = [
            ("create", f"c{created + i}") for i in range(min(per_round, total - created))
        ]
        live = [n for n in suspend if n not in deleted]
        batch += [("update", n) for n in rng.sample(live, k=min(len(live), max(1, per_round // 2)))]
        batch += [("delete", n) for n in rng.sample(live, k=min(len(live) // 3, max(1, per_round // 3)))]
        rng.shuffle(batch)
        kill_once_during(op, rng, kill_at, batch, act)
        ops += len(batch)
        kills += 1
    alive = {n: s for n, s in suspend.items() if n not in deleted}

    def verdict() -> dict[str, Any]:
        tjs = {t["metadata"]["name"]: t for t in kl.objects(k8s.TRAININGJOB)}
        jobs = kl.jobs()
        per_owner = Counter(owner_uid(j) for j in jobs)
        converged = 0
        for name, s in alive.items():
            t = tjs.get(name)
            if t is None:
                continue
            st = t.get("status") or {}
            mine = [j for j in jobs if owner_uid(j) == t["metadata"]["uid"]]
            ok = (
                st.get("observedGeneration") == t["metadata"]["generation"]
                and next((c["status"] for c in st.get("conditions", []) if c["type"] == "Created"), None)
                == "True"
                and (st.get("phase") == "Suspended") == s
                and len(mine) == 1
                and bool(mine[0]["spec"].get("suspend")) == s
            )
            converged += ok
        uids = {t["metadata"]["uid"] for t in tjs.values()}
        children = [
            *jobs,
            *kl.objects(k8s.SERVICE, f"{Labels.MANAGED_BY}=kubeloop-operator"),
            *kl.objects(k8s.POD, f"{Labels.MANAGED_BY}=kubeloop-operator"),
        ]
        orphans = [
            c["metadata"]["name"]
            for c in children
            if c["metadata"]["labels"].get(Labels.OWNER_UID) not in uids
        ]
        return {
            "converged": converged,
            "duplicates": sum(n - 1 for n in per_owner.values() if n > 1),
            "orphans": orphans,
            "leftover_deleted": sorted(set(tjs) & deleted),
        }

    def done() -> dict[str, Any] | None:
        v = verdict()
        return v if v["converged"] == len(alive) and not v["orphans"] and not v["leftover_deleted"] else None

    try:
        final = kl.wait("convergence after the last restart", done, 240, 2)
    except AssertionError:
        final = verdict()
    print(
        f"RESULT operator_chaos rounds={rounds} trainingjobs={created} ops={ops} kills={kills} "
        f"duplicates={final['duplicates']} converged={final['converged']}/{len(alive)} "
        f"orphans={len(final['orphans'])} deleted_left={len(final['leftover_deleted'])} "
        f"seconds={time.monotonic() - t0:.0f}"
    )
    assert final["duplicates"] == 0
    assert final["converged"] == len(alive)
    assert final["orphans"] == []
    assert final["leftover_deleted"] == []


# --- idle -----------------------------------------------------------------------------------------


def test_a_converged_operator_makes_no_writes_while_idle(kl: Kl, kubeloop_operator: OperatorProcess) -> None:
    n = int(os.environ.get("KUBELOOP_E2E_IDLE_TJS", "10"))
    window = float(os.environ.get("KUBELOOP_E2E_IDLE_SECONDS", "30"))
    peering = f"kubeloop-test-{kl.namespace}"
    _peering(kl, peering)
    op = kubeloop_operator.start(standalone=False, peering_name=peering, peering_priority=100)
    expected: dict[str, str] = {}
    running = 0
    for i in range(n):
        name = f"idle-{i}"
        kind = i % 4
        if kind == 1 and running >= 3:  # a few real processes are enough
            kind = 0
        if kind == 0:
            m, phase = _tj(kl, name, image=BUSYBOX, command=["sleep", "3600"], suspend=True), "Suspended"
        elif kind == 1:
            m, phase = _tj(kl, name, image=BUSYBOX, command=["sleep", "3600"]), "Running"
            running += 1
        elif kind == 2:
            m, phase = (
                _tj(kl, name, image=BUSYBOX, command=["sh", "-c", "echo bye; exit 3"], backoffLimit=0),
                "Failed",
            )
        else:
            m, phase = _tj(kl, name, image=UNPULLABLE, command=["train"]), "Pending"
        kl.apply(m)
        expected[name] = phase

    def all_there() -> bool:
        return all(kl.status(name).get("phase") == phase for name, phase in expected.items())

    kl.wait("every TrainingJob in its final phase", all_there, 240, 1)
    # Quiet: events and the last status writes of the start-up are behind us.
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
    reconciles_before = _reconciles(op.metrics())
    time.sleep(window)
    writes = audit_writes(kl.platform.kube_cluster, since, user=OPERATOR_SA)
    in_ns = [w for w in writes if (w.get("objectRef") or {}).get("namespace") == kl.namespace]
    keepalives = [w for w in writes if (w.get("objectRef") or {}).get("name") == peering]
    reconciles = _reconciles(op.metrics()) - reconciles_before
    print(
        f"RESULT operator_idle trainingjobs={n} window_s={window:.0f} writes={len(in_ns)} "
        f"peering_keepalives={len(keepalives)} reconciles_in_window={reconciles:.0f}"
    )
    detail = [
        (
            w["verb"],
            w["objectRef"].get("resource"),
            w["objectRef"].get("subresource"),
            w["objectRef"].get("name"),
        )
        for w in in_ns
    ]
    assert in_ns == [], f"writes while idle: {detail}"
    assert reconciles > 0  # the operator was not asleep: it resynced and wrote nothing
    # Peering's keep-alive is the only write of the process: at most one per (lifetime - 5) s.
    assert len(keepalives) <= window // 50 + 1
    kl.platform.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", check=False)


# --- peering -----------------------------------------------------------------------------------------


def test_two_replicas_with_distinct_priorities_run_exactly_one_active(
    kl: Kl, kubeloop_operator: OperatorProcess, tmp_path: Path
) -> None:
    peering = f"kubeloop-test-{kl.namespace}"
    _peering(kl, peering)
    common: dict[str, Any] = {"standalone": False, "peering_name": peering, "peering_lifetime_seconds": 20}
    low = kubeloop_operator.start(peering_priority=10, **common)
    high = operator_for(kl, tmp_path / "second").start(peering_priority=20, **common)
    try:
        time.sleep(5)  # both see each other; the lower one pauses
        low_before = _reconciles(low.metrics())
        kl.apply(_tj(kl, "peered", image=BUSYBOX, command=["sleep", "600"], suspend=True))
        kl.wait_phase("peered", "Suspended", 60)
        time.sleep(3)
        assert _reconciles(low.metrics()) == low_before, "the paused replica reconciled"
        assert _reconciles(high.metrics()) > 0
        # the active replica goes away: the other one takes over
        high.stop()
        kl.patch_spec("peered", {"runPolicy": {"suspend": False}})
        kl.wait(
            "the remaining replica to take over", lambda: kl.status("peered").get("phase") == "Running", 90
        )
        assert _reconciles(low.metrics()) > low_before
    finally:
        high.stop()
        drain(kl, low)
        low.stop()
        kl.platform.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", check=False)

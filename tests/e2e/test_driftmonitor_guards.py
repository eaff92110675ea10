"""Retraining guards on the local cluster (issue #14, acceptance 2), with the operator as a process.

Checks are driven by writing what the check job writes (``lastCheckTime``, ``lastResult`` with a fresh
check time, ``consecutiveDrifts``) into the DriftMonitor's status — a check a second instead of one a
minute. Retrains are real TrainingJobs whose pods run a bring-your-own image that sleeps, so "a retrain
is running" is a real pod running.

* cooldown: 10 drifted checks inside the cooldown -> exactly one retrain (overlap allowed, so only
  the cooldown holds them back);
* maxPerDay: 10 drifted checks without a cooldown -> exactly maxPerDay retrains;
* no overlap: drifted checks while a retrain runs start nothing; once it ended, the next one does;
* crash safety: the operator killed (SIGKILL) with a drifted check waiting, killed with a retrain
  decided but not created (the state it leaves between the two writes), and killed at a random moment
  after a check: each check gives exactly one retrain, and the monitors above keep their counts.

The suite runs it short (one random kill); ``make e2e-drift-guards`` runs it in full.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeloop_operator import k8s
from kubeloop_operator.status.driftmonitor import retrain_name

from kubeloop.contracts import Labels

from .conftest import Kl, OperatorProcess

pytestmark = pytest.mark.e2e

NEVER = "0 0 1 1 *"
# The suite's short run; `make e2e-drift-guards` sets KUBELOOP_E2E_DRIFT_FULL=1: the overlap monitor's
# retrain is also waited out (and the next check must start one), and 5 random kills instead of 1.
FULL = os.environ.get("KUBELOOP_E2E_DRIFT_FULL") == "1"
KILL_ROUNDS = 5 if FULL else 1


def rfc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def monitor(kl: Kl, name: str, sleep_s: int, **retrain: Any) -> dict[str, Any]:
    template = kl.training_job(name)["spec"]
    template["model"] = {"image": "busybox:1.36", "command": ["sleep", str(sleep_s)]}
    template["runPolicy"] = {"backoffLimit": 0}
    template.pop("resources", None)
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftMonitor",
        "metadata": {"name": name},
        "spec": {
            "deployment": "md",
            "schedule": NEVER,
            "retrain": {"template": template, **retrain},
        },
    }


class Checks:
    """Writes drifted checks into monitors' statuses, as the check job does, and waits for decisions."""

    def __init__(self, kl: Kl) -> None:
        self.kl = kl
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
        self.n: dict[str, int] = {}

    def drifted(self, name: str) -> str:
        n = self.n[name] = self.n.get(name, 0) + 1
        at = rfc(self.base + timedelta(seconds=n))  # a fresh check time per check
        self.kl.kube.patch_status(
            k8s.DRIFTMONITOR,
            self.kl.namespace,
            name,
            {
                "lastCheckTime": at,
                "consecutiveDrifts": n,
                "lastResult": {
                    "drifted": True,
                    "share": 0.8,
                    "samples": 1000,
                    "time": at,
                    "modelVersion": "1",
                    "features": [{"name": "mean radius", "psi": 1.2, "jensenShannon": 0.4, "drifted": True}],
                },
            },
        )
        return at

    def decided(self, name: str, at: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            d = (self.kl.status(name, k8s.DRIFTMONITOR).get("lastDecision")) or {}
            return d if d.get("checkTime") == at else None

        return self.kl.wait(f"{name}: decision about the check at {at}", check, timeout, interval=0.2)


def retrains(kl: Kl, name: str) -> list[dict[str, Any]]:
    uid = kl.get(name, k8s.DRIFTMONITOR)["metadata"]["uid"]  # type: ignore[index]
    return [
        tj
        for tj in kl.objects(k8s.TRAININGJOB, f"{Labels.OWNER_UID}={uid}")
        if any(
            r.get("uid") == uid and r.get("controller") for r in tj["metadata"].get("ownerReferences") or []
        )
    ]


def phases(kl: Kl, name: str) -> list[str | None]:
    return [(tj.get("status") or {}).get("phase") for tj in retrains(kl, name)]


def running(kl: Kl, name: str) -> int:
    return sum(p not in ("Succeeded", "Failed") for p in phases(kl, name))


def test_guards_give_exactly_the_retrains_allowed_through_restarts(
    kl: Kl, kubeloop_operator: OperatorProcess
) -> None:
    op = kubeloop_operator
    op.start()
    t0 = time.monotonic()
    kl.apply(monitor(kl, "cool", 2, cooldown="1h", maxPerDay=10, skipWhileRunning=False))
    kl.apply(monitor(kl, "perday", 2, cooldown="0s", maxPerDay=2, skipWhileRunning=False))
    kl.apply(monitor(kl, "overlap", 6, cooldown="0s", maxPerDay=100))
    kl.apply(monitor(kl, "crash", 600, cooldown="0s", maxPerDay=100, skipWhileRunning=False))
    for name in ("cool", "perday", "overlap", "crash"):
        kl.wait(f"{name} reconciled", lambda name=name: kl.status(name, k8s.DRIFTMONITOR).get("phase"), 60)
    checks = Checks(kl)

    # cooldown, maxPerDay and no overlap: 10 rounds of one drifted check each
    reasons: dict[str, list[str]] = {"cool": [], "perday": [], "overlap": []}
    max_running = 0
    for _ in range(10):
        at = {name: checks.drifted(name) for name in reasons}
        for name, when in at.items():
            reasons[name].append(checks.decided(name, when)["reason"])
        max_running = max(max_running, running(kl, "overlap"))
    assert len(retrains(kl, "cool")) == 1, reasons["cool"]
    assert reasons["cool"][0] == "RetrainCreated"
    assert set(reasons["cool"][1:]) == {"CooldownActive"}
    assert len(retrains(kl, "perday")) == 2, reasons["perday"]
    assert reasons["perday"][:2] == ["RetrainCreated", "RetrainCreated"]
    assert set(reasons["perday"][2:]) == {"MaxPerDayReached"}
    assert max_running <= 1, f"two retrains of one monitor ran at once: {reasons['overlap']}"
    assert reasons["overlap"][0] == "RetrainCreated"
    assert "RetrainRunning" in reasons["overlap"]
    created = reasons["overlap"].count("RetrainCreated")
    kl.wait("the overlap retrains", lambda: len(retrains(kl, "overlap")) == created, 30)
    if FULL:  # once the running retrain has ended, the next drifted check may start one again
        kl.wait("the overlap monitor's retrain ended", lambda: running(kl, "overlap") == 0, 120, interval=1)
        assert checks.decided("overlap", checks.drifted("overlap"))["reason"] == "RetrainCreated"
        created += 1
        kl.wait("the next overlap retrain", lambda: len(retrains(kl, "overlap")) == created, 30)
    # no overlap, to the second: each retrain was created after the one before it had completed
    ordered = sorted(retrains(kl, "overlap"), key=lambda tj: tj["metadata"]["creationTimestamp"])
    for before, after in itertools.pairwise(ordered):
        done = (before.get("status") or {}).get("completionTime")
        assert done is not None, before.get("status")
        assert done <= after["metadata"]["creationTimestamp"], (before["status"], after["metadata"])
    guards_s = time.monotonic() - t0

    # crash safety 1: killed with a drifted check waiting
    op.kill()
    at = checks.drifted("crash")
    op.start()
    checks.decided("crash", at)
    kl.wait("1 crash retrain", lambda: len(retrains(kl, "crash")) == 1, 60)

    # crash safety 2: killed between the decision (written to status) and the TrainingJob's creation
    op.kill()
    at = checks.drifted("crash")
    name = retrain_name("crash", datetime.fromisoformat(at.replace("Z", "+00:00")))
    st = kl.status("crash", k8s.DRIFTMONITOR)
    pending = {"trainingJob": name, "time": rfc(datetime.now(UTC)), "checkTime": at, "state": "Pending"}
    kl.kube.patch_status(
        k8s.DRIFTMONITOR,
        kl.namespace,
        "crash",
        {
            "lastDecision": {
                "checkTime": at,
                "action": "Retrain",
                "reason": "RetrainCreated",
                "message": "x",
            },
            "lastRetrain": pending,
            "retrains": [*(st.get("retrains") or []), pending],
        },
    )
    op.start()
    kl.wait(
        "the decided retrain created",
        lambda: name in {tj["metadata"]["name"] for tj in retrains(kl, "crash")},
        60,
    )
    assert len(retrains(kl, "crash")) == 2

    # crash safety 3: killed at a random moment after a check
    for _ in range(KILL_ROUNDS):
        at = checks.drifted("crash")
        time.sleep(random.uniform(0.0, 0.4))
        op.kill()
        op.start()
        checks.decided("crash", at)
    kl.wait(
        f"{checks.n['crash']} crash retrains", lambda: len(retrains(kl, "crash")) >= checks.n["crash"], 60
    )
    time.sleep(3)  # anything extra would show up now
    names = sorted(tj["metadata"]["name"] for tj in retrains(kl, "crash"))
    expected = sorted(
        retrain_name("crash", checks.base + timedelta(seconds=n)) for n in range(1, checks.n["crash"] + 1)
    )
    assert names == expected  # exactly one per check, named after it

    # the restarts changed nothing for the other monitors
    assert len(retrains(kl, "cool")) == 1
    assert len(retrains(kl, "perday")) == 2
    assert len(retrains(kl, "overlap")) == created
    st = kl.status("cool", k8s.DRIFTMONITOR)
    assert st["lastRetrain"]["trainingJob"] == retrains(kl, "cool")[0]["metadata"]["name"]
    assert st["lastDecision"]["reason"] == "CooldownActive"
    retraining = next(c for c in st["conditions"] if c["type"] == "Retraining")
    assert retraining["reason"] in ("CooldownActive",)
    assert "cooldown of 1h" in retraining["message"]
    assert "Traceback" not in op.log()
    print(
        f"RESULT e2e_guards_seconds={guards_s:.1f} e2e_guards_total_seconds={time.monotonic() - t0:.1f} "
        f"cool={len(retrains(kl, 'cool'))} perday={len(retrains(kl, 'perday'))} "
        f"overlap={len(retrains(kl, 'overlap'))} crash={len(names)}/{checks.n['crash']} checks"
    )

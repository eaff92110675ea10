"""The node agent's pure pod logic (hack/nodeagent: podstatus, containerenv, container), without a
cluster: phases as kubelet's getPhase, condition transition times, container statuses, capabilities
and ``$(VAR)`` expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodeagent import podstatus
from nodeagent.container import Container, expand
from nodeagent.containerenv import DEFAULT_CAPABILITIES, capabilities

pytestmark = pytest.mark.harness


def _c(
    tmp_path: Path, name: str, state: str = "waiting", exit_code: int = 0, init: bool = False
) -> Container:
    c = Container({"name": name, "image": "x"}, init, tmp_path / name)
    c.state, c.exit_code = state, exit_code
    return c


@pytest.mark.parametrize(
    ("states", "policy", "want"),
    [
        ([("running", 0)], "Always", "Running"),
        ([("waiting", 0), ("running", 0)], "Always", "Pending"),
        ([("terminated", 0)], "Never", "Succeeded"),
        ([("terminated", 1)], "Never", "Failed"),
        ([("terminated", 1)], "OnFailure", "Running"),
        ([("terminated", 0)], "Always", "Running"),
        ([("terminated", 0), ("terminated", 2)], "Never", "Failed"),
    ],
)
def test_phase(tmp_path: Path, states: list[tuple[str, int]], policy: str, want: str) -> None:
    cs = [_c(tmp_path, f"c{i}", s, e) for i, (s, e) in enumerate(states)]
    assert podstatus.compute_phase(cs, [], initialized=True, restart_policy=policy) == want


def test_phase_when_deleting_and_init_failures(tmp_path: Path) -> None:
    done = [_c(tmp_path, "c", "terminated", 1)]
    assert (
        podstatus.compute_phase(done, [], initialized=True, restart_policy="Always", deleting=True)
        == "Failed"
    )
    init = [_c(tmp_path, "i", "terminated", 1, init=True)]
    assert podstatus.compute_phase([], init, initialized=False, restart_policy="Never") == "Failed"
    assert podstatus.compute_phase([], init, initialized=False, restart_policy="Always") == "Pending"


def test_condition_keeps_transition_time_while_unchanged() -> None:
    known: dict[str, dict[str, object]] = {}
    pod = {"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]}}
    first = podstatus.condition(known, pod, "Ready", False, "ContainersNotReady", "waiting")
    assert (first["lastTransitionTime"], first["reason"]) == ("T0", "ContainersNotReady")
    flipped = podstatus.condition(known, pod, "Ready", True, "ContainersNotReady", "waiting")
    assert flipped["lastTransitionTime"] != "T0"
    assert "reason" not in flipped
    assert (
        podstatus.condition(known, pod, "Ready", True)["lastTransitionTime"] == flipped["lastTransitionTime"]
    )


def test_container_status_states(tmp_path: Path) -> None:
    waiting = _c(tmp_path, "w")
    assert podstatus.container_status(waiting, pod_initialized=False)["state"] == {
        "waiting": {"reason": "PodInitializing"}
    }
    crashing = _c(tmp_path, "k", "terminated", 1)
    crashing.waiting_reason, crashing.backoff_until, crashing.waiting_message = (
        "CrashLoopBackOff",
        5.0,
        "back-off",
    )
    s = podstatus.container_status(crashing, pod_initialized=True)
    assert s["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}
    assert s["lastState"]["terminated"]["exitCode"] == 1
    running = _c(tmp_path, "r", "running")
    running.ready = running.started = True
    s = podstatus.container_status(running, pod_initialized=True)
    assert (s["ready"], s["started"], "running" in s["state"]) == (True, True, True)


def test_pod_status_reports_unready_containers(tmp_path: Path) -> None:
    cs = [_c(tmp_path, "a", "running"), _c(tmp_path, "b")]
    cs[0].ready = True
    status = podstatus.pod_status(
        pod={},
        known_conditions={},
        containers=cs,
        init_containers=[],
        phase="Pending",
        initialized=True,
        sandbox_ready=True,
        host_ip="10.0.0.1",
        pod_ip="10.0.0.7",
        start_time="",
        volume_error="",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["message"]) == ("False", "containers with unready status: [b]")
    assert status["podIPs"] == [{"ip": "10.0.0.7"}]
    assert status["startTime"]


def test_capabilities() -> None:
    assert capabilities({}) == sorted(DEFAULT_CAPABILITIES)
    assert capabilities({"privileged": True}) is None
    assert capabilities({"capabilities": {"drop": ["ALL"], "add": ["cap_net_admin"]}}) == ["NET_ADMIN"]
    assert "KILL" not in (capabilities({"capabilities": {"drop": ["KILL"]}}) or [])


def test_expand() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"

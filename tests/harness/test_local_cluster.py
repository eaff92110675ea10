"""The local cluster tooling itself: a second, isolated cluster is started, used and torn down.

It runs in its own state directory (KUBELOOP_STATE_DIR), so ports fall back to free ones and the
session's cluster is not disturbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localcluster import procs
from localcluster.cluster import ClusterError, LocalCluster, expand_groups
from localcluster.pytest_fixtures import kubectl_binary

pytestmark = [pytest.mark.component, pytest.mark.harness]

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(REPO / "hack" / "cluster.py")]
# The budget for a warm start (binaries built, state and MLflow's bytecode cache in place).
WARM_START_BUDGET_S = float(os.environ.get("KUBELOOP_WARM_START_BUDGET", "30"))


def _cli(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBELOOP_STATE_DIR": str(state)}
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_unknown_component_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    proc = _cli(tmp_path / "state", "up", "kubelet")
    assert proc.returncode == 1
    assert "unknown component 'kubelet'" in proc.stderr
    assert "known: " in proc.stderr
    with pytest.raises(ClusterError, match="unknown component"):
        expand_groups(["nope"])
    assert expand_groups(["mlflow"]) == ["minio", "mlflow"]
    assert expand_groups(["kube-apiserver", "minio"]) == ["kube", "minio"]


@pytest.mark.slow
def test_cluster_up_status_down_leaves_nothing_behind(tmp_path: Path, kube_cluster: object) -> None:
    # kube_cluster: the binaries are built and the session's cluster is up, so this one must avoid its ports.
    state = tmp_path / "state"
    first = _cli(state, "up")
    assert first.returncode == 0, first.stderr
    try:
        data = json.loads((state / "cluster.json").read_text())
        assert "export KUBECONFIG=" in first.stdout
        assert "MLFLOW_TRACKING_URI" in first.stdout
        status = _cli(state, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(c["healthy"] for c in json.loads(status.stdout).values())
        kubeconfig = state / "kubeconfig"
        ns = subprocess.run(
            [kubectl_binary(), f"--kubeconfig={kubeconfig}", "get", "namespace", "default", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert ns.stdout.strip() == "namespace/default"
        pids = [c["pid"] for c in data["components"].values()]
        assert len(pids) == 5

        # Restart with state and binaries in place: the warm start the issue budgets.
        assert _cli(state, "down").returncode == 0
        t0 = time.monotonic()
        again = _cli(state, "up")
        warm = time.monotonic() - t0
        assert again.returncode == 0, again.stderr
        print(f"warm start: {warm:.1f} s")
        assert warm <= WARM_START_BUDGET_S, f"warm start took {warm:.1f} s:\n{again.stderr}"
        # Running again is a no-op.
        assert "already running" in _cli(state, "up").stderr
        pids = [c["pid"] for c in json.loads((state / "cluster.json").read_text())["components"].values()]
    finally:
        down = _cli(state, "down")
    assert down.returncode == 0, down.stderr
    assert "no process left behind" in down.stderr
    assert not [p for p in pids if procs.session_members(p)]
    assert not procs.processes_mentioning(str(state.resolve()) + "/")
    assert _cli(state, "status").returncode == 1


def test_leases_stop_a_test_started_service_only_after_its_last_user(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state")
    token_a, data = cluster.acquire("minio")
    token_b, _ = cluster.acquire("minio")
    pid = data["components"]["minio"]["pid"]
    try:
        cluster.release("minio", token_a)
        assert cluster.group_running("minio"), "stopped while another user holds a lease"
        cluster.release("minio", token_b)
        assert not cluster.group_running("minio")
        assert not procs.session_members(pid)
    finally:
        cluster.down()


def test_make_started_service_is_left_alone_by_test_sessions(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state")
    cluster.up(["minio"], managed_by="make")
    try:
        token, _ = cluster.acquire("minio")
        cluster.release("minio", token)
        assert cluster.group_running("minio")
    finally:
        assert cluster.down() == []

"""`make cluster-down` removes every process, namespace, interface, route, rule and sysctl change of the agent.

A second node agent (its own node name, bridge, pod range, nftables table, route protocol and state
directory, from a config override) joins the session's control plane, runs a pod, and is then removed
by `make cluster-down`, pointed at it through the environment (with an empty cluster state directory,
so the session's control plane is left alone).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodeagent.pytest_fixtures import NodeAgent, agent_cli

pytestmark = [pytest.mark.component, pytest.mark.harness, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GLOBAL_SYSCTLS = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/conf/default/route_localnet",
    "net/ipv4/conf/all/send_redirects",
    "net/ipv6/conf/all/forwarding",
]


def sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in GLOBAL_SYSCTLS}


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False).stdout


def test_make_cluster_down_leaves_nothing_of_the_agent_behind(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent, tmp_path: Path
) -> None:
    if not node_agent.local:
        pytest.skip("needs the local node agent")
    name = f"teardown-{secrets.token_hex(3)}"
    cfg = {
        "nodeName": name,
        "kubeletPort": 10259,
        "taints": [{"key": "kubeloop.io/teardown-test", "effect": "NoSchedule"}],
        "network": {
            "bridge": "kltd0",
            "podCIDR": "10.243.7.0/24",
            "guardCIDRs": ["10.243.0.0/16"],
            "nftTable": "kubeloop_teardown",
            "prefix": "kt",
            "routeProto": 67,
        },
        "scheduler": {"enabled": False},
        "proxy": {"enabled": False},
        "manageSystemServices": False,
    }
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {"KUBELOOP_NODEAGENT_CONFIG": str(cfg_file), "KUBELOOP_NODEAGENT_STATE": str(tmp_path / "agent")}
    before = sysctls()
    up = agent_cli("up", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "nodeName": name,
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "sleep",
                        "image": "python:3.12",
                        # Ignores SIGTERM and starts a child in its own session: cleanup must still get both.
                        "command": [
                            "sh",
                            "-c",
                            "trap '' TERM; setsid sleep 100000 & exec python -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(100000)'",
                        ],
                    }
                ],
            },
        }
        kube_cluster.kubectl("apply", "-f", "-", namespace=k8s_namespace, input=json.dumps(pod))
        deadline = time.monotonic() + 60
        uid = ""
        while time.monotonic() < deadline:
            p = json.loads(
                kube_cluster.kubectl("get", "pod", "sleeper", "-o", "json", namespace=k8s_namespace).stdout
            )
            uid = p["metadata"]["uid"]
            if p["status"].get("phase") == "Running":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"pod not Running: {p['status']}")
        pids: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(pids) < 3:  # launcher, python, the setsid'd sleep
            time.sleep(0.2)
            pids = [int(x) for x in sh("ip", "netns", "pids", f"kt-{uid}").split()]
        assert len(pids) >= 3, pids
        assert Path("/sys/class/net/kltd0").exists()
        assert sh("ip", "route", "show", "table", "all", "proto", "67").strip()
        assert "kubeloop_teardown" in sh("nft", "list", "tables")
        assert Path("/proc/sys/net/ipv4/conf/kltd0/forwarding").read_text().strip() == "1"

        down = subprocess.run(
            ["make", "--no-print-directory", "cluster-down"],
            cwd=REPO,
            env={**os.environ, **env, "KUBELOOP_STATE_DIR": str(tmp_path / "no-cluster")},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert down.returncode == 0, down.stdout + down.stderr
        deadline = time.monotonic() + 5  # killed processes may linger briefly as zombies until reaped
        while time.monotonic() < deadline and [p for p in pids if running(p)]:
            time.sleep(0.1)
        assert [p for p in pids if running(p)] == []
        assert (
            not [n for n in os.listdir("/run/netns") if n.startswith("kt-")]
            if Path("/run/netns").is_dir()
            else True
        )
        assert not [n for n in os.listdir("/sys/class/net") if n.startswith(("kt", "kltd"))]
        assert sh("ip", "route", "show", "table", "all", "proto", "67").strip() == ""
        assert "10.243." not in sh("ip", "route", "show", "table", "all")
        assert "kubeloop_teardown" not in sh("nft", "list", "tables")
        assert sysctls() == before
        assert not Path("/run/lock/kubeloop-nodeagent-kltd0.lock").exists()
        left = agent_cli("leftovers", env=env)
        assert left.returncode == 0, left.stdout
    finally:
        agent_cli("down", env=env)
        kube_cluster.kubectl(
            "delete", "pod", "sleeper", "--force", "--grace-period=0", namespace=k8s_namespace, check=False
        )
        kube_cluster.kubectl("delete", "node", name, check=False)
    # The session's own agent is untouched.
    assert Path("/sys/class/net", node_agent.info["bridge"]).exists()

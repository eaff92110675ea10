"""pytest fixtures for the node agent (loaded as a plugin next to ``localcluster.pytest_fixtures``).

``node_agent`` (session): a Ready node that runs pods. On the local control plane it reuses the agent
that ``make cluster-up`` started, or starts one (and removes it, with everything it made, after the
session). Against another cluster (KUBELOOP_TEST_KUBECONFIG) it only checks that a node is Ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HACK = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NodeAgent:
    local: bool
    node_name: str
    info: dict[str, Any]

    def service_ip(self, name: str) -> str:
        return str(self.info["systemServices"][name]["clusterIP"])


def agent_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args],
        cwd=HACK,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_node_ready(kube_cluster: Any, name: str | None, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = kube_cluster.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode == 0:
            for node in json.loads(out.stdout)["items"]:
                if name and node["metadata"]["name"] != name:
                    continue
                conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
                if conds.get("Ready") == "True":
                    return str(node["metadata"]["name"])
        last = out.stderr
        time.sleep(0.5)
    raise AssertionError(f"no Ready node after {timeout} s {last}")


@pytest.fixture(scope="session")
def node_agent(kube_cluster: Any) -> Iterator[NodeAgent]:
    if not kube_cluster.local:
        yield NodeAgent(local=False, node_name=_wait_node_ready(kube_cluster, None), info={})
        return
    from nodeagent.cli import info, running_pid

    started_here = False
    if running_pid() is None:
        proc = agent_cli("up")
        if proc.returncode != 0:
            pytest.fail(f"could not start the node agent:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
        started_here = True
    data = info()
    try:
        _wait_node_ready(kube_cluster, data["node"])
        yield NodeAgent(local=True, node_name=data["node"], info=data)
    finally:
        if started_here:
            proc = agent_cli("down")
            if proc.returncode != 0:
                print(f"node agent down failed:\n{proc.stdout}\n{proc.stderr}", file=sys.stderr)

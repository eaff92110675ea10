"""A node agent started from this checkout's code runs one pod through the kubelet paths end to end:
an init container, an emptyDir shared with the main container, environment from a ConfigMap, a Secret,
the downward API and ``$(VAR)`` expansion, an HTTP readiness probe and an exec liveness probe whose
failure restarts the container.

The session's agent may have been started before the code under test changed; this test starts its own
(its own node name, bridge, pod range and nftables table, scheduling off and a taint, as the teardown
test does) so that the worker, probe, environment and status code of this checkout is what runs.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodeagent.pytest_fixtures import NodeAgent, agent_cli

pytestmark = [pytest.mark.component, pytest.mark.harness, pytest.mark.slow]

APP = r"""
import json, os, pathlib, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
die = pathlib.Path("/data/die")
first_run = not die.exists()
die.unlink(missing_ok=True)
keys = ("FROM_CM", "FROM_SECRET", "POD_NAME", "POD_IP", "GREETING", "INIT")
print(json.dumps({k: os.environ.get(k) for k in keys} | {"init_file": pathlib.Path("/data/init").read_text().strip()}), flush=True)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
if first_run:
    threading.Timer(4, die.touch).start()  # the liveness probe fails from now on: a restart follows
HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def _get(kube_cluster: Any, ns: str, *what: str) -> dict[str, Any]:
    out = kube_cluster.kubectl("get", *what, "-o", "json", namespace=ns)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _wait(kube_cluster: Any, ns: str, what: str, cond: Any, timeout: float, desc: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = _get(kube_cluster, ns, "pod", what)
        if cond(pod):
            return pod
        time.sleep(0.5)
    logs = [
        kube_cluster.kubectl("logs", what, *flag, namespace=ns, check=False).stdout[-2000:]
        for flag in ((), ("--previous",))
    ]
    statuses = (pod.get("status") or {}).get("containerStatuses")
    raise AssertionError(f"{desc} within {timeout}s; containers: {json.dumps(statuses)}; logs: {logs}")


def _ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def test_fresh_agent_runs_a_pod_through_init_env_probes_and_restart(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent, tmp_path: Path
) -> None:
    if not node_agent.local:
        pytest.skip("needs the local node agent")
    ns = k8s_namespace
    name = f"fresh-{secrets.token_hex(3)}"
    cfg = {
        "nodeName": name,
        "kubeletPort": 10258,
        "taints": [{"key": "kubeloop.io/fresh-agent-test", "effect": "NoSchedule"}],
        "network": {
            "bridge": "klfr0",
            "podCIDR": "10.243.9.0/24",
            "guardCIDRs": ["10.243.0.0/16"],
            "nftTable": "kubeloop_fresh",
            "prefix": "kf",
            "routeProto": 68,
        },
        "scheduler": {"enabled": False},
        "proxy": {"enabled": False},
        "manageSystemServices": False,
    }
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {"KUBELOOP_NODEAGENT_CONFIG": str(cfg_file), "KUBELOOP_NODEAGENT_STATE": str(tmp_path / "agent")}
    up = agent_cli("up", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        objects = [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"color": "teal"}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sec"},
                "stringData": {"token": "s3cr3t"},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app"},
                "spec": {
                    "nodeName": name,
                    "terminationGracePeriodSeconds": 2,
                    # Mounted at /data: a mount over the workspace's path would hide the venv's python.
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "prep",
                            "image": "python:3.12",
                            "command": ["sh", "-c", "echo prepared > /data/init"],
                            "volumeMounts": [{"name": "work", "mountPath": "/data"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "app",
                            "image": "python:3.12",
                            # sh finds python on the pod's PATH, as in the teardown test.
                            "command": ["sh", "-c", 'exec python -c "$APP_SOURCE"'],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "volumeMounts": [{"name": "work", "mountPath": "/data"}],
                            "env": [
                                {
                                    "name": "FROM_CM",
                                    "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}},
                                },
                                {
                                    "name": "FROM_SECRET",
                                    "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}},
                                },
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "GREETING", "value": "hi-$(POD_NAME)-$$(POD_NAME)"},
                                {"name": "APP_SOURCE", "value": APP},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                            "livenessProbe": {
                                "exec": {"command": ["sh", "-c", "test ! -e /data/die"]},
                                "periodSeconds": 1,
                                "failureThreshold": 2,
                            },
                        }
                    ],
                },
            },
        ]
        for obj in objects:
            kube_cluster.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(obj))

        pod = _wait(kube_cluster, ns, "app", _ready, 90, "pod Ready")
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["reason"] == "Completed"
        pod_ip = pod["status"]["podIP"]
        assert pod_ip.startswith("10.243.9.")

        pod = _wait(
            kube_cluster,
            ns,
            "app",
            lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1 and _ready(p),
            90,
            "liveness restart and Ready again",
        )
        (cs,) = pod["status"]["containerStatuses"]
        assert cs["restartCount"] == 1, cs  # the second run stays healthy: no crash loop
        assert "terminated" in cs["lastState"], cs
        assert cs["state"]["running"]["startedAt"]

        previous = kube_cluster.kubectl("logs", "app", "--previous", namespace=ns).stdout
        seen = json.loads(previous.splitlines()[0])
        assert seen == {
            "FROM_CM": "teal",
            "FROM_SECRET": "s3cr3t",
            "POD_NAME": "app",
            "POD_IP": pod_ip,
            "GREETING": "hi-app-$(POD_NAME)",
            "INIT": None,
            "init_file": "prepared",
        }
        events = _get(kube_cluster, ns, "events", "--field-selector", "involvedObject.name=app")["items"]
        reasons = {e["reason"] for e in events}
        assert {"Unhealthy", "Killing", "Started"} <= reasons, reasons
    finally:
        kube_cluster.kubectl("delete", "pod", "app", "--grace-period=0", "--force", namespace=ns, check=False)
        agent_cli("down", env=env)
        kube_cluster.kubectl("delete", "node", name, check=False)
    # The session's own agent is untouched.
    assert Path("/sys/class/net", node_agent.info["bridge"]).exists()

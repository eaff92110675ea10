"""The local node agent (hack/nodeagent, issue #4): pods run as local processes with their own network.

Each test works in a fresh namespace on the session's cluster, and its pods run on the agent's node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from nodeagent.pytest_fixtures import NodeAgent

pytestmark = [pytest.mark.component, pytest.mark.harness]

T = TypeVar("T")
PY = "python:3.12-slim"


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 90, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (AssertionError, httpx.HTTPError, OSError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last})")


def kget(kube: Any, ns: str, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json", namespace=ns).stdout)


def apply(kube: Any, ns: str, manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
    items = manifest if isinstance(manifest, list) else [manifest]
    kube.kubectl(
        "apply",
        "-f",
        "-",
        namespace=ns,
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )


def pod_status(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(kget(kube, ns, "pod", name)["status"])


def wait_pod_phase(
    kube: Any, ns: str, name: str, phases: tuple[str, ...], timeout: float = 90
) -> dict[str, Any]:
    return wait_for(
        f"pod {name} in {phases}",
        lambda: (s := pod_status(kube, ns, name)).get("phase") in phases and s,
        timeout,
    )


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == ctype), {})


def run_pod(kube: Any, ns: str, name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A restartPolicy Never pod running ``python -c script``; returns its final status."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": PY, "command": ["python", "-c", script]}],
            **spec,
        },
    }
    apply(kube, ns, pod)
    return wait_pod_phase(kube, ns, name, ("Succeeded", "Failed"), timeout=120)


def logs(kube: Any, ns: str, pod: str, *extra: str) -> str:
    return str(kube.kubectl("logs", pod, *extra, namespace=ns).stdout)


def netns_pids(uid: str, agent: NodeAgent) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", f"kl-{uid}"], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def unused_cluster_ip(agent: NodeAgent) -> str:
    """An address in the service range no Service gets: ClusterIPs are drawn from its upper band."""
    return str(ipaddress.ip_network(agent.info.get("serviceCIDR", "10.96.0.0/16"))[250])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit status may wait a moment for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# --------------------------------------------------------------------------- 1. Deployment + Service
def web_deployment(name: str, replicas: int, grace: int, **container: Any) -> dict[str, Any]:
    """``python -m http.server 8080`` pods labelled ``app: <name>`` that serve their pod name at /index.html
    and are Ready once they answer; ``container``: more container fields."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [
                        {
                            "name": "http",
                            "image": PY,
                            "command": [
                                "sh",
                                "-c",
                                "echo $(hostname) > /tmp/index.html && cd /tmp && exec python -m http.server 8080",
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/index.html", "port": "http"},
                                "periodSeconds": 1,
                            },
                            **container,
                        }
                    ],
                },
            },
        },
    }


def test_deployment_becomes_available_and_serves_through_its_cluster_ip(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    labels = {"app": "web"}
    apply(
        kube_cluster,
        ns,
        [
            web_deployment("web", 2, 5, livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 5}),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            },
        ],
    )
    t0 = time.monotonic()

    def available() -> bool:
        dep = kget(kube_cluster, ns, "deployment", "web")
        return (
            condition(dep, "Available").get("status") == "True"
            and dep["status"].get("availableReplicas") == 2
        )

    wait_for("Deployment web Available with 2 replicas", available, timeout=120)
    available_after = time.monotonic() - t0
    pods = kget(kube_cluster, ns, "pods", "-l", "app=web")["items"]
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeName"] == node_agent.node_name
        assert condition(p, "Ready")["status"] == "True"
        assert p["status"]["podIP"].startswith("10.244.")
    names = {p["metadata"]["name"] for p in pods}

    svc_ip = kget(kube_cluster, ns, "service", "web")["spec"]["clusterIP"]
    wait_for(
        "endpoints of web",
        lambda: (
            len(
                [
                    e
                    for s in kget(kube_cluster, ns, "endpointslices", "-l", "kubernetes.io/service-name=web")[
                        "items"
                    ]
                    for e in s.get("endpoints") or []
                ]
            )
            == 2
        ),
    )
    # From the host, through the kernel's DNAT; both replicas answer (random balancing). The slices list
    # both endpoints before the agent's rules route to the second one (as with kube-proxy, the rules follow
    # the slices a moment later), so the requests go on until both have answered or 20 s have passed.
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    with httpx.Client(trust_env=False, timeout=5) as client:
        while seen != names and time.monotonic() < deadline:
            r = wait_for("service answer", lambda: client.get(f"http://{svc_ip}/index.html"), timeout=20)
            assert r.status_code == 200
            seen.add(r.text.strip())
            time.sleep(0.02)
    assert seen == names, f"answers came from {seen}, expected both of {names}"

    # From another pod: by ClusterIP and by the injected service environment variables.
    st = run_pod(
        kube_cluster,
        ns,
        "client",
        "import os, urllib.request as u\n"
        "host, port = os.environ['WEB_SERVICE_HOST'], os.environ['WEB_SERVICE_PORT']\n"
        f"assert host == {svc_ip!r}, host\n"
        "print(u.urlopen(f'http://{host}:{port}/index.html', timeout=5).read().decode().strip())\n",
    )
    assert st["phase"] == "Succeeded", st
    assert logs(kube_cluster, ns, "client").strip() in names

    # Delete one replica: it is replaced, and its processes are gone.
    victim = pods[0]
    uid = victim["metadata"]["uid"]
    pids = netns_pids(uid, node_agent)
    assert pids, "the pod's processes run in its network namespace"
    kube_cluster.kubectl(
        "delete", "pod", victim["metadata"]["name"], "--wait=true", "--timeout=60s", namespace=ns
    )
    assert not any(alive(p) for p in pids), "processes of the deleted pod are still running"
    assert not Path(f"/run/netns/kl-{uid}").exists()

    def replaced() -> bool:
        items = kget(kube_cluster, ns, "pods", "-l", "app=web")["items"]
        fresh = [
            p
            for p in items
            if p["metadata"]["name"] not in names and condition(p, "Ready").get("status") == "True"
        ]
        return len(items) == 2 and len(fresh) == 1

    wait_for("a Ready replacement pod", replaced, timeout=60)
    wait_for("Deployment Available again", available, timeout=60)
    print(f"Deployment Available after {available_after:.1f} s")


def _tcp_fin(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A TCP FIN|ACK header with a valid checksum (the kernel answers no packet whose checksum is wrong)."""

    def header(checksum: int) -> bytes:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x11, 512, checksum, 0)

    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    data = pseudo + header(0)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header(~total & 0xFFFF)


def _icmp_errors_about(icmp: socket.socket, sport: int, seconds: float) -> list[tuple[int, int]]:
    """(type, code) of the ICMP errors read from a raw ICMP socket within ``seconds`` that quote a TCP
    packet from local port ``sport``."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        icmp.settimeout(left)
        try:
            packet = icmp.recv(2048)
        except TimeoutError:
            break
        ihl = (packet[0] & 0x0F) * 4
        kind, code = packet[ihl], packet[ihl + 1]
        quoted = packet[ihl + 8 :]
        if kind == 3 and len(quoted) >= 24 and quoted[9] == socket.IPPROTO_TCP:
            qihl = (quoted[0] & 0x0F) * 4
            if struct.unpack("!H", quoted[qihl : qihl + 2])[0] == sport:
                found.append((kind, code))
    return found


def test_a_service_keeps_a_terminating_pod_that_serves_and_logs_why_it_refuses(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    """As kube-proxy: a Service whose only pod is shutting down (scaled to 0, the pod in its preStop)
    still sends connections to it while it serves, instead of refusing them. What the proxy refuses or
    drops is logged to the kernel's ring buffer: a new connection to a ClusterIP without endpoints
    (refused), a packet conntrack does not track (dropped, never answered), and a reset from a pod that
    does not listen on the Service's target port."""
    from nodeagent import network

    ns = k8s_namespace
    labels = {"app": "lone"}
    apply(
        kube_cluster,
        ns,
        [
            web_deployment("lone", 1, 15, lifecycle={"preStop": {"sleep": {"seconds": 6}}}),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "lone"},
                "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            },
            {  # the same pod, on a port nothing listens on
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "closed"},
                "spec": {"selector": labels, "ports": [{"name": "discard", "port": 80, "targetPort": 9}]},
            },
        ],
    )
    lone = kget(kube_cluster, ns, "service", "lone")["spec"]["clusterIP"]
    closed = kget(kube_cluster, ns, "service", "closed")["spec"]["clusterIP"]
    with httpx.Client(trust_env=False, timeout=5) as client:
        wait_for(
            "lone to answer through its ClusterIP", lambda: client.get(f"http://{lone}/index.html").text, 120
        )
        pod_ip = kget(kube_cluster, ns, "pods", "-l", "app=lone")["items"][0]["status"]["podIP"]

        def refused(ip: str) -> bool:
            try:
                client.get(f"http://{ip}/", timeout=2)
            except httpx.ConnectError as e:
                return "refused" in str(e).lower()
            return False

        mark = network.kernel_log_mark()
        wait_for("the closed port to be routed to the pod and refused", lambda: refused(closed), 30, 0.2)
        unused = unused_cluster_ip(node_agent)
        assert refused(unused)

        # A FIN of no connection conntrack knows: invalid, so never translated; dropped, not answered.
        stray_port = 40000 + secrets.randbelow(20000)
        with (
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp,
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw,
        ):
            with contextlib.suppress(PermissionError):  # a raw packet's sender learns of a drop so
                raw.sendto(
                    _tcp_fin(node_agent.info.get("bridgeIP", "10.244.0.1"), lone, stray_port, 80), (lone, 0)
                )
            assert _icmp_errors_about(icmp, stray_port, 1.0) == [], "the stray FIN was answered"

        def logged() -> list[str] | None:
            lines = network.proxy_log(mark)
            reset = [x for x in lines if "reset from pod" in x and f"SRC={pod_ip} " in x and "SPT=9 " in x]
            no_eps = [x for x in lines if "host->service reject ct=new" in x and f"DST={unused} " in x]
            stray = [x for x in lines if "host->service drop ct=invalid" in x and f"SPT={stray_port} " in x]
            return lines if reset and no_eps and stray else None

        wait_for("the refusals and the drop in the kernel's log", logged, 10, 0.2)

        # Scaled to 0: the pod sleeps in its preStop for 6 s, still serving; its endpoint turns terminating.
        kube_cluster.kubectl("scale", "deployment/lone", "--replicas=0", namespace=ns)

        def terminating() -> bool:
            slices = kget(kube_cluster, ns, "endpointslices", "-l", "kubernetes.io/service-name=lone")[
                "items"
            ]
            conds = [e.get("conditions") or {} for s in slices for e in s.get("endpoints") or []]
            return bool(conds) and all(c.get("terminating") and c.get("serving") for c in conds)

        wait_for("lone's endpoint to turn serving and terminating", terminating, 10, 0.1)
        t0 = time.monotonic()
        answers = []
        while time.monotonic() - t0 < 3:  # within the preStop, after the agent saw the slice (50 ms)
            try:
                answers.append(client.get(f"http://{lone}/index.html").status_code)
            except httpx.HTTPError as e:
                answers.append(f"{type(e).__name__}: {e}")
            time.sleep(0.05)
    assert answers, "no request sent within the preStop"
    assert set(answers) == {200}, answers


# A server that records, in /out, when it came up, when its preStop httpGet arrived and when SIGTERM did.
_MARKING_SERVER = """
import http.server, os, signal, time
name = os.environ["NAME"]
def mark(what):
    with open(f"/out/{name}-{what}", "w") as f:
        f.write(repr(time.time()))
def term(*_):
    mark("term")
    if not os.environ.get("STAY"):
        os._exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        mark("hook")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
srv = http.server.HTTPServer(("0.0.0.0", 8080), H)
mark("up")
srv.serve_forever()
"""


def test_pre_stop_hooks_run_before_sigterm_within_the_grace_period(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent, tmp_path: Path
) -> None:
    """A Service's endpoints drop a deleted pod while its preStop hook runs: a server must still be
    listening then, so SIGTERM waits for the hook (sleep, exec, httpGet), within the grace period."""
    ns = k8s_namespace
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    hooks: dict[str, tuple[dict[str, Any], int]] = {
        "sleep": ({"sleep": {"seconds": 2}}, 30),
        "exec": ({"exec": {"command": ["sh", "-c", "date +%s.%N > /out/exec-hook && sleep 1"]}}, 30),
        "http": ({"httpGet": {"port": 8080, "path": "/drain"}}, 30),
        # A hook that fails (nothing listens on 9999): an event, and SIGTERM at once.
        "broken": ({"httpGet": {"port": 9999, "path": "/"}}, 30),
        # Longer than the grace period (the API refuses such a sleep hook, not an exec one): cut at
        # 3 s, its command killed, then SIGTERM with the kubelet's 2 s minimum (this server stays up
        # after SIGTERM, so its hook would write long-late at 4 s were it not killed at the cut).
        "long": ({"exec": {"command": ["sh", "-c", "sleep 4 && date > /out/long-late"]}}, 3),
    }
    apply(
        kube_cluster,
        ns,
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "volumes": [{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}],
                    "containers": [
                        {
                            "name": "srv",
                            "image": PY,
                            "command": ["python", "-c", _MARKING_SERVER],
                            "env": [{"name": "NAME", "value": name}]
                            + ([{"name": "STAY", "value": "1"}] if name == "long" else []),
                            "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                            "lifecycle": {"preStop": hook},
                        }
                    ],
                },
            }
            for name, (hook, grace) in hooks.items()
        ],
    )
    wait_for("every server up", lambda: all((out / f"{n}-up").exists() for n in hooks), timeout=90)
    deleted_at = time.time()
    kube_cluster.kubectl("delete", "pod", *hooks, "--wait=false", namespace=ns)
    wait_for("SIGTERM in every pod", lambda: all((out / f"{n}-term").exists() for n in hooks), timeout=60)

    def at(what: str) -> float:
        return float((out / what).read_text()) - deleted_at

    assert 2.0 <= at("sleep-term") < 10, at("sleep-term")
    assert 0 < at("exec-hook") < at("exec-term") - 1.0, (at("exec-hook"), at("exec-term"))
    assert 0 < at("http-hook") < at("http-term"), (at("http-hook"), at("http-term"))
    assert 0 < at("broken-term") < 2.0, at("broken-term")
    assert 3.0 <= at("long-term") < 10, at("long-term")
    wait_for("the pods gone", lambda: not kget(kube_cluster, ns, "pods")["items"], timeout=60)
    assert not (out / "long-late").exists(), "a preStop command outlived the grace period's cut"
    events = kget(kube_cluster, ns, "events", "--field-selector", "reason=FailedPreStopHook")["items"]
    assert {e["involvedObject"]["name"] for e in events} == {"long", "broken"}, [e["message"] for e in events]


# --------------------------------------------------------------------------- 2. Jobs
def test_indexed_job_with_two_completions_completes(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "indexed"},
            "spec": {
                "completions": 2,
                "parallelism": 2,
                "completionMode": "Indexed",
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "work",
                                "image": PY,
                                "command": [
                                    "python",
                                    "-c",
                                    "import os; print('index', os.environ['JOB_COMPLETION_INDEX'])",
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )
    job = wait_for(
        "Job Complete",
        lambda: (
            (j := kget(kube_cluster, ns, "job", "indexed"))
            and condition(j, "Complete").get("status") == "True"
            and j
        ),
        timeout=120,
    )
    assert job["status"]["succeeded"] == 2
    assert job["status"].get("completedIndexes") == "0,1"
    pods = kget(kube_cluster, ns, "pods", "-l", "job-name=indexed")["items"]
    outputs = sorted(logs(kube_cluster, ns, p["metadata"]["name"]).strip() for p in pods)
    assert outputs == ["index 0", "index 1"]
    for p in pods:
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0
        assert term["reason"] == "Completed"


def test_failing_job_reports_exit_code_and_termination_message(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "fails"},
            "spec": {
                "backoffLimit": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "work",
                                "image": "busybox:1.36",
                                "command": [
                                    "sh",
                                    "-c",
                                    "echo 'model diverged: loss=nan' > /dev/termination-log; echo failing; exit 3",
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )
    job = wait_for(
        "Job Failed",
        lambda: (
            (j := kget(kube_cluster, ns, "job", "fails"))
            and condition(j, "Failed").get("status") == "True"
            and j
        ),
        timeout=150,
    )
    assert condition(job, "Failed")["reason"] == "BackoffLimitExceeded"
    pods = kget(kube_cluster, ns, "pods", "-l", "job-name=fails")["items"]
    assert len(pods) == 2  # the first try and one retry (backoffLimit 1)
    for p in pods:
        assert p["status"]["phase"] == "Failed"
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 3
        assert term["reason"] == "Error"
        assert term["message"].strip() == "model diverged: loss=nan"
        assert logs(kube_cluster, ns, p["metadata"]["name"]).strip() == "failing"


@pytest.mark.slow
def test_cronjob_creates_a_job_that_runs_to_completion(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "tick"},
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "OnFailure",
                                "containers": [
                                    {"name": "tick", "image": "busybox", "command": ["sh", "-c", "echo tick"]}
                                ],
                            }
                        }
                    }
                },
            },
        },
    )

    def completed_job() -> dict[str, Any] | None:
        for j in kget(kube_cluster, ns, "jobs")["items"]:
            if condition(j, "Complete").get("status") == "True":
                return dict(j)
        return None

    job = wait_for("a Job of the CronJob to complete", completed_job, timeout=150, interval=2)
    assert job["metadata"]["ownerReferences"][0]["name"] == "tick"
    pod = kget(kube_cluster, ns, "pods", "-l", f"job-name={job['metadata']['name']}")["items"][0]
    assert logs(kube_cluster, ns, pod["metadata"]["name"]).strip() == "tick"


# --------------------------------------------------------------------------- 3. in-cluster config + RBAC
IN_CLUSTER = """
import os
from kubernetes import client, config
config.load_incluster_config()
v1 = client.CoreV1Api()
ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()
names = sorted(p.metadata.name for p in v1.list_namespaced_pod(ns).items)
print('pods:', ' '.join(names))
try:
    v1.list_namespaced_secret(ns)
    print('secrets: allowed')
except client.ApiException as exc:
    print('secrets:', exc.status)
try:
    v1.list_namespaced_pod('kube-system')
    print('other namespace: allowed')
except client.ApiException as exc:
    print('other namespace:', exc.status)
"""


def test_in_cluster_client_uses_its_service_account_and_rbac(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pod-lister"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "lister"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-lister"},
                "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": ns}],
            },
        ],
    )
    st = run_pod(kube_cluster, ns, "incluster", IN_CLUSTER, serviceAccountName="lister")
    out = logs(kube_cluster, ns, "incluster")
    assert st["phase"] == "Succeeded", out
    assert "pods: incluster" in out
    assert "secrets: 403" in out
    assert "other namespace: 403" in out
    # The token is a bound ServiceAccount token (TokenRequest API), mounted by the private mount namespace.
    pod = kget(kube_cluster, ns, "pod", "incluster")
    assert pod["spec"]["serviceAccountName"] == "lister"


def test_pods_reach_only_pods_services_and_allowed_host_services(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    script = f"""
import os, socket, urllib.request as u, ssl
def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        return s.connect_ex((host, port))
    finally:
        s.close()
host = os.environ['KUBERNETES_SERVICE_HOST']
ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')
try:
    print('apiserver', u.urlopen(f'https://{{host}}/healthz', context=ctx, timeout=5).status)
except Exception as exc:
    print('apiserver', getattr(exc, 'code', exc))
print('internet', tcp('192.0.2.1', 80) != 0, tcp('8.8.8.8', 53) != 0)
import subprocess
add = subprocess.run(['ip', 'route', 'add', 'default', 'via', '10.244.0.1'], capture_output=True)
enter = subprocess.run(['nsenter', '-t', '1', '-n', 'true'], capture_output=True)
print('route change refused', add.returncode != 0, 'host netns refused', enter.returncode != 0)
print('kubelet port', tcp({node_agent.info.get("bridgeIP", "10.244.0.1")!r}, {node_agent.info.get("kubeletPort", 10250)}) != 0)
print('no endpoints', tcp({unused_cluster_ip(node_agent)!r}, 80) != 0)
"""
    st = run_pod(kube_cluster, k8s_namespace, "probe", script)
    out = logs(kube_cluster, k8s_namespace, "probe")
    assert st["phase"] == "Succeeded", out
    assert any(f"apiserver {code}" in out for code in (200, 401, 403)), out  # reached over TLS, name verified
    assert "internet True True" in out
    # No CAP_NET_ADMIN / CAP_SYS_ADMIN (the runtime's default capability set): routes and namespaces stay.
    assert "route change refused True host netns refused True" in out
    assert "kubelet port True" in out
    assert "no endpoints True" in out


# --------------------------------------------------------------------------- 4. scheduling
def test_pod_requesting_more_gpus_than_the_node_has_stays_pending_unschedulable(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "greedy"},
            "spec": {
                "containers": [
                    {
                        "name": "train",
                        "image": "kubeloop/trainer:dev",
                        "resources": {"limits": {"nvidia.com/gpu": "64"}},
                    }
                ]
            },
        },
    )

    def unschedulable() -> dict[str, Any] | None:
        pod = kget(kube_cluster, ns, "pod", "greedy")
        c = condition(pod, "PodScheduled")
        return pod if c.get("status") == "False" and c.get("reason") == "Unschedulable" else None

    pod = wait_for("PodScheduled=False/Unschedulable", unschedulable, timeout=30)
    msg = condition(pod, "PodScheduled")["message"]
    assert "0/1 nodes are available" in msg, msg
    assert "Insufficient nvidia.com/gpu" in msg, msg
    time.sleep(3)
    pod = kget(kube_cluster, ns, "pod", "greedy")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    events = kget(kube_cluster, ns, "events", "--field-selector", "involvedObject.name=greedy")["items"]
    assert any(e["reason"] == "FailedScheduling" for e in events)


def test_unmapped_image_reports_image_pull_errors(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "nope"},
            "spec": {"containers": [{"name": "c", "image": "registry.example.com/not/mapped:1"}]},
        },
    )

    def pull_error() -> str | None:
        st = pod_status(kube_cluster, ns, "nope")
        for cs in st.get("containerStatuses") or []:
            reason = cs["state"].get("waiting", {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                return str(reason)
        return None

    wait_for("ErrImagePull", pull_error, timeout=30)
    assert pod_status(kube_cluster, ns, "nope")["phase"] == "Pending"


# --------------------------------------------------------------------------- system services
def test_pods_reach_minio_and_mlflow_through_services(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent, mlflow_server: Any
) -> None:
    def services() -> dict[str, str] | None:
        items = kget(kube_cluster, "kubeloop-system", "services")["items"]
        found = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in items}
        return found if {"minio", "mlflow"} <= set(found) else None

    ips = wait_for("Services kubeloop-system/minio and mlflow", services, timeout=40)

    def served() -> bool:
        # MinIO and MLflow started after the agent are routed once their slices list the bridge (within a
        # second of their start; the Services themselves may be left from an earlier run).
        slices = kget(kube_cluster, "kubeloop-system", "endpointslices")["items"]
        return all(
            any(sl["metadata"]["name"] == f"{n}-host" and sl.get("endpoints") for sl in slices)
            for n in ("minio", "mlflow")
        )

    wait_for("the agent routing to the host's MinIO and MLflow", served, timeout=40)
    script = (
        "import urllib.request as u\n"
        "print('minio', u.urlopen('http://minio.kubeloop-system.svc:9000/minio/health/live', timeout=5).status)\n"
        f"print('mlflow', u.urlopen('http://{ips['mlflow']}:5000/health', timeout=10).status)\n"
    )
    st = run_pod(kube_cluster, k8s_namespace, "storage-client", script)
    out = logs(kube_cluster, k8s_namespace, "storage-client")
    assert st["phase"] == "Succeeded", out
    assert "minio 200" in out
    assert "mlflow 200" in out


def test_pods_resolve_services_and_peers_through_the_cluster_dns(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    """As CoreDNS answers on a real cluster: Services (short names through the search list), a headless
    Service's pods by hostname, both back to names; names the cluster does not know fail at once, without
    waiting. Before the agent served DNS, a pod asked the node's nameserver, which it cannot reach, so
    all but the names in its /etc/hosts failed (EAI_AGAIN)."""
    if not node_agent.local:
        pytest.skip("the local node agent's DNS (a real cluster's CoreDNS forwards unknown names upstream)")
    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "plain"},
                "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "peers"},
                "spec": {"clusterIP": "None", "selector": {"app": "peer"}},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "peer", "labels": {"app": "peer"}},
                "spec": {
                    "hostname": "rank-0",
                    "subdomain": "peers",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": PY,
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                        }
                    ],
                },
            },
        ],
    )
    peer_ip = wait_pod_phase(kube_cluster, ns, "peer", ("Running",))["podIP"]
    script = f"""
import json, os, socket, time
def timed(fn):
    t = time.monotonic()
    try:
        r = fn()
    except OSError as e:
        r = 'error ' + type(e).__name__
    return [r, round(time.monotonic() - t, 2)]
deadline = time.monotonic() + 30
while True:  # the peer is listed once the EndpointSlice controller has seen it ready
    peer = timed(lambda: socket.gethostbyname('rank-0.peers'))
    if not peer[0].startswith('error') or time.monotonic() > deadline:
        break
    time.sleep(0.5)
out = {{
    'peer': peer,
    'peer fqdn': timed(lambda: socket.gethostbyname('rank-0.peers.{ns}.svc.cluster.local')),
    'peer reverse': timed(lambda: socket.gethostbyaddr({peer_ip!r})[0]),
    'peer nameinfo': timed(lambda: socket.getnameinfo(({peer_ip!r}, 0), socket.NI_NAMEREQD)[0]),
    'service': timed(lambda: socket.gethostbyname('plain')),
    'service reverse': timed(lambda: socket.gethostbyaddr(os.environ['PLAIN_SERVICE_HOST'])[0]),
    'system service': timed(lambda: socket.gethostbyname('minio.kubeloop-system.svc.cluster.local')),
    'outside': timed(lambda: socket.getaddrinfo('example.invalid', 80)),
    'unknown pod address': timed(lambda: socket.gethostbyaddr('10.244.0.250')),
    'env': os.environ['PLAIN_SERVICE_HOST'],
    'resolv.conf': open('/etc/resolv.conf').read(),
}}
print(json.dumps(out))
"""
    st = run_pod(kube_cluster, ns, "resolver", script)
    text = logs(kube_cluster, ns, "resolver")
    assert st["phase"] == "Succeeded", text
    out = json.loads(text.strip().splitlines()[-1])
    fqdn = f"rank-0.peers.{ns}.svc.cluster.local"
    assert out["peer"][0] == peer_ip, out
    assert out["peer fqdn"][0] == peer_ip, out
    assert out["peer reverse"][0] == fqdn, out
    assert out["peer nameinfo"][0] == fqdn, out
    assert out["service"][0] == out["env"], out
    assert out["service reverse"][0] == f"plain.{ns}.svc.cluster.local", out
    assert out["system service"][0] == node_agent.service_ip("minio"), out
    assert out["outside"][0].startswith("error gaierror"), out
    assert out["unknown pod address"][0].startswith("error herror"), out
    slow = {k: v for k, v in out.items() if isinstance(v, list) and k != "peer" and v[1] > 1.0}
    assert not slow, f"lookups that waited: {slow}"
    assert out["peer"][1] <= 1.0, out
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local" in out["resolv.conf"], out
    assert "options ndots:5" in out["resolv.conf"], out


# --------------------------------------------------------------------------- restart safety
def test_agent_restart_adopts_running_pods(
    kube_cluster: Any, k8s_namespace: str, node_agent: NodeAgent
) -> None:
    if not node_agent.local:
        pytest.skip("needs the local node agent")
    from nodeagent.cli import running_pid, stop_agent
    from nodeagent.pytest_fixtures import agent_cli

    ns = k8s_namespace
    apply(
        kube_cluster,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "survivor"},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "srv",
                        "image": PY,
                        "command": ["python", "-m", "http.server", "8000"],
                        "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                    }
                ],
            },
        },
    )
    wait_for(
        "survivor Ready",
        lambda: condition(kget(kube_cluster, ns, "pod", "survivor"), "Ready").get("status") == "True",
    )
    uid = kget(kube_cluster, ns, "pod", "survivor")["metadata"]["uid"]
    pids = netns_pids(uid, node_agent)
    old_agent = running_pid()
    assert stop_agent() == old_agent
    assert all(alive(p) for p in pids), "pods keep running while the agent is down"
    up = agent_cli("up")
    assert up.returncode == 0, up.stderr
    assert running_pid() not in (None, old_agent)
    wait_for(
        "survivor Ready again",
        lambda: condition(kget(kube_cluster, ns, "pod", "survivor"), "Ready").get("status") == "True",
        timeout=30,
    )
    status = pod_status(kube_cluster, ns, "survivor")["containerStatuses"][0]
    assert status["restartCount"] == 0
    assert netns_pids(uid, node_agent) == pids, "the same processes, adopted"
    kube_cluster.kubectl("delete", "pod", "survivor", "--wait=true", "--timeout=60s", namespace=ns)
    assert not any(alive(p) for p in pids)

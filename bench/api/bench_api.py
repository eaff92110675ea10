"""REST facade load benchmark (``make bench-api``), loopback only, bounded in clients and time.

Against the local cluster (started through its lease, as the tests do; stopped afterwards if this
started it): the facade runs as its own process (``kubeloop-api``, as in a pod); this process holds 200
SSE status streams on a namespace while 4 workers run a create/list mix for 60 s. Each list is sent
twice, back to back: through the facade and straight to the API server, with the same
ServiceAccount token, page size and namespace (pre-filled with 100 TrainingJobs), so the p99 of both
comes from one run. Every create reaches every stream as an event.

Last line: ``RESULT api_list_p99_ms=<n> kube_list_p99_ms=<n> list_p99_ratio=<r> sse_clients=<n>
errors=<n> ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "api" / "tests"))

from api_cluster import (  # noqa: E402  (api/tests: tenant setup shared with the tests)
    apply_crds,
    create_namespace,
    delete_namespace,
    no_pods,
    tenant,
)
from loadgen import Target, run_load  # noqa: E402  (bench/api/loadgen.py)


def _kube_ssl(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    ctx = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif "certificate-authority" in cluster:
        ctx.load_verify_locations(cafile=cluster["certificate-authority"])
    return str(cluster["server"]), ctx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200, help="SSE status streams held open")
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of the create/list mix")
    ap.add_argument("--workers", type=int, default=4, help="concurrent create/list workers")
    ap.add_argument("--prefill", type=int, default=100, help="TrainingJobs in the namespace before the run")
    args = ap.parse_args()
    if not (1 <= args.clients <= 500 and 1 <= args.seconds <= 300):
        ap.error("bounded: 1..500 clients, 1..300 s")

    from localcluster.cluster import LocalCluster

    cluster = LocalCluster()
    lease, data = cluster.acquire("kube")
    kubeconfig = Path(data["kubeconfig"])
    proc: subprocess.Popen[bytes] | None = None
    namespaces: list[str] = []
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        apply_crds(_Kubectl(kubeconfig), REPO / "crds")
        home, ns = create_namespace(api, "bench-api-home"), create_namespace(api, "bench-api")
        namespaces += [home, ns]
        user = tenant(api, ns)
        no_pods(api, ns)
        port = _free_port()
        log = tempfile.NamedTemporaryFile(prefix="kubeloop-api-bench-", suffix=".log", delete=False)  # noqa: SIM115
        env = {
            **os.environ,
            "KUBELOOP_API_KUBECONFIG": str(kubeconfig),
            "KUBELOOP_API_PORT": str(port),
            "KUBELOOP_API_NAMESPACE": home,
            "KUBELOOP_API_ACCESS_LOG": "false",
            "KUBELOOP_API_LOG_LEVEL": "warning",
            "KUBELOOP_API_SSE_HEARTBEAT_S": "5",
        }
        exe = Path(sys.executable).parent / "kubeloop-api"
        proc = subprocess.Popen([str(exe)], env=env, stdout=log, stderr=subprocess.STDOUT)
        api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the facade did not start; see {log.name}")
            time.sleep(0.2)
        kube_url, kube_ssl = _kube_ssl(kubeconfig)
        target = Target(api_url, kube_url, kube_ssl, user.token, ns)
        print(f"prefilling {args.prefill} TrainingJobs in {ns} …", flush=True)
        with httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {user.token}"}, timeout=30
        ) as c:
            for i in range(args.prefill):
                r = c.post(f"/api/v1/namespaces/{ns}/trainingjobs", json=_prefill(i))
                if r.status_code != 201:
                    raise SystemExit(f"prefill failed: {r.status_code} {r.text}")
        print(
            f"{args.clients} SSE clients + {args.workers} create/list workers for {args.seconds:.0f} s …",
            flush=True,
        )
        res = asyncio.run(
            run_load(target, sse_clients=args.clients, seconds=args.seconds, workers=args.workers)
        )
        s = res.summary()
        load = os.getloadavg()
        print("facade's own view:", _facade_means(api_url))
        print(json.dumps(s, indent=2))
        for e in res.errors[:20]:
            print("error:", e)
        ratio = s["api_list_p99_ms"] / s["kube_list_p99_ms"] if s["kube_list_p99_ms"] else float("nan")
        print(
            f"RESULT api_list_p99_ms={s['api_list_p99_ms']} kube_list_p99_ms={s['kube_list_p99_ms']} "
            f"list_p99_ratio={ratio:.2f} api_list_p50_ms={s['api_list_p50_ms']} kube_list_p50_ms={s['kube_list_p50_ms']} "
            f"sse_clients={args.clients} sse_events={s['sse_events']} sse_delivery_p99_ms={s['sse_delivery_p99_ms']} "
            f"creates={s['creates']} lists={s['api_lists']} "
            f"errors={s['errors']} seconds={s['seconds']} loadavg={load[0]:.2f}"
        )
        return 0 if not res.errors else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for n in namespaces:
            delete_namespace(api, n)
        api.close()
        cluster.release("kube", lease)


def _facade_means(api_url: str) -> dict[str, float]:
    """Mean seconds of the list route and of its Kubernetes calls, from the facade's /metrics."""
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for line in text.splitlines():
        for key, prefix in (
            ("list", 'kubeloop_api_request_duration_seconds_{}{{method="GET",route="/api/v1/namespaces/{{namespace}}/trainingjobs"}}'),
            ("kubernetes", 'kubeloop_api_upstream_request_duration_seconds_{}{{status="2xx",upstream="kubernetes"}}'),
        ):  # fmt: skip
            for part in ("sum", "count"):
                if line.startswith(prefix.format(part)):
                    sums[f"{key}_{part}"] = float(line.rsplit(" ", 1)[1])
    return {
        k: round(1000 * sums[f"{k}_sum"] / sums[f"{k}_count"], 2)
        for k in ("list", "kubernetes")
        if sums.get(f"{k}_count")
    }


def _prefill(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"prefill-{i}", "labels": {"bench": "prefill"}},
        "spec": {
            "dataset": {"uri": "s3://kubeloop/datasets/bench.csv", "target": "y"},
            "task": "classification",
            # Suspended: an operator in the cluster makes its Job but starts no training for it.
            "runPolicy": {"suspend": True},
        },
    }


class _Kubectl:
    """What apply_crds needs of the test fixtures' KubeCluster: kubectl against this kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(self, *args: str) -> None:
        kubectl = Path(sys.executable).parent / "kubectl"
        subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args], check=True, capture_output=True
        )


if __name__ == "__main__":
    sys.exit(main())

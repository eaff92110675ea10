"""The operator under load on the local cluster (``make bench-operator``, issue #12 acceptance 7).

One run, one operator process (this checkout's code, as the operator's ServiceAccount, reconciling a
namespace of its own), trainer pods from an image the node agent does not map — so they never run
the trainer: with the agent's ``fakeImages`` mode they sleep, otherwise they wait in
ImagePullBackOff; either way the operator has real pods to watch and report on.

1. Baseline: 10 TrainingJobs, converged; the operator's RSS (median of 5 samples).
2. Steady: 100 TrainingJobs created at 5 per second; for each, the time from its create request to
   the Job existing and to the first status condition (the client sees both through watches).
3. For comparison, the API server's own pace: the same 500 creates into a namespace no operator
   watches (printed, not in the RESULT line).
4. The 110 are deleted (the operator removes its finalizers), then a burst: 500 TrainingJobs created
   by 8 client threads as fast as the API server takes them; CRs/s = 500 / (first create -> last
   Job seen). Converged, the RSS again: RSS with 500 over RSS with 10.

Last line: ``RESULT operator_crs_per_s=<n> operator_p99_s=<n> operator_rss_ratio=<r>`` (p99: the
larger of the two steady-state p99s). The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))

from kubeloop_operator import k8s  # noqa: E402
from localcluster import platform as lp  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402

FAKE_TRAINER = "kubeloop-bench/fake-trainer:1"


def say(msg: str) -> None:
    print(f"[bench-operator] {msg}", flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Watcher:
    """A watch stream (newline-delimited JSON from the API server, no kubectl in between): when each
    object was first seen (and first seen with a condition in its status), by name, on this client's
    clock. ``metadata_only`` asks for PartialObjectMetadata, which keeps a 500-object watch cheap."""

    def __init__(
        self, kube: k8s.Kube, kind: k8s.Kind, namespace: str, *, metadata_only: bool = False
    ) -> None:
        self.seen: dict[str, float] = {}
        self.with_condition: dict[str, float] = {}
        self.statused: set[str] = set()
        accept = (
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
            if metadata_only
            else "application/json"
        )
        api = kube._api  # the bench reuses the client's connection setup (TLS, credentials)
        method, url, headers, _, _ = api.param_serialize(
            method="GET",
            resource_path=kind.path(namespace),
            query_params=[("watch", "1"), ("allowWatchBookmarks", "false")],
            header_params={"Accept": accept},
            auth_settings=["BearerToken"],
        )
        self._request = (method, url, headers)
        self._pool = api.rest_client.pool_manager
        self._stopped = False
        self._resp: Any = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """Watch, and watch again when the server ends the stream (re-listing only adds what was
        missed: first-seen times are kept)."""
        method, url, headers = self._request
        while not self._stopped:
            buf = b""
            try:
                self._resp = self._pool.request(method, url, headers=headers, preload_content=False)
                for chunk in self._resp.stream(65536):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    now = time.monotonic()
                    for line in lines:
                        if line.strip():
                            self._event(json.loads(line), now)
            except Exception as e:
                if not self._stopped:
                    say(
                        f"watch {url.split('?')[0].rsplit('/', 1)[-1]} ended ({type(e).__name__}: {e}); again"
                    )
                    time.sleep(1)

    def _event(self, ev: dict[str, Any], now: float) -> None:
        obj = ev.get("object") or {}
        name = (obj.get("metadata") or {}).get("name")
        if not name or ev.get("type") == "DELETED":
            return
        self.seen.setdefault(name, now)
        status = obj.get("status") or {}
        if status.get("conditions"):
            self.with_condition.setdefault(name, now)
        if status.get("observedGeneration") and status.get("phase"):
            self.statused.add(name)

    def stop(self) -> None:
        self._stopped = True
        if self._resp is not None and hasattr(self._resp, "shutdown"):
            self._resp.shutdown()  # unblocks the reading thread; it is a daemon thread anyway


def wait_until(what: str, fn: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"bench-operator: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "dataset": {"uri": "s3://kubeloop/datasets/breast_cancer.csv", "target": "target"},
            "task": "classification",
            "registry": {"modelName": "bench-model"},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "runPolicy": {"backoffLimit": 1},
        },
    }


def rss(op: lp.LocalOperator, samples: int = 5) -> int:
    values = []
    for _ in range(samples):
        values.append(op.rss_bytes())
        time.sleep(1)
    return int(statistics.median(values))


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--baseline", type=int, default=10)
    ap.add_argument("--steady", type=int, default=100)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()

    cluster = LocalCluster()
    leases = [(g, cluster.acquire(g)[0]) for g in ("kube", "mlflow")]
    from nodeagent import config as agent_config
    from nodeagent.cli import running_pid
    from nodeagent.pytest_fixtures import agent_cli

    agent_started = False
    if running_pid() is None:
        proc = agent_cli("up")
        if proc.returncode != 0:
            raise SystemExit(f"cannot start the node agent: {proc.stderr}")
        agent_started = True
    data = cluster.load()
    kubectl = lp.Kubectl(Path(data["kubeconfig"]))
    ns = f"t-bench-operator-{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    op: lp.LocalOperator | None = None
    watchers: list[Watcher] = []
    try:
        lp.prerequisites(kubectl)
        kubectl("create", "namespace", ns)
        lp.ensure_secret(kubectl, ns, data["minio"])
        mode = agent_config.load().fake_images
        say(f"namespace {ns}; trainer image {FAKE_TRAINER} (node agent fakeImages: {mode}); load {loadavg()}")
        op = lp.LocalOperator(kubectl, ns, data["minio"], data["mlflow"]["tracking_uri"], workdir)
        op.start(trainer_image=FAKE_TRAINER)
        admin = k8s.Kube.connect(str(kubectl.kubeconfig), pool_size=args.threads + 4)
        jobs = Watcher(admin, k8s.JOB, ns, metadata_only=True)
        tjs = Watcher(admin, k8s.TRAININGJOB, ns)
        watchers = [jobs, tjs]
        time.sleep(2)

        sent: dict[str, float] = {}

        def create(name: str) -> None:
            sent[name] = time.monotonic()
            admin.create(manifest(name, ns))

        # 1. baseline
        base = [f"base-{i}" for i in range(args.baseline)]
        for n in base:
            create(n)
        wait_until("the baseline's status", lambda: all(n in tjs.statused for n in base), 120)
        time.sleep(10)
        rss_base = rss(op)
        say(f"baseline: {len(base)} TrainingJobs, operator RSS {rss_base / 2**20:.1f} MiB")

        # 2. steady rate
        steady = [f"steady-{i}" for i in range(args.steady)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for i, n in enumerate(steady):
                time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
                pool.submit(create, n)
        wait_until(
            "the steady TrainingJobs' Jobs and conditions",
            lambda: all(n in jobs.seen and n in tjs.with_condition for n in steady),
            180,
        )
        to_job = [jobs.seen[n] - sent[n] for n in steady]
        to_cond = [tjs.with_condition[n] - sent[n] for n in steady]
        say(
            f"steady {args.rate:g}/s x {len(steady)}: create->Job p50 {statistics.median(to_job):.3f} s "
            f"p99 {p99(to_job):.3f} s; create->condition p50 {statistics.median(to_cond):.3f} s "
            f"p99 {p99(to_cond):.3f} s; load {loadavg()}"
        )

        # 3. the API server's own pace, for comparison: the same burst into a namespace no operator
        #    watches (nothing but the creates), then deleted
        floor_ns = f"{ns}-floor"
        kubectl("create", "namespace", floor_ns)
        t_floor = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(
                pool.map(
                    lambda n: admin.create(manifest(n, floor_ns)), [f"floor-{i}" for i in range(args.burst)]
                )
            )
        floor_rate = args.burst / (time.monotonic() - t_floor)
        kubectl("delete", "namespace", floor_ns, "--wait=false")
        say(
            f"API server alone: {args.burst} TrainingJob creates at {floor_rate:.1f}/s (no operator); load {loadavg()}"
        )

        # 4. clean slate, then the burst
        for n in [*base, *steady]:
            admin.delete(k8s.TRAININGJOB, ns, n)
        wait_until("the first TrainingJobs to be deleted", lambda: not admin.list(k8s.TRAININGJOB, ns), 300)
        burst = [f"burst-{i}" for i in range(args.burst)]
        t_start = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(create, burst))
        t_sent = time.monotonic() - t_start
        wait_until("every burst TrainingJob's Job", lambda: all(n in jobs.seen for n in burst), 600)
        span = max(jobs.seen[n] for n in burst) - min(sent[n] for n in burst)
        crs_per_s = len(burst) / span
        say(
            f"burst: {len(burst)} created in {t_sent:.1f} s, all Jobs within {span:.1f} s: {crs_per_s:.1f} CRs/s; load {loadavg()}"
        )

        def all_statused() -> bool:
            if not all(n in tjs.statused for n in burst):  # the watch may lag; the list is the truth
                for t in admin.list(k8s.TRAININGJOB, ns):
                    st = t.get("status") or {}
                    if st.get("observedGeneration") and st.get("phase"):
                        tjs.statused.add(t["metadata"]["name"])
            return all(n in tjs.statused for n in burst)

        wait_until("every burst TrainingJob's status", all_statused, 600, interval=5)
        time.sleep(20)
        rss_burst = rss(op)
        ratio = rss_burst / rss_base
        say(
            f"{len(burst)} TrainingJobs: operator RSS {rss_burst / 2**20:.1f} MiB ({ratio:.2f}x the baseline); load {loadavg()}"
        )
        print(
            f"RESULT operator_crs_per_s={crs_per_s:.1f} operator_p99_s={max(p99(to_job), p99(to_cond)):.3f} "
            f"operator_rss_ratio={ratio:.2f}"
        )
        admin.close()
        return 0
    finally:
        for w in watchers:
            w.stop()
        _cleanup(kubectl, ns, op)
        if agent_started:
            agent_cli("down")
        for g, token in reversed(leases):
            cluster.release(g, token)


def _cleanup(kubectl: lp.Kubectl, ns: str, op: lp.LocalOperator | None) -> None:
    """The TrainingJobs go first (one delete-collection request), while the operator still runs to
    release its finalizer on them; then the operator, then the namespace."""
    try:
        admin = k8s.Kube.connect(str(kubectl.kubeconfig))
        admin.request(
            "DELETE",
            k8s.TRAININGJOB.path(ns),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        deadline = time.monotonic() + 300
        while (
            op is not None and op.running and time.monotonic() < deadline and admin.list(k8s.TRAININGJOB, ns)
        ):
            time.sleep(2)
    except Exception as e:
        say(f"cleanup: {e}")
    finally:
        if op is not None:
            op.stop()
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


if __name__ == "__main__":
    raise SystemExit(main())

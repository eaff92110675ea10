"""Load for the REST facade: SSE status streams held open while a create/list mix runs, with the same
lists sent straight to the Kubernetes API server under the same identity in the same run (like for
like: same namespace, page size, caller, concurrency, interleaved in time).

Used by bench/api/bench_api.py (``make bench-api``) and, with small numbers, by the suite
(api/tests/test_component_load.py). Loopback only; bounded in clients and seconds.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

_NAME = re.compile(r'"name":"([^"]+)"')


@dataclass
class Target:
    api_url: str
    """The facade, e.g. http://127.0.0.1:8000"""
    kube_url: str
    """The API server, e.g. https://127.0.0.1:6443"""
    kube_ssl: ssl.SSLContext
    token: str
    """A cluster token of the caller (used for both paths)."""
    namespace: str


@dataclass
class LoadResult:
    sse_clients: int
    seconds: float
    creates: int = 0
    api_lists: int = 0
    kube_lists: int = 0
    sse_events: int = 0
    errors: list[str] = field(default_factory=list)
    api_list_s: list[float] = field(default_factory=list)
    kube_list_s: list[float] = field(default_factory=list)
    create_s: list[float] = field(default_factory=list)
    sse_open_s: list[float] = field(default_factory=list)
    sse_delivery_s: list[float] = field(default_factory=list)
    created_at: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        return (
            statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]
            if len(values) > 1
            else values[0]
        )

    def summary(self) -> dict[str, Any]:
        p = self.pct
        return {
            "sse_clients": self.sse_clients,
            "seconds": round(self.seconds, 1),
            "errors": len(self.errors),
            "creates": self.creates,
            "api_lists": self.api_lists,
            "kube_lists": self.kube_lists,
            "sse_events": self.sse_events,
            "api_list_p50_ms": round(p(self.api_list_s, 50) * 1000, 2),
            "api_list_p99_ms": round(p(self.api_list_s, 99) * 1000, 2),
            "kube_list_p50_ms": round(p(self.kube_list_s, 50) * 1000, 2),
            "kube_list_p99_ms": round(p(self.kube_list_s, 99) * 1000, 2),
            "create_p99_ms": round(p(self.create_s, 99) * 1000, 2),
            "sse_open_p99_ms": round(p(self.sse_open_s, 99) * 1000, 2),
            "sse_deliveries": len(self.sse_delivery_s),
            "sse_delivery_p50_ms": round(p(self.sse_delivery_s, 50) * 1000, 2),
            "sse_delivery_p99_ms": round(p(self.sse_delivery_s, 99) * 1000, 2),
        }


def _manifest(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"bench": "api"}},
        "spec": {
            "dataset": {"uri": "s3://kubeloop/datasets/bench.csv", "target": "y"},
            "task": "classification",
            # Suspended: an operator in the cluster makes its Job but starts no training for it.
            "runPolicy": {"suspend": True},
        },
    }


async def _sse_client(
    t: Target, res: LoadResult, stop: asyncio.Event, opened: asyncio.Event, n_open: list[int]
) -> None:
    url = f"{t.api_url}/api/v1/watch/namespaces/{t.namespace}/trainingjobs"
    headers = {"Authorization": f"Bearer {t.token}"}
    t0 = time.perf_counter()
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as c,
            c.stream("GET", url, headers=headers) as r,
        ):
            if r.status_code != 200:
                res.errors.append(f"sse: HTTP {r.status_code}")
                return
            kind = ""
            async for line in r.aiter_lines():
                if line.startswith("data: ") and kind == "added" and res.created_at:
                    # Delivery latency of a create: from sending it to this stream's event.
                    name = _NAME.search(line)
                    if name and (at := res.created_at.get(name[1])) is not None:
                        res.sse_delivery_s.append(time.perf_counter() - at)
                elif line.startswith("event: "):
                    kind = line[7:]
                    if kind == "synced":
                        res.sse_open_s.append(time.perf_counter() - t0)
                        n_open[0] += 1
                        if n_open[0] >= res.sse_clients:
                            opened.set()
                    elif kind == "error":
                        if not stop.is_set():
                            res.errors.append("sse: error event")
                        return
                    else:
                        res.sse_events += 1
    except (httpx.HTTPError, OSError) as e:
        if not stop.is_set():
            res.errors.append(f"sse: {type(e).__name__}")


async def _mix_worker(
    t: Target, res: LoadResult, stop: asyncio.Event, api: httpx.AsyncClient, kube: httpx.AsyncClient,
    worker: int, create_every: int, page: int,
) -> None:  # fmt: skip
    rnd = random.Random(worker)
    headers = {"Authorization": f"Bearer {t.token}"}
    list_api = f"/api/v1/namespaces/{t.namespace}/trainingjobs"
    list_kube = f"/apis/kubeloop.io/v1alpha1/namespaces/{t.namespace}/trainingjobs"
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if i % create_every == 0:
                name = f"bench-{worker}-{i}-{rnd.randrange(10**6)}"
                t0 = time.perf_counter()
                # From the start of the create: its event may reach a stream before the 201 reaches us.
                res.created_at[name] = t0
                r = await api.post(list_api, json=_manifest(name), headers=headers)
                if r.status_code != 201:
                    res.errors.append(f"create: HTTP {r.status_code} {r.text[:200]}")
                    res.created_at.pop(name, None)
                res.create_s.append(time.perf_counter() - t0)
                res.creates += 1
                continue
            # One list through the facade and one straight to the API server, back to back, in an
            # order that alternates so neither always runs on a warmer cache.
            pair = [("api", api, list_api), ("kube", kube, list_kube)]
            if i % 2:
                pair.reverse()
            for which, client, path in pair:
                t0 = time.perf_counter()
                r = await client.get(path, params={"limit": page}, headers=headers)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    res.errors.append(f"list {which}: HTTP {r.status_code}")
                    continue
                if which == "api":
                    res.api_list_s.append(dt)
                    res.api_lists += 1
                else:
                    res.kube_list_s.append(dt)
                    res.kube_lists += 1
        except (httpx.HTTPError, OSError) as e:
            res.errors.append(f"mix: {type(e).__name__}")


async def run_load(
    t: Target, *, sse_clients: int, seconds: float, workers: int = 4, create_every: int = 5, page: int = 100,
    open_timeout: float = 120.0, grace: float = 1.0,
) -> LoadResult:  # fmt: skip
    """Open ``sse_clients`` status streams, then run the create/list mix for ``seconds``."""
    res = LoadResult(sse_clients=sse_clients, seconds=seconds)
    stop, opened = asyncio.Event(), asyncio.Event()
    n_open = [0]
    streams = [asyncio.create_task(_sse_client(t, res, stop, opened, n_open)) for _ in range(sse_clients)]
    try:
        await asyncio.wait_for(opened.wait(), open_timeout)
    except TimeoutError:
        res.errors.append(f"only {n_open[0]} of {sse_clients} streams opened in {open_timeout:.0f} s")
    limits = httpx.Limits(max_connections=workers * 2)
    async with (
        httpx.AsyncClient(base_url=t.api_url, timeout=30, limits=limits) as api,
        httpx.AsyncClient(base_url=t.kube_url, timeout=30, limits=limits, verify=t.kube_ssl) as kube,
    ):
        mix = [
            asyncio.create_task(_mix_worker(t, res, stop, api, kube, w, create_every, page))
            for w in range(workers)
        ]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        res.seconds = time.perf_counter() - t0
        await asyncio.gather(*mix)
    alive = sum(not s.done() for s in streams)
    if alive != sse_clients and not res.errors:
        res.errors.append(f"{sse_clients - alive} SSE streams ended during the run")
    await asyncio.sleep(grace)  # events of the last creates are still on their way
    for s in streams:
        s.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    return res

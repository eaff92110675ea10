"""Long-lived streams (status streams' watches, followed logs) against the real API server do not starve
the facade's other Kubernetes calls: with every connection of ``kube_max_connections`` held by a watch,
a list, a create, a TokenReview still go through at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from api_cluster import ApiEnv, Tenants, live_api
from kubeloop_api.settings import ApiSettings

pytestmark = pytest.mark.component

POOL = 8


def test_streams_holding_every_pooled_connection_do_not_block_other_calls(
    api_env: ApiEnv, tenants: Tenants
) -> None:
    settings = ApiSettings(
        kubeconfig=str(api_env.kube.kubeconfig),
        namespace=api_env.home,
        kube_max_connections=POOL,
        kube_timeout_s=5.0,
        sse_heartbeat_s=1.0,
    )
    ns = tenants.a.namespace
    with live_api(settings) as live:

        async def run() -> tuple[list[int], int, float]:
            async with httpx.AsyncClient(base_url=live.url, headers=tenants.a.headers, timeout=20) as c:
                opened: list[int] = []

                async def stream(i: int, ready: asyncio.Event) -> None:
                    url = f"/api/v1/watch/namespaces/{ns}/trainingjobs"
                    async with c.stream("GET", url, params={"labelSelector": f"pool={i}"}) as r:
                        opened.append(r.status_code)
                        async for line in r.aiter_lines():
                            if line.startswith("event: synced"):
                                ready.set()
                        ready.set()

                events = [asyncio.Event() for _ in range(POOL + 2)]
                tasks = [asyncio.create_task(stream(i, e)) for i, e in enumerate(events)]
                try:
                    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 15)
                    await asyncio.sleep(0.5)  # every watch is open behind its stream
                    t0 = time.monotonic()
                    r = await c.get(f"/api/v1/namespaces/{ns}/trainingjobs", params={"limit": 1})
                    took = time.monotonic() - t0
                    return opened, r.status_code, took
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

        opened, status, took = asyncio.run(run())
    assert opened == [200] * (POOL + 2)
    assert status == 200
    assert took < 4.0  # a call waiting for a pooled connection would wait kube_timeout_s (5 s), then fail

"""The bound on concurrent status streams (``sse_max_clients``) against the in-memory Kubernetes stand-in,
with the app driven as uvicorn drives it (api_asgi)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from api_asgi import Idle, call
from api_fakekube import FakeKube
from fastapi import FastAPI
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

TOKEN = "tok-alice"
WATCH = "/api/v1/watch/namespaces/a/trainingjobs"


def _app(slow_list_s: float, **settings: Any) -> FastAPI:
    fk = FakeKube()
    fk.users[TOKEN] = {"username": "alice", "groups": ["team-a"]}

    async def kube(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("watch") == "true":
            return httpx.Response(200, stream=Idle())
        if req.url.path.endswith("/trainingjobs"):
            await asyncio.sleep(slow_list_s)  # the API server takes a moment to list
        return fk.handle(req)

    s = ApiSettings(**settings)
    m = ApiMetrics()
    return create_app(s, kube=Kube(s, m, transport=httpx.MockTransport(kube)), metrics=m)


def test_status_streams_past_the_limit_are_refused_also_when_they_open_together() -> None:
    # sse_max_clients bounds the watches (API server connections, buffers) the facade holds. Streams
    # that open together (a dashboard reconnecting every tab) each wait for their first list: every one
    # counts from the moment it is let in, not from when its body starts, or all of them get in.
    async def run() -> tuple[list[int], int, int, str]:
        app = _app(0.2, sse_max_clients=2)
        svc = app.state.services
        gone = asyncio.Event()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with app.router.lifespan_context(app):
            calls = [asyncio.create_task(call(app, WATCH, gone, headers)) for _ in range(5)]
            for _ in range(500):  # the refused ones end; the admitted ones stream until the client goes
                await asyncio.sleep(0.01)
                if sum(t.done() for t in calls) >= 3:
                    break
            await asyncio.sleep(0.3)  # any admitted stream is streaming by now
            open_now = svc.sse_clients
            gone.set()
            statuses = sorted([(await t)[0]["status"] for t in calls])
            await asyncio.sleep(0.05)
            gauge = svc.metrics.sse_clients._value.get()
        return statuses, open_now, svc.sse_clients, str(gauge)

    statuses, open_now, after, gauge = asyncio.run(run())
    assert statuses == [200, 200, 503, 503, 503]
    assert open_now == 2
    assert (after, gauge) == (0, "0.0")


def test_a_stream_refused_after_admission_gives_its_place_back() -> None:
    # Admitted, then refused by the API server (401/403/404 before the stream starts): the place it took
    # is free again at once, or a few refusals would lock everybody out.
    async def run() -> tuple[list[int], int]:
        app = _app(0.0, sse_max_clients=1)
        svc = app.state.services
        gone = asyncio.Event()
        gone.set()
        statuses = []
        async with app.router.lifespan_context(app):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            for _ in range(3):
                sent = await call(app, f"{WATCH}/missing", gone, headers)
                statuses.append(sent[0]["status"])
            sent = await call(app, WATCH, gone, headers)
            statuses.append(sent[0]["status"])
            await asyncio.sleep(0.05)
        return statuses, svc.sse_clients

    statuses, after = asyncio.run(run())
    assert statuses == [404, 404, 404, 200]
    assert after == 0

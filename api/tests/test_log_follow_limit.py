"""Followed training logs (``follow=true``) hold an API server log stream each for as long as the client
stays: at most ``logs_max_follows`` at once, more are refused with 503 and Retry-After, and a place is
given back when its client leaves. Against the in-memory Kubernetes stand-in, driven as uvicorn drives
the app (api_asgi)."""

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

H = {"Authorization": "Bearer t"}
LOGS = "/api/v1/namespaces/a/trainingjobs/tj/logs"


def _app(opened: list[Idle], **settings: Any) -> FastAPI:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    fk.objects[("a", "trainingjobs", "tj")] = {"metadata": {"name": "tj", "uid": "uid-tj"}, "spec": {}}

    def kube(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/log"):
            opened.append(Idle())
            return httpx.Response(200, stream=opened[-1])
        if req.url.path == "/api/v1/namespaces/a/pods":
            pod = {"metadata": {"name": "tj-0-abcde", "creationTimestamp": "2026-01-01T00:00:00Z"}}
            return httpx.Response(200, json={"items": [pod]})
        return fk.handle(req)

    s = ApiSettings(**settings)
    m = ApiMetrics()
    return create_app(s, kube=Kube(s, m, transport=httpx.MockTransport(kube)), metrics=m)


def test_followed_logs_past_the_limit_are_refused_and_places_come_back() -> None:
    async def run() -> tuple[list[int], dict[str, str]]:
        opened: list[Idle] = []
        app = _app(opened, logs_max_follows=2)
        gone = asyncio.Event()
        async with app.router.lifespan_context(app):
            held = [asyncio.create_task(call(app, f"{LOGS}?follow=true", gone, H)) for _ in range(2)]
            for _ in range(300):
                await asyncio.sleep(0.01)
                if len(opened) == 2:
                    break
            await asyncio.sleep(0.05)
            leaves = asyncio.Event()  # a third client, that leaves after a moment if it is let in
            asyncio.get_running_loop().call_later(0.3, leaves.set)
            refused = await call(app, f"{LOGS}?follow=true", leaves, H)
            not_followed = asyncio.Event()
            not_followed.set()
            plain = await call(app, LOGS, not_followed, H)  # not followed: not a long-lived stream
            gone.set()
            statuses = [(await t)[0]["status"] for t in held]
            await asyncio.sleep(0.05)
            again_gone = asyncio.Event()
            again_gone.set()
            again = await call(app, f"{LOGS}?follow=true", again_gone, H)
        headers = {k.decode(): v.decode() for k, v in refused[0]["headers"]}
        return [*statuses, refused[0]["status"], plain[0]["status"], again[0]["status"]], headers

    statuses, headers = asyncio.run(run())
    assert statuses == [200, 200, 503, 200, 200]
    assert headers.get("retry-after") == "5"

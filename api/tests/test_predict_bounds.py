"""A prediction is bounded whatever the model server does: it ends within ``predict_timeout_s`` in all
(a server that dribbles its answer a byte at a time must not hold the caller, a facade connection and a
pooled model-server connection for ever), and its answer is at most ``predict_max_response_bytes``.
Against the in-memory Kubernetes stand-in and a model server behind a mock transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

A = {"Authorization": "Bearer t"}
URL = "http://facade/api/v1/namespaces/a/modeldeployments/m/forward"


class Dribble(httpx.AsyncByteStream):
    """An answer that never ends: a byte every 50 ms (each read well within any read timeout)."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        self.closed = True


async def _predict(model: Any, **settings: Any) -> tuple[httpx.Response, float]:
    fk = FakeKube()
    fk.users["t"] = {"username": "alice", "groups": []}
    fk.objects[("a", "modeldeployments", "m")] = {
        "metadata": {"name": "m", "resourceVersion": "1"},
        "spec": {},
    }
    fk.objects[("a", "services", "m")] = {
        "metadata": {"name": "m"}, "spec": {"clusterIP": "10.96.1.2", "ports": [{"name": "http", "port": 80}]}
    }  # fmt: skip
    s = ApiSettings(**settings)
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=fk.transport()), metrics=m)
    app.state.services.extra["predict_client"] = httpx.AsyncClient(
        transport=httpx.MockTransport(model), timeout=s.predict_timeout_s
    )
    t0 = time.monotonic()
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app)) as c:
        r = await asyncio.wait_for(c.post(URL, json={"x": 1}, headers=A), 10)
    return r, time.monotonic() - t0


def test_a_model_server_that_never_finishes_its_answer_is_cut_off_at_the_timeout() -> None:
    streams: list[Dribble] = []

    def model(_req: httpx.Request) -> httpx.Response:
        streams.append(Dribble())
        return httpx.Response(200, stream=streams[-1], headers={"content-type": "application/json"})

    try:
        r, _ = asyncio.run(_predict(model, predict_timeout_s=0.5))
    except TimeoutError:
        pytest.fail("the prediction was still running after 10 s with predict_timeout_s=0.5")
    # It ended (within the 10 s the test waits; without the deadline it never does) through the deadline.
    assert r.status_code == 504, r.text
    assert r.json()["message"] == 'ModelDeployment "m" did not answer within 0.5 s'
    assert streams[0].closed, "the model server's answer was left open"


def test_an_answer_larger_than_the_limit_is_a_502() -> None:
    def model(_req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b"[" + b"0," * 600_000 + b"0]", headers={"content-type": "application/json"}
        )

    r, _ = asyncio.run(_predict(model, predict_max_response_bytes=1024 * 1024))
    assert r.status_code == 502, r.text[:200]
    assert "1048576" in r.json()["message"]


def test_answers_within_the_bounds_pass_unchanged() -> None:
    body = b'{"label": "a", "probabilities": [0.25, 0.75]}'

    def model(req: httpx.Request) -> httpx.Response:
        assert req.content == b'{"x":1}' or req.content == b'{"x": 1}'
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    r, _ = asyncio.run(_predict(model))
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, body, "application/json")

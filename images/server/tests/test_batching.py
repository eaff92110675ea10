"""Adaptive batching: concurrent requests merge into one session.run, each gets its own rows back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from kubeloop_server.batching import AdaptiveBatcher, DirectPredictor, make_predictor
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import ModelRuntime


@pytest.fixture(scope="module")
def runtime(packed_clf: bytes) -> ModelRuntime:
    return ModelRuntime(packed_clf)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 30)).astype(np.float32)


def test_concurrent_requests_are_merged_and_split(runtime: ModelRuntime) -> None:
    metrics = ServerMetrics()
    batcher = AdaptiveBatcher(runtime, metrics, max_batch_size=16, max_latency_s=0.05)
    inputs = [_rows(1 + k % 3, k) for k in range(12)]

    async def go() -> list[list[np.ndarray]]:
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict({"input": x}, len(x)) for x in inputs))
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out[0], runtime.run({"input": x})[0])
    runs = metrics.batch_size.series[()]
    count, total = runs.count, runs.sum
    assert total == sum(len(x) for x in inputs)
    assert count <= 3, f"{count} runs for 12 concurrent requests: not merged"


def test_lone_request_waits_at_most_max_latency(runtime: ModelRuntime) -> None:
    batcher = AdaptiveBatcher(runtime, ServerMetrics(), max_batch_size=64, max_latency_s=0.02)

    async def go() -> float:
        await batcher.start()
        try:
            t0 = time.perf_counter()
            await batcher.predict({"input": _rows(1, 0)}, 1)
            return time.perf_counter() - t0
        finally:
            await batcher.stop()

    elapsed = asyncio.run(go())
    assert 0.015 <= elapsed < 0.5


def test_full_batch_goes_without_waiting(runtime: ModelRuntime) -> None:
    batcher = AdaptiveBatcher(runtime, ServerMetrics(), max_batch_size=4, max_latency_s=5.0)

    async def go() -> float:
        await batcher.start()
        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(batcher.predict({"input": _rows(1, k)}, 1) for k in range(4)))
            await batcher.predict({"input": _rows(8, 9)}, 8)  # larger than a batch: runs on its own
            return time.perf_counter() - t0
        finally:
            await batcher.stop()

    assert asyncio.run(go()) < 2.0


def test_failure_reaches_every_waiter(runtime: ModelRuntime) -> None:
    batcher = AdaptiveBatcher(runtime, ServerMetrics(), max_batch_size=8, max_latency_s=0.01)

    async def go() -> list[object]:
        await batcher.start()
        try:
            bad = {"input": np.zeros((1, 30), dtype=np.float64)}  # wrong dtype: ORT rejects the merged batch
            return await asyncio.gather(*(batcher.predict(bad, 1) for _ in range(3)), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert all(isinstance(r, Exception) for r in results)


def test_make_predictor_switch(runtime: ModelRuntime) -> None:
    m = ServerMetrics()
    kw = {"max_batch_size": 8, "max_latency_ms": 1.0, "inline_run_max_ms": 0.3}
    assert isinstance(make_predictor(runtime, m, batching=True, run_in_thread="auto", **kw), AdaptiveBatcher)
    direct = make_predictor(runtime, m, batching=False, run_in_thread="auto", **kw)
    assert isinstance(direct, DirectPredictor)
    assert direct.in_thread is False
    forced = make_predictor(runtime, m, batching=False, run_in_thread="always", **kw)
    assert isinstance(forced, DirectPredictor)
    assert forced.in_thread is True


def test_batching_through_http(make_client, packed_clf) -> None:
    c = make_client(packed_clf, batching_enabled=True, max_batch_size=8, max_latency_ms=1)
    assert c.get("/metadata").json()["batching"] is True
    rec = {f"f{i}": float(i) for i in range(30)}
    r = c.post("/forward", json=rec)
    assert r.status_code == 200
    assert r.json()["label"] in ("setosa", "versicolor", "virginica")

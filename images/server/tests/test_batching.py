"""Adaptive batching: concurrent requests merge into one session.run, each gets its own rows back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from kubeloop_server.batching import LONELY_BATCHES, AdaptiveBatcher, DirectPredictor, make_predictor
from kubeloop_server.errors import InvalidInputError, ServerError
from kubeloop_server.metrics import BATCH_BUCKETS, ServerMetrics
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


# --- merging only what is already waiting (max_latency 0, runs on the event loop) ----------------------------


async def _request(batcher: AdaptiveBatcher, x: np.ndarray) -> list[np.ndarray]:
    """What the data plane does: inline when the predictor runs it now, else through the queue."""
    out = batcher.try_inline({"input": x}, len(x))
    if out is None:
        out = await batcher.predict({"input": x}, len(x))
    return out


def test_waiting_requests_merge_and_lone_ones_run_inline(runtime: ModelRuntime) -> None:
    metrics = ServerMetrics()
    batcher = AdaptiveBatcher(runtime, metrics, max_batch_size=32, max_latency_s=0.0, in_thread=False)
    assert batcher.coalesce_only
    waves = [[_rows(1, 100 * w + k) for k in range(16)] for w in range(3)]

    async def go() -> tuple[list[list[list[np.ndarray]]], list[bool]]:
        await batcher.start()
        modes: list[bool] = []
        try:
            assert batcher._executor is None  # a fast model's runs stay on the loop
            # one at a time: inline, no queue, no batch
            for k in range(5):
                modes.append(batcher.inline)
                await _request(batcher, _rows(1, k))
                await asyncio.sleep(0)  # the next request comes in a later loop turn, as over a socket
            results: list[list[list[np.ndarray]]] = []
            for wave in waves:  # 16 requests started in one loop turn, as uvicorn starts them
                modes.append(batcher.inline)
                results.append(await asyncio.gather(*(_request(batcher, x) for x in wave)))
            # lone requests again: after LONELY_BATCHES batches of one, inline again
            for k in range(LONELY_BATCHES + 2):
                modes.append(batcher.inline)
                await _request(batcher, _rows(1, 50 + k))
                await asyncio.sleep(0)
            modes.append(batcher.inline)
            return results, modes
        finally:
            await batcher.stop()

    results, modes = asyncio.run(go())
    for wave, outs in zip(waves, results, strict=True):
        for x, out in zip(wave, outs, strict=True):  # every request got its own rows back
            np.testing.assert_array_equal(out[0], runtime.run({"input": x})[0])
    assert modes[:6] == [True] * 6  # lone requests, then the first wave's turn runs inline
    assert modes[6:8] == [False, False]  # that turn had 16 requests: later waves queue
    assert modes[-1] is True  # lone requests brought inline back
    runs = metrics.batch_size.series[()]
    total = 5 + 3 * 16 + LONELY_BATCHES + 2
    assert runs.sum == total
    # waves 2 and 3 went out as one run of 16 rows each (the 16-row bucket holds them)
    assert runs.buckets[BATCH_BUCKETS.index(16)] == 2
    assert runs.count == total - 2 * 15


def test_inline_run_errors_reach_the_caller(runtime: ModelRuntime) -> None:
    """A run that fails inline raises to its own request, as the queued path does (here: a bad feed)."""
    batcher = AdaptiveBatcher(runtime, ServerMetrics(), max_batch_size=8, max_latency_s=0.0, in_thread=False)

    async def go() -> None:
        await batcher.start()
        try:
            with pytest.raises(ServerError):
                await _request(batcher, np.zeros((1, 7), dtype=np.float32))  # 7 columns, the graph wants 30
            out = await _request(batcher, _rows(1, 1))  # and the batcher still serves
            np.testing.assert_array_equal(out[0], runtime.run({"input": _rows(1, 1)})[0])
        finally:
            await batcher.stop()

    asyncio.run(go())


def test_batcher_thread_follows_run_in_thread(runtime: ModelRuntime) -> None:
    m = ServerMetrics()
    kw: dict[str, Any] = {"max_batch_size": 8, "max_latency_ms": 0.0, "inline_run_max_ms": 0.3}
    fast = make_predictor(runtime, m, batching=True, run_in_thread="auto", **kw)
    assert isinstance(fast, AdaptiveBatcher)
    assert fast.in_thread is False  # the small model runs in well under 0.3 ms
    assert fast.coalesce_only
    threaded = make_predictor(runtime, m, batching=True, run_in_thread="always", **kw)
    assert isinstance(threaded, AdaptiveBatcher)
    assert threaded.in_thread is True
    assert not threaded.coalesce_only  # merging in a worker thread always queues
    waiting = make_predictor(
        runtime, m, batching=True, run_in_thread="never", **{**kw, "max_latency_ms": 1.0}
    )
    assert isinstance(waiting, AdaptiveBatcher)
    assert not waiting.coalesce_only  # a batch that waits for others never runs a request inline


def test_coalescing_through_http_serves_and_refuses_by_name(make_client, packed_clf) -> None:  # type: ignore[no-untyped-def]
    c = make_client(packed_clf, batching_enabled=True, max_latency_ms=0)
    row = [float(i) / 10 for i in range(30)]
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
    r = c.post("/v2/models/iris-like/infer", json=body)
    assert r.status_code == 200, r.text
    want = ModelRuntime(packed_clf).run({"input": np.asarray([row], dtype=np.float32)})
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], want[0].reshape(-1), rtol=1e-6)
    body["inputs"][0]["data"] = ["x", *row[1:]]
    r = c.post("/v2/models/iris-like/infer", json=body)
    assert r.status_code == 400, r.text
    assert "input 'input'" in r.json()["error"]


# --- one request's inputs must not decide another's answer -----------------------------------------------------


def _graph(node: Any, inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    from onnx import helper

    model = helper.make_model(
        helper.make_graph([node], "g", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _gather_graph() -> bytes:
    """``idx`` int64 [N] -> rows of a 4x3 table: an index past 3 is refused by ONNX Runtime at run time."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    return _graph(
        helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0),
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["N", 3])],
        [table],
    )


def _sequence_graph() -> bytes:
    """``x`` float32 [N, T] (T dynamic, as a sequence model's) -> its row sums [N, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    return _graph(
        helper.make_node("ReduceSum", ["x", "axis"], ["total"], keepdims=1),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")],
    )


@pytest.mark.parametrize("in_thread", [True, False])
def test_a_request_the_model_refuses_fails_alone(in_thread: bool) -> None:
    """A merged run that fails fails only the request that caused it: the batch's other requests were
    answered with that request's error (here ONNX Runtime's 'indices element out of data bounds')."""
    rt = ModelRuntime(_gather_graph())
    assert rt.batchable
    batcher = AdaptiveBatcher(rt, ServerMetrics(), max_batch_size=8, max_latency_s=0.05, in_thread=in_thread)
    feeds = [{"idx": np.array([i], dtype=np.int64)} for i in (1, 99, 3, 2)]

    async def go() -> list[Any]:
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(f, 1) for f in feeds), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(go())
    assert isinstance(results[1], InvalidInputError), results[1]
    assert "idx=99" in results[1].message
    for k in (0, 2, 3):
        np.testing.assert_array_equal(results[k][0], rt.run(feeds[k])[0])


def test_requests_of_different_lengths_are_not_merged_into_a_500() -> None:
    """A dynamic dimension past the batch axis differs between requests: concatenating them raised
    ValueError, a 500 for every request in the batch."""
    model = _sequence_graph()
    rt = ModelRuntime(model)
    assert rt.batchable
    batcher = AdaptiveBatcher(rt, ServerMetrics(), max_batch_size=8, max_latency_s=0.05)
    xs = [np.arange(1 + k, dtype=np.float32).reshape(1, -1) for k in range(4)]

    async def go() -> list[Any]:
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict({"x": x}, 1) for x in xs), return_exceptions=True)
        finally:
            await batcher.stop()

    for x, out in zip(xs, asyncio.run(go()), strict=True):
        assert not isinstance(out, BaseException), out
        np.testing.assert_array_equal(out[0], [[x.sum()]])


def test_requests_of_one_length_are_merged_when_others_in_the_batch_differ() -> None:
    """Requests of different lengths cannot share a run (padding would change a generic graph's answers: a
    mean, a recurrent state, a softmax over the sequence), but those of one length can. Before, one odd
    length made every request of the batch run on its own: six runs here instead of three."""
    rt = ModelRuntime(_sequence_graph())
    metrics = ServerMetrics()
    batcher = AdaptiveBatcher(rt, metrics, max_batch_size=16, max_latency_s=0.05)
    lengths = [2, 3, 2, 3, 2, 5]
    xs = [np.arange(k * 10, k * 10 + n, dtype=np.float32).reshape(1, n) for k, n in enumerate(lengths)]
    xs[1] = np.concatenate([xs[1], xs[1] + 1])  # a request of two rows

    async def go() -> list[Any]:
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.predict({"x": x}, len(x)) for x in xs), return_exceptions=True
            )
        finally:
            await batcher.stop()

    for x, out in zip(xs, asyncio.run(go()), strict=True):
        assert not isinstance(out, BaseException), out
        np.testing.assert_array_equal(out[0], x.sum(axis=1, keepdims=True))
    runs = metrics.batch_size.series[()]
    assert (runs.count, runs.sum) == (3, 7)  # lengths 2 (three requests), 3 (two, three rows) and 5

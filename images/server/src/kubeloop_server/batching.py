"""How requests reach ``session.run``: directly, or merged by an adaptive batcher.

Both predictors have the same interface (``await predict(feeds, rows) -> outputs``, and ``try_inline``
for a run that needs no coroutine), so the data plane and the model know nothing of batching (the wrapper
pattern of MLServer's adaptive batching).

The batcher merges concurrently waiting requests into one run of at most ``max_batch_size`` rows. A
request waits at most ``max_latency`` *from its arrival* for others to join: requests that queued while
the previous batch was running go out at once, so batching costs no added latency under load, and a
lone request waits only ``max_latency``. With ``max_latency`` 0 it merges only what is already waiting:
the requests whose tasks ran in the same event-loop turn (those whose bytes arrived together).

Runs leave the event loop for a worker thread only when the model is slow (``in_thread``): for a small
model a thread hop costs more than the run, and a run in the loop's turn right after the requests
queued keeps Python and ONNX Runtime code warm in the caches once per batch instead of once per request.

Merging only what is already waiting (``max_latency`` 0, runs on the loop) has nothing to merge while
requests come one at a time, and queueing would then cost a future and two task switches per request.
So the batcher watches the loop's turns: while no turn has seen two requests, requests run inline
(:meth:`AdaptiveBatcher.try_inline`, as the direct predictor runs them); a turn with two switches to
queueing, and :data:`LONELY_BATCHES` batches of one request in a row switch back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import Feeds, ModelRuntime, Outputs

log = logging.getLogger("kubeloop_server.batching")

# Merging only what is waiting: this many batches of a single request in a row and requests run inline.
LONELY_BATCHES = 8


class Predictor(Protocol):
    @property
    def always_inline(self) -> bool:
        """True when :meth:`try_inline` never returns None (no thread, no queue): the HTTP fast lane may
        answer without a coroutine."""
        ...

    def try_inline(self, feeds: Feeds, rows: int) -> Outputs | None:
        """The outputs, when this predictor runs the request inline right now (no coroutine, no extra
        event-loop turn); None: ``await predict()`` instead."""
        ...

    async def predict(self, feeds: Feeds, rows: int) -> Outputs: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class DirectPredictor:
    """One ``session.run`` per request: inline on the event loop for fast models (a thread hop costs more
    than the run), in a worker thread for slow ones (the loop keeps parsing requests meanwhile)."""

    def __init__(self, runtime: ModelRuntime, metrics: ServerMetrics, in_thread: bool) -> None:
        self._rt = runtime
        self._metrics = metrics
        self.in_thread = in_thread
        self._executor: ThreadPoolExecutor | None = None

    @property
    def always_inline(self) -> bool:
        return not self.in_thread

    async def start(self) -> None:
        if self.in_thread:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _timed_run(self, feeds: Feeds) -> tuple[Outputs, float]:
        t0 = time.perf_counter()
        out = self._rt.run(feeds)
        return out, time.perf_counter() - t0

    def try_inline(self, feeds: Feeds, rows: int) -> Outputs | None:
        if self.in_thread:
            return None
        t0 = time.perf_counter()
        out = self._rt.run(feeds)
        self._metrics.observe_run(rows, time.perf_counter() - t0)
        return out

    async def predict(self, feeds: Feeds, rows: int) -> Outputs:
        if self._executor is None:
            out, seconds = self._timed_run(feeds)
        else:
            loop = asyncio.get_running_loop()
            out, seconds = await loop.run_in_executor(self._executor, self._timed_run, feeds)
        self._metrics.observe_run(rows, seconds)  # on the loop thread: metrics are not locked
        return out


class _Pending:
    __slots__ = ("arrived", "feeds", "future", "rows")

    def __init__(self, feeds: Feeds, rows: int, future: asyncio.Future[Outputs], arrived: float) -> None:
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.arrived = arrived


class AdaptiveBatcher:
    """Merges concurrent requests into one ``session.run`` (see the module docstring)."""

    def __init__(
        self,
        runtime: ModelRuntime,
        metrics: ServerMetrics,
        max_batch_size: int,
        max_latency_s: float,
        in_thread: bool = True,
    ) -> None:
        self._rt = runtime
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.in_thread = in_thread
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        # Merging only what is already waiting, on the loop: requests may run inline (module docstring).
        self.coalesce_only = max_latency_s == 0 and not in_thread
        self.inline = self.coalesce_only
        self._turn_requests = 0  # inline requests in this loop turn
        self._lonely = 0  # batches of one request in a row
        self._loop_ref: asyncio.AbstractEventLoop | None = None

    @property
    def always_inline(self) -> bool:
        return False  # merging needs the queue, and the queue needs a coroutine

    async def start(self) -> None:
        self._stopping = False  # a batcher may be started again after a stop
        self._loop_ref = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if self.in_thread:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-batch")
        self._task = asyncio.create_task(self._loop(), name="adaptive-batcher")

    async def stop(self) -> None:
        """Run what is queued, then stop."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def try_inline(self, feeds: Feeds, rows: int) -> Outputs | None:
        if not self.inline or self._task is None or self._queue:
            return None
        if self._turn_requests == 0:
            assert self._loop_ref is not None
            self._loop_ref.call_soon(self._end_turn)
        self._turn_requests += 1
        t0 = time.perf_counter()
        out = self._rt.run(feeds)
        self._metrics.observe_run(rows, time.perf_counter() - t0)
        return out

    def _end_turn(self) -> None:
        """After a loop turn with inline requests: two or more in one turn could have been merged."""
        if self._turn_requests > 1:
            self.inline = False
            self._lonely = 0
        self._turn_requests = 0

    async def predict(self, feeds: Feeds, rows: int) -> Outputs:
        if rows >= self.max_batch_size or self._task is None:
            # Already a full batch (or the batcher is not running): run it on its own.
            out, seconds = await self._execute([feeds])
            self._metrics.observe_run(rows, seconds)
            return out
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append(_Pending(feeds, rows, fut, loop.time()))
        self._queued_rows += rows
        assert self._wakeup is not None
        self._wakeup.set()
        return await fut

    async def _execute(self, feeds_list: list[Feeds]) -> tuple[Outputs, float]:
        if not self.in_thread:  # a fast model: on the loop, no thread hop
            return self._run_batch(feeds_list)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_batch, feeds_list)

    def _run_batch(self, feeds_list: list[Feeds]) -> tuple[Outputs, float]:
        t0 = time.perf_counter()
        if len(feeds_list) == 1:
            merged = feeds_list[0]
        else:
            merged = {name: np.concatenate([f[name] for f in feeds_list]) for name in feeds_list[0]}
        out = self._rt.run(merged)
        return out, time.perf_counter() - t0

    async def _run_split(self, batch: list[_Pending]) -> None:
        """A merged run failed. Requests whose inputs differ past the batch axis (a sequence model's dynamic
        length) cannot share a run: numpy cannot stack them, and padding them to one length would change a
        generic graph's answers (a mean, a recurrent state, a softmax over the sequence; outputs along that
        axis would also need cutting back, which only the model knows how). So requests of one shape run
        together, and if that fails too (or all had one shape: a value the model refuses), each runs on its
        own, so that one request's inputs do not decide the others' answers."""
        groups: dict[tuple[tuple[int, ...], ...], list[_Pending]] = {}
        for p in batch:
            if not p.future.done():
                groups.setdefault(tuple(a.shape[1:] for a in p.feeds.values()), []).append(p)
        if len(groups) == 1:
            await self._run_alone(next(iter(groups.values())))
            return
        for group in groups.values():
            if len(group) == 1:
                await self._run_alone(group)
                continue
            try:
                outputs, seconds = await self._execute([p.feeds for p in group])
            except Exception:
                await self._run_alone(group)
                continue
            self._metrics.observe_run(sum(p.rows for p in group), seconds)
            self._answer(group, outputs)

    async def _run_alone(self, batch: list[_Pending]) -> None:
        for p in batch:
            if p.future.done():
                continue
            try:
                out, seconds = await self._execute([p.feeds])
            except Exception as e:
                if not p.future.done():
                    p.future.set_exception(e)
                continue
            self._metrics.observe_run(p.rows, seconds)
            if not p.future.done():
                p.future.set_result(out)

    @staticmethod
    def _answer(batch: list[_Pending], outputs: Outputs) -> None:
        """Each request of a merged run gets its own rows of every output."""
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for p in batch:
            end = start + p.rows
            if not p.future.done():
                p.future.set_result([o[start:end] for o in outputs])
            start = end

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None
        queue = self._queue
        while True:
            if not queue:
                if self._stopping:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            first = queue[0]
            deadline = first.arrived + self.max_latency_s
            # Wait (only as long as the first request's budget allows) for the batch to fill up.
            while self._queued_rows < self.max_batch_size and not self._stopping:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    await asyncio.wait_for(wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[_Pending] = []
            rows = 0
            while queue and rows + queue[0].rows <= self.max_batch_size:
                p = queue.popleft()
                batch.append(p)
                rows += p.rows
            self._queued_rows -= rows
            if self.coalesce_only:
                self._lonely = self._lonely + 1 if len(batch) == 1 else 0
                if self._lonely >= LONELY_BATCHES:
                    self.inline = True
            try:
                outputs, seconds = await self._execute([p.feeds for p in batch])
                self._metrics.observe_run(rows, seconds)
            except Exception as e:
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(e)
                else:
                    await self._run_split(batch)
                continue
            self._answer(batch, outputs)


def run_coalesced(
    runtime: ModelRuntime, metrics: ServerMetrics, batch: list[tuple[Feeds, int]]
) -> tuple[list[Outputs | Exception], list[tuple[Feeds, Outputs, int]]]:
    """Requests already waiting, run together inline (the HTTP fast lane's merging; the rules of
    :meth:`AdaptiveBatcher._run_split`): one run for all; if that fails, one per group of equal shapes past
    the batch axis; if a group fails, each on its own, so one request's inputs never decide another's answer.
    Returns each request's outputs (its rows) or its error, and each successful run's (feeds, outputs, rows)
    for the prediction metrics and log."""
    results: list[Outputs | Exception] = [_NOT_RUN] * len(batch)
    runs: list[tuple[Feeds, Outputs, int]] = []

    def attempt(idx: list[int]) -> bool:
        try:
            if len(idx) == 1:
                feeds = batch[idx[0]][0]
            else:
                first = batch[idx[0]][0]
                feeds = {name: np.concatenate([batch[i][0][name] for i in idx]) for name in first}
            rows = sum(batch[i][1] for i in idx)
            t0 = time.perf_counter()
            outputs = runtime.run(feeds)
        except Exception as e:
            if len(idx) > 1:
                return False
            results[idx[0]] = e
            return True
        metrics.observe_run(rows, time.perf_counter() - t0)
        runs.append((feeds, outputs, rows))
        start = 0
        for i in idx:
            end = start + batch[i][1]
            results[i] = outputs if len(idx) == 1 else [o[start:end] for o in outputs]
            start = end
        return True

    everyone = list(range(len(batch)))
    if not attempt(everyone):
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for i in everyone:
            groups.setdefault(tuple(a.shape[1:] for a in batch[i][0].values()), []).append(i)
        for group in groups.values():
            if len(groups) == 1 or not attempt(group):
                for i in group:
                    attempt([i])
    return results, runs


_NOT_RUN = RuntimeError("not run")  # a placeholder; every request gets its outputs or error


def make_predictor(
    runtime: ModelRuntime,
    metrics: ServerMetrics,
    *,
    batching: bool,
    max_batch_size: int,
    max_latency_ms: float,
    run_in_thread: str,
    inline_run_max_ms: float,
) -> Predictor:
    if run_in_thread == "auto":
        in_thread = runtime.single_row_s * 1e3 > inline_run_max_ms
    else:
        in_thread = run_in_thread == "always"
    if batching and runtime.batchable and max_batch_size > 1:
        return AdaptiveBatcher(runtime, metrics, max_batch_size, max_latency_ms / 1e3, in_thread)
    if batching:
        log.warning("batching requested but disabled: not every model output is batched along axis 0")
    return DirectPredictor(runtime, metrics, in_thread)

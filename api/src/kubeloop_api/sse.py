"""Status streaming as Server-Sent Events, backed by a Kubernetes watch made as the caller.

Wire format (``text/event-stream``)::

    event: added | modified | deleted     data: {"type", "object": {metadata subset, status}}
    event: synced                         the initial state is complete (after the added events)
    event: reset                          the resume point was too old: forget state, a snapshot follows
    event: error                          the stream ends; data says why (SlowClient, WatchFailed, …)
    : heartbeat                           a comment every ``sse_heartbeat_s`` on an idle stream
    id: <resourceVersion>                 on every change, on synced and on watch bookmarks

A client that reconnects with ``Last-Event-ID`` (or ``?resourceVersion=``) gets every change after that
point and nothing twice: the watch resumes from that resourceVersion. Each client has a bounded buffer;
one that falls further behind gets ``event: error`` (SlowClient) and resumes from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import orjson

from kubeloop_api.errors import ApiError, GoneError

log = logging.getLogger("kubeloop_api.sse")

_WATCH_RETRIES: Final = 5

ListFn = Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]]
WatchFn = Callable[[str], AsyncIterator[dict[str, Any]]]


def format_event(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    # orjson writes one line (no raw newlines), so one data: field carries the whole object.
    return ("\n".join(lines) + "\ndata: ").encode() + orjson.dumps(data) + b"\n\n"


def format_comment(text: str, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}: {text}\n\n".encode()


def summarize(obj: dict[str, Any]) -> dict[str, Any]:
    """What a status stream carries about an object: identity, generation and the whole status."""
    meta = obj.get("metadata") or {}
    return {
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "labels",
                "deletionTimestamp",
            )
            if k in meta
        },
        "status": obj.get("status") or {},
    }


class StatusStream:
    """One client's stream: a producer task (list + watch) feeding a bounded buffer that the response
    drains. ``list_fn`` returns the current objects and the list's resourceVersion; ``watch_fn(rv)``
    yields watch events after ``rv`` until the server ends the watch.

    The buffer holds at most ``buffer`` messages; a snapshot (the initial state, or the state after a
    reset) is one message however many objects it has. Whatever is pending when the response gets
    to run goes out as one write."""

    def __init__(
        self,
        list_fn: ListFn,
        watch_fn: WatchFn,
        *,
        resume_from: str | None,
        buffer: int,
        heartbeat_s: float,
        on_event: Callable[[str], None] | None = None,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.list_fn = list_fn
        self.watch_fn = watch_fn
        self.resume_from = resume_from
        self.heartbeat_s = heartbeat_s
        self.limit = buffer
        self.pending: deque[bytes] = deque()
        self.overflow = False
        self.failure: dict[str, Any] | None = None
        self.on_event = on_event or (lambda _t: None)
        self.on_overflow = on_overflow or (lambda: None)
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _put(self, data: bytes, kind: str, count: int = 1) -> bool:
        if self.overflow:
            return False
        if len(self.pending) >= self.limit:
            self.overflow = True
            self.on_overflow()
            self._wake()
            return False
        self.pending.append(data)
        for _ in range(count):
            self.on_event(kind)
        self._wake()
        return True

    async def _snapshot(self, reset: bool) -> str | None:
        items, rv = await self.list_fn()
        parts = [format_event("reset", {"type": "RESET"})] if reset else []
        parts += [format_event("added", {"type": "ADDED", "object": summarize(obj)}) for obj in items]
        parts.append(format_event("synced", {"type": "SYNCED", "resourceVersion": rv}, rv))
        if not self._put(b"".join(parts), "added", len(items)):
            return None
        return rv

    async def produce(self) -> None:
        try:
            rv = self.resume_from
            if rv is None:
                rv = await self._snapshot(reset=False)
            failures = 0
            while rv is not None and not self.overflow:
                try:
                    async for event in self.watch_fn(rv):
                        failures = 0
                        rv = self._handle(event, rv)
                        if rv is None or self.overflow:
                            return
                except GoneError:
                    rv = await self._snapshot(reset=True)
                    continue
                except ApiError as e:
                    if e.status_code < 500 or failures >= _WATCH_RETRIES:
                        self._fail(e)
                        return
                    failures += 1
                    await asyncio.sleep(min(5.0, 0.2 * 2**failures) * (0.5 + random.random()))
        except ApiError as e:
            self._fail(e)

    def _fail(self, e: ApiError) -> None:
        """The stream ends with ``e``: the client is told what failed; why a backing service failed
        (its own text, kept from callers) goes to the log, as for every 5xx the facade answers."""
        if e.status_code >= 500:
            log.warning("status stream ended: %s: %s", type(e).__name__, e.log_text)
        self.failure = {"reason": e.reason, "code": e.status_code, "message": e.message}

    def _handle(self, event: dict[str, Any], rv: str) -> str | None:
        etype = str(event.get("type", ""))
        obj = event.get("object") or {}
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if etype == "BOOKMARK":
            self._put(format_comment("bookmark", new_rv), "bookmark")
            return new_rv
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise GoneError(str(obj.get("message") or "resourceVersion too old"))
            raise ApiError(str(obj.get("message") or "watch error"))
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return rv
        self._put(
            format_event(etype.lower(), {"type": etype, "object": summarize(obj)}, new_rv), etype.lower()
        )
        return new_rv

    async def events(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        producer = asyncio.create_task(self.produce())
        producer.add_done_callback(lambda _t: self._wake())
        try:
            yield format_comment("stream open")
            while True:
                if self.pending:
                    chunk = b"".join(self.pending)
                    self.pending.clear()
                    yield chunk
                    continue
                if producer.done():
                    break
                self._waiter = loop.create_future()
                timer = loop.call_later(self.heartbeat_s, self._wake)
                try:
                    await self._waiter
                finally:
                    timer.cancel()
                    self._waiter = None
                if not self.pending and not producer.done():
                    yield format_comment("heartbeat")
            if self.overflow:
                yield format_event(
                    "error",
                    {"reason": "SlowClient", "message": "the client fell too far behind; reconnect with "
                     "Last-Event-ID to resume"},
                )  # fmt: skip
            elif self.failure is not None:
                yield format_event("error", self.failure)
            else:
                yield format_event("error", {"reason": "StreamEnded", "message": "reconnect to resume"})
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer

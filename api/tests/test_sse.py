"""The SSE stream logic without a cluster: snapshot then changes in order, resume, 410 reset, heartbeats,
bounded buffers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubeloop_api.errors import ForbiddenError
from kubeloop_api.sse import StatusStream, format_event, summarize


def _obj(name: str, rv: int, phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "managedFields": [1]},
            "spec": {"x": 1}, "status": {"phase": phase} if phase else {}}  # fmt: skip


def _parse(chunks: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if not block.strip():
            continue
        ev: dict[str, Any] = {"comment": []}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if line.startswith(":"):
                ev["comment"].append(line[2:])
            elif key == "data":
                ev["data"] = json.loads(value)
            else:
                ev[key] = value
        out.append(ev)
    return out


async def _collect(stream: StatusStream, until: Any = None) -> list[bytes]:
    """Chunks of the stream until it ends or ``until(parsed events)`` holds."""
    chunks = []
    async for c in stream.events():
        chunks.append(c)
        if until is not None and until(_parse(chunks)):
            break
    return chunks


def test_format_event_and_summary() -> None:
    raw = format_event("modified", {"a": 1}, "42").decode()
    assert raw == 'id: 42\nevent: modified\ndata: {"a":1}\n\n'
    s = summarize(_obj("a", 3, "Running"))
    assert s == {
        "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "3"},
        "status": {"phase": "Running"},
    }


def test_snapshot_then_changes_in_order_then_end() -> None:
    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        return [_obj("a", 5, "Pending"), _obj("b", 6)], "10"

    seen_rv: list[str] = []

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        seen_rv.append(rv)
        if rv != "10":
            raise ForbiddenError("done")
        for i, phase in enumerate(["Running", "Succeeded"]):
            yield {"type": "MODIFIED", "object": _obj("a", 11 + i, phase)}
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}
        yield {"type": "DELETED", "object": _obj("b", 21)}

    stream = StatusStream(list_fn, watch_fn, resume_from=None, buffer=100, heartbeat_s=5)
    events = _parse(asyncio.run(_collect(stream)))
    kinds = [e.get("event") for e in events if "event" in e]
    assert kinds == ["added", "added", "synced", "modified", "modified", "deleted", "error"]
    phases = [e["data"]["object"]["status"].get("phase") for e in events if e.get("event") == "modified"]
    assert phases == ["Running", "Succeeded"]
    ids = [e.get("id") for e in events if "id" in e]
    assert ids == ["10", "11", "12", "20", "21"]
    assert seen_rv == ["10", "21"]  # the second watch resumes after the last event, and is refused
    assert events[-1]["data"]["code"] == 403


def test_resume_skips_the_snapshot_and_410_resets() -> None:
    calls: list[str] = []

    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        calls.append("list")
        return [_obj("a", 30, "Running")], "30"

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        calls.append(f"watch:{rv}")
        if rv == "3":
            yield {
                "type": "ERROR",
                "object": {"kind": "Status", "code": 410, "message": "too old resource version"},
            }
        yield {"type": "MODIFIED", "object": _obj("a", 31, "Succeeded")}
        await asyncio.sleep(10)

    stream = StatusStream(list_fn, watch_fn, resume_from="3", buffer=100, heartbeat_s=5)
    events = _parse(asyncio.run(_collect(stream, lambda evs: any(e.get("event") == "modified" for e in evs))))
    assert calls == ["watch:3", "list", "watch:30"]
    assert [e.get("event") for e in events if "event" in e] == ["reset", "added", "synced", "modified"]


def test_heartbeat_on_an_idle_stream() -> None:
    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(10)
        yield {}

    stream = StatusStream(list_fn, watch_fn, resume_from=None, buffer=10, heartbeat_s=0.05)
    events = _parse(
        asyncio.run(_collect(stream, lambda evs: sum("heartbeat" in e["comment"] for e in evs) >= 2))
    )
    assert sum("heartbeat" in e["comment"] for e in events) >= 2


def test_a_slow_client_is_cut_off_after_its_buffer_and_told_to_resume() -> None:
    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        for i in range(1000):
            yield {"type": "MODIFIED", "object": _obj("a", 2 + i)}

    overflows = []
    stream = StatusStream(
        list_fn, watch_fn, resume_from=None, buffer=8, heartbeat_s=5, on_overflow=lambda: overflows.append(1)
    )

    async def slow() -> list[bytes]:
        out = []
        async for c in stream.events():
            out.append(c)
            await asyncio.sleep(0.001)
        return out

    events = _parse(asyncio.run(slow()))
    assert overflows == [1]
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["reason"] == "SlowClient"
    delivered = [e for e in events if e.get("event") == "modified"]
    assert 0 < len(delivered) <= 8
    # What was delivered is a gap-free prefix, so resuming from the last id loses nothing.
    ids = [int(e["id"]) for e in delivered]
    assert ids == list(range(2, 2 + len(ids)))


def test_a_snapshot_larger_than_the_buffer_is_one_message() -> None:
    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        return [_obj(f"o{i}", i) for i in range(500)], "600"

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "MODIFIED", "object": _obj("o1", 601, "Running")}
        await asyncio.sleep(10)

    stream = StatusStream(list_fn, watch_fn, resume_from=None, buffer=4, heartbeat_s=5)
    events = _parse(asyncio.run(_collect(stream, lambda evs: any(e.get("event") == "modified" for e in evs))))
    assert sum(e.get("event") == "added" for e in events) == 500
    assert not stream.overflow
    assert [e.get("event") for e in events if e.get("event") in ("synced", "modified")] == [
        "synced",
        "modified",
    ]


def test_a_stream_that_fails_upstream_logs_why_and_tells_the_client_what(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The API server's own text on a 5xx names the cluster's insides: the client's error event says which
    # service failed, the facade's log says why (as for every other 5xx the facade answers).
    import kubeloop_api.sse as sse
    from kubeloop_api.errors import UpstreamError

    async def no_wait(_s: float) -> None:
        return None

    monkeypatch.setattr(sse.asyncio, "sleep", no_wait)

    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    async def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        raise UpstreamError("Kubernetes API failed (500 InternalError) for watch trainingjobs",
                            log_detail="etcdserver: leader changed at 10.96.0.7:2379")  # fmt: skip
        yield {}

    stream = StatusStream(list_fn, watch_fn, resume_from=None, buffer=100, heartbeat_s=5)
    with caplog.at_level(logging.WARNING, logger="kubeloop_api"):
        events = _parse(asyncio.run(_collect(stream)))
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["code"] == 502
    assert "10.96.0.7" not in json.dumps(events[-1]["data"])
    assert any("10.96.0.7" in r.getMessage() for r in caplog.records if r.name.startswith("kubeloop_api"))

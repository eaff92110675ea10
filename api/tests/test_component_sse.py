"""Status streaming over SSE against the real API server: a client sees a TrainingJob's phase changes in
order, each within 2 s of the change, and resumes without loss after its connection is cut.

The operator is simulated: the test writes status the way the operator does (the status subresource)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from api_cluster import ApiEnv, SseEvent, Tenants, expect, sse_events
from kubernetes import client

pytestmark = pytest.mark.component

LATENCY_LIMIT_S = 2.0


def _create(api_env: ApiEnv, tenants: Tenants, name: str) -> None:
    # Suspended, so that an operator running in the cluster starts no pods for it (it may still write
    # status: the assertions match events to the test's own writes by resourceVersion).
    doc = {
        "metadata": {"name": name, "labels": {"suite": "sse"}},
        "spec": {
            "dataset": {"uri": "s3://kubeloop/datasets/x.csv", "target": "y"},
            "task": "classification",
            "runPolicy": {"suspend": True},
        },
    }
    with api_env.client(tenants.a.headers) as c:
        expect(c.post(f"/api/v1/namespaces/{tenants.a.namespace}/trainingjobs", json=doc), 201)


def _set_status(api_env: ApiEnv, ns: str, name: str, status: dict[str, Any]) -> str:
    """What the operator does: a merge patch of the status subresource; returns the new resourceVersion."""
    with api_env.kube.api_client() as api:
        out = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            "kubeloop.io", "v1alpha1", ns, "trainingjobs", name, {"status": status}
        )
    return str(out["metadata"]["resourceVersion"])


def _changes(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.event in ("added", "modified", "deleted")]


def test_phase_changes_arrive_in_order_within_two_seconds(api_env: ApiEnv, tenants: Tenants) -> None:
    ns, name = tenants.a.namespace, "sse-phases"
    _create(api_env, tenants, name)
    url = f"{api_env.url}/api/v1/watch/namespaces/{ns}/trainingjobs/{name}"
    phases = ["Pending", "Running", "Suspended", "Running", "Succeeded"]
    written: list[tuple[str, str, float]] = []

    async def run() -> list[SseEvent]:
        events: list[SseEvent] = []
        want: set[str] = set()

        def done(evs: list[SseEvent]) -> bool:
            return len(written) == len(phases) and want <= {e.id for e in evs if e.id}

        reader = asyncio.create_task(sse_events(url, tenants.a.headers, events, done, timeout=30))
        while not any(e.event == "synced" for e in events):
            await asyncio.sleep(0.01)
        for phase in phases:
            t0 = time.monotonic()
            rv = await asyncio.to_thread(_set_status, api_env, ns, name, {"phase": phase})
            written.append((rv, phase, t0))
            want.add(rv)
            await asyncio.sleep(0.2)
        assert await asyncio.wait_for(reader, 15) == 200
        return events

    events = asyncio.run(run())
    first = _changes(events)[0]
    assert first.event == "added"
    assert first.data["object"]["metadata"]["name"] == name
    by_id = {e.id: e for e in _changes(events)}
    latencies = []
    for rv, phase, t0 in written:
        ev = by_id.get(rv)
        assert ev is not None, f"no event for the change to {phase} (resourceVersion {rv})"
        assert ev.data["object"]["status"]["phase"] == phase
        latencies.append(ev.at - t0)
    arrival = [by_id[rv].at for rv, _, _ in written]
    assert arrival == sorted(arrival), "phase changes arrived out of order"
    print(
        f"SSE latency per phase change (s): {', '.join(f'{x:.3f}' for x in latencies)}; max {max(latencies):.3f}"
    )
    assert max(latencies) < LATENCY_LIMIT_S


def test_resume_after_a_cut_loses_nothing_and_repeats_nothing(api_env: ApiEnv, tenants: Tenants) -> None:
    ns, name = tenants.a.namespace, "sse-resume"
    _create(api_env, tenants, name)
    url = f"{api_env.url}/api/v1/watch/namespaces/{ns}/trainingjobs/{name}"

    async def run() -> tuple[list[SseEvent], list[str], list[SseEvent], str]:
        first: list[SseEvent] = []
        reader = asyncio.create_task(sse_events(url, tenants.a.headers, first, None, timeout=30))
        while not any(e.event == "synced" for e in first):
            await asyncio.sleep(0.01)
        before = await asyncio.to_thread(_set_status, api_env, ns, name, {"phase": "Pending"})
        while before not in {e.id for e in first}:
            await asyncio.sleep(0.01)
        reader.cancel()  # the connection drops
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        last_id = [e.id for e in first if e.id][-1]
        assert int(last_id) >= int(before)
        missed = []
        for i, phase in enumerate(["Running", "Running", "Failed"]):
            status: dict[str, Any] = {
                "phase": phase,
                "progress": {"epoch": i, "epochs": 3, "percent": 33 * i},
            }
            missed.append(await asyncio.to_thread(_set_status, api_env, ns, name, status))
        second: list[SseEvent] = []
        headers = {**tenants.a.headers, "Last-Event-ID": last_id}
        status = await sse_events(
            url, headers, second, lambda evs: missed[-1] in {e.id for e in evs}, timeout=15
        )
        assert status == 200
        return first, missed, second, last_id

    _first, missed, second, last_id = asyncio.run(run())
    resumed = _changes(second)
    ids = [e.id for e in resumed]
    assert [i for i in ids if i in missed] == missed, "after resuming: every missed change, in order"
    assert len(ids) == len(set(ids)), "after resuming: nothing twice"
    assert not any(e.event in ("added", "synced", "reset") for e in second)
    assert all(int(i) > int(last_id) for i in ids if i), "nothing from before the cut"
    by_id = {e.id: e for e in resumed}
    assert [by_id[rv].data["object"]["status"]["phase"] for rv in missed] == ["Running", "Running", "Failed"]


def test_namespace_stream_heartbeats_and_deletes(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    _create(api_env, tenants, "sse-ns-1")
    url = f"{api_env.url}/api/v1/watch/namespaces/{ns}/trainingjobs?labelSelector=suite%3Dsse"

    async def run() -> list[SseEvent]:
        events: list[SseEvent] = []

        def done(evs: list[SseEvent]) -> bool:
            return any(e.event == "deleted" for e in evs) and sum(e.comment == "heartbeat" for e in evs) >= 1

        reader = asyncio.create_task(sse_events(url, tenants.a.headers, events, done, timeout=30))
        while not any(e.event == "synced" for e in events):
            await asyncio.sleep(0.01)
        _create(api_env, tenants, "sse-ns-2")
        await asyncio.sleep(1.6)  # idle: the facade's heartbeat (1 s in the tests) keeps the stream alive
        with api_env.client(tenants.a.headers) as c:
            expect(c.delete(f"/api/v1/namespaces/{ns}/trainingjobs/sse-ns-2"), 200)
        assert await asyncio.wait_for(reader, 15) == 200
        return events

    events = asyncio.run(run())
    names = [(e.event, e.data["object"]["metadata"]["name"]) for e in _changes(events)]
    assert ("added", "sse-ns-1") in names
    assert ("added", "sse-ns-2") in names
    assert names[-1] == ("deleted", "sse-ns-2")
    assert any(e.comment == "heartbeat" for e in events)


def test_stream_refusals_are_http_statuses(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    with api_env.client(tenants.a.headers) as c:
        expect(c.get(f"/api/v1/watch/namespaces/{ns}/trainingjobs/no-such-job"), 404)
        expect(c.get(f"/api/v1/watch/namespaces/{ns}/trainingjobs", params={"resourceVersion": "x"}), 422)
    with api_env.client() as c:
        expect(c.get(f"/api/v1/watch/namespaces/{ns}/trainingjobs"), 401)

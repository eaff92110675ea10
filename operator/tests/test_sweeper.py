"""The per-kind resync loop (kubeloop_operator.sweeper): scheduling with a fake clock, slim bodies, retries,
pausing, and kopf's peering rule."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
from kubeloop_operator.sweeper import LAST_APPLIED, RETRY_S, PeeringGate, Sweeper, peering_paused, slim


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def body(uid: str, phase: str | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"tj-{uid}", "namespace": "ns", "uid": uid, **meta},
        "spec": {"epochs": 3},
        "status": {"phase": phase} if phase else {},
    }


def running(b: Mapping[str, Any]) -> bool:
    return (b.get("status") or {}).get("phase") == "Running"


def make(clock: Clock, runs: list[tuple[str, bool]] | None = None, **kw: Any) -> Sweeper:
    def run(b: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        if runs is not None:
            runs.append((b["metadata"]["uid"], fast))

    kw.setdefault("interval", 10.0)
    return Sweeper("TrainingJob", run, clock=clock, rng=random.Random(1), **kw)


def drain(sw: Sweeper) -> list[tuple[str, bool]]:
    """Run what is due (as the loop would, synchronously) and return (uid, fast) of each run."""
    out = []
    for uid, b, fast in sw.due():
        sw.done(uid, fast, sw.run_one(uid, b, fast))
        out.append((uid, fast))
    return sorted(out)


def test_slim_drops_managed_fields_and_last_applied_but_keeps_what_reconcilers_read() -> None:
    b = body(
        "a", "Running", managedFields=[{"manager": "kubectl"}], annotations={LAST_APPLIED: "{}", "x": "1"}
    )
    s = slim(b)
    assert "managedFields" not in s["metadata"]
    assert s["metadata"]["annotations"] == {"x": "1"}
    assert s["spec"] is b["spec"]
    assert s["status"] is b["status"]
    assert s["metadata"]["uid"] == "a"
    assert s["apiVersion"] == b["apiVersion"]
    assert s["kind"] == "TrainingJob"
    assert "managedFields" in b["metadata"]
    assert LAST_APPLIED in b["metadata"]["annotations"]


def test_every_object_resyncs_once_per_interval_spread_after_start() -> None:
    clock = Clock()
    sw = make(clock)
    for i in range(100):
        sw.remember(body(str(i)))
    assert drain(sw) == []  # the event that brought them was reconciled already
    firsts: dict[str, float] = {}
    for _ in range(40):  # 20 s in steps of 0.5 s
        clock.t += 0.5
        for uid, _fast in drain(sw):
            firsts.setdefault(uid, clock.t - 1000.0)
    assert len(firsts) == 100
    assert min(firsts.values()) >= 5.0
    assert max(firsts.values()) <= 10.5
    assert len({round(v) for v in firsts.values()}) >= 5


def test_steady_period_and_no_double_runs() -> None:
    clock = Clock()
    runs: list[tuple[str, bool]] = []
    sw = make(clock, runs)
    sw.remember(body("a"))
    clock.t += 10.0
    assert drain(sw) == [("a", False)]
    for _ in range(10):  # events in between (status echoes) do not add runs
        sw.remember(body("a"))
    clock.t += 9.9
    assert drain(sw) == []
    clock.t += 0.1
    assert drain(sw) == [("a", False)]
    assert runs == [("a", False), ("a", False)]


def test_fast_period_only_in_the_fast_state() -> None:
    clock = Clock()
    sw = make(clock, interval=100.0, fast_interval=2.0, fast_when=running)
    sw.remember(body("a", "Pending"))
    clock.t += 2.0
    assert drain(sw) == []
    sw.remember(body("a", "Running"))
    clock.t += 2.0
    assert drain(sw) == [("a", True)]
    clock.t += 2.0
    assert drain(sw) == [("a", True)]
    sw.remember(body("a", "Succeeded"))
    clock.t += 2.0
    assert drain(sw) == []  # no more progress reads once it stopped running
    clock.t += 100.0
    assert drain(sw) == [("a", False)]  # the resync goes on


def test_an_object_being_run_is_not_picked_again() -> None:
    clock = Clock()
    sw = make(clock, fast_interval=1.0, fast_when=running)
    sw.remember(body("a", "Running"))
    clock.t += 1.0
    picked = sw.due()
    assert [(u, f) for u, _, f in picked] == [("a", True)]
    clock.t += 20.0  # its resync and further fast runs come due while it runs
    assert sw.due() == []
    sw.done("a", True)
    clock.t += 1.0
    assert [(u, f) for u, _, f in sw.due()] == [("a", True)]


def test_forgotten_objects_are_not_run_and_the_heap_stays_bounded() -> None:
    clock = Clock()
    runs: list[tuple[str, bool]] = []
    sw = make(clock, runs, interval=1.0, fast_interval=0.5, fast_when=running)
    for i in range(50):
        sw.remember(body(str(i), "Running"))
    for i in range(50):
        if i % 2:
            sw.forget(str(i))
    assert len(sw) == 25
    for _ in range(200):
        clock.t += 0.5
        drain(sw)
    assert {u for u, _ in runs} == {str(i) for i in range(0, 50, 2)}
    assert len(sw._heap) <= 4 * len(sw) + 64


def test_failures_retry_after_the_errors_delay_or_the_default() -> None:
    clock = Clock()
    calls: list[float] = []

    def run(b: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        calls.append(clock.t)
        if b["metadata"]["uid"] == "temp":
            raise kopf.TemporaryError("the API server said not now", delay=3.0)
        raise RuntimeError("a bug")

    sw = Sweeper("TrainingJob", run, interval=60.0, clock=clock, rng=random.Random(1))
    sw.remember(body("temp"))
    sw.remember(body("bug"))
    clock.t += 60.0
    assert drain(sw) == [("bug", False), ("temp", False)]  # exceptions do not escape
    clock.t += 3.0
    assert drain(sw) == [("temp", False)]
    clock.t += RETRY_S - 3.0
    assert drain(sw) == [("bug", False), ("temp", False)]


def test_the_loop_runs_due_objects_in_the_executor_and_nothing_while_paused() -> None:
    runs: list[tuple[str, bool]] = []
    seen_indexes: list[Mapping[str, Any]] = []

    def run(b: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        runs.append((b["metadata"]["uid"], fast))
        seen_indexes.append(indexes)

    sw = Sweeper("TrainingJob", run, interval=0.05, tick=0.01, rng=random.Random(1))
    paused = [False]

    async def main() -> None:
        task = asyncio.create_task(sw.run(None, lambda: paused[0], {"kubeloop_jobs": "index"}))
        sw.remember(body("a"))
        sw.remember(body("b"))
        await asyncio.sleep(0.3)
        paused[0] = True
        await asyncio.sleep(0.05)
        n = len(runs)
        await asyncio.sleep(0.2)
        assert len(runs) == n  # nothing ran while paused
        assert len(sw) == 2  # kept (stale) for the re-list
        sw.remember(body("a"))  # kopf's re-list after the resume may come before the gate sees it
        paused[0] = False
        await asyncio.sleep(0.3)
        assert len(sw) == 1  # b was not re-listed: deleted meanwhile, dropped a period after the resume
        assert ("a", False) in runs[n:]
        assert ("b", False) not in runs[n:]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert {u for u, _ in runs} == {"a", "b"}
    assert all(i == {"kubeloop_jobs": "index"} for i in seen_indexes)


def test_stale_bodies_wait_for_the_relist_and_are_dropped_a_period_after_the_resume() -> None:
    clock = Clock()
    sw = make(clock, interval=10.0, fast_interval=2.0, fast_when=running)
    sw.remember(body("a", "Running"))
    sw.remember(body("b", "Running"))
    sw.pause()
    clock.t += 30.0
    sw.resume()
    assert drain(sw) == []  # both stale: not run on what may be old bodies
    sw.remember(body("a", "Running"))  # re-listed
    clock.t += 2.0
    assert drain(sw) == [("a", True)]
    clock.t += 8.0
    assert ("a", True) in drain(sw)  # its resync came due with a fast run, which is a resync too
    assert len(sw) == 1  # b dropped
    assert "b" not in sw._entries


def _peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    seen = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_peering_rule_is_kopfs() -> None:
    now = datetime.now(UTC)
    assert not peering_paused({}, "me", 10, now)
    assert not peering_paused({"me": _peer(10, 0)}, "me", 10, now)
    assert peering_paused({"me": _peer(10, 0), "other": _peer(20, 5)}, "me", 10, now)  # higher, alive
    assert peering_paused({"other": _peer(10, 5)}, "me", 10, now)  # equal priorities freeze both
    assert not peering_paused({"other": _peer(5, 5)}, "me", 10, now)  # lower
    assert not peering_paused({"other": _peer(20, 120, lifetime=60)}, "me", 10, now)  # dead
    assert peering_paused({"other": {"priority": "x"}}, "me", 10, now)  # unreadable: assume in charge
    naive = {
        "other": {
            "priority": 20,
            "lifetime": 60,
            "lastseen": datetime.now(UTC).replace(tzinfo=None).isoformat(),
        }
    }
    assert peering_paused(naive, "me", 10, now)


def test_peering_gate_reads_at_most_every_period_and_fails_closed() -> None:
    clock = Clock()
    reads: list[float] = []
    answer: list[Any] = [{"status": {"other": _peer(20, 0)}}]

    def read() -> Mapping[str, Any] | None:
        reads.append(clock.t)
        if isinstance(answer[0], Exception):
            raise answer[0]
        return answer[0]  # type: ignore[no-any-return]

    gate = PeeringGate(read, identity="me", priority=10, every=2.0, clock=clock)
    assert gate() is True
    answer[0] = {"status": {"other": _peer(5, 0)}}
    clock.t += 1.0
    assert gate() is True
    assert len(reads) == 1
    clock.t += 1.0
    assert gate() is False
    assert len(reads) == 2
    answer[0] = None  # no peering object yet: kopf has not announced itself, so neither do we act
    clock.t += 2.0
    assert gate() is True
    answer[0] = ConnectionError("refused")
    clock.t += 2.0
    assert gate() is True
    assert PeeringGate(None, identity="me", priority=0)() is False  # standalone


def test_a_failed_event_run_brings_the_resync_forward() -> None:
    clock = Clock()
    sw = make(clock, interval=60.0)
    sw.remember(body("a"))
    sw.retry("a", 3.0)
    clock.t += 3.0
    assert drain(sw) == [("a", False)]
    sw.retry("a", None)
    clock.t += RETRY_S
    assert drain(sw) == [("a", False)]
    sw.retry("a", 500.0)  # later than the next resync: the resync stays
    clock.t += 60.0
    assert drain(sw) == [("a", False)]
    sw.retry("unknown", 1.0)  # forgotten or never seen: nothing
    clock.t += 1.0
    assert drain(sw) == []


def test_an_event_remembers_the_body_and_a_temporary_error_brings_the_resync_forward() -> None:
    clock = Clock()
    runs: list[tuple[str, bool]] = []
    sw = make(clock, runs, interval=60.0)
    sw.event(body("a"), lambda: None)
    assert len(sw) == 1
    clock.t += 60.0
    assert drain(sw) == [("a", False)]

    def refused() -> None:
        raise kopf.TemporaryError("quota", delay=4)

    with pytest.raises(kopf.TemporaryError):  # kopf still sees it (and logs it)
        sw.event(body("b"), refused)
    clock.t += 4.0
    assert drain(sw) == [("b", False)]  # 4 s, not 30-60 s after the event

    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):  # not a retry signal: the next resync comes a period later
        sw.event(body("c"), broken)
    clock.t += 10.0
    assert drain(sw) == []


def test_when_a_resync_and_a_fast_run_are_both_due_the_fast_run_goes_and_counts_as_the_resync() -> None:
    """A ModelDeployment's alias poll is its resync plus a lookup of its aliases: a resync that comes due
    with it must not take its place (the poll would wait a period more)."""
    clock = Clock()
    runs: list[tuple[str, bool]] = []
    sw = make(clock, runs, interval=10.0, fast_interval=10.0, fast_when=running)
    sw.remember(body("a", "Running"))
    entry = sw._entries["a"]
    clock.t = max(entry.resync_at, entry.fast_at or 0.0)  # both due in the same tick
    assert drain(sw) == [("a", True)]
    sw.remember(body("a", "Succeeded"))  # out of the fast state: resyncs only, a period after that run
    clock.t += 9.9
    assert drain(sw) == []
    clock.t += 0.1
    assert drain(sw) == [("a", False)]


def test_the_loop_wakes_at_least_twice_per_fast_period() -> None:
    def run(b: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        return None

    assert Sweeper("TrainingJob", run, interval=60.0).tick == 0.5
    assert Sweeper("TrainingJob", run, interval=60.0, fast_interval=10.0).tick == 0.5
    assert Sweeper("TrainingJob", run, interval=60.0, fast_interval=0.4).tick == 0.2
    assert Sweeper("TrainingJob", run, interval=60.0, fast_interval=0.4, tick=0.1).tick == 0.1

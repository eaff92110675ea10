"""Level-based resyncs for a whole kind from one loop, instead of a kopf timer per object.

A kopf timer is a daemon per object: an asyncio task, its stopper and logger, and kopf's own copy of the
object's latest body (``managedFields`` and all), kept for as long as the object exists. At 500
TrainingJobs that was ~60 MiB of the operator's memory for work that is the same for every object:
"every ``interval`` seconds, reconcile it". One :class:`Sweeper` per kind (TrainingJobs,
ModelDeployments, DriftMonitors) does that work instead:

* the kind's watch-event handler hands it each object's latest body (:meth:`Sweeper.remember`), which it
  keeps as compact JSON text without ``managedFields`` and the ``last-applied-configuration`` annotation
  (the reconcilers read neither), and forgets it on deletion. As text a TrainingJob's body is ~2 KB; as
  the dicts the watch stream decoded it is ten times that, and decoding it again costs ~20 us per run;
* one asyncio task wakes every ``tick`` seconds, picks the objects whose resync is due (and, for
  objects in a given state, whose faster ``fast`` period is due, e.g. a running TrainingJob's
  progress), and runs each in kopf's own thread pool, at most ``concurrency`` at a time, never two
  runs of one object at once;
* after a restart the first resyncs are spread over the period (the event handler reconciles every
  object on the initial listing anyway); a failed run is retried after the error's delay
  (:class:`kopf.TemporaryError`) or :data:`RETRY_S`;
* while kopf has paused this process in favour of a peer (:class:`PeeringGate`), nothing runs, and the
  kept bodies are marked stale: kopf re-lists every object when it resumes, which refreshes them; a
  body still stale a period after the resume is of an object deleted meanwhile, and is dropped. (The
  gate reads the peering object every few seconds, so it may see the resume after kopf's re-list has
  come: the bodies are not dropped at the pause, only marked.)

Everything here but :meth:`Sweeper.run` is synchronous and pure enough to unit-test with a fake clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import kopf

log = logging.getLogger("kubeloop_operator.sweeper")

RETRY_S: Final = 10.0
"""When a run that failed without saying when to retry runs again."""
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"

# run(body, fast, indexes): one reconcile; fast says it is the faster period's run (e.g. progress) rather
# than a resync; indexes are kopf's in-memory indexes, as kopf passes them to handlers.
RunFn = Callable[[Mapping[str, Any], bool, Mapping[str, Any]], None]
# fast_when(body): whether the object is in the state that has the faster period.
FastWhen = Callable[[Mapping[str, Any]], bool]


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as the reconcilers read it: without ``metadata.managedFields`` and kubectl's
    last-applied annotation (a second copy of the spec). ``spec`` and ``status`` are shared, not copied."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    out["metadata"] = meta
    return out


@dataclass
class _Entry:
    body: str  # JSON
    resync_at: float
    fast: bool = False
    fast_at: float | None = None
    stale: bool = False


@dataclass
class Sweeper:
    """Periodic reconciles of every remembered object of one kind (see the module's docstring)."""

    kind: str
    run_fn: RunFn
    interval: float
    fast_interval: float | None = None
    fast_when: FastWhen | None = None
    concurrency: int = 4
    tick: float = 0.5
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _indexes: Mapping[str, Any] = field(default_factory=dict)
    # remember()/forget() come from kopf's handler threads, due()/done() from the event loop
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _resumed_at: float | None = None

    def __post_init__(self) -> None:
        if self.fast_interval is not None:
            # a fast run must not wait most of its own period for the loop to wake up
            self.tick = min(self.tick, self.fast_interval / 2)

    # --- what the event handler tells it -------------------------------------------------------------

    def remember(self, body: Mapping[str, Any]) -> None:
        """The object's latest body. A new object's first resync comes after 0.5 to 1.0 periods (the
        event that brought it was reconciled already); an object entering the fast state gets its first
        fast run one fast period after this event."""
        uid = str((body.get("metadata") or {}).get("uid"))
        kept = slim(body)
        fast = self.fast_interval is not None and self.fast_when is not None and self.fast_when(kept)
        text = json.dumps(kept, separators=(",", ":"))
        with self._lock:
            self._remember(uid, text, fast)

    def _remember(self, uid: str, text: str, fast: bool) -> None:
        now = self.clock()
        entry = self._entries.get(uid)
        if entry is None:
            entry = self._entries[uid] = _Entry(text, now + self.rng.uniform(0.5, 1.0) * self.interval)
            heapq.heappush(self._heap, (entry.resync_at, uid))
        else:
            entry.body = text
        entry.stale = False
        entry.fast = fast
        if fast and entry.fast_at is None:
            assert self.fast_interval is not None
            entry.fast_at = now + self.fast_interval
            heapq.heappush(self._heap, (entry.fast_at, uid))
        elif not fast:
            entry.fast_at = None

    def retry(self, uid: str, delay: float | None) -> None:
        """A run outside the sweeper (a watch event's) failed: resync after ``delay`` (or
        :data:`RETRY_S`) unless one comes sooner."""
        with self._lock:
            entry = self._entries.get(uid)
            at = self.clock() + (RETRY_S if delay is None else delay)
            if entry is not None and at < entry.resync_at:
                entry.resync_at = at
                heapq.heappush(self._heap, (at, uid))

    def event(self, body: Mapping[str, Any], run: Callable[[], None]) -> None:
        """A watch event's reconcile (``run``): the body is remembered first; a kopf.TemporaryError (which
        kopf does not retry for event handlers) brings the resync forward to its delay, and goes on to kopf,
        which logs it."""
        self.remember(body)
        try:
            run()
        except kopf.TemporaryError as e:
            self.retry(str((body.get("metadata") or {}).get("uid")), e.delay)
            raise

    def forget(self, uid: str) -> None:
        with self._lock:
            self._entries.pop(uid, None)  # its heap items are skipped when they come up

    def pause(self) -> None:
        """kopf paused this process: every kept body may go stale (see the module's docstring)."""
        with self._lock:
            for entry in self._entries.values():
                entry.stale = True
            self._resumed_at = None

    def resume(self) -> None:
        with self._lock:
            self._resumed_at = self.clock()

    def __len__(self) -> int:
        return len(self._entries)

    # --- scheduling ------------------------------------------------------------------------------------

    def due(self) -> list[tuple[str, dict[str, Any], bool]]:
        """(uid, body, fast) of every object whose run is due and not running, marked as running.
        When an object's resync and fast run are both due, the fast run goes: it is a resync too (for a
        ModelDeployment, a resync that also resolves its aliases), and done() starts the next resync
        period from its end."""
        with self._lock:
            return self._due()

    def _due(self) -> list[tuple[str, dict[str, Any], bool]]:
        now = self.clock()
        picked: dict[str, bool] = {}
        while self._heap and self._heap[0][0] <= now:
            at, uid = heapq.heappop(self._heap)
            entry = self._entries.get(uid)
            if entry is None or uid in self._running:
                continue  # forgotten; or running now, and done() schedules its next run
            if entry.stale:  # not re-listed since the resume (yet)
                entry.fast_at = None  # remember() schedules it again with the fresh body
                resumed = self._resumed_at if self._resumed_at is not None else now
                if now - resumed >= self.interval:
                    del self._entries[uid]  # deleted while this process was paused
                elif at == entry.resync_at:
                    entry.resync_at = resumed + self.interval
                    heapq.heappush(self._heap, (entry.resync_at, uid))
                continue
            if at == entry.resync_at:
                picked[uid] = picked.get(uid, False) or (entry.fast_at is not None and entry.fast_at <= now)
            elif at == entry.fast_at:
                picked[uid] = True
        out = []
        for uid, fast in picked.items():
            self._running.add(uid)
            out.append((uid, json.loads(self._entries[uid].body), fast))
        return out

    def done(self, uid: str, fast: bool, retry_in: float | None = None) -> None:
        """A run ended: the next resync (and fast run) from now, or a retry after ``retry_in``."""
        with self._lock:
            self._done(uid, fast, retry_in)

    def _done(self, uid: str, fast: bool, retry_in: float | None) -> None:
        self._running.discard(uid)
        entry = self._entries.get(uid)
        if entry is None:
            return
        now = self.clock()
        if retry_in is not None or not fast or entry.resync_at <= now:
            # (a fast run's reconcile is a resync too: one that came due meanwhile waits a period)
            entry.resync_at = now + (self.interval if retry_in is None else retry_in)
            heapq.heappush(self._heap, (entry.resync_at, uid))
        if entry.fast:
            assert self.fast_interval is not None
            entry.fast_at = now + self.fast_interval
            heapq.heappush(self._heap, (entry.fast_at, uid))
        else:
            entry.fast_at = None
        if len(self._heap) > 4 * len(self._entries) + 64:  # stale items of forgotten/rescheduled objects
            self._heap = [(t, u) for t, u in self._heap if u in self._entries]
            heapq.heapify(self._heap)

    def run_one(self, uid: str, body: Mapping[str, Any], fast: bool) -> float | None:
        """One reconcile in the caller's thread; returns the retry delay when it failed."""
        try:
            self.run_fn(body, fast, self._indexes)
        except kopf.TemporaryError as e:
            log.warning("%s %s: %s", self.kind, _name(body), e)
            return float(e.delay) if e.delay is not None else RETRY_S
        except Exception:
            log.exception(
                "%s %s: periodic reconcile failed; retrying in %.0f s", self.kind, _name(body), RETRY_S
            )
            return RETRY_S
        return None

    # --- the loop ---------------------------------------------------------------------------------------

    async def run(
        self,
        executor: concurrent.futures.Executor | None,
        paused: Callable[[], bool],
        indexes: Mapping[str, Any],
    ) -> None:
        """Forever (until cancelled): every tick, the due runs in ``executor`` (kopf's thread pool), with
        kopf's ``indexes`` (live views). ``paused`` may block (it may ask the API server), so it runs
        there too."""
        self._indexes = indexes
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(uid: str, body: dict[str, Any], fast: bool) -> None:
            try:
                retry_in = await loop.run_in_executor(executor, self.run_one, uid, body, fast)
            finally:
                limit.release()
            self.done(uid, fast, retry_in)

        was_paused = False
        while True:
            await asyncio.sleep(self.tick)
            if await loop.run_in_executor(executor, paused):
                if not was_paused:
                    log.info("%s: paused in favour of a peer (%d objects kept, stale)", self.kind, len(self))
                    self.pause()
                    was_paused = True
                continue
            if was_paused:
                log.info("%s: resumed", self.kind)
                self.resume()
                was_paused = False
            for uid, body, fast in self.due():
                await limit.acquire()
                task = loop.create_task(one(uid, body, fast))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


# --- peering ------------------------------------------------------------------------------------------------


def peer_blocks(entry: Mapping[str, Any], own_priority: int, now: datetime) -> bool:
    """Whether one live peer of kopf's peering status pauses us: kopf pauses an operator while a peer
    with a higher priority is alive, and all of them when priorities are equal."""
    try:
        priority = int(entry.get("priority", 0))
        lifetime = int(entry.get("lifetime", 60))
        lastseen = entry.get("lastseen")
        seen = datetime.fromisoformat(str(lastseen)) if lastseen else now
    except (TypeError, ValueError):
        return True  # a peer we cannot read: assume it is alive and in charge
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen + timedelta(seconds=lifetime) > now and priority >= own_priority


def peering_paused(status: Mapping[str, Any] | None, identity: str, own_priority: int, now: datetime) -> bool:
    """kopf's pause rule applied to a peering object's ``status`` (peers by identity)."""
    return any(
        peer_blocks(entry, own_priority, now)
        for peer, entry in (status or {}).items()
        if peer != identity and isinstance(entry, Mapping)
    )


@dataclass
class PeeringGate:
    """Whether this process may act: never paused when standalone; otherwise read from the peering
    object kopf keeps (at most every ``every`` seconds). Unreadable or missing means paused: kopf itself
    does not run handlers until it has announced itself there."""

    read: Callable[[], Mapping[str, Any] | None] | None
    identity: str
    priority: int
    every: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _checked: float = float("-inf")
    _paused: bool = True

    def __call__(self) -> bool:
        if self.read is None:
            return False
        if self.clock() - self._checked >= self.every:
            self._checked = self.clock()
            try:
                obj = self.read()
            except Exception as e:
                log.warning("cannot read the peering object: %s; periodic reconciles wait", e)
                self._paused = True
            else:
                self._paused = obj is None or peering_paused(
                    obj.get("status"), self.identity, self.priority, datetime.now(UTC)
                )
        return self._paused

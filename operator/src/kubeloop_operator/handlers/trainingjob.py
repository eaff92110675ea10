"""TrainingJob handlers. Each runs the same level-based reconciler:

* ``event``: every watch event of a TrainingJob (creation, spec changes, the operator's start, which
  lists them all), at once. A low-level kopf handler: no wait for kopf's finalizer round trip and no
  bookkeeping annotations written before the Job exists; an event that changes nothing (the echo of
  our own status write) costs a comparison and writes nothing. It also hands the body to the sweeper;
* the kind's :class:`~kubeloop_operator.sweeper.Sweeper` (one loop for all TrainingJobs, not a kopf
  timer per object): ``resync`` every ``resync_seconds`` — children, status, TTL; it is what retries
  failures and makes a crashed operator converge, and it writes nothing when nothing changed — and
  ``progress`` every ``progress_seconds`` while a TrainingJob runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from kubeloop.resources import GROUP, VERSION, Phase
from kubeloop_operator.handlers.children import children_of
from kubeloop_operator.reconcile.trainingjob import KIND, reconcile
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.sweeper import Sweeper

PLURAL: Final = "trainingjobs"


def _running(body: Mapping[str, Any]) -> bool:
    return bool((body.get("status") or {}).get("phase") == Phase.RUNNING.value)


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    s = rt.settings
    m = rt.metrics

    def run(
        handler: str, body: Mapping[str, Any], kwargs: Mapping[str, Any], *, progress: bool = False
    ) -> None:
        with m.handler(KIND, handler):
            reconcile(rt, body, children_of(kwargs, str(body["metadata"]["uid"])), progress=progress)

    def periodic(body: Mapping[str, Any], fast: bool, indexes: Mapping[str, Any]) -> None:
        run("progress" if fast else "resync", body, indexes, progress=fast)

    sweeper = Sweeper(
        KIND,
        periodic,
        interval=s.resync_seconds,
        fast_interval=s.progress_seconds,
        fast_when=_running,
        concurrency=max(1, s.max_workers // 2),
    )
    rt.sweepers.append(sweeper)

    def forget(body: kopf.Body) -> None:
        uid = str(body.metadata.uid)
        sweeper.forget(uid)
        rt.memory.forget(uid)
        m.set_phase(KIND, uid, None)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="event", registry=registry)
    def on_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        if type == "DELETED":
            forget(body)
            return
        sweeper.event(body, lambda: run("event", body, kwargs))

"""TrainingJob handlers. Each runs the same level-based reconciler:

* ``event``: every watch event of a TrainingJob (creation, spec changes, the operator's start, which
  lists them all), at once. A low-level kopf handler: no wait for kopf's finalizer round trip and no
  bookkeeping annotations written before the Job exists; an event that changes nothing (the echo of
  our own status write) costs a comparison and writes nothing;
* ``resync`` timer, every ``resync_seconds`` for every TrainingJob: children, status, TTL — it is
  what retries failures and makes a crashed operator converge, and it writes nothing when nothing
  changed;
* ``progress`` timer, every ``progress_seconds`` while a TrainingJob runs: reads progress.
"""

from __future__ import annotations

import random
from typing import Any, Final

import kopf

from kubeloop.resources import GROUP, VERSION, Phase
from kubeloop_operator.handlers.children import children_of
from kubeloop_operator.reconcile.trainingjob import KIND, reconcile
from kubeloop_operator.runtime import Runtime

PLURAL: Final = "trainingjobs"


def _running(status: kopf.Status, **_: Any) -> bool:
    return bool(status.get("phase") == Phase.RUNNING.value)


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    s = rt.settings
    m = rt.metrics

    def run(handler: str, body: kopf.Body, kwargs: dict[str, Any], *, progress: bool = False) -> None:
        with m.handler(KIND, handler):
            reconcile(rt, body, children_of(kwargs, str(body.metadata.uid)), progress=progress)

    def forget(body: kopf.Body) -> None:
        uid = str(body.metadata.uid)
        rt.memory.forget(uid)
        m.set_phase(KIND, uid, None)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="event", registry=registry)
    def on_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        if type == "DELETED":
            forget(body)
            return
        run("event", body, kwargs)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id="resync",
        interval=s.resync_seconds,
        # Spread over the interval: after a restart, thousands of objects do not resync at once.
        initial_delay=lambda **_: random.uniform(0.5, 1.0) * s.resync_seconds,
        registry=registry,
    )
    def resync(body: kopf.Body, **kwargs: Any) -> None:
        run("resync", body, kwargs)

    @kopf.timer(
        GROUP, VERSION, PLURAL, id="progress", interval=s.progress_seconds, when=_running, registry=registry
    )
    def progress(body: kopf.Body, **kwargs: Any) -> None:
        run("progress", body, kwargs, progress=True)

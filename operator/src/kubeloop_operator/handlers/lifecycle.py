"""Start-up configuration of kopf, login, the liveness probe and clean shutdown.

* Kopf's finalizer and state annotations carry kubeloop names (``kubeloop.io/…``), not kopf's.
* Kopf's own Events only for warnings and errors: the reconcilers post the Events users read.
* Peering: replicas share one cluster-wide KopfPeering; the highest priority runs, others pause.
* Only children labelled ``app.kubernetes.io/managed-by=kubeloop-operator`` are watched.
* The kinds' periodic resyncs (:mod:`kubeloop_operator.sweeper`) start with the operator, act only
  while kopf's peering lets this process act, and stop with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Final

import kopf

from kubeloop.contracts import MANAGED_BY_OPERATOR, Labels
from kubeloop_operator.handlers.children import WATCHED
from kubeloop_operator.k8s import CLUSTER_PEERING
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.sweeper import PeeringGate

FINALIZER: Final = "kubeloop.io/operator"
ANNOTATION_PREFIX: Final = "kubeloop.io"
LAST_HANDLED: Final = "last-handled-configuration"
WORKER_IDLE_S: Final = 0.5


def configure(settings: kopf.OperatorSettings, rt: Runtime) -> None:
    """Apply the operator's settings to kopf's (also used by tests that run kopf in-process)."""
    s = rt.settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key=LAST_HANDLED
    )
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = MANAGED_BY_OPERATOR
    settings.posting.event_name_prefix = "kubeloop-operator-"
    settings.execution.max_workers = s.max_workers
    # kopf keeps a worker task (and its queue and last event) per object for this long after the
    # object's last event; at the default 5 s a burst of creations keeps thousands alive at once, and the
    # memory of that peak stays with the process after the burst (the allocator keeps its arenas).
    settings.batching.idle_timeout = WORKER_IDLE_S
    settings.networking.request_timeout = max(30.0, s.kube_timeout_s)
    settings.peering.name = s.peering_name
    settings.peering.priority = s.effective_priority()
    settings.peering.lifetime = s.peering_lifetime_seconds
    settings.peering.clusterwide = True
    settings.peering.standalone = s.standalone
    settings.peering.mandatory = not s.standalone
    settings.peering.stealth = True
    for group, version, plural in WATCHED:
        key = (group, version, plural) if group else (version, plural)
        settings.watching.label_selectors[key] = f"{Labels.MANAGED_BY}={MANAGED_BY_OPERATOR}"


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        configure(settings, rt)
        logger.info(
            "kubeloop-operator starting: namespaces=%r, peering=%s (priority %d)",
            rt.settings.namespaces or "*",
            "standalone" if rt.settings.standalone else rt.settings.peering_name,
            settings.peering.priority,
        )

    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(id="sweepers", registry=registry)
    async def start_sweepers(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        s = rt.settings
        gate = PeeringGate(
            read=None if s.standalone else lambda: rt.kube.get(CLUSTER_PEERING, None, s.peering_name),
            identity=rt.identity,
            priority=s.effective_priority(),
        )
        # kwargs holds kopf's in-memory indexes (live views), as handlers get them
        for sweeper in rt.sweepers:
            tasks.append(
                asyncio.create_task(sweeper.run(settings.execution.executor, gate, kwargs), name=sweeper.kind)
            )

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials the reconcilers use (k8s.Kube.connect): the pod's ServiceAccount in a
        # cluster, else the kubeconfig (settings.kubeconfig is exported as KUBECONFIG by __main__).
        if rt.settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return kopf.login_with_service_account(**kwargs)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.probe(id="resources", registry=registry)
    def resources(**_: Any) -> int:
        """/healthz answers while the event loop runs; it reports how many objects are remembered."""
        return len(rt.memory)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(logger: kopf.Logger, **_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(rt.kube.close)
        logger.info("kubeloop-operator stopped")

"""Thin kopf handlers: each one hands the object (and what the indexes know) to its reconciler.

Handlers are registered into an explicit :class:`kopf.OperatorRegistry` by :func:`register_all`,
with the process's :class:`~kubeloop_operator.runtime.Runtime` (settings, API, store, metrics), so
intervals come from settings and tests can build as many operators as they like. A new kind adds a
module with ``register(registry, rt)`` and one line below.
"""

from __future__ import annotations

import kopf

from kubeloop_operator.handlers import children, driftmonitor, lifecycle, modeldeployment, trainingjob
from kubeloop_operator.runtime import Runtime


def register_all(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    lifecycle.register(registry, rt)
    children.register(registry, rt)
    trainingjob.register(registry, rt)
    modeldeployment.register(registry, rt)
    driftmonitor.register(registry, rt)

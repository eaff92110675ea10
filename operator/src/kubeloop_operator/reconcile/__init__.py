"""One reconciler per kind: reads what the indexes know, asks the pure builders what should exist,
creates or fixes it through :mod:`kubeloop_operator.k8s`, asks the pure status module what the
status is, and writes it when it changed. Every reconcile is level-based and idempotent, so the
change handlers, the periodic resync and a restarted operator all run the same function.

``ChildView`` is how a reconciler sees the children the indexes hold for one owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kubeloop_operator.status.pods import JobSummary, PodSummary


@dataclass(frozen=True, slots=True)
class ServiceSummary:
    name: str
    uid: str
    owner_uid: str
    owned_hash: str = ""
    """``builders.common.service_owned_hash`` of the live Service: a hand edit of its selector or
    ports changes it (and keeps every annotation)."""


@dataclass(frozen=True)
class ChildView:
    """The children of one owner, as the in-memory indexes have them (the watch may lag a little)."""

    jobs: Sequence[JobSummary] = field(default_factory=tuple)
    pods: Sequence[PodSummary] = field(default_factory=tuple)
    services: Sequence[ServiceSummary] = field(default_factory=tuple)

    def job(self, name: str) -> JobSummary | None:
        return next((j for j in self.jobs if j.name == name), None)

    def has_service(self, name: str) -> bool:
        return any(s.name == name for s in self.services)

    def service(self, name: str) -> ServiceSummary | None:
        return next((s for s in self.services if s.name == name), None)

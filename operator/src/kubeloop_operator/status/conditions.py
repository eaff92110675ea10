"""metav1.Condition lists that tell the present truth, and the events that go with status changes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from kubeloop.resources import Condition, ConditionStatus

_REASON_OK = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MESSAGE_MAX: Final = 1024


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def reason_word(text: str, default: str = "Unknown") -> str:
    """A CamelCase condition reason from arbitrary text (reasons have a strict pattern)."""
    if _REASON_OK.match(text or ""):
        return text
    words = re.findall(r"[A-Za-z0-9]+", text or "")
    out = "".join(w[:1].upper() + w[1:] for w in words)
    out = out.lstrip("0123456789")
    return out[:1024] if out and _REASON_OK.match(out) else default


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Want:
    """A condition as the derivation wants it; the transition time is worked out by :func:`merge`."""

    type: str
    status: bool | None
    reason: str
    message: str = ""


def _status(value: bool | None) -> ConditionStatus:
    if value is None:
        return ConditionStatus.UNKNOWN
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


def merge(
    old: Sequence[Condition], wanted: Iterable[Want], *, generation: int, now: datetime
) -> list[Condition]:
    """The wanted conditions, in the wanted order; ``lastTransitionTime`` is kept from ``old`` while
    a condition's status stays the same (reason or message changes are not transitions)."""
    before = {c.type: c for c in old}
    out: list[Condition] = []
    for w in wanted:
        status = _status(w.status)
        prev = before.get(w.type)
        changed = prev is None or str(prev.status) != str(status)
        out.append(
            Condition(
                type=w.type,
                status=status,
                reason=reason_word(w.reason),
                message=one_line(w.message),
                last_transition_time=rfc3339(now) if changed or prev is None else prev.last_transition_time,
                observed_generation=generation,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An Event a status change deserves. ``key`` makes its name deterministic: replaying the same
    change after a restart posts nothing twice."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    key: str

    def name(self, owner_name: str, owner_uid: str) -> str:
        digest = hashlib.sha256(f"{owner_uid}/{self.reason}/{self.key}".encode()).hexdigest()[:16]
        # The cut must not end in '-' or '.': each part of a DNS subdomain ends alphanumeric.
        return f"{owner_name[:200].rstrip('-.')}.{digest}"

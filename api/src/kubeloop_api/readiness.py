"""What /readyz logs about its checks (no I/O here but the log).

A kubelet probes every few seconds: logging every failed probe would flood the log while a backend is
down. A check's failure is logged when it starts, again at most every :data:`REPEAT_S` seconds while it
lasts (saying for how long and how many probes failed meanwhile), and its recovery once, at INFO."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("kubeloop_api")

REPEAT_S: Final = 60.0
"""Seconds between two log lines about one check that stays failed."""


@dataclass
class _Failing:
    since: float
    logged_at: float
    unlogged: int = 0


class ReadinessLog:
    """The state of each /readyz check, as far as logging needs it. Probes run on one event loop and
    these methods do not await, so no lock is needed."""

    def __init__(self, repeat_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.repeat_s = repeat_s
        self.clock = clock
        self._failing: dict[str, _Failing] = {}

    def failed(self, check: str, message: str) -> None:
        now = self.clock()
        state = self._failing.get(check)
        if state is None:
            self._failing[check] = _Failing(since=now, logged_at=now)
            log.warning("readyz: check %s failed: %s", check, message)
        elif now - state.logged_at >= self.repeat_s:
            log.warning(
                "readyz: check %s still failing (for %.0f s; %d failed probes not logged): %s",
                check,
                now - state.since,
                state.unlogged,
                message,
            )
            state.logged_at, state.unlogged = now, 0
        else:
            state.unlogged += 1

    def ok(self, check: str) -> None:
        state = self._failing.pop(check, None)
        if state is not None:
            log.info("readyz: check %s ok again after %.0f s", check, self.clock() - state.since)

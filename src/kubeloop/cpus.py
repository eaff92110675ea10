"""How many CPUs this process may use — the one answer for every component that sizes a thread pool.

In a pod with a CPU limit, ``os.cpu_count()`` and even the affinity mask report the node's CPUs; the
limit itself is the cgroup's CFS quota. Starting threads for every node CPU in a 2-CPU pod makes them
fight over the quota and get throttled. :func:`cpu_limit` takes the smaller of the affinity mask and
the quota (cgroup v2 ``cpu.max``, else cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
rounded up, and never less than 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the platform has no masks)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs (e.g. 1.5), or None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        if int(period) > 0 and int(quota) > 0:
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q1 = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p1 = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return q1 / p1 if q1 > 0 and p1 > 0 else None


def cpu_limit(root: Path = CGROUP_ROOT) -> int:
    """CPUs this container may use: the cgroup quota (rounded up), capped by the affinity mask."""
    avail = affinity_cpus()
    quota = cgroup_cpu_quota(root)
    if quota is None:
        return avail
    return max(1, min(avail, math.ceil(quota)))

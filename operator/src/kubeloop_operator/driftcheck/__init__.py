"""``kubeloop-drift-check``: one drift check of one DriftMonitor, as its CronJob runs it.

It reads the DriftMonitor (spec: deployment, window, thresholds) and the ModelDeployment (status:
the version it serves), scores the window's prediction logs against that version's frozen baseline
(:mod:`.check`, :mod:`.logs`), writes the report to object storage and patches only the
DriftMonitor's status: its own fields and conditions (:func:`~kubeloop_operator.status.driftmonitor.apply_check`),
with the resourceVersion as precondition so the operator's fields are never overwritten.

Exit codes: 0 when the status records the check — a result, insufficient data, or a bad input as a
condition (none of those is retried); 1 when the API server or the object store failed (the Job's
retry may succeed; the status says so when it can be written), a part could not be spooled to the
check's own disk (``SpoolFailed``), SIGTERM stopped it (``CheckInterrupted``: the Job's
activeDeadlineSeconds, or its pod deleted; the status is written within the grace period), or the
check failed in a way it did not
foresee (``CheckFailed`` in the status, naming the error; the traceback is logged); 2 for invalid
settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime

from pydantic import ValidationError

log = logging.getLogger("kubeloop_operator.driftcheck")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeloop-drift-check",
        description="Run one drift check of a DriftMonitor and record it in its status. Settings are "
        "KUBELOOP_DRIFTCHECK_* variables; these options override two.",
    )
    p.add_argument("--namespace", help="namespace of the DriftMonitor (KUBELOOP_DRIFTCHECK_NAMESPACE)")
    p.add_argument("--monitor", help="name of the DriftMonitor (KUBELOOP_DRIFTCHECK_MONITOR)")
    return p


def main(argv: list[str] | None = None) -> int:
    from kubeloop_operator.driftcheck.settings import DriftCheckSettings

    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in (("namespace", args.namespace), ("monitor", args.monitor)) if v}
    try:
        settings = DriftCheckSettings(**overrides)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"kubeloop-drift-check: KUBELOOP_DRIFTCHECK_{loc.upper()}: {err['msg']}", file=sys.stderr)
        return 2
    missing = [n for n in ("namespace", "monitor", "s3_endpoint") if not getattr(settings, n)]
    if missing:
        for n in missing:
            print(f"kubeloop-drift-check: KUBELOOP_DRIFTCHECK_{n.upper()} is not set", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from kubeloop_operator.driftcheck.job import run

    return run(settings, datetime.now(UTC).replace(microsecond=0))


__all__ = ["main"]

"""``kubeloop-operator``: run the Kubeloop operator (configuration: ``KUBELOOP_OPERATOR_*``).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for invalid settings, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, cast

from pydantic import ValidationError

from kubeloop_operator.settings import OperatorSettings

log = logging.getLogger("kubeloop_operator")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeloop-operator",
        description="Reconcile Kubeloop's TrainingJob, ModelDeployment and DriftMonitor resources. Every "
        "setting is an environment variable KUBELOOP_OPERATOR_<NAME>; these options override a few.",
    )
    p.add_argument("--namespaces", help="namespace patterns (KUBELOOP_OPERATOR_NAMESPACES); default: all")
    p.add_argument("--standalone", action="store_true", default=None, help="run without peering")
    p.add_argument("--priority", type=int, help="peering priority (KUBELOOP_OPERATOR_PEERING_PRIORITY)")
    return p


def load(argv: list[str] | None = None) -> OperatorSettings:
    """Settings from the environment with command-line overrides; exits 2 naming a bad variable."""
    args = _parser().parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("namespaces", args.namespaces),
            ("standalone", args.standalone),
            ("peering_priority", args.priority),
        )
        if v is not None
    }
    try:
        base = OperatorSettings()
        return base.model_copy(update=overrides) if overrides else base
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            var = f"KUBELOOP_OPERATOR_{loc.upper()}" if loc else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            print(f"kubeloop-operator: {var}: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    settings = load(argv)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Kopf logs every successful handler run at INFO; with an event per status write that is most of the log.
    # Same for liveness probes (kopf's probe activity and aiohttp's access log): one line per probe.
    for noisy in ("kopf.objects", "kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it too

    import kopf
    from prometheus_client import start_http_server

    from kubeloop_operator.handlers import register_all
    from kubeloop_operator.k8s import Kube
    from kubeloop_operator.metrics import Metrics
    from kubeloop_operator.runtime import Runtime
    from kubeloop_operator.storage import open_store

    metrics = Metrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.listen_host, registry=metrics.registry)
    try:
        kube = Kube.connect(
            settings.kubeconfig,
            timeout_s=settings.kube_timeout_s,
            pool_size=settings.max_workers + 4,
            metrics=metrics,
        )
    except Exception as e:
        log.error("cannot load Kubernetes credentials: %s", e)
        return 1
    rt = Runtime(settings=settings, kube=kube, metrics=metrics, store=open_store(settings))
    registry = kopf.OperatorRegistry()
    register_all(registry, rt)
    liveness = (
        f"http://{settings.listen_host}:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    namespaces = [settings.namespaces] if settings.namespaces else []
    kopf.run(
        registry=registry,
        standalone=settings.standalone,
        priority=settings.effective_priority(),
        peering_name=settings.peering_name,
        # the sweepers' peering gate looks for this identity in the peering object (kopf's type is a
        # private NewType of str)
        identity=cast(Any, rt.identity),
        liveness_endpoint=liveness,
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus metrics of the operator (``kubeloop_operator_*``, base units, bounded labels).

Label values come from fixed sets only: kinds, handler names given at registration, API verbs and
resource plurals the operator uses, status-code classes, and a fixed vocabulary of error classes.
Never a namespace or object name.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter as _Tally
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

ERROR_CLASSES: Final = (
    "api_unreachable",  # the API server could not be reached (status 0)
    "api_conflict",  # 409
    "api_client",  # any other 4xx
    "api_server",  # 5xx
    "name_conflict",  # a child's name is taken by someone else's object
    "temporary",  # kopf.TemporaryError raised for another reason
    "bug",  # anything else: an exception we did not expect
)

_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RESOURCE = re.compile(
    r"^/apis?/(?:[^/]+/)?v[^/]+/(?:namespaces/[^/]+/)?([a-z0-9]+)(?:/[^/]+(?:/([a-z]+))?)?"
)


def resource_of(path: str) -> str:
    """``pods/log``, ``trainingjobs/status``, ``jobs`` … from a request path (a bounded label)."""
    m = _RESOURCE.match(path)
    if m is None:
        return "other"
    return f"{m[1]}/{m[2]}" if m[2] else m[1]


class _PhaseCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "kubeloop_operator_resources",
            "Resources the operator watches, by kind and phase.",
            labels=["kind", "phase"],
        )
        for (kind, phase), n in sorted(self._m.phase_counts().items()):
            g.add_metric([kind, phase], n)
        yield g


class Metrics:
    """All operator metrics, in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "kubeloop_operator_reconciles_total",
            "Handler runs, by kind, handler and result (success, retry, error).",
            ["kind", "handler", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "kubeloop_operator_reconcile_duration_seconds",
            "Duration of handler runs.",
            ["kind", "handler"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "kubeloop_operator_reconcile_errors_total",
            "Handler runs that failed, by kind, handler and error class.",
            ["kind", "handler", "error"],
            registry=r,
        )
        self.api_requests = Counter(
            "kubeloop_operator_api_requests_total",
            "Requests the reconcilers made to the API server (kopf's watches excluded).",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.api_seconds = Histogram(
            "kubeloop_operator_api_request_duration_seconds",
            "Duration of the reconcilers' API requests.",
            ["verb", "resource"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.status_writes = Counter(
            "kubeloop_operator_status_writes_total",
            "Status reconciliations, by kind and outcome: written, or unchanged (nothing sent).",
            ["kind", "outcome"],
            registry=r,
        )
        self.events = Counter(
            "kubeloop_operator_events_total",
            "Kubernetes Events posted, by kind and type.",
            ["kind", "type"],
            registry=r,
        )
        self.registry_requests = Counter(
            "kubeloop_operator_registry_requests_total",
            "Requests to the model registry (MLflow), by operation (get_version, get_alias) and result "
            "(ok, not_found, error).",
            ["operation", "result"],
            registry=r,
        )
        self.registry_seconds = Histogram(
            "kubeloop_operator_registry_request_duration_seconds",
            "Duration of model registry requests.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rollouts = Counter(
            "kubeloop_operator_rollouts_total",
            "Rollouts the operator started (a Deployment created or given a new pod template), by kind and "
            "track.",
            ["kind", "track"],
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        r.register(_PhaseCollector(self))
        self.drift = DriftGauges()
        r.register(self.drift)

    # --- handlers -------------------------------------------------------------------------------------

    @contextmanager
    def handler(self, kind: str, handler: str) -> Iterator[None]:
        """Time a handler run and count its result; the exception passes through."""
        from kubeloop_operator.errors import classify

        t0 = time.perf_counter()
        try:
            yield
        except BaseException as e:
            error, result = classify(e)
            self.errors.labels(kind, handler, error).inc()
            self.reconciles.labels(kind, handler, result).inc()
            raise
        else:
            self.reconciles.labels(kind, handler, "success").inc()
        finally:
            self.reconcile_seconds.labels(kind, handler).observe(time.perf_counter() - t0)

    # --- API -------------------------------------------------------------------------------------------

    def observe_api(self, verb: str, path: str, status: int, seconds: float) -> None:
        resource = resource_of(path)
        code = "error" if status == 0 else f"{status // 100}xx"
        self.api_requests.labels(verb.upper(), resource, code).inc()
        self.api_seconds.labels(verb.upper(), resource).observe(seconds)

    def observe_registry(self, operation: str, result: str, seconds: float) -> None:
        self.registry_requests.labels(operation, result).inc()
        self.registry_seconds.labels(operation).observe(seconds)

    # --- phases -----------------------------------------------------------------------------------------

    def set_phase(self, kind: str, uid: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((kind, uid), None)
            else:
                self._phases[(kind, uid)] = phase

    def phase_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(_Tally((kind, phase) for (kind, _), phase in self._phases.items()))


# --- drift scores ----------------------------------------------------------------------------------------

DRIFT_FEATURE_SERIES: Final = 16
"""Per-feature series kept per DriftMonitor: drifted features first, then the highest PSI/JS."""


class DriftScores:
    """The latest check of one DriftMonitor, as the gauges show it (from its status)."""

    __slots__ = (
        "consecutive",
        "drifted",
        "features",
        "last_check",
        "monitor",
        "namespace",
        "samples",
        "share",
    )

    def __init__(
        self,
        namespace: str,
        monitor: str,
        *,
        drifted: bool,
        share: float,
        samples: int,
        consecutive: int,
        last_check: float | None,
        features: list[tuple[str, float | None, float | None, bool]],
    ) -> None:
        self.namespace = namespace
        self.monitor = monitor
        self.drifted = drifted
        self.share = share
        self.samples = samples
        self.consecutive = consecutive
        self.last_check = last_check
        ranked = sorted(features, key=lambda f: (not f[3], -max(f[1] or 0.0, f[2] or 0.0), f[0]))
        self.features = ranked[:DRIFT_FEATURE_SERIES]


class DriftGauges(Collector):
    """``kubeloop_operator_drift_*``: the latest drift scores of every DriftMonitor, read from status.

    These are the operator's only series labelled with object names (``namespace``, ``monitor``,
    ``feature``): a drift score means nothing without them. They stay bounded: one set per monitor,
    at most :data:`DRIFT_FEATURE_SERIES` features each, removed when the monitor is."""

    def __init__(self) -> None:
        self._scores: dict[str, DriftScores] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, scores: DriftScores | None) -> None:
        with self._lock:
            if scores is None:
                self._scores.pop(uid, None)
            else:
                self._scores[uid] = scores

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            scores = sorted(self._scores.values(), key=lambda s: (s.namespace, s.monitor))
        labels = ["namespace", "monitor"]
        fam = {
            "share": GaugeMetricFamily(
                "kubeloop_operator_drift_share",
                "Share of features drifted in the latest check.",
                labels=labels,
            ),
            "drifted": GaugeMetricFamily(
                "kubeloop_operator_drift_drifted", "1 if the latest check found drift, else 0.", labels=labels
            ),
            "samples": GaugeMetricFamily(
                "kubeloop_operator_drift_samples",
                "Logged predictions scored by the latest check.",
                labels=labels,
            ),
            "consecutive": GaugeMetricFamily(
                "kubeloop_operator_drift_consecutive_drifts", "Drifted checks in a row.", labels=labels
            ),
            "last": GaugeMetricFamily(
                "kubeloop_operator_drift_last_check_timestamp_seconds",
                "Unix time of the latest check.",
                labels=labels,
            ),
        }
        psi = GaugeMetricFamily(
            "kubeloop_operator_drift_feature_psi",
            "Population Stability Index of a feature in the latest check (top features only).",
            labels=[*labels, "feature"],
        )
        js = GaugeMetricFamily(
            "kubeloop_operator_drift_feature_jensen_shannon",
            "Jensen-Shannon distance of a feature in the latest check (top features only).",
            labels=[*labels, "feature"],
        )
        for s in scores:
            key = [s.namespace, s.monitor]
            fam["share"].add_metric(key, s.share)
            fam["drifted"].add_metric(key, 1.0 if s.drifted else 0.0)
            fam["samples"].add_metric(key, s.samples)
            fam["consecutive"].add_metric(key, s.consecutive)
            if s.last_check is not None:
                fam["last"].add_metric(key, s.last_check)
            for name, p, j, _ in s.features:
                if p is not None:
                    psi.add_metric([*key, name], p)
                if j is not None:
                    js.add_metric([*key, name], j)
        yield from fam.values()
        yield psi
        yield js

"""Prometheus metrics of the facade (DESIGN §6: ``kubeloop_api_`` prefix, base units, bounded labels).

Each app owns a registry (no global state, so tests can build many apps). Label values are bounded:
``route`` is a route template (or ``unmatched``), ``method`` one of the HTTP methods the routes use,
``status`` an HTTP status class (``2xx`` … ``5xx``), ``upstream`` one of four fixed names.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UPSTREAMS: Final = ("kubernetes", "mlflow", "objectstore", "model")


def status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "other"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kubeloop_api_requests",
            "HTTP requests answered, by route template, method and status class.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kubeloop_api_request_duration_seconds",
            "Time to the response headers, by route template and method (streams: until they start).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "kubeloop_api_upstream_request_duration_seconds",
            "Time of one request to a backing service, by upstream and status class.",
            ["upstream", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "kubeloop_api_auth_failures",
            "Requests refused before reaching a route: reason is missing, malformed, rejected, expired or "
            "revoked.",
            ["reason"],
            registry=r,
        )
        self.authorization_denials = Counter(
            "kubeloop_api_authorization_denials",
            "SubjectAccessReviews that said no, by Kubeloop resource.",
            ["resource"],
            registry=r,
        )
        self.sse_clients = Gauge(
            "kubeloop_api_sse_clients", "Open Server-Sent-Event status streams.", registry=r
        )
        self.sse_events = Counter(
            "kubeloop_api_sse_events", "Events written to SSE streams, by type.", ["type"], registry=r
        )
        self.sse_overflows = Counter(
            "kubeloop_api_sse_overflows",
            "SSE clients disconnected because their buffer was full (they resume with Last-Event-ID).",
            registry=r,
        )
        self.dataset_bytes = Counter(
            "kubeloop_api_dataset_upload_bytes", "Bytes of datasets accepted and stored.", registry=r
        )
        self.dataset_refusals = Counter(
            "kubeloop_api_dataset_refusals", "Dataset uploads refused by validation.", registry=r
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        m = method if method in METHODS else "other"
        self.requests.labels(route, m, status_class(code)).inc()
        self.request_seconds.labels(route, m).observe(seconds)

    def observe_upstream(self, upstream: str, code: int, seconds: float) -> None:
        self.upstream_seconds.labels(upstream, status_class(code)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

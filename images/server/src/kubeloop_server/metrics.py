"""Prometheus metrics (DESIGN §6: ``kubeloop_`` prefix, base units, bounded labels).

Each server owns a registry (no global state, so tests can build many apps). Label values are bounded:
``protocol`` is ``rest`` or ``grpc``; ``endpoint`` a route template, ``other``, or a gRPC method name;
``status`` an HTTP status the server itself produces (REST) or a gRPC status code name (gRPC); ``class`` a
model class label (at most :data:`MAX_CLASS_LABELS`, the rest folded into ``__other__``).

The per-request series (request count and latency, batch size, run time, predicted class or value) are
plain Python counters updated from the event-loop thread only and turned into metric families at scrape
time: about 0.3 us per observation instead of a lock round-trip per series. Everything updated from other
threads (the prediction-log writer) uses prometheus_client's thread-safe metrics.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from typing import Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kubeloop_server.model import nonfinite_rows

# ``*_created`` series double the exposition size and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# Up to this many classes a single row's probabilities are checked and counted as a Python list.
_LIST_CLASSES: Final = 16
MAX_CLASS_LABELS: Final = 50
LATENCY_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REGRESSION_BUCKETS: Final = (-1e4, -1e3, -1e2, -10, -1, -0.1, 0, 0.1, 1, 10, 1e2, 1e3, 1e4)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class _Series:
    """One histogram series: per-bucket counts (non-cumulative), sum and count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, n: int) -> None:
        self.buckets = [0] * (n + 1)
        self.sum = 0.0
        self.count = 0


class LoopHistogram:
    """A labelled histogram updated from one thread (the event loop) without locks."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.labels = list(labels)
        self.bounds = [float(b) for b in buckets]
        self.series: dict[tuple[str, ...], _Series] = {}

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = _Series(len(self.bounds))
        s.buckets[bisect.bisect_left(self.bounds, value)] += 1
        s.sum += value
        s.count += 1

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, s in list(self.series.items()):
            cumulative = 0
            pairs: list[tuple[str, float]] = []
            for bound, n in zip([*self.bounds, math.inf], s.buckets, strict=True):
                cumulative += n
                pairs.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            fam.add_metric(list(labels), pairs, s.sum)
        return fam


class _LoopCollector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        requests = CounterMetricFamily(
            "kubeloop_server_requests",
            "Requests handled, by protocol (rest, grpc), endpoint (route template or gRPC method) and status "
            "(HTTP status or gRPC code).",
            labels=["protocol", "endpoint", "status"],
        )  # fmt: skip
        for labels, s in list(m.request_duration.series.items()):
            requests.add_metric(list(labels), s.count)
        yield requests
        yield m.request_duration.family()
        yield m.batch_size.family()
        yield m.run_duration.family()
        if m.class_labels:
            classes = CounterMetricFamily(
                "kubeloop_server_predictions",
                "Predicted rows by class label (classification; bounded by the model's classes).",
                labels=["class"],
            )
            totals: dict[str, int] = {}
            for label, n in zip(m.class_labels, m.class_counts, strict=True):
                totals[label] = totals.get(label, 0) + n
            for label, n in totals.items():
                classes.add_metric([label], n)
            yield classes
        else:
            yield m.predicted_value.family()
        nonfinite = CounterMetricFamily(
            "kubeloop_server_nonfinite_predictions",
            "Predictions that were not finite: regression values that were NaN or infinite (not observed into "
            "kubeloop_server_prediction_value, whose _sum one such value would spoil for good), and "
            "classified rows whose probabilities held a NaN or an infinity (counted under no class: the "
            "model gave none).",
        )
        nonfinite.add_metric([], m.nonfinite_predictions)
        yield nonfinite


class ServerMetrics:
    def __init__(self, regression_buckets: tuple[float, ...] = REGRESSION_BUCKETS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.request_duration = LoopHistogram(
            "kubeloop_server_request_duration_seconds",
            "Time from route entry to the response, by protocol, endpoint and status.",
            ["protocol", "endpoint", "status"],
            LATENCY_BUCKETS,
        )
        self.batch_size = LoopHistogram(
            "kubeloop_server_batch_size_rows",
            "Rows per session.run (after adaptive batching, if enabled).",
            [],
            BATCH_BUCKETS,
        )
        self.run_duration = LoopHistogram(
            "kubeloop_server_inference_duration_seconds",
            "Duration of one session.run (including merging a batch).",
            [],
            LATENCY_BUCKETS,
        )
        self.predicted_value = LoopHistogram(
            "kubeloop_server_prediction_value",
            "Distribution of predicted values (regression).",
            [],
            regression_buckets,
        )
        self.nonfinite_predictions = 0
        self.class_labels: list[str] = []
        self.class_counts: list[int] = []
        self.in_flight = 0
        Gauge(
            "kubeloop_server_in_flight_requests", "Requests being handled right now.", registry=r
        ).set_function(lambda: self.in_flight)
        self.model_info = Gauge(
            "kubeloop_server_model_info",
            "The served model (value 1).",
            ["model_name", "model_version", "kind", "task", "provider", "layout"],
            registry=r,
        )
        self.ready = Gauge(
            "kubeloop_server_ready", "1 while the server accepts traffic, 0 otherwise.", registry=r
        )
        self.log_written = Counter(
            "kubeloop_server_prediction_log_written_rows",
            "Prediction-log rows written to object storage.",
            registry=r,
        )
        self.log_parts = Counter(
            "kubeloop_server_prediction_log_parts", "Prediction-log Parquet files written.", registry=r
        )
        self.log_dropped = Counter(
            "kubeloop_server_prediction_log_dropped_rows",
            "Sampled prediction-log rows dropped, by reason (buffer_full, storage_error, shutdown_timeout, "
            "stopped: recorded after the log stopped).",
            ["reason"],
            registry=r,
        )
        self.log_buffered = Gauge(
            "kubeloop_server_prediction_log_buffered_rows",
            "Prediction-log rows waiting to be written.",
            registry=r,
        )
        self.log_unlogged_inputs = Gauge(
            "kubeloop_server_prediction_log_unlogged_inputs",
            "Graph inputs the prediction log cannot hold as columns (a foreign model's images, sequences, "
            "...); GET /metadata names them and says why.",
            registry=r,
        )
        self.log_prediction_logged = Gauge(
            "kubeloop_server_prediction_log_prediction_logged",
            "1 when the prediction log holds a prediction per row; 0 for a foreign model whose outputs do "
            "not read as a class or a value (GET /metadata says why).",
            registry=r,
        )
        r.register(_LoopCollector(self))
        self._series: dict[tuple[str, str, int | str], tuple[str, ...]] = {}

    def set_model(
        self,
        name: str,
        version: str,
        task: str | None,
        provider: str,
        layout: str | None,
        classes: list[str],
        kind: str = "kubeloop",
    ) -> None:
        self.model_info.labels(name, version, kind, task or "none", provider, layout or "none").set(1)
        self.class_labels = [c if k < MAX_CLASS_LABELS else "__other__" for k, c in enumerate(classes)]
        self.class_counts = [0] * len(classes)

    # --- event-loop thread only -------------------------------------------------------------------------

    def observe_request(self, protocol: str, endpoint: str, status: int | str, seconds: float) -> None:
        key = (protocol, endpoint, status)
        labels = self._series.get(key)
        if labels is None:
            labels = self._series[key] = (protocol, endpoint, str(status))
        self.request_duration.observe(seconds, labels)

    def observe_run(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.run_duration.observe(seconds)

    def observe_classes(self, probabilities: np.ndarray) -> None:
        """Count each row under its class; a row holding a NaN or an infinity has none (argmax would say
        the first NaN's or infinity's column) and is counted as non-finite instead."""
        if probabilities.shape[0] == 1:
            if probabilities.size <= _LIST_CLASSES:
                # as Python floats: cheaper than numpy for a few classes (a sum that is not finite may be
                # finite values overflowing: then the exact test decides)
                row = probabilities.ravel().tolist()
                if math.isfinite(sum(row)) or all(map(math.isfinite, row)):
                    self.class_counts[row.index(max(row))] += 1  # argmax's answer: the first maximum
                    return
            elif nonfinite_rows(probabilities) is None:
                self.class_counts[int(probabilities.argmax())] += 1
                return
            self.nonfinite_predictions += 1
            return
        idx = probabilities.argmax(axis=1)
        bad = nonfinite_rows(probabilities)
        if bad is not None:
            self.nonfinite_predictions += int(bad.sum())
            idx = idx[~bad]
        counts = np.bincount(idx, minlength=len(self.class_counts))
        for k, c in enumerate(counts.tolist()):
            self.class_counts[k] += c

    def observe_values(self, values: np.ndarray) -> None:
        observe = self.predicted_value.observe
        for v in values.reshape(-1).tolist():
            if math.isfinite(v):
                observe(v)
            else:  # a NaN or inf would make the histogram's _sum NaN or inf, and Prometheus never recovers
                self.nonfinite_predictions += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

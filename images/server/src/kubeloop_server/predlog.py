"""Prediction logging: sampled inputs and predictions, written as Parquet to object storage.

The request path only samples and appends references to arrays it already has (no copies, no I/O);
a background thread turns buffered chunks into Parquet parts at
``predictions/<namespace>/<deployment>/<modelVersion>/<YYYY-MM-DD>/<part>.parquet``
(:func:`kubeloop.contracts.predictions_part`). Memory is bounded by ``max_buffer_rows``: rows beyond it
are dropped and counted, as are rows whose write fails (storage down) — serving never waits on storage.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kubeloop.contracts import (
    PREDICTION_LOG_MODEL_VERSION,
    PREDICTION_LOG_PREDICTION,
    PREDICTION_LOG_TIMESTAMP,
    predictions_part,
)
from kubeloop.storage import ObjectStore
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import Feeds, ModelRuntime, Outputs, nonfinite_rows

log = logging.getLogger("kubeloop_server.predlog")


class _Chunk:
    __slots__ = ("at", "feeds", "outputs", "rows", "take")

    def __init__(self, at: float, feeds: Feeds, outputs: Outputs, rows: int, take: np.ndarray | None) -> None:
        self.at = at
        self.feeds = feeds
        self.outputs = outputs
        self.rows = rows  # rows kept (after sampling)
        self.take = take  # row indices kept, None = all


def _write_parquet(table: pa.Table, buf: io.BytesIO) -> None:
    """zstd, dictionary encoding for the string columns only: for numeric ones it costs the writer twice the
    CPU (and the files are no smaller)."""
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    # pyarrow takes a list of column names here; pyarrow-stubs type the argument as bool only.
    pq.write_table(table, buf, compression="zstd", use_dictionary=strings)  # type: ignore[arg-type]


def _kept(arr: np.ndarray, take: np.ndarray | None) -> np.ndarray:
    return arr if take is None else arr[take]


# A flush merges thousands of one-row chunks; done in one go it holds the GIL for milliseconds, and the
# event loop's thread, waiting for it, answers nothing meanwhile (c=1 p99 went from 0.3 to 2+ ms). In slices
# of this many chunks with the GIL let go between them, the loop waits at most one slice.
SLICE = 256


def _yield_gil() -> None:
    time.sleep(0)


def _merge(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    if len(parts) <= SLICE:
        return np.concatenate(parts)
    pieces = []
    for i in range(0, len(parts), SLICE):
        pieces.append(np.concatenate(parts[i : i + SLICE]))
        _yield_gil()
    return np.concatenate(pieces)


def _stamps(chunks: list[_Chunk]) -> np.ndarray:
    """Each row's time in microseconds, built in slices as :func:`_merge` is."""
    pieces = []
    for i in range(0, len(chunks), SLICE):
        part = chunks[i : i + SLICE]
        pieces.append(
            np.repeat(np.array([int(c.at * 1e6) for c in part], dtype=np.int64), [c.rows for c in part])
        )
        _yield_gil()
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class PredictionLogger:
    def __init__(
        self,
        runtime: ModelRuntime,
        store: ObjectStore,
        metrics: ServerMetrics,
        *,
        bucket: str,
        namespace: str,
        deployment: str,
        sample_rate: float,
        flush_rows: int,
        flush_interval_s: float,
        max_buffer_rows: int,
        pod_name: str = "",
    ) -> None:
        self._rt = runtime
        self._store = store
        self._metrics = metrics
        self._bucket = bucket
        self._namespace = namespace
        self._deployment = deployment
        self.sample_rate = sample_rate
        self._flush_rows = flush_rows
        self._interval = flush_interval_s
        self._max_rows = max_buffer_rows
        self._pod = (pod_name or socket.gethostname() or "server").replace("/", "-")
        self._buffer: list[_Chunk] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()
        self._random = random.random
        self._last_error_log = 0.0
        # Updated by the event loop (buffer full), the writer thread (flushes) and stop(): only under _lock,
        # as the read-modify-write of += is not atomic across threads.
        self.written_rows = 0
        self.dropped_rows = 0
        # Rows a flush has taken from the buffer and not yet counted as written or dropped.
        self._in_flight = 0
        # Rows of a write still going on when stop() gave up waiting: neither written nor dropped yet (the part
        # may still land in the store). The write counts them as written or dropped when it ends, if the
        # process lives that long (the writer is a daemon thread: the process exits without waiting for it).
        self.unconfirmed_rows = 0
        # Set by stop() when the final flush missed its deadline: the writer counts what it finishes after.
        self._abandoned = False
        # Set under _lock once no writer will flush again (the last flush is done, or stop() gave up).
        self._closed = False

    # --- request path ------------------------------------------------------------------------------------

    def record(self, feeds: Feeds, outputs: Outputs, rows: int) -> None:
        """Sample rows of one request and buffer them (cheap; never blocks on I/O)."""
        rate = self.sample_rate
        take: np.ndarray | None = None
        if rate < 1.0:
            if rows == 1:
                if self._random() >= rate:
                    return
            else:
                take = np.flatnonzero(np.random.random(rows) < rate)
                if take.size == 0:
                    return
                rows = int(take.size)
        with self._lock:
            if self._closed:  # the writer's last flush is over: nothing would ever write these
                self.dropped_rows += rows
                reason = "stopped"
                dropped = True
            elif self._buffered + rows > self._max_rows:
                dropped = True
                reason = "buffer_full"
                self.dropped_rows += rows
            else:
                dropped = False
                self._buffer.append(_Chunk(time.time(), feeds, outputs, rows, take))
                self._buffered += rows
                full = self._buffered >= self._flush_rows
        if dropped:
            self._metrics.log_dropped.labels(reason).inc(rows)
            return
        if full:
            self._wake.set()

    # --- background writer ---------------------------------------------------------------------------------

    def start(self) -> None:
        # Pay Parquet's lazy imports and first-use set-up now, not in the first flush under load (where
        # they hold the GIL for most of a second).
        warm = _Chunk(time.time(), self._rt.dummy_feeds(1), self._rt.run(self._rt.dummy_feeds(1)), 1, None)
        for table in self._tables([warm]).values():
            _write_parquet(table, io.BytesIO())
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Flush everything buffered and stop the writer. If that takes longer than ``timeout_s``, rows still
        buffered are dropped (never written) and rows in the write under way are unconfirmed
        (:attr:`unconfirmed_rows`): that write counts them as written or dropped when it ends."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                with self._lock:
                    self._abandoned = True
                    self._closed = True
                    buffered = sum(c.rows for c in self._buffer)
                    self._buffer = []  # not written later: the writer's last flush finds nothing
                    self._buffered -= buffered
                    self.dropped_rows += buffered
                    if buffered:
                        self._metrics.log_dropped.labels("shutdown_timeout").inc(buffered)
                    self._metrics.log_buffered.set(self._buffered)
                    self.unconfirmed_rows = unconfirmed = self._in_flight
                log.error(
                    "prediction log: final flush did not finish in %.1fs; %d buffered rows dropped, %d rows in "
                    "a write still under way unconfirmed (their part may yet be stored)",
                    timeout_s,
                    buffered,
                    unconfirmed,
                )
            self._thread = None

    def counts(self) -> tuple[int, int, int]:
        """Rows written, dropped and unconfirmed, read together (a late write may be moving rows between them)."""
        with self._lock:
            return self.written_rows, self.dropped_rows, self.unconfirmed_rows

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()
                continue
            while True:  # the last flushes: until nothing was recorded during one
                self.flush()
                with self._lock:
                    if not self._buffer:
                        self._closed = True  # record() drops and counts from now on
                        return

    def flush(self) -> None:
        with self._lock:
            chunks, self._buffer = self._buffer, []
            total = sum(c.rows for c in chunks)
            self._in_flight += total
        if not chunks:
            self._metrics.log_buffered.set(self._buffered)
            return
        counted = 0
        try:
            for day, table in self._tables(chunks).items():
                self._write(day, table)
                counted += table.num_rows
                self._count(table.num_rows, written=True)
        except Exception as e:
            lost = total - counted
            self._count(lost, written=False)
            now = time.monotonic()
            if now - self._last_error_log > 10:
                log.warning("prediction log: write failed, dropping %d rows: %s", lost, e)
                self._last_error_log = now
        finally:
            with self._lock:
                self._buffered -= total
                self._metrics.log_buffered.set(self._buffered)

    def _count(self, rows: int, *, written: bool) -> None:
        """Count rows of the flush in flight as written or dropped (storage_error); after stop() gave up
        waiting they were unconfirmed until now: say what became of them."""
        with self._lock:
            self._in_flight -= rows
            if written:
                self.written_rows += rows
                self._metrics.log_written.inc(rows)
            else:
                self.dropped_rows += rows
                self._metrics.log_dropped.labels("storage_error").inc(rows)
            late = self._abandoned
            if late:
                self.unconfirmed_rows -= rows
        if late and rows:
            log.warning(
                "prediction log: %d rows %s after the shutdown deadline; now %d rows written, %d dropped, "
                "%d unconfirmed",
                rows,
                "written" if written else "dropped (write failed)",
                self.written_rows,
                self.dropped_rows,
                self.unconfirmed_rows,
            )

    def _tables(self, chunks: list[_Chunk]) -> dict[date, pa.Table]:
        """One table per day. Chunks are merged per graph input first (one concatenate per input, not a
        slice per chunk and column), so a flush costs the writer thread little Python time per row."""
        rt = self._rt
        by_day: dict[date, list[_Chunk]] = defaultdict(list)
        first, last = (datetime.fromtimestamp(c.at, UTC).date() for c in (chunks[0], chunks[-1]))
        if first == last:  # chunks are in arrival order: all from one day, the usual case
            by_day[first] = chunks
        else:
            for c in chunks:
                by_day[datetime.fromtimestamp(c.at, UTC).date()].append(c)
        inputs = {lc.input for lc in rt.log_columns}
        po = rt.prediction_output
        tables: dict[date, pa.Table] = {}
        for day, group in by_day.items():
            sampled = any(c.take is not None for c in group)
            merged = {
                name: _merge(
                    [_kept(c.feeds[name], c.take) for c in group]
                    if sampled
                    else [c.feeds[name] for c in group]
                )
                for name in inputs
            }
            cols = rt.log_values(merged)
            stamps = _stamps(group)
            data: dict[str, Any] = {}
            for lc in rt.log_columns:
                col = cols[lc.name]
                if lc.numeric:  # NaN (a missing value) is written as null
                    values = col.astype(np.float64)
                    data[lc.name] = pa.array(values, mask=np.isnan(values))
                else:  # "" is the missing category: null as well
                    data[lc.name] = pa.array([v or None for v in col.tolist()], type=pa.string())
            data[PREDICTION_LOG_TIMESTAMP] = pa.array(stamps, type=pa.timestamp("us", tz="UTC"))
            n = len(stamps)
            data[PREDICTION_LOG_MODEL_VERSION] = pa.array([rt.version] * n, type=pa.string())
            # As the record API answers: null where the model gave no class (probabilities not finite) or no
            # finite value.
            if po is None:  # a foreign graph without a prediction output: the column is there, all null
                data[PREDICTION_LOG_PREDICTION] = pa.nulls(n, type=pa.string())
            else:
                out = _merge(
                    [_kept(c.outputs[po], c.take) for c in group]
                    if sampled
                    else [c.outputs[po] for c in group]
                )
                pred = rt.prediction_values(out)
                if rt.task == "classification":
                    labels = np.asarray(rt.classes, dtype=object)[pred]
                    bad = nonfinite_rows(out)
                    if bad is not None:
                        labels[bad] = None
                    data[PREDICTION_LOG_PREDICTION] = pa.array(labels.tolist(), type=pa.string())
                else:
                    values = pred.astype(np.float64)
                    data[PREDICTION_LOG_PREDICTION] = pa.array(values, mask=~np.isfinite(values))
            tables[day] = pa.table(data)
        return tables

    def _write(self, day: date, table: pa.Table) -> None:
        buf = io.BytesIO()
        _write_parquet(table, buf)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        part = f"{stamp}-{self._pod}-{os.getpid()}-{next(self._seq):06d}"
        ref = predictions_part(
            self._namespace, self._deployment, self._rt.version, day, part, bucket=self._bucket
        )
        self._store.put(ref, buf.getvalue(), content_type="application/vnd.apache.parquet")
        self._metrics.log_parts.inc()

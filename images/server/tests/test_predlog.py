"""Prediction logging with an in-memory store: sampling, Parquet layout, bounds, storage failures."""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from kubeloop_server.metrics import ServerMetrics
from kubeloop_server.model import ModelRuntime
from kubeloop_server.predlog import PredictionLogger
from kubeloop_testing.onnx_models import random_records
from kubeloop_testing.storage import MemoryStore

from kubeloop.contracts import (
    PREDICTION_LOG_MODEL_VERSION,
    PREDICTION_LOG_PREDICTION,
    PREDICTION_LOG_TIMESTAMP,
)
from kubeloop.storage import ObjectRef

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))
LOGGING = {
    "prediction_logging_enabled": True,
    "s3_endpoint": "127.0.0.1:1",  # unused: the test passes its own store
    "namespace": "team-a",
    "deployment": "mixed-md",
    "bucket": "kubeloop",
}


def _tables(store) -> list:
    return [pq.read_table(io.BytesIO(b)) for _, b in sorted(store.objects.items())]


def test_rows_written_as_parquet_per_contract(make_client, mixed_clf, memory_store) -> None:
    c = make_client(mixed_clf, store=memory_store, **LOGGING)
    records = random_records(5, n_numeric=4, categorical=CATEGORICAL, seed=1)
    labels = [c.post("/forward", json=r).json()["label"] for r in records[:2]]
    labels += [p["label"] for p in c.post("/forward_batch", json=records[2:]).json()["predictions"]]
    predlog = c.server_app.predlog
    predlog.flush()
    (key,) = memory_store.objects
    assert re.fullmatch(r"s3://kubeloop/predictions/team-a/mixed-md/7/\d{4}-\d\d-\d\d/[^/]+\.parquet", key), (
        key
    )
    t = _tables(memory_store)[0]
    assert t.num_rows == 5
    assert t.column_names == [
        "f0",
        "f1",
        "f2",
        "f3",
        "color",
        "size",
        PREDICTION_LOG_TIMESTAMP,
        PREDICTION_LOG_MODEL_VERSION,
        PREDICTION_LOG_PREDICTION,
    ]
    df = t.to_pandas()
    assert df["color"].tolist() == [r["color"] for r in records]
    np.testing.assert_allclose(df["f1"].to_numpy(), [r["f1"] for r in records], rtol=1e-6)
    assert df[PREDICTION_LOG_PREDICTION].tolist() == labels
    assert set(df[PREDICTION_LOG_MODEL_VERSION]) == {"7"}
    assert str(t.schema.field(PREDICTION_LOG_TIMESTAMP).type) == "timestamp[us, tz=UTC]"
    assert predlog.written_rows == 5
    assert predlog.dropped_rows == 0


def test_oip_requests_are_logged_too(make_client, packed_clf, memory_store) -> None:
    c = make_client(packed_clf, store=memory_store, **LOGGING)
    x = np.arange(60, dtype=np.float32) / 10
    body = {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": x.tolist()}]}
    assert c.post("/v2/models/iris-like/infer", json=body).status_code == 200
    c.server_app.predlog.flush()
    df = _tables(memory_store)[0].to_pandas()
    assert df["f0"].tolist() == [0.0, 3.0]
    assert df["f29"].tolist() == [np.float32(2.9), np.float32(5.9)]


def test_sampling(make_client, packed_clf, memory_store) -> None:
    c = make_client(packed_clf, store=memory_store, prediction_logging_sample_rate=0.25, **LOGGING)
    records = random_records(40, seed=3)
    for _ in range(5):
        c.post("/forward_batch", json=records)
    for r in records[:100]:
        c.post("/forward", json=r)
    c.server_app.predlog.flush()
    rows = sum(t.num_rows for t in _tables(memory_store))
    assert 30 < rows < 90  # 240 rows at 25%: expected 60


def test_buffer_bound_drops_and_counts(make_client, packed_clf, memory_store) -> None:
    c = make_client(packed_clf, store=memory_store, prediction_log_max_buffer_rows=10, **LOGGING)
    records = random_records(4, seed=4)
    for _ in range(4):
        assert c.post("/forward_batch", json=records).status_code == 200
    predlog = c.server_app.predlog
    assert predlog.dropped_rows == 8  # 2 requests of 4 fit in 10 rows, the next 2 do not
    assert (
        'kubeloop_server_prediction_log_dropped_rows_total{reason="buffer_full"} 8.0'
        in c.get("/metrics").text
    )


def test_storage_down_counts_drops_and_keeps_serving(make_client, packed_clf, memory_store) -> None:
    c = make_client(packed_clf, store=memory_store, **LOGGING)
    memory_store.fail = True
    records = random_records(3, seed=5)
    assert c.post("/forward_batch", json=records).status_code == 200
    c.server_app.predlog.flush()
    assert c.post("/forward", json=records[0]).status_code == 200
    text = c.get("/metrics").text
    assert 'kubeloop_server_prediction_log_dropped_rows_total{reason="storage_error"} 3.0' in text
    memory_store.fail = False
    c.server_app.predlog.flush()
    assert sum(t.num_rows for t in _tables(memory_store)) == 1  # storage back: later rows are written
    assert "kubeloop_server_prediction_log_written_rows_total 1.0" in c.get("/metrics").text


def test_flush_on_shutdown(make_client, packed_clf, memory_store) -> None:
    c = make_client(packed_clf, store=memory_store, prediction_log_flush_interval_s=3600, **LOGGING)
    for r in random_records(7, seed=6):
        c.post("/forward", json=r)
    assert memory_store.objects == {}
    c.__exit__(None, None, None)  # lifespan shutdown
    assert sum(t.num_rows for t in _tables(memory_store)) == 7


def test_flush_when_buffer_reaches_flush_rows(make_client, packed_clf, memory_store) -> None:
    import time

    c = make_client(
        packed_clf,
        store=memory_store,
        prediction_log_flush_rows=5,
        prediction_log_flush_interval_s=3600,
        **LOGGING,
    )
    c.post("/forward_batch", json=random_records(6, seed=7))
    deadline = time.monotonic() + 10
    while not memory_store.objects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(t.num_rows for t in _tables(memory_store)) == 6


def test_missing_values_are_logged_as_null(make_client, mixed_clf, memory_store) -> None:
    c = make_client(mixed_clf, store=memory_store, **LOGGING)
    rec = {**random_records(1, n_numeric=4, categorical=CATEGORICAL, seed=8)[0], "f2": None, "size": None}
    assert c.post("/forward", json=rec).status_code == 200
    c.server_app.predlog.flush()
    t = _tables(memory_store)[0]
    assert t.column("f2").null_count == 1
    assert t.column("size").null_count == 1
    assert t.column("f0").null_count == 0


class _BlockingStore(MemoryStore):
    """A store whose put waits until released (storage stuck past the shutdown flush timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, ref: ObjectRef, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().put(ref, data, content_type=content_type)


def _counter(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found[0]) if found else 0.0


def _started_on_blocking_store(
    model: bytes,
) -> tuple[ModelRuntime, _BlockingStore, ServerMetrics, PredictionLogger]:
    """A started log that writes every recorded batch at once, into a store whose put blocks until released."""
    rt = ModelRuntime(model)
    store = _BlockingStore()
    metrics = ServerMetrics()
    log = PredictionLogger(
        rt, store, metrics, bucket="kubeloop", namespace="ns", deployment="md", sample_rate=1.0,
        flush_rows=1, flush_interval_s=3600, max_buffer_rows=1000,
    )  # fmt: skip
    log.start()
    return rt, store, metrics, log


def test_rows_in_flight_at_the_shutdown_timeout_are_unconfirmed_until_the_write_ends(packed_clf) -> None:  # type: ignore[no-untyped-def]
    """The shutdown flush timed out during a write. Before, its rows were counted dropped (shutdown_timeout)
    although the write then completed and its part was in the store. Now rows still buffered at the deadline
    are dropped (they are never written), rows in the unfinished write are unconfirmed, and the write, when it
    ends, counts them as written (or dropped, had it failed): every count stays true."""
    rt, store, metrics, log = _started_on_blocking_store(packed_clf)
    writer = log._thread
    assert writer is not None
    feeds = rt.dummy_feeds(5)
    log.record(feeds, rt.run(feeds), 5)  # the writer takes these and blocks in put
    assert store.entered.wait(10)
    more = rt.dummy_feeds(3)
    log.record(more, rt.run(more), 3)  # still buffered
    log.stop(0.2)
    assert (log.written_rows, log.dropped_rows, log.unconfirmed_rows) == (0, 3, 5)
    text = metrics.render().decode()
    assert _counter(text, 'kubeloop_server_prediction_log_dropped_rows_total{reason="shutdown_timeout"}') == 3
    store.release.set()  # the stuck write completes after the deadline
    writer.join(10)
    assert not writer.is_alive()
    assert (log.written_rows, log.dropped_rows, log.unconfirmed_rows) == (5, 3, 0)
    assert sum(t.num_rows for t in _tables(store)) == 5  # the buffered rows were not written after all
    text = metrics.render().decode()
    assert _counter(text, "kubeloop_server_prediction_log_written_rows_total") == 5
    assert _counter(text, 'kubeloop_server_prediction_log_dropped_rows_total{reason="shutdown_timeout"}') == 3
    assert _counter(text, "kubeloop_server_prediction_log_buffered_rows") == 0


def test_a_write_failing_after_the_shutdown_timeout_counts_its_rows_dropped(packed_clf) -> None:  # type: ignore[no-untyped-def]
    rt, store, metrics, log = _started_on_blocking_store(packed_clf)
    writer = log._thread
    assert writer is not None
    feeds = rt.dummy_feeds(4)
    log.record(feeds, rt.run(feeds), 4)
    assert store.entered.wait(10)
    log.stop(0.2)
    assert (log.written_rows, log.dropped_rows, log.unconfirmed_rows) == (0, 0, 4)
    store.fail = True  # the stuck write fails when it ends
    store.release.set()
    writer.join(10)
    assert (log.written_rows, log.dropped_rows, log.unconfirmed_rows) == (0, 4, 0)
    text = metrics.render().decode()
    assert _counter(text, 'kubeloop_server_prediction_log_dropped_rows_total{reason="storage_error"}') == 4


def test_the_shutdown_log_line_names_unconfirmed_rows(make_client, packed_clf, caplog) -> None:  # type: ignore[no-untyped-def]
    """The last word of the lifespan shutdown on the prediction log is true when a write outlives the flush
    deadline: its rows are neither written nor dropped yet (before: "0 rows written, 4 dropped", and the part
    was in the store a moment later)."""
    store = _BlockingStore()
    c = make_client(packed_clf, store=store, prediction_log_flush_rows=1, flush_timeout_s=0.2, **LOGGING)
    assert c.post("/forward_batch", json=random_records(4, seed=9)).status_code == 200
    assert store.entered.wait(10)
    writer = c.server_app.predlog._thread
    with caplog.at_level("INFO", logger="kubeloop_server"):
        c.__exit__(None, None, None)  # lifespan shutdown: the flush misses its deadline
        store.release.set()
        writer.join(10)
    lines = [r.getMessage() for r in caplog.records if "prediction log" in r.getMessage()]
    assert "prediction log flushed: 0 rows written, 0 dropped, 4 unconfirmed" in "\n".join(lines), lines
    assert any("4 rows written after the shutdown deadline" in line for line in lines), lines
    assert sum(t.num_rows for t in _tables(store)) == 4


def test_a_write_done_by_the_shutdown_deadline_counts_as_written(packed_clf) -> None:  # type: ignore[no-untyped-def]
    rt, store, _, log = _started_on_blocking_store(packed_clf)
    feeds = rt.dummy_feeds(4)
    log.record(feeds, rt.run(feeds), 4)
    assert store.entered.wait(10)
    threading.Timer(0.2, store.release.set).start()
    log.stop(10)
    assert (log.written_rows, log.dropped_rows) == (4, 0)
    assert sum(t.num_rows for t in _tables(store)) == 4


def test_rows_recorded_after_stop_are_counted_dropped(packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A request answered after the log stopped (one that outlived the graceful timeout): before, its rows
    went into a buffer no writer would flush, counted nowhere. Now they are dropped and counted
    (reason "stopped") and the buffer stays empty."""
    rt, store, metrics, log = _started_on_blocking_store(packed_clf)
    store.release.set()
    log.stop(5)
    feeds = rt.dummy_feeds(3)
    log.record(feeds, rt.run(feeds), 3)
    assert (log.written_rows, log.dropped_rows, log.unconfirmed_rows) == (0, 3, 0)
    assert log._buffered == 0
    text = metrics.render().decode()
    assert _counter(text, 'kubeloop_server_prediction_log_dropped_rows_total{reason="stopped"}') == 3


def test_a_flush_of_many_small_chunks_keeps_every_row_in_order(packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A flush merges its chunks in slices (letting the serving thread take the GIL between them): 700 chunks
    of 1 to 3 rows, some sampled, come out as the same rows, in order, each with its chunk's time."""
    rt = ModelRuntime(packed_clf)
    store = MemoryStore()
    log = PredictionLogger(
        rt, store, ServerMetrics(), bucket="kubeloop", namespace="ns", deployment="md", sample_rate=1.0,
        flush_rows=10**6, flush_interval_s=3600, max_buffer_rows=10**6,
    )  # fmt: skip
    want: list[float] = []
    stamps: list[int] = []
    clock = iter(range(1_700_000_000_000, 1_800_000_000_000, 1_000))
    log._random = lambda: 0.0  # single rows: always kept when sampling
    for k in range(700):
        rows = 1 + k % 3
        x = np.zeros((rows, 30), dtype=np.float32)
        x[:, 0] = np.arange(rows) + 10 * k
        log.sample_rate = 0.5 if k % 7 == 0 and rows > 1 else 1.0
        at = next(clock)
        before = len(log._buffer)
        np.random.seed(k)
        log.record({"input": x}, rt.run({"input": x}), rows)
        if len(log._buffer) == before:  # every row sampled out
            continue
        chunk = log._buffer[-1]
        chunk.at = at / 1e6
        kept = range(rows) if chunk.take is None else chunk.take.tolist()
        want += [float(x[i, 0]) for i in kept]
        stamps += [at] * len(kept)
    assert len(log._buffer) > 2 * 256  # more than two slices
    log.flush()
    table = pa.concat_tables(_tables(store))
    assert table.column("f0").to_pylist() == want
    got = [round(t.timestamp() * 1e6) for t in table.column(PREDICTION_LOG_TIMESTAMP).to_pylist()]
    assert got == stamps

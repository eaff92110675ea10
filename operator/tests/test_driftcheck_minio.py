"""The drift check against the local MinIO: what a real object store lists under a window's prefix
(zero-byte objects, non-Parquet objects, "folder" marker objects, corrupt and truncated parts, parts
spooled to a file), each named or ignored, and the rest scored."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeloop_operator.driftcheck.check import CheckInputs, run_check
from kubeloop_operator.driftcheck.logs import PartReader

from kubeloop.contracts import PREDICTION_LOG_TIMESTAMP, ObjectRef, model_baseline, predictions_part
from kubeloop.drift import build_baseline
from kubeloop.resources import DriftMonitorSpec
from kubeloop.storage import S3Config
from kubeloop.storage.s3 import S3Store

pytestmark = pytest.mark.component

DEP, VERSION = "bc", "3"


def _table(n: int, at: datetime, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "x": pa.array(rng.normal(0, 1, n)),
            "color": pa.array(rng.choice(["red", "blue"], n).tolist()),
            PREDICTION_LOG_TIMESTAMP: pa.array([at] * n, type=pa.timestamp("us", tz="UTC")),
        }
    )


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.fixture
def names(minio_server: Any) -> Iterator[tuple[str, str]]:
    """A namespace and a model name no other test uses; their objects are deleted afterwards."""
    tag = secrets.token_hex(4)
    ns, model = f"dc-{tag}", f"dc-model-{tag}"
    yield ns, model
    for prefix in (f"predictions/{ns}/", f"models/{model}/", f"drift/{ns}/"):
        minio_server.delete_prefix(prefix)


def test_what_minio_lists_under_a_window_is_scored_named_or_ignored(
    minio_server: Any, names: tuple[str, str], tmp_path: Path
) -> None:
    ns, model = names
    bucket = minio_server.bucket
    store = S3Store(
        S3Config(
            endpoint=minio_server.url,
            access_key=minio_server.access_key,
            secret_key=minio_server.secret_key,
            region=minio_server.region,
        )
    )
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    rng = np.random.default_rng(0)
    baseline = build_baseline(
        {"x": rng.normal(0, 1, 2000), "color": rng.choice(["red", "blue"], 2000)}, categorical={"color"}
    )
    store.put(model_baseline(model, int(VERSION), bucket), baseline.to_json().encode())
    day = now.date()

    def part(name: str, blob: bytes) -> ObjectRef:
        ref = predictions_part(ns, DEP, VERSION, day, name, bucket)
        store.put(ref, blob)
        return ref

    at = now - timedelta(minutes=2)
    part("p1", _parquet(_table(400, at, 1)))
    good = _parquet(_table(300, at, 2))
    part("p2", good)
    empty = part("p3-empty", b"")
    truncated = part("p4-truncated", good[: len(good) // 2])
    folder = predictions_part(ns, DEP, VERSION, day, "p5", bucket)
    store.put(ObjectRef(bucket, folder.key.removesuffix("p5.parquet") + "sub/"), b"")  # a "folder" marker
    store.put(ObjectRef(bucket, folder.key.removesuffix("p5.parquet") + "_SUCCESS"), b"")
    store.put(ObjectRef(bucket, folder.key.removesuffix(".parquet") + ".json"), b"{}")

    spec = DriftMonitorSpec.model_validate(
        {"deployment": DEP, "schedule": "* * * * *", "window": {"lookback": "1h", "minSamples": 100}}
    )
    md = {
        "metadata": {"name": DEP, "namespace": ns},
        "status": {"modelVersion": VERSION, "modelUri": f"s3://{bucket}/models/{model}/{VERSION}/model.onnx"},
    }
    inputs = CheckInputs(ns, "watch", spec, md, bucket)
    for spool in (False, True):  # in memory, and every part spooled to a file first
        spool_dir = tmp_path / f"spool-{spool}"
        spool_dir.mkdir()
        reader = PartReader(store, max_memory_part_bytes=0 if spool else 64 << 20, spool_dir=spool_dir)
        rec = run_check(store, inputs, now, reader)
        assert rec.error is None, rec.error
        assert rec.summary is not None
        assert (rec.summary.samples, rec.summary.parts, rec.summary.skipped_parts) == (700, 2, 2)
        assert [p.reason for p in rec.skipped] == ["CorruptPart", "CorruptPart"]
        assert empty.uri in rec.skipped[0].message
        assert truncated.uri in rec.skipped[1].message
        assert list(spool_dir.iterdir()) == []

"""Component tests: a real MinIO (shared ``minio_server`` fixture) and the server as a real process on
127.0.0.1 serving a model from ``s3://``.

* every endpoint answers what in-process onnxruntime computes;
* SIGTERM with >= 200 REST requests and 100 gRPC calls in flight: none of them fails, readiness turns
  503 (and gRPC ServerReady false) at once, and every sampled prediction is in object storage after the
  process exits.
"""

from __future__ import annotations

import asyncio
import io
import runpy
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from kubeloop_testing.onnx_models import mlp_model, random_records

from kubeloop.contracts import (
    PREDICTION_LOG_MODEL_VERSION,
    PREDICTION_LOG_PREDICTION,
    ObjectRef,
    predictions_prefix,
)
from kubeloop.storage import S3Config, folder
from kubeloop.storage.s3 import S3Store

pytestmark = pytest.mark.component

# The raw HTTP/1.1 client of the benchmark's load generator, which lives in bench/ (not in the server's wheel).
_LOADGEN = runpy.run_path(str(Path(__file__).resolve().parents[3] / "bench" / "server" / "loadgen.py"))
HttpConnection, build_request = _LOADGEN["HttpConnection"], _LOADGEN["build_request"]

CATEGORICAL = (("color", ("red", "green", "blue")), ("size", ("S", "M", "L", "XL")))
CLASSES = ["setosa", "versicolor", "virginica"]


def _store(m: Any) -> S3Store:
    return S3Store(
        S3Config(endpoint=m.endpoint, access_key=m.access_key, secret_key=m.secret_key, region=m.region)
    )


def _upload(m: Any, key: str, data: bytes) -> str:
    _store(m).put(ObjectRef(m.bucket, key), data)
    return f"s3://{m.bucket}/{key}"


def _prediction_rows(m: Any, namespace: str, deployment: str, version: str) -> Any:
    import pandas as pd

    store = _store(m)
    frames = []
    for obj in store.list(folder(predictions_prefix(namespace, deployment, version, bucket=m.bucket))):
        assert obj.ref.key.endswith(".parquet"), obj.ref.key
        frames.append(pq.read_table(io.BytesIO(store.get(obj.ref))).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _delete_prefix(m: Any, prefix: str) -> None:
    store = _store(m)
    for obj in list(store.list(ObjectRef(m.bucket, prefix))):
        store.delete(obj.ref)


def _server_env(m: Any, model_uri: str, namespace: str, **extra: str) -> dict[str, str]:
    return {
        "model_uri": model_uri,
        "s3_endpoint": m.endpoint,
        "s3_access_key": m.access_key,
        "s3_secret_key": m.secret_key,
        "bucket": m.bucket,
        "namespace": namespace,
        "deployment": "md",
        "prediction_logging_enabled": "true",
        "prediction_logging_sample_rate": "1.0",
        "prediction_log_flush_interval_s": "3600",
        **extra,
    }


def test_serves_s3_model_every_endpoint_equals_onnxruntime(
    minio_server, s3_prefix, start_server, mixed_clf, reference
) -> None:
    m = minio_server
    uri = _upload(m, f"{s3_prefix}models/mixed/7/model.onnx", mixed_clf)
    namespace = f"t-{secrets.token_hex(4)}"
    try:
        srv = start_server(**_server_env(m, uri, namespace, drain_seconds="0.2"))
        ref = reference(mixed_clf)
        records = random_records(6, n_numeric=4, categorical=CATEGORICAL, seed=21)
        expected = ref.run_records(records)[0]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/v2").json()["name"] == "kubeloop-server"
            assert c.get("/v2/health/live").json() == {"live": True}
            assert c.get("/v2/health/ready").json() == {"ready": True}
            meta = c.get("/v2/models/mixed").json()
            assert meta == c.get("/v2/models/mixed/versions/7").json()
            assert meta["name"] == "mixed"
            assert meta["versions"] == ["7"]
            assert meta["platform"] == "onnxruntime_onnx"
            assert [i["name"] for i in meta["inputs"]] == [i.name for i in ref.inputs]
            assert c.get("/v2/models/mixed/ready").json() == {"name": "mixed", "ready": True}
            assert c.get("/v2/models/mixed/versions/7/ready").json() == {"name": "mixed", "ready": True}
            md = c.get("/metadata").json()
            assert md["task"] == "classification"
            assert md["classes"] == CLASSES
            assert md["version"] == "7"
            assert [f["name"] for f in md["features"]] == ["f0", "f1", "f2", "f3", "color", "size"]

            # /forward, one record at a time
            for rec, probs in zip(records[:3], expected[:3], strict=True):
                body = c.post("/forward", json=rec).json()
                assert body["label"] == CLASSES[int(probs.argmax())]
                np.testing.assert_array_equal(
                    np.array([body["probabilities"][k] for k in CLASSES], np.float32), probs
                )
            # /forward_batch
            preds = c.post("/forward_batch", json=records[3:]).json()["predictions"]
            for p, probs in zip(preds, expected[3:], strict=True):
                np.testing.assert_array_equal(
                    np.array([p["probabilities"][k] for k in CLASSES], np.float32), probs
                )
            # OIP infer, unversioned and versioned
            inputs = []
            for i in ref.inputs:
                col = [r[i.name] for r in records]
                inputs.append(
                    {
                        "name": i.name,
                        "shape": [6, 1],
                        "datatype": "BYTES" if isinstance(col[0], str) else "FP32",
                        "data": col,
                    }
                )
            for path in ("/v2/models/mixed/infer", "/v2/models/mixed/versions/7/infer"):
                r = c.post(path, json={"id": "abc", "inputs": inputs})
                assert r.status_code == 200, r.text
                out = r.json()
                assert out["id"] == "abc"
                assert out["model_name"] == "mixed"
                assert out["model_version"] == "7"
                (o,) = out["outputs"]
                assert o["shape"] == [6, 3]
                assert o["datatype"] == "FP32"
                np.testing.assert_array_equal(np.array(o["data"], np.float32).reshape(6, 3), expected)
            assert "kubeloop_server_requests_total" in c.get("/metrics").text

        srv.terminate()
        assert srv.wait(60) == 0, srv.log()
        rows = _prediction_rows(m, namespace, "md", "7")
        assert len(rows) == 3 + 3 + 6 + 6, rows  # /forward x3, /forward_batch of 3, two OIP requests of 6
        assert set(rows[PREDICTION_LOG_MODEL_VERSION]) == {"7"}
        assert set(rows[PREDICTION_LOG_PREDICTION]) <= set(CLASSES)
    finally:
        _delete_prefix(m, predictions_prefix(namespace, "md", "7", bucket=m.bucket).key + "/")


def test_missing_s3_model_exits_nonzero(minio_server, s3_prefix, start_server) -> None:
    with pytest.raises(AssertionError, match="model failed to load"):
        start_server(**_server_env(minio_server, f"s3://{minio_server.bucket}/{s3_prefix}nope.onnx", "x"))


IN_FLIGHT = 300
GRPC_IN_FLIGHT = 100


async def _sigterm_under_load(srv: Any, n: int, n_grpc: int) -> dict[str, Any]:
    """Open n connections, send n requests and n_grpc gRPC calls, wait until the server holds >= 200 of
    them, SIGTERM."""
    from grpc import aio
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
    from kubeloop_server.oip import grpc_predict_v2_pb2_grpc as pb_grpc

    host, port = "127.0.0.1", srv.port
    conns = [HttpConnection(host, port) for _ in range(n)]
    await asyncio.gather(*(c.connect() for c in conns))
    url = f"{srv.url}/forward"
    for i, c in enumerate(conns):
        rec = {f"f{k}": float(i) if k == 0 else 0.5 for k in range(30)}
        c.send(build_request("POST", url, orjson.dumps(rec)))
    await asyncio.gather(*(c.drain() for c in conns))
    responses = [asyncio.ensure_future(c.read_response()) for c in conns]
    channels = [aio.insecure_channel(srv.grpc_target) for _ in range(2)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
    calls = []
    for j in range(n_grpc):
        row = np.full((1, 30), 0.5, dtype=np.float32)
        row[0, 0] = n + j
        req = pb.ModelInferRequest(model_name="slow", raw_input_contents=[row.tobytes()])
        req.inputs.add(name="input", datatype="FP32", shape=[1, 30])
        calls.append(asyncio.ensure_future(stubs[j % 2].ModelInfer(req, timeout=60)))

    probe = HttpConnection(host, port)
    in_flight = 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, body = await probe.request(build_request("GET", f"{srv.url}/metrics"))
        line = next(
            x for x in body.decode().splitlines() if x.startswith("kubeloop_server_in_flight_requests ")
        )
        in_flight = float(line.split()[1]) - 1  # minus the /metrics request itself
        if in_flight >= 200 + n_grpc / 2:
            break
    srv.terminate()
    t_term = time.monotonic()
    # Readiness must turn 503 at once (requests are still served while draining).
    ready_status, _ = await probe.request(build_request("GET", f"{srv.url}/v2/health/ready"))
    t_ready = time.monotonic() - t_term
    grpc_ready = (await stubs[0].ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
    await probe.close()
    results = await asyncio.gather(*responses, return_exceptions=True)
    grpc_results = await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.gather(*(c.close() for c in conns))
    for ch in channels:
        await ch.close()
    return {
        "in_flight": in_flight,
        "results": results,
        "grpc_results": grpc_results,
        "ready_status": ready_status,
        "grpc_ready": grpc_ready,
        "ready_after_s": t_ready,
    }


def test_sigterm_with_requests_in_flight_loses_nothing(minio_server, s3_prefix, start_server) -> None:
    m = minio_server
    # ~1 ms or more per single-row run, runs in a worker thread: requests queue up inside the server.
    model = mlp_model(n_numeric=30, hidden=(2048, 2048), name="slow", version="1")
    uri = _upload(m, f"{s3_prefix}models/slow/1/model.onnx", model)
    namespace = f"t-{secrets.token_hex(4)}"
    try:
        srv = start_server(
            **_server_env(
                m, uri, namespace, drain_seconds="1.0", run_in_thread="always", intra_op_threads="1"
            )
        )
        out = asyncio.run(_sigterm_under_load(srv, IN_FLIGHT, GRPC_IN_FLIGHT))
        rc = srv.wait(120)
        log = srv.log()
        assert out["in_flight"] >= 200, f"only {out['in_flight']} requests in flight at SIGTERM\n{log}"
        failures = [r for r in out["results"] if isinstance(r, BaseException) or r[0] != 200]
        assert failures == [], (
            f"{len(failures)} of {IN_FLIGHT} accepted requests failed: {failures[:3]}\n{log}"
        )
        grpc_failures = [r for r in out["grpc_results"] if isinstance(r, BaseException)]
        assert grpc_failures == [], (
            f"{len(grpc_failures)} of {GRPC_IN_FLIGHT} accepted gRPC calls failed: {grpc_failures[:3]}\n{log}"
        )
        assert out["ready_status"] == 503, out
        assert out["grpc_ready"] is False, out
        assert rc == 0, log
        total = IN_FLIGHT + GRPC_IN_FLIGHT
        rows = _prediction_rows(m, namespace, "md", "1")
        logged = sorted(int(v) for v in rows["f0"])
        assert logged == list(range(total)), f"{len(logged)} of {total} predictions in object storage"
        print(
            f"SIGTERM with {out['in_flight']:.0f} requests in flight: {IN_FLIGHT} REST + {GRPC_IN_FLIGHT} gRPC "
            f"accepted, 0 failed, readiness 503 after {out['ready_after_s'] * 1e3:.0f} ms, {len(logged)} of "
            f"{total} predictions in object storage"
        )
    finally:
        _delete_prefix(m, predictions_prefix(namespace, "md", "1", bucket=m.bucket).key + "/")

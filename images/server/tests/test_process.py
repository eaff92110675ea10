"""The server as a real process on 127.0.0.1 (no object store needed)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from kubeloop_testing.onnx_models import random_records


def test_storage_down_keeps_serving_and_counts_drops(
    start_server, tmp_path, packed_clf, free_tcp_port
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(packed_clf)
    srv = start_server(
        model_uri=str(model),
        prediction_logging_enabled="true",
        s3_endpoint=f"127.0.0.1:{free_tcp_port}",  # nothing listens there
        prediction_log_flush_rows="1",
        drain_seconds="0",
    )
    records = random_records(5, seed=1)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for r in records:
            assert c.post("/forward", json=r).status_code == 200
        deadline = time.monotonic() + 30
        dropped = 0.0
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            m = re.search(
                r'kubeloop_server_prediction_log_dropped_rows_total\{reason="storage_error"\} (\S+)', text
            )
            dropped = float(m[1]) if m else 0.0
            if dropped >= 5:
                break
            time.sleep(0.2)
        assert dropped == 5, text
        assert c.post("/forward_batch", json=records).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
    srv.terminate()
    assert srv.wait(60) == 0, srv.log()


def test_bad_model_exits_with_code_2_and_a_termination_message(start_server, tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(AssertionError, match=r"(?s)exited with 2.*model failed to load"):
        start_server(model_uri=str(bad), timeout=60)
    (line,) = (tmp_path / "termination-0.log").read_text().splitlines()
    assert line.startswith("ModelLoadFailed: ONNX Runtime cannot load the model"), line
    with pytest.raises(AssertionError, match=r"(?s)exited with 2.*invalid settings"):
        start_server(model_uri=str(bad), grpc_port="70000", timeout=60)
    (line,) = (tmp_path / "termination-1.log").read_text().splitlines()
    assert line.startswith("InvalidSettings: grpc_port: Input should be less than or equal to 65535"), line


def test_start_up_log_names_the_kind_of_model_and_both_protocols(start_server, tmp_path) -> None:
    from kubeloop_testing.foreign_models import packed_mlp

    model = tmp_path / "foreign.onnx"
    model.write_bytes(packed_mlp())
    srv = start_server(model_uri=str(model), drain_seconds="0")
    log = srv.log()
    assert "kind=onnx (a plain ONNX graph, no Kubeloop metadata)" in log, log
    assert "a foreign ONNX model (no Kubeloop metadata)" in log, log
    assert f"gRPC on port {srv.grpc_port}" in log, log
    srv.terminate()
    assert srv.wait(30) == 0, srv.log()

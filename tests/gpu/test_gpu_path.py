"""The GPU path end to end on one machine with a CUDA GPU (skipped cleanly without one).

1. examples/trainingjob.yaml, changed to ``gpusPerNode: 1`` and DeepSpeed ZeRO-1 bf16, is trained by
   ``kubeloop-trainer`` with exactly the environment the operator gives a trainer pod
   (``kubeloop.podenv.trainer_env``), the object store being a local directory and MLflow SQLite;
2. the ONNX file it registered is served by ``kubeloop-server`` with ``device=cuda`` (the CUDA
   execution provider, required, not merely preferred), and its answers over ``/forward_batch`` and
   the OIP equal onnxruntime on the CPU.

Self-contained (no conftest fixtures), so that it also runs on a bare GPU machine with only the
packages the trainer and server need: ``pytest --noconftest -m gpu tests/gpu``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU; none on this machine"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _breast_cancer_csv(path: Path) -> list[str]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(path, index=False)
    return [str(c) for c in frame.columns if c != "target"]


def test_trainingjob_on_gpu_then_served_by_the_cuda_provider(tmp_path: Path) -> None:
    from kubeloop.contracts import ObjectRef, TrainingSummary
    from kubeloop.podenv import ObjectStoreAccess, TrainerContext, to_process_env, trainer_env
    from kubeloop.resources import TrainingJob
    from kubeloop.storage.local import LocalStore

    features = _breast_cancer_csv(tmp_path / "breast_cancer.csv")
    manifest = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    spec = manifest["spec"]
    spec["dataset"]["uri"] = str(tmp_path / "breast_cancer.csv")
    spec["distributed"] = {
        "nodes": 1,
        "gpusPerNode": 1,
        "backend": "deepspeed",
        "deepspeed": {"zeroStage": 1, "precision": "bf16"},
    }
    spec.pop("resources", None)
    tj = TrainingJob.from_manifest(manifest)
    ctx = TrainerContext(
        namespace="default",
        name=manifest["metadata"]["name"],
        uid="gpu-check",
        store=ObjectStoreAccess(endpoint="127.0.0.1:9", access_key="unused", secret_key="unused"),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    term = tmp_path / "termination.json"
    env = {
        **os.environ,
        **to_process_env(trainer_env(tj.spec, ctx)),
        "KUBELOOP_TRAINER_LOCAL_STORE": str(tmp_path / "store"),
        "KUBELOOP_TRAINER_TERMINATION_LOG": str(term),
        "KUBELOOP_TRAINER_WORK_DIR": str(tmp_path),
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }
    # The object store is a local directory here: the operator's S3 variables would take precedence.
    for key in [k for k in env if k.startswith("KUBELOOP_TRAINER_S3_")]:
        del env[key]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop_trainer"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e.get("event") == "epoch"]
    summary = TrainingSummary.model_validate_json(term.read_text())
    print(
        f"\nGPU TrainingJob: {elapsed:.1f} s, {len(epochs)} epochs, metrics {summary.metrics}, "
        f"version {summary.model_version}, promoted {summary.promoted}"
    )
    assert summary.model_version == 1
    assert summary.metrics["accuracy"] > 0.9
    # one GPU with DeepSpeed: the steps were replayed from the trainer's CUDA graph, not run eagerly
    graph_log = [line for line in proc.stderr.splitlines() if "CUDA graph:" in line]
    print(graph_log[-1] if graph_log else "no CUDA graph line in the trainer's log")
    assert graph_log, proc.stderr[-3000:]
    assert "capture refused" not in graph_log[-1], graph_log

    store = LocalStore(tmp_path / "store")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(store.get(ObjectRef.parse(summary.model_uri)))

    port, grpc_port = _free_port(), _free_port()
    server_env = {
        **os.environ,
        "KUBELOOP_SERVER_MODEL_URI": str(onnx_path),
        "KUBELOOP_SERVER_DEVICE": "cuda",
        "KUBELOOP_SERVER_PORT": str(port),
        "KUBELOOP_SERVER_GRPC_PORT": str(grpc_port),
        "KUBELOOP_SERVER_PREDICTION_LOGGING_ENABLED": "false",
        "KUBELOOP_SERVER_TERMINATION_LOG": str(tmp_path / "server-termination"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kubeloop_server"],
        env=server_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                meta = _http("GET", f"{base}/metadata", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    out = server.stdout.read() if server.stdout else ""
                    pytest.fail(f"server did not start (rc={server.poll()}): {out[-4000:]}")
                time.sleep(0.5)
        assert meta["provider"] == "CUDAExecutionProvider", meta

        import onnxruntime as ort
        from sklearn.datasets import load_breast_cancer

        rows = load_breast_cancer(as_frame=True).frame[features].head(64)
        cpu = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = rows.to_numpy(dtype=np.float64)
        dtypes = {"tensor(float)": (np.float32, "FP32"), "tensor(double)": (np.float64, "FP64")}
        graph_inputs = cpu.get_inputs()
        if len(graph_inputs) == 1:  # one packed [N, F] input
            columns = [x]
        else:  # one [N, 1] input per feature, in graph order (= the metadata's feature order)
            assert len(graph_inputs) == len(features)
            columns = [x[:, j : j + 1] for j in range(len(features))]
        feeds = {i.name: c.astype(dtypes[i.type][0]) for i, c in zip(graph_inputs, columns, strict=True)}
        want = cpu.run(None, feeds)
        records = [{k: float(v) for k, v in r.items()} for r in rows.to_dict(orient="records")]
        got = _http("POST", f"{base}/forward_batch", records)
        print(f"/forward_batch on CUDA, first prediction: {got['predictions'][0]}")
        oip = _http(
            "POST",
            f"{base}/v2/models/{meta['name']}/infer",
            {
                "inputs": [
                    {
                        "name": i.name,
                        "shape": list(feeds[i.name].shape),
                        "datatype": dtypes[i.type][1],
                        "data": feeds[i.name].ravel().tolist(),
                    }
                    for i in graph_inputs
                ]
            },
        )
        by_name = {o["name"]: o for o in oip["outputs"]}
        for spec_out, expected in zip(cpu.get_outputs(), want, strict=True):
            out = by_name[spec_out.name]
            got_oip = np.asarray(out["data"]).reshape(out["shape"])
            expected = np.asarray(expected).reshape(got_oip.shape)
            if expected.dtype.kind in "OUS":
                assert got_oip.astype(str).tolist() == expected.astype(str).tolist()
            else:
                np.testing.assert_allclose(got_oip, expected, rtol=1e-4, atol=1e-5)
        t1 = time.perf_counter()
        for _ in range(200):
            _http("POST", f"{base}/forward_batch", records[:1])
        per_req_us = (time.perf_counter() - t1) / 200 * 1e6
        print(f"CUDA provider: 200 sequential single-row /forward_batch requests, {per_req_us:.0f} us each")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

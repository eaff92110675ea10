#!/usr/bin/env python3
"""`make demo`: the platform's main job on this machine, start to finish, on loopback only.

1. start MinIO and MLflow (hack/cluster.py; reused when already running),
2. upload scikit-learn's bundled breast-cancer table to MinIO,
3. train with the Kubeloop trainer exactly as a TrainingJob pod would run it (the spec of
   examples/trainingjob.yaml, passed through the environment): MLflow run, registered version,
   ONNX + baseline in MinIO, `champion` alias moved when the metric clears the threshold,
4. serve the registered ONNX file with the Kubeloop server and send it predictions over /forward
   and the Open Inference Protocol,
5. score the logged predictions against the training baseline with kubeloop.drift.

Services this script started are stopped at the end (pass --keep to leave them running).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from localcluster.cluster import LocalCluster, env_exports  # noqa: E402

from kubeloop import podenv  # noqa: E402
from kubeloop.contracts import ObjectRef, ServerEnv, TrainerEnv, TrainingSummary  # noqa: E402
from kubeloop.resources import ModelDeployment, TrainingJob  # noqa: E402


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="leave MinIO and MLflow running")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    import pandas as pd
    from minio import Minio
    from sklearn.datasets import load_breast_cancer

    cluster = LocalCluster()
    before = {n for n, s in cluster.status().items() if s["running"]}
    say("starting MinIO and MLflow on 127.0.0.1 (hack/cluster.py up minio mlflow)")
    data = cluster.up(["minio", "mlflow"], managed_by="demo", timeout=300)
    started = {"minio", "mlflow"} - before
    env = {**os.environ, **env_exports(data)}
    m = data["minio"]
    s3 = Minio(m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False)
    try:
        manifest = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
        tj = TrainingJob.from_manifest(manifest)
        dataset = ObjectRef.parse(tj.spec.dataset.uri)
        frame = load_breast_cancer(as_frame=True).frame
        blob = frame.to_csv(index=False).encode()
        s3.put_object(dataset.bucket, dataset.key, io.BytesIO(blob), len(blob), content_type="text/csv")
        say(f"uploaded breast-cancer ({len(frame)} rows x {frame.shape[1] - 1} features) to {dataset.uri}")

        tj.spec.training.epochs = args.epochs
        run_name = f"demo-{uuid.uuid4().hex[:6]}"
        term = Path(tempfile.mkdtemp(prefix="kubeloop-demo-")) / "termination-log"
        # The same environment the operator gives a trainer pod (kubeloop.podenv), with literal
        # credentials instead of the Secret, and a local file for the termination message.
        store = podenv.ObjectStoreAccess(
            endpoint=m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], bucket=m["bucket"]
        )
        trainer_ctx = podenv.TrainerContext(
            namespace="default",
            name=run_name,
            uid=str(uuid.uuid4()),
            store=store,
            mlflow_tracking_uri=data["mlflow"]["tracking_uri"],
        )
        trainer_env = {
            **env,
            **podenv.to_process_env(podenv.trainer_env(tj.spec, trainer_ctx)),
            TrainerEnv.TERMINATION_LOG: str(term),
        }
        say(f"training {run_name}: {tj.spec.training.epochs} epochs, MLP {tj.spec.model.hidden_layers}")
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "kubeloop_trainer"], env=trainer_env, check=True)
        summary = TrainingSummary.model_validate_json(term.read_text())
        say(
            f"trained in {time.monotonic() - t0:.1f} s: version {summary.model_version}, "
            f"accuracy {summary.metrics.get('accuracy', float('nan')):.3f}, promoted={summary.promoted}"
        )
        say(f"model {summary.model_uri}, baseline {summary.baseline_uri}, MLflow run {summary.mlflow_run_id}")

        port = free_port()
        md = ModelDeployment.from_manifest(
            yaml.safe_load((ROOT / "examples" / "modeldeployment.yaml").read_text())
        )
        served = podenv.ServedModel(
            uri=summary.model_uri,
            name=tj.spec.registry.model_name if tj.spec.registry else run_name,
            version=str(summary.model_version),
        )
        server_ctx = podenv.ServerContext(
            namespace="default", deployment="demo", model=served, store=store, port=port, pod_name="demo-0"
        )
        server_env = {
            **env,
            **podenv.to_process_env(podenv.server_env(md.spec, server_ctx)),
            "KUBELOOP_SERVER_HOST": "127.0.0.1",
        }
        say(f"serving it on http://127.0.0.1:{port}")
        server = subprocess.Popen([sys.executable, "-m", "kubeloop_server"], env=server_env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    http("GET", f"{base}/v2/health/ready")
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not become ready") from None
                    time.sleep(0.5)
            meta = http("GET", f"{base}/metadata")
            features = [f["name"] for f in meta["features"]]
            records = frame.drop(columns=["target"]).sample(200, random_state=1).to_dict(orient="records")
            answer = http("POST", f"{base}/forward", records[0])
            say(f"/forward -> {json.dumps(answer)[:160]}")
            batch = http("POST", f"{base}/forward_batch", records[1:])
            say(
                f"/forward_batch -> {len(batch['predictions'] if isinstance(batch, dict) else batch)} predictions"
            )
            name = meta.get("name") or server_env[ServerEnv.MODEL_NAME]
            oip = {
                "inputs": [
                    {"name": f, "shape": [1, 1], "datatype": "FP64", "data": [records[0][f]]}
                    for f in features
                ]
            }
            out = http("POST", f"{base}/v2/models/{name}/infer", oip)
            say(f"OIP infer -> outputs {[o['name'] for o in out['outputs']]}")
        finally:
            server.terminate()
            server.wait(timeout=60)
        say("server drained and stopped (prediction logs flushed to MinIO)")

        from kubeloop.drift import Baseline, DriftAccumulator

        base_ref = ObjectRef.parse(summary.baseline_uri)
        baseline = Baseline.from_json(s3.get_object(base_ref.bucket, base_ref.key).read())
        acc = DriftAccumulator(baseline)
        prefix = f"predictions/default/demo/{summary.model_version}/"
        parts = list(s3.list_objects(m["bucket"], prefix=prefix, recursive=True))
        for obj in parts:
            acc.update(pd.read_parquet(io.BytesIO(s3.get_object(m["bucket"], obj.object_name).read())))
        result = acc.result(min_samples=50)
        say(
            f"drift check over {acc.rows} logged predictions in {len(parts)} file(s): drifted={result.drifted}, "
            f"share={result.share:.2f}"
        )
        print(
            f"\nDone. MLflow UI: {data['mlflow']['tracking_uri']}   MinIO: {m['url']} (bucket {m['bucket']})"
        )
    finally:
        if started and not args.keep:
            cluster.down(sorted(started))
            say(f"stopped {', '.join(sorted(started))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

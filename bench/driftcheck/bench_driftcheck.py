"""The drift check against reading its input (``make bench-drift-check``, issue #14 acceptance 3).

Setup: ``--rows`` logged predictions (default 1,000,000) of ``--features`` numeric features (30) in
``--parts`` Parquet parts (100), written as the server writes them (features, ``_timestamp``,
``_model_version``, ``_prediction``; zstd) to MinIO under ``predictions/<ns>/<deployment>/1/<today>/``,
with the model's frozen baseline (built with ``kubeloop.drift`` from a training table) beside it.

Each side runs in a fresh process, alternately (ABAB…), ``--reps`` times:

* ``check``: the drift check's own code (``kubeloop_operator.driftcheck.check.run_check``): resolve the
  baseline, list the window's parts, stream each part batch by batch into ``kubeloop.drift``'s
  accumulator, score PSI and Jensen-Shannon per feature, write the report. Only the Kubernetes
  reads and the status patch of the real job are left out.
* ``read``: the same listing and the same parts, the same columns, read with pyarrow alone
  (``store.get`` + ``pyarrow.parquet.read_table``): the floor of any check that reads its input.

Both time their work after their imports; the peak RSS is the check process's whole maximum resident
set (imports included), from ``wait4``. Reported: the medians, the ratio check/read, the peak RSS of
the check (largest over its runs), and the load average.

Last line: ``RESULT driftcheck_vs_read=<r> driftcheck_rss_mib=<n> …``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]

DEPLOYMENT = "bench"
VERSION = "1"


def say(msg: str) -> None:
    print(f"[bench-drift-check] {msg}", flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def store_from(endpoint: str, access_key: str, secret_key: str) -> Any:
    from kubeloop.storage import S3Config
    from kubeloop.storage.s3 import S3Store

    return S3Store(
        S3Config(endpoint=endpoint, access_key=access_key, secret_key=secret_key, read_timeout_s=120)
    )


def model_name(ns: str) -> str:
    return f"drift-{ns}"


def feature_names(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def setup(store: Any, bucket: str, ns: str, rows: int, features: int, parts: int, seed: int = 7) -> None:
    """The baseline and the prediction-log parts (the logs drift a little from the training data)."""
    from kubeloop.contracts import (
        PREDICTION_LOG_MODEL_VERSION,
        PREDICTION_LOG_PREDICTION,
        PREDICTION_LOG_TIMESTAMP,
        model_baseline,
        predictions_part,
    )
    from kubeloop.drift import build_baseline

    names = feature_names(features)
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 5.0, features)
    train = {n: rng.normal(0.0, s, 50_000) for n, s in zip(names, scales, strict=True)}
    store.put(model_baseline(model_name(ns), int(VERSION), bucket), build_baseline(train).to_json().encode())
    day = datetime.now(UTC).date()
    per = -(-rows // parts)
    left = rows
    t0 = time.perf_counter()
    for p in range(parts):
        n = min(per, left)
        left -= n
        cols: dict[str, Any] = {
            name: pa.array(rng.normal(0.05 * (i % 3), s, n))
            for i, (name, s) in enumerate(zip(names, scales, strict=True))
        }
        # A whole second before now: the check's window ends at its start time in whole seconds, so a row
        # stamped later in the same second would fall after it (the suite's tiny run starts the check well
        # within a second of the write, and then saw 0 rows now and then).
        cols[PREDICTION_LOG_TIMESTAMP] = pa.array(
            np.full(n, (int(time.time()) - 1) * 1_000_000, dtype=np.int64), type=pa.timestamp("us", tz="UTC")
        )
        cols[PREDICTION_LOG_MODEL_VERSION] = pa.array([VERSION] * n)
        cols[PREDICTION_LOG_PREDICTION] = pa.array(np.where(rng.random(n) < 0.5, "0", "1").tolist())
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf, compression="zstd")
        store.put(predictions_part(ns, DEPLOYMENT, VERSION, day, f"part-{p:05d}", bucket), buf.getvalue())
    say(f"wrote {rows} rows x {features} features in {parts} parts ({time.perf_counter() - t0:.1f} s)")


def cleanup(store: Any, bucket: str, ns: str) -> None:
    from kubeloop.contracts import ObjectRef

    for prefix in (f"predictions/{ns}/", f"drift/{ns}/", f"models/{model_name(ns)}/"):
        for info in list(store.list(ObjectRef(bucket, prefix))):
            store.delete(info.ref)


# --- the two sides, each in its own process ---------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """One timed run of one side; prints a JSON line {seconds, rows, parts}."""
    from datetime import timedelta

    from kubeloop_operator.driftcheck.check import CheckInputs, run_check
    from kubeloop_operator.driftcheck.logs import PartReader, window_parts

    from kubeloop.contracts import PREDICTION_LOG_TIMESTAMP, predictions_prefix
    from kubeloop.resources import DriftMonitorSpec

    store = store_from(args.endpoint, args.access_key, args.secret_key)
    now = datetime.now(UTC).replace(microsecond=0)
    if args.worker == "check":
        spec = DriftMonitorSpec.model_validate(
            {
                "deployment": DEPLOYMENT,
                "schedule": "* * * * *",
                "window": {"lookback": "2h", "minSamples": 100},
            }
        )
        deployment = {
            "status": {
                "modelVersion": VERSION,
                "modelUri": f"s3://{args.bucket}/models/{model_name(args.namespace)}/{VERSION}/model.onnx",
            }
        }
        inputs = CheckInputs(args.namespace, "bench", spec, deployment, args.bucket)
        t0 = time.perf_counter()
        rec = run_check(store, inputs, now, PartReader(store))
        seconds = time.perf_counter() - t0
        if rec.summary is None or rec.skipped:
            print(json.dumps({"error": f"{rec.error} {rec.skipped[:2]}"}), flush=True)
            return 1
        out = {"seconds": seconds, "rows": rec.summary.samples, "parts": rec.summary.parts}
    else:
        columns = [*feature_names(args.features), PREDICTION_LOG_TIMESTAMP]
        t0 = time.perf_counter()
        parts = window_parts(
            store,
            predictions_prefix(args.namespace, DEPLOYMENT, VERSION, args.bucket),
            now - timedelta(hours=2),
            now,
        )
        rows = 0
        for info in parts:
            table = pq.read_table(pa.BufferReader(store.get(info.ref)), columns=columns, use_threads=False)
            rows += table.num_rows
        seconds = time.perf_counter() - t0
        out = {"seconds": seconds, "rows": rows, "parts": len(parts)}
    print(json.dumps(out), flush=True)
    return 0


def run_side(side: str, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """Run one side in a fresh process; its result and its peak RSS in MiB."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--namespace",
        args.namespace,
        "--features",
        str(args.features),
        "--endpoint",
        args.endpoint,
        "--access-key",
        args.access_key,
        "--secret-key",
        args.secret_key,
        "--bucket",
        args.bucket,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = out.strip().splitlines()[-1] if out.strip() else "{}"
    doc = json.loads(line)
    if proc.returncode != 0 or "seconds" not in doc:
        raise SystemExit(f"the {side} run failed ({proc.returncode}): {out[-2000:]}")
    return doc, usage.ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--parts", type=int, default=100)
    p.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    p.add_argument("--worker", choices=("check", "read"), help=argparse.SUPPRESS)
    p.add_argument("--namespace", default="", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", default="", help="MinIO host:port (default: the local cluster's)")
    p.add_argument("--access-key", default="")
    p.add_argument("--secret-key", default="")
    p.add_argument("--bucket", default="kubeloop")
    p.add_argument("--keep", action="store_true", help="leave the data in MinIO")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    lease: tuple[Any, str] | None = None
    if not args.endpoint:
        sys.path.insert(0, str(ROOT / "hack"))
        from localcluster.cluster import LocalCluster

        cluster = LocalCluster()
        token, data = cluster.acquire("minio")
        lease = (cluster, token)
        m = data["minio"]
        args.endpoint, args.access_key, args.secret_key, args.bucket = (
            m["endpoint"],
            m["access_key"],
            m["secret_key"],
            m["bucket"],
        )
    args.namespace = f"bench-{secrets.token_hex(3)}"
    store = store_from(args.endpoint, args.access_key, args.secret_key)
    try:
        say(f"load average before: {loadavg()}")
        setup(store, args.bucket, args.namespace, args.rows, args.features, args.parts)
        times: dict[str, list[float]] = {"check": [], "read": []}
        rss: dict[str, list[float]] = {"check": [], "read": []}
        for rep in range(args.reps):
            order = ("check", "read") if rep % 2 == 0 else ("read", "check")
            for side in order:
                doc, peak = run_side(side, args)
                if doc["rows"] != args.rows or doc["parts"] != args.parts:
                    raise SystemExit(
                        f"{side} saw {doc['rows']} rows in {doc['parts']} parts, not {args.rows}/{args.parts}"
                    )
                times[side].append(doc["seconds"])
                rss[side].append(peak)
                say(f"rep {rep + 1} {side}: {doc['seconds']:.3f} s, peak RSS {peak:.0f} MiB")
        check_s, read_s = statistics.median(times["check"]), statistics.median(times["read"])
        ratio = check_s / read_s
        check_rss = max(rss["check"])
        say(
            f"median check {check_s:.3f} s vs read {read_s:.3f} s -> {ratio:.2f}x (goal <= 2); "
            f"check peak RSS {check_rss:.0f} MiB (goal <= 512), read peak RSS {max(rss['read']):.0f} MiB; "
            f"{args.rows / check_s / 1e6:.2f} M rows/s; load average {loadavg()}"
        )
        print(
            f"RESULT driftcheck_vs_read={ratio:.2f} driftcheck_rss_mib={check_rss:.0f} "
            f"driftcheck_s={check_s:.3f} read_s={read_s:.3f} rows={args.rows} features={args.features} "
            f"parts={args.parts}",
            flush=True,
        )
    finally:
        if not args.keep:
            cleanup(store, args.bucket, args.namespace)
        if lease is not None:
            lease[0].release("minio", lease[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

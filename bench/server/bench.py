"""kubeloop-server benchmark (``make bench-server``): loopback only, every step bounded in time and count.

Every kubeloop-server here runs as deployed: metrics on and prediction logging on (every row, Parquet to
object storage through the server's S3 adapter) to a private MinIO the benchmark starts (the local
cluster's pinned binary, ``hack/cluster.py build minio``; a real object store, so the writer thread's
upload costs are paid as in a pod).

(a) OIP infer requests/s at batch 1 on a small MLP (30 features), concurrency 16, against MLServer
    (same ONNX model through the minimal custom ONNX Runtime MLServer runtime, same worker processes);
(b) the same against two no-op apps that read the body and answer a fixed JSON (the answer our server
    gives to the benchmark request, so every side sends the same bytes back):
    - the floor: a raw ASGI app served by kubeloop-server's own start-up code with the server's uvicorn
      settings (bench/server/floor_app.py): what any Python HTTP server on these settings costs;
    - the floor of the server's HTTP fast lane (kubeloop_server.protocol answers OIP infer in uvicorn's
      parser callback, without ASGI, so it costs less than any ASGI app): the same server process with the
      lane answering the fixed JSON (``server_vs_lane_floor``, ``p50_vs_lane_floor``: like for like; the
      issue's ``server_vs_floor`` keeps the ASGI floor as its reference);
    - a FastAPI no-op endpoint (FastAPI routing and middleware, uvicorn, uvloop+httptools);
    and the same server as a ModelDeployment with the default ``spec.batching`` runs it (adaptive batching
    on, ``maxLatencyMs`` 0: requests that arrive together share one run, lone requests run at once, no
    added wait; the settings come from kubeloop's ``BatchingSpec`` defaults), reported beside it
    (``deployed_vs_floor``, ``deployed_p50_vs_floor``: c=16 and c=1 against the same floor);
(c) adaptive batching on a compute-heavy wide MLP: single-row requests at concurrency 64, rows/s with
    batching on against off;
(d) p50 latency at concurrency 1 against in-process ``session.run`` p50 on the small model and against the
    floor's p50;
(e) OIP gRPC ``ModelInfer`` at batch 1, concurrency 16, against MLServer's gRPC on the same model: both
    through the same Python grpc.aio generator (bench/server/grpc_loadgen.py) and the same request bytes
    (``raw_input_contents``, as Triton's client sends them); and against the gRPC floor: the floor's process
    (kubeloop-server's own gRPC wire, settings and event loop) answering ModelInfer with the fixed message
    our server gives to that request, serialised per call: what our gRPC stack alone costs;
(f) one 1,000-row request with the binary tensor data extension (in and out) against the same request
    as JSON (in and out), our server, the same Python load generator.

Before the runs, a profile of the hot path (bench/server/profile_hot_path.py): uvicorn's HTTP protocol fed
in memory with the floor's app and with ours, then each step of ours priced in place by ablation (the
whole request again with that step replaced by its result: session.run, parse, validation, encoding,
metrics, prediction log), requests one at a time and 16 in one loop turn (batching off and merging), and
gRPC ModelInfer; CPU time per request.

Every 2xx answer of every run (warm-ups included, by wrk's Lua ``response()`` hook or the Python load
generators) is compared with the in-process onnxruntime output for that request; a second pass sends 64
distinct records over many connections (our server, and the batching server) so that an answer given to
the wrong request is caught too. Wrong answers, non-2xx answers and transport errors are counted and
reported per server; any of them from our server or the no-ops (any wrong answer from MLServer) fails the
benchmark (exit 1, after the RESULT line).

Last line: ``RESULT server_vs_mlserver=<r> server_vs_noop=<r> server_vs_floor=<r> batching_gain=<r>
p50_vs_inprocess=<r> p50_vs_floor=<r>`` followed by the per-side figures behind them, the default
ModelDeployment configuration's ``deployed_vs_floor`` and ``deployed_p50_vs_floor``, ``grpc_vs_mlserver``,
``grpc_vs_floor`` and ``grpc_floor_vs_mlserver``, ``binary_vs_json_1000rows``, the prediction log's written/dropped rows, the load average at start and end,
and the check counts (``checked=<n> wrong=<n> failed=<n>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from grpc_loadgen import (
    run_grpc_load,
)  # bench/server/grpc_loadgen.py (this script's directory is on sys.path)
from kubeloop_server import codec, grpcapi
from kubeloop_server.model import ModelRuntime, cpu_limit
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_testing.onnx_models import mlp_model, random_records
from loadgen import run_load  # bench/server/loadgen.py (this script's directory is on sys.path)

from kubeloop.resources import BatchingSpec

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST = "127.0.0.1"
NOOP_APP = """
import os
from pathlib import Path

from fastapi import FastAPI, Request, Response

app = FastAPI()
ANSWER = Path(os.environ["BENCH_FLOOR_RESPONSE"]).read_bytes()


@app.post("/v2/models/{model_name}/infer")
async def infer(model_name: str, request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(b'{"ready":true}', media_type="application/json")
"""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    infer_path: str
    log_path: Path
    ours: bool = False  # kubeloop-server: scrape its /metrics
    peer: bool = False  # MLServer: its non-2xx answers are reported, not fatal
    grpc_port: int = 0  # OIP gRPC (ours and MLServer)
    counts: dict[str, int] = field(default_factory=lambda: {"checked": 0, "wrong": 0, "failed": 0})

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_ready(server: Server, path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited ({server.proc.returncode}); log:\n{server.log_path.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(server.base + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"{server.name} not ready after {timeout:.0f}s; log:\n{server.log_path.read_text()[-3000:]}"
    )


def spawn(
    name: str, cmd: list[str], env: dict[str, str], cwd: Path, port: int, infer_path: str, ready: str
) -> Server:
    log_path = cwd / f"{name}.log"
    f = log_path.open("wb")
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    server = Server(name, proc, port, infer_path, log_path)
    wait_ready(server, ready)
    return server


def server_env(model: Path, port: int, **env: str) -> dict[str, str]:
    return {
        "KUBELOOP_SERVER_MODEL_URI": str(model),
        "KUBELOOP_SERVER_HOST": HOST,
        "KUBELOOP_SERVER_PORT": str(port),
        "KUBELOOP_SERVER_LOG_LEVEL": "warning",
        "KUBELOOP_SERVER_DRAIN_SECONDS": "0",
        **{f"KUBELOOP_SERVER_{k.upper()}": v for k, v in env.items()},
    }


def start_ours(name: str, model: Path, work: Path, **env: str) -> Server:
    port = free_port()
    grpc_port = int(env.get("GRPC_PORT", free_port()))  # GRPC_PORT="0": gRPC off
    env = {**env, "GRPC_PORT": str(grpc_port)}
    cmd = [sys.executable, "-m", "kubeloop_server"]
    server = spawn(
        name,
        cmd,
        server_env(model, port, **env),
        work,
        port,
        "/v2/models/{model}/infer",
        "/v2/health/ready",
    )
    server.ours = True
    server.grpc_port = grpc_port
    return server


def start_noop(work: Path, answer: Path) -> Server:
    port = free_port()
    (work / "noop_app.py").write_text(NOOP_APP)
    cmd = [
        sys.executable, "-m", "uvicorn", "noop_app:app", "--host", HOST, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {"BENCH_FLOOR_RESPONSE": str(answer)}
    return spawn("noop-fastapi", cmd, env, work, port, "/v2/models/{model}/infer", "/v2/health/ready")


def start_floor(model: Path, work: Path, answer: Path, grpc_answer: Path, kind: str = "asgi") -> Server:
    """The raw ASGI no-op on kubeloop-server's own uvicorn set-up, and a fixed-answer ModelInfer on its own
    gRPC server (bench/server/floor_app.py); ``kind="lane"``: the server's HTTP fast lane answering the fixed
    reply instead (the like-for-like floor of the lane)."""
    port = free_port()
    grpc_port = free_port()
    env = {
        **server_env(model, port, GRPC_PORT=str(grpc_port)),
        "BENCH_FLOOR_RESPONSE": str(answer),
        "BENCH_FLOOR_GRPC_RESPONSE": str(grpc_answer),
        "BENCH_FLOOR_KIND": kind,
    }
    cmd = [sys.executable, str(HERE / "floor_app.py")]
    name = "floor-raw-asgi" if kind == "asgi" else "floor-fast-lane"
    server = spawn(name, cmd, env, work, port, "/v2/models/{model}/infer", "/v2/health/ready")
    server.grpc_port = grpc_port
    settings = [x for x in server.log_path.read_text().splitlines() if x.startswith("floor:")]
    if len(settings) < 2:
        server.stop()
        raise RuntimeError(
            f"the floor did not report its uvicorn and gRPC settings; log:\n{server.log_path.read_text()}"
        )
    for line in settings:
        log(line)
    return server


def start_mlserver(mlserver_python: Path, model: Path, work: Path, workers: int, threads: int) -> Server:
    d = work / f"mlserver-w{workers}"
    d.mkdir()
    shutil.copy(model, d / "model.onnx")
    shutil.copy(HERE / "mlserver_runtime.py", d / "mlserver_runtime.py")
    port = free_port()
    grpc_port = free_port()
    settings = {
        "debug": False,
        "host": HOST,
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "parallel_workers": workers,
    }
    (d / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "tabular",
        "implementation": "mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": "./model.onnx", "version": "1"},
    }
    (d / "model-settings.json").write_text(json.dumps(model_settings))
    mlserver = mlserver_python.absolute().parent / "mlserver"
    env = {"BENCH_ORT_THREADS": str(threads), "PYTHONPATH": str(d)}
    server = spawn(
        f"mlserver(parallel_workers={workers})",
        [str(mlserver), "start", str(d)],
        env,
        d,
        port,
        "/v2/models/{model}/infer",
        "/v2/models/tabular/ready",
    )
    server.peer = True
    server.grpc_port = grpc_port
    return server


# --- load generation and answer checks -------------------------------------------------------------------

# float32 outputs printed by JSON encoders, batched or not: a correct answer is within these of onnxruntime's
ATOL, RTOL = 1e-5, 1e-4


@dataclass(frozen=True)
class Expected:
    """A correct answer to one request body: each output's name and values, in order, from in-process ORT."""

    names: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    @classmethod
    def from_session(cls, session: ort.InferenceSession, row: list[float]) -> Expected:
        outs = session.run(None, {session.get_inputs()[0].name: np.asarray([row], dtype=np.float32)})
        names = tuple(o.name for o in session.get_outputs())
        return cls(names, tuple(tuple(float(v) for v in np.asarray(o).reshape(-1)) for o in outs))

    def check(self, raw: bytes) -> bool:
        try:
            outs = orjson.loads(raw)["outputs"]
            if len(outs) != len(self.values):
                return False
            for out, name, exp in zip(outs, self.names, self.values, strict=True):
                data = out["data"]
                if out["name"] != name or len(data) != len(exp):
                    return False
                if any(abs(v - e) > ATOL + RTOL * abs(e) for v, e in zip(data, exp, strict=True)):
                    return False
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False
        return True

    def check_grpc(self, raw: bytes) -> bool:
        """The same check on a ModelInferResponse (raw_output_contents, or typed contents)."""
        try:
            r = pb.ModelInferResponse.FromString(raw)
            if len(r.outputs) != len(self.values):
                return False
            for k, (out, name, exp) in enumerate(zip(r.outputs, self.names, self.values, strict=True)):
                if r.raw_output_contents:
                    got = np.frombuffer(
                        r.raw_output_contents[k], dtype=codec.OIP_DTYPES[out.datatype]
                    ).tolist()
                else:
                    got = list(out.contents.fp32_contents or out.contents.fp64_contents)
                if out.name != name or len(got) != len(exp):
                    return False
                if any(abs(v - e) > ATOL + RTOL * abs(e) for v, e in zip(got, exp, strict=True)):
                    return False
        except Exception:
            return False
        return True

    def wrk_lua(self) -> str:
        """Lua for wrk's ``response()``: the same check as :meth:`check` (names present, values in order)."""
        names = ", ".join(json.dumps(n) for n in self.names)
        values = ", ".join("{" + ", ".join(repr(v) for v in vals) + "}" for vals in self.values)
        return (
            WRK_CHECK.replace("@NAMES@", names)
            .replace("@VALUES@", values)
            .replace("@ATOL@", repr(ATOL))
            .replace("@RTOL@", repr(RTOL))
        )


# Every 2xx answer goes through correct(); the per-thread counts are summed in done() (wrk's documented
# setup/thread:get pattern) and printed as "CHECKED <n> WRONG <n>".
WRK_CHECK = r"""
local names = {@NAMES@}
local expected = {@VALUES@}
local atol, rtol = @ATOL@, @RTOL@
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) checked = 0; wrong = 0; sample = "" end
local function correct(body)
  for _, name in ipairs(names) do
    if not string.find(body, '"name"%s*:%s*"' .. name:gsub("%p", "%%%0") .. '"') then return false end
  end
  local k = 0
  for arr in string.gmatch(body, '"data"%s*:%s*%[([^%]]*)%]') do
    k = k + 1
    local exp = expected[k]
    if exp == nil then return false end
    local i = 0
    for tok in string.gmatch(arr, "[^,]+") do
      i = i + 1
      local v, e = tonumber(tok), exp[i]
      if v == nil or e == nil or math.abs(v - e) > atol + rtol * math.abs(e) then return false end
    end
    if i ~= #exp then return false end
  end
  return k == #expected
end
function response(status, headers, body)
  if status >= 200 and status < 300 then
    checked = checked + 1
    if not correct(body) then
      wrong = wrong + 1
      if sample == "" then sample = string.sub(body, 1, 300) end
    end
  end
end
function done(summary, latency, requests)
  local c, w, s = 0, 0, ""
  for _, t in ipairs(threads) do
    c = c + t:get("checked")
    w = w + t:get("wrong")
    if s == "" then s = t:get("sample") or "" end
  end
  io.write(string.format("CHECKED %d WRONG %d\n", c, w))
  if s ~= "" then io.write("WRONG_SAMPLE " .. (s:gsub("\n", " ")) .. "\n") end
end
"""


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    errors: int
    checked: int  # 2xx answers compared with in-process onnxruntime (warm-up included)
    wrong: int  # ... that were not the right prediction
    wrong_sample: str = ""

    @property
    def failed(self) -> int:
        return self.non2xx + self.errors


def _wrk_latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m[1]), m[2]
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def _wrk_checks(text: str) -> tuple[int, int, str]:
    m = re.search(r"^CHECKED (\d+) WRONG (\d+)$", text, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no answer-check line:\n{text[-2000:]}")
    sample = re.search(r"^WRONG_SAMPLE (.*)$", text, re.M)
    return int(m[1]), int(m[2]), sample[1] if sample else ""


def load(
    url: str, body: bytes, expected: Expected, concurrency: int, duration: float, tool: str, work: Path
) -> Measure:
    """1 s warm-up (not timed, answers checked), then ``duration`` seconds of closed-loop load."""
    if tool == "wrk":
        key = abs(hash((body, expected)))
        body_file = work / f"body-{key}.json"
        body_file.write_bytes(body)
        script = work / f"post-{key}.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
            + expected.wrk_lua()
        )
        threads = "1" if concurrency <= 16 else "2"
        base = ["wrk", "-t", threads, "-c", str(concurrency), "-s", str(script), "--latency"]
        warm = subprocess.run(
            [*base, "-d", "1s", url], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        out = subprocess.run(
            [*base, "-d", f"{duration:.0f}s", "--timeout", "10s", url],
            capture_output=True, text=True, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
        total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        non2xx = sum(
            int(m[1]) for t in (warm, out) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", t))
        )
        errs = sum(
            int(x) for t in (warm, out) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t)
        )
        (c0, w0, s0), (c1, w1, s1) = _wrk_checks(warm), _wrk_checks(out)
        if non2xx:
            rps *= max(0, total - non2xx) / total
        p50, p99 = _wrk_latency_ms(out, "50"), _wrk_latency_ms(out, "99")
        return Measure(rps, p50, p99, total, non2xx, errs, c0 + c1, w0 + w1, s0 or s1)
    check = lambda _i, raw: expected.check(raw)  # noqa: E731
    warm = asyncio.run(
        run_load(
            url,
            body,
            concurrency=concurrency,
            duration_s=1.0,
            warmup_s=0.0,
            max_requests=200_000,
            check=check,
        )
    )
    res = asyncio.run(
        run_load(
            url,
            body,
            concurrency=concurrency,
            duration_s=duration,
            warmup_s=0.0,
            max_requests=2_000_000,
            check=check,
        )
    )
    return Measure(
        res.rps,
        res.percentile(50) * 1e3,
        res.percentile(99) * 1e3,
        res.requests,
        (warm.requests - warm.ok) + (res.requests - res.ok),
        warm.errors + res.errors,
        warm.checked + res.checked,
        warm.wrong + res.wrong,
        (warm.wrong_sample or res.wrong_sample).decode(errors="replace"),
    )


def mixed_check(
    server: Server, bodies: list[bytes], expected: list[Expected], concurrency: int, seconds: float
) -> Measure:
    """Distinct records over ``concurrency`` connections: every answer must be its own request's prediction
    (a batcher that mixed up rows or requests would fail here, where identical requests cannot tell)."""
    url = server.base + server.infer_path.format(model="tabular")
    res = asyncio.run(
        run_load(
            url, None, concurrency=concurrency, duration_s=seconds, warmup_s=0.0, max_requests=50_000,
            bodies=bodies, check=lambda i, raw: expected[i].check(raw),
        )
    )  # fmt: skip
    return Measure(
        res.rps, res.percentile(50) * 1e3, res.percentile(99) * 1e3, res.requests, res.requests - res.ok,
        res.errors, res.checked, res.wrong, res.wrong_sample.decode(errors="replace"),
    )  # fmt: skip


@dataclass
class Minio:
    """A private MinIO for the benchmark's prediction logs (the local cluster's binary, loopback only)."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = "kubeloop"

    def server_env(self, deployment: str) -> dict[str, str]:
        """kubeloop-server settings: prediction logging on (every row), to this MinIO."""
        return {
            "PREDICTION_LOGGING_ENABLED": "true",
            "PREDICTION_LOGGING_SAMPLE_RATE": "1.0",
            "S3_ENDPOINT": self.endpoint,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "BUCKET": self.bucket,
            "NAMESPACE": "bench",
            "DEPLOYMENT": deployment,
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_minio(work: Path) -> Minio:
    """MinIO from the local cluster's build cache (``hack/cluster.py build minio`` builds it once)."""
    import secrets

    sys.path.insert(0, str(REPO / "hack"))
    from localcluster import build  # the local-cluster tooling: pinned, cached binaries

    from kubeloop.storage import S3Config
    from kubeloop.storage.s3 import S3Store

    binary = build.ensure(["minio"], quiet=True)["minio"]
    port = free_port()
    data = work / "minio"
    data.mkdir()
    access, secret = "bench", secrets.token_urlsafe(18)
    env = {
        "MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret, "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off", "MINIO_REGION": "us-east-1",
    }  # fmt: skip
    log_path = (work / "minio.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "server", str(data), f"--address={HOST}:{port}", "--quiet"],
        env={**os.environ, **env},
        stdout=log_path,
        stderr=subprocess.STDOUT,
    )
    m = Minio(proc, f"{HOST}:{port}", access, secret)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{m.endpoint}/minio/health/live", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            m.stop()
            raise RuntimeError(f"MinIO did not start; log:\n{(work / 'minio.log').read_text()[-2000:]}")
        time.sleep(0.2)
    store = S3Store(S3Config(endpoint=m.endpoint, access_key=access, secret_key=secret, region="us-east-1"))
    store.ensure_bucket(m.bucket)
    return m


def grpc_request(rt: ModelRuntime, rows: np.ndarray) -> bytes:
    """A ModelInferRequest as Triton's client sends it (raw_input_contents), serialised once."""
    req = pb.ModelInferRequest(model_name="tabular")
    req.inputs.add(name=rt.inputs[0].name, datatype="FP32", shape=list(rows.shape))
    req.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    return bytes(req.SerializeToString())


def grpc_measure(
    server: Server, request: bytes, expected: Expected, concurrency: int, duration: float
) -> Measure:
    """1 s warm-up (answers checked) then ``duration`` s, with the same generator for every server."""
    res = asyncio.run(
        run_grpc_load(
            f"{HOST}:{server.grpc_port}", request, concurrency=concurrency, duration_s=duration, warmup_s=1.0,
            max_requests=2_000_000, check=expected.check_grpc,
        )
    )  # fmt: skip
    return Measure(
        res.rps, res.percentile(50) * 1e3, res.percentile(99) * 1e3, res.requests, 0, res.failed, res.checked,
        res.wrong, res.wrong_sample.hex(),
    )  # fmt: skip


def batch_bodies(rt: ModelRuntime, rows: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """One 1,000-row OIP request as JSON (in and out) and with the binary tensor data extension (in and
    out): body and extra headers."""
    name = rt.inputs[0].name
    shape = list(rows.shape)
    json_body = orjson.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": rows.reshape(-1).tolist()}]}
    )
    raw = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return {
        "json": (json_body, {}),
        "binary": (head + raw, {"Inference-Header-Content-Length": str(len(head))}),
    }


def batch_check(expected: np.ndarray) -> dict[str, Any]:
    """Answer checks for :func:`batch_bodies`: the JSON answer's data, or the binary answer's tail."""
    flat = expected.astype(np.float32).reshape(-1)
    nbytes = flat.size * 4

    def close(got: np.ndarray) -> bool:
        return got.shape == flat.shape and bool(np.all(np.abs(got - flat) <= ATOL + RTOL * np.abs(flat)))

    def check_json(_i: int, raw: bytes) -> bool:
        try:
            return close(np.asarray(orjson.loads(raw)["outputs"][0]["data"], dtype=np.float32))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False

    def check_binary(_i: int, raw: bytes) -> bool:
        try:
            head = orjson.loads(raw[:-nbytes])
            if head["outputs"][0]["parameters"]["binary_data_size"] != nbytes:
                return False
            return close(np.frombuffer(raw[-nbytes:], dtype="<f4"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return False

    return {"json": check_json, "binary": check_binary}


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def scrape(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(server.base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{.*\})?\s+(\S+)$", line)
        if m:
            key = m[1] + (m[2] or "")
            out[key] = out.get(key, 0.0) + float(m[3])
    return out


def server_side(before: dict[str, float], after: dict[str, float], endpoint: str) -> str:
    def delta(prefix: str) -> float:
        return sum(
            v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix) and endpoint_ok(k)
        )

    def endpoint_ok(k: str) -> bool:
        return "endpoint" not in k or f'endpoint="{endpoint}"' in k

    n = delta("kubeloop_server_request_duration_seconds_count")
    t = delta("kubeloop_server_request_duration_seconds_sum")
    runs = delta("kubeloop_server_inference_duration_seconds_count")
    run_t = delta("kubeloop_server_inference_duration_seconds_sum")
    rows = delta("kubeloop_server_batch_size_rows_sum")
    if not n or not runs:
        return "no server-side samples"
    return (
        f"in-route {t / n * 1e6:.0f} us/request, session.run {run_t / runs * 1e6:.0f} us/run, "
        f"{rows / runs:.1f} rows/run over {runs:.0f} runs"
    )


# --- in-process reference --------------------------------------------------------------------------------


def inprocess_p50(
    rt: ModelRuntime, feeds: dict[str, np.ndarray], n: int = 3000, max_s: float = 10.0
) -> float:
    for _ in range(100):
        rt.session.run(None, feeds)
    times: list[float] = []
    deadline = time.perf_counter() + max_s
    for _ in range(n):
        t0 = time.perf_counter()
        rt.session.run(None, feeds)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > deadline:
            break
    return statistics.median(times)


def spinning_check(small: bytes, heavy: bytes, feeds: dict[str, np.ndarray]) -> str:
    """In-process p50 with ORT's thread-pool spinning off (our default) and on."""
    out = []
    batch = {"input": np.repeat(feeds["input"], 64, axis=0)}
    for label, model, f, n in (("small 1 row", small, feeds, 2000), ("heavy 64 rows", heavy, batch, 30)):
        res = []
        for spin in (False, True):
            rt = ModelRuntime(model, allow_spinning=spin)
            res.append(inprocess_p50(rt, f, n=n, max_s=5.0))
        out.append(f"{label}: off {res[0] * 1e6:.0f} us / on {res[1] * 1e6:.0f} us")
    return "; ".join(out)


def oip_body(rt: ModelRuntime, record: dict[str, Any]) -> bytes:
    row = [record[f] for f in rt.feature_names]
    return orjson.dumps(
        {"inputs": [{"name": rt.inputs[0].name, "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    )


@contextlib.contextmanager
def servers_stopped(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mlserver-python", type=Path, required=True)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (after 1 s warm-up)")
    p.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds for (a) and (b); medians reported"
    )
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    a = p.parse_args()
    tool = a.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    t_begin = time.monotonic()
    load_start = os.getloadavg()[0]
    cpus = cpu_limit()
    log("== kubeloop-server benchmark ==")
    log(
        f"machine: {os.cpu_count()} CPUs ({cpus} usable by this cgroup), load average {os.getloadavg()[0]:.2f}"
    )
    log(f"NOTE: the load generator ({tool}) shares these {cpus} cores with the server under test; on this")
    log("      machine other jobs may also be running, so absolute numbers are noisy; ratios come from")
    log(
        "      interleaved runs of the same load generator against each server; the order reverses every\n"
        "      round (ABBA), so our server and the floor always run back to back."
    )
    log(f"per measurement: 1 s warm-up + {a.duration:.0f} s; {a.rounds} interleaved rounds for (a)/(b)")
    work = Path(tempfile.mkdtemp(prefix="kubeloop-bench-"))
    small = work / "small.onnx"
    small.write_bytes(mlp_model(n_numeric=30, hidden=(64, 32), name="tabular", version="1"))
    heavy = work / "heavy.onnx"
    heavy.write_bytes(mlp_model(n_numeric=30, hidden=(2048, 2048, 2048), name="tabular", version="1"))
    rt_small = ModelRuntime(small.read_bytes())
    rt_heavy = ModelRuntime(heavy.read_bytes())
    rec = random_records(1, seed=7)[0]
    body = oip_body(rt_small, rec)
    # the reference answers come from plain onnxruntime sessions, not from the server's code
    ref_small = ort.InferenceSession(small.read_bytes(), providers=["CPUExecutionProvider"])
    ref_heavy = ort.InferenceSession(heavy.read_bytes(), providers=["CPUExecutionProvider"])
    row = [float(rec[f]) for f in rt_small.feature_names]
    exp_small = Expected.from_session(ref_small, row)
    exp_heavy = Expected.from_session(ref_heavy, row)
    mixed_records = random_records(64, seed=11)
    mixed_bodies = [oip_body(rt_small, r) for r in mixed_records]
    mixed_rows = [[float(r[f]) for f in rt_small.feature_names] for r in mixed_records]
    mixed_small = [Expected.from_session(ref_small, x) for x in mixed_rows]
    mixed_heavy = [Expected.from_session(ref_heavy, x) for x in mixed_rows]
    del ref_heavy
    feeds = codec.decode_infer_request(rt_small, orjson.loads(body), 10).feeds
    # the fixed answer of both no-ops: what our server answers to the benchmark request (same bytes back)
    answer = work / "answer.json"
    answer.write_bytes(
        codec.encode_infer_response(
            rt_small, codec.decode_infer_request(rt_small, orjson.loads(body), 10), rt_small.run(feeds)
        )[0]
    )
    if not exp_small.check(answer.read_bytes()):
        raise SystemExit(
            f"the in-process answer {answer.read_bytes()!r} does not match onnxruntime's {exp_small}"
        )
    log(
        f"request body {len(body)} bytes; fixed no-op answer {answer.stat().st_size} bytes: {answer.read_text()}"
    )
    inproc_small = inprocess_p50(rt_small, feeds)
    inproc_heavy = inprocess_p50(rt_heavy, feeds, n=300)
    batch_feeds = {"input": np.repeat(feeds["input"], 64, axis=0)}
    inproc_heavy64 = inprocess_p50(rt_heavy, batch_feeds, n=50)
    log(
        f"models: small MLP 30-64-32-3, heavy MLP 30-2048-2048-2048-3; ORT intra-op threads {rt_small.threads}"
    )
    log(f"in-process session.run p50: small {inproc_small * 1e6:.1f} us; heavy 1 row {inproc_heavy * 1e3:.2f} ms, "
        f"64 rows {inproc_heavy64 * 1e3:.2f} ms ({64 * inproc_heavy / inproc_heavy64:.1f}x rows/s from batching in-process)")  # fmt: skip
    log(
        "profile of the hot path (OIP infer, 1 row, small model), in-process, CPU us per request "
        f"(load average {os.getloadavg()[0]:.2f}):"
    )
    from profile_hot_path import breakdown  # bench/server/profile_hot_path.py (here: loaded only to run it)

    for title, rows in breakdown(n=1000, rounds=5):
        log(f"  {title}")
        for k, v in rows:
            log(f"    {k:78s} {v:7.1f}")
    del rt_heavy
    log(
        f"ORT thread-pool spinning (in-process p50): {spinning_check(small.read_bytes(), heavy.read_bytes(), feeds)}"
    )

    minio = start_minio(work)
    try:
        main_runs(a, tool, work, t_begin, small, heavy, rt_small, body, answer, exp_small, exp_heavy, mixed_bodies,
                  mixed_small, mixed_heavy, inproc_small, minio, load_start)  # fmt: skip
    finally:
        minio.stop()
        shutil.rmtree(work, ignore_errors=True)


def main_runs(
    a: argparse.Namespace, tool: str, work: Path, t_begin: float, small: Path, heavy: Path, rt_small: ModelRuntime,
    body: bytes, answer: Path, exp_small: Expected, exp_heavy: Expected, mixed_bodies: list[bytes],
    mixed_small: list[Expected], mixed_heavy: list[Expected], inproc_small: float, minio: Minio,
    load_start: float,
) -> None:  # fmt: skip
    mlpy = a.mlserver_python
    every: list[Server] = []
    # the gRPC floor's fixed answer: what our server answers to the gRPC benchmark request
    first_row = np.asarray([orjson.loads(body)["inputs"][0]["data"]], dtype=np.float32)
    greq = grpc_request(rt_small, first_row)
    greq_msg = grpcapi.decode_grpc_request(rt_small, pb.ModelInferRequest.FromString(greq), 10, True)
    grpc_answer = work / "answer.grpc"
    grpc_answer.write_bytes(
        grpcapi.encode_grpc_response(rt_small, greq_msg, rt_small.run(greq_msg.feeds)).SerializeToString()
    )
    if not exp_small.check_grpc(grpc_answer.read_bytes()):
        raise SystemExit("the in-process gRPC answer does not match onnxruntime's")
    logging_env = minio.server_env
    log(f"prediction logging: on for every kubeloop-server below, every row, to a private MinIO ({minio.endpoint}, "
        "the local cluster's binary) through the server's S3 adapter; metrics on")  # fmt: skip

    def measure(s: Server, concurrency: int, label: str, unit: str = "req/s") -> tuple[Measure, float]:
        """One bounded, checked load run; returns the client-side figures and the server's CPU us per request."""
        url = s.base + s.infer_path.format(model="tabular")
        expected = exp_heavy if s.name.startswith("heavy") else exp_small
        before = scrape(s) if s.ours else {}
        cpu0 = tree_cpu_seconds(s.proc.pid)
        m = load(url, body, expected, concurrency, a.duration, tool, work)
        cpu_us = (
            (tree_cpu_seconds(s.proc.pid) - cpu0) / max(1, m.requests) * 1e6 * (a.duration / (a.duration + 1))
        )
        count(s, m)
        extra = f"  [{server_side(before, scrape(s), '/v2/models/{model_name}/infer')}]" if s.ours else ""
        log(f"{label} {s.name:30s} {m.rps:8.0f} {unit}  p50 {m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.2f} ms  "
            f"server CPU {cpu_us:5.0f} us/req  checked {m.checked} wrong {m.wrong} "
            f"non-2xx {m.non2xx} errors {m.errors}{extra}")  # fmt: skip
        return m, cpu_us

    def count(s: Server, m: Measure) -> None:
        if s not in every:
            every.append(s)
        s.counts["checked"] += m.checked
        s.counts["wrong"] += m.wrong
        s.counts["failed"] += m.failed
        if m.wrong:
            log(f"!! {s.name}: {m.wrong} wrong answers; first: {m.wrong_sample}")

    def mixed(s: Server, expected: list[Expected], concurrency: int) -> None:
        m = mixed_check(s, mixed_bodies, expected, concurrency, 2.0)
        count(s, m)
        log(f"answer check, 64 distinct records, c={concurrency}: {s.name}: {m.checked} answers checked, "
            f"{m.wrong} wrong, {m.failed} failed ({m.rps:.0f} req/s with the Python load generator)")  # fmt: skip

    # (a) + (b): small model, concurrency 16, paired rounds (the load on this machine drifts)
    log("\n-- (a)/(b): OIP infer, batch 1, small model, concurrency 16, 1 server process each --")
    ours = start_ours("kubeloop-server", small, work, **logging_env("small"))
    srv = [ours]
    # The same server as a default ModelDeployment runs it (spec.batching's defaults: merging only what is
    # already waiting, no added wait; lone requests run at once), reported beside the server's own default
    # (batching off), which the other ratios keep: MLServer's default does not batch either.
    spec = BatchingSpec()
    deployed = start_ours(
        "kubeloop-server-deployed", small, work, BATCHING_ENABLED=str(spec.enabled).lower(),
        MAX_BATCH_SIZE=str(spec.max_batch_size), MAX_LATENCY_MS=repr(spec.max_latency_ms),
        **logging_env("small-deployed"),
    )  # fmt: skip
    srv.append(deployed)
    r_dep_floor_rounds: list[float] = []
    r_dep_p50_floor_rounds: list[float] = []
    r_ml_rounds: list[float] = []
    r_noop_rounds: list[float] = []
    r_floor_rounds: list[float] = []
    r_lane_rounds: list[float] = []  # against the fast lane's own floor (like for like)
    r_p50_lane_rounds: list[float] = []
    rps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    r_grpc_rounds: list[float] = []
    r_grpc_floor_rounds: list[float] = []
    r_grpc_floor_ml_rounds: list[float] = []
    batch_rps: dict[str, list[float]] = {}
    batch_cpu: dict[str, list[float]] = {}
    predlog_rows = predlog_dropped = dropped_f = float("nan")
    with servers_stopped(srv):
        floor = start_floor(small, work, answer, grpc_answer)
        srv.append(floor)
        lane_floor = start_floor(small, work, answer, grpc_answer, kind="lane")
        srv.append(lane_floor)
        noop = start_noop(work, answer)
        srv.append(noop)
        mls: list[Server] = []
        for workers in (0, 1):
            try:
                mls.append(start_mlserver(mlpy, small, work, workers, rt_small.threads))
                srv.append(mls[-1])
            except RuntimeError as e:
                log(f"MLServer with parallel_workers={workers} failed to start: {e}")
        for r in range(a.rounds):
            got = {}
            for s in srv if r % 2 == 0 else srv[::-1]:  # ABBA: no server always goes first
                m, c = measure(s, 16, f"round {r + 1}")
                got[s.name] = m.rps
                rps.setdefault(s.name, []).append(m.rps)
                cpu.setdefault(s.name, []).append(c)
            r_floor_rounds.append(got[ours.name] / got[floor.name])
            r_lane_rounds.append(got[ours.name] / got[lane_floor.name])
            r_dep_floor_rounds.append(got[deployed.name] / got[floor.name])
            r_noop_rounds.append(got[ours.name] / got[noop.name])
            if mls:
                r_ml_rounds.append(got[ours.name] / max(got[x.name] for x in mls))
            log(f"round {r + 1} ratios: vs floor {r_floor_rounds[-1]:.2f}x (as deployed: {r_dep_floor_rounds[-1]:.2f}x), "
                f"vs the fast lane's floor {r_lane_rounds[-1]:.2f}x, "
                f"vs FastAPI no-op {r_noop_rounds[-1]:.2f}x"
                + (f", vs best MLServer {r_ml_rounds[-1]:.2f}x" if mls else ""))  # fmt: skip
        # (d): concurrency 1, ours and the no-ops interleaved
        log("\n-- (d): latency at concurrency 1, small model --")
        p50s: list[float] = []
        p50s_floor: list[float] = []
        p50s_noop: list[float] = []
        r_p50_floor_rounds: list[float] = []
        # as many rounds as at c=16: a p50 near 100 us moves by a tenth between runs on this machine
        for r in range(a.rounds):
            lat: dict[str, float] = {}
            for s in (
                (ours, floor, lane_floor, deployed, noop)
                if r % 2 == 0
                else (noop, deployed, lane_floor, floor, ours)
            ):
                lat[s.name] = measure(s, 1, f"c=1 round {r + 1}")[0].p50_ms / 1e3
            p50s.append(lat[ours.name])
            p50s_floor.append(lat[floor.name])
            p50s_noop.append(lat[noop.name])
            r_p50_floor_rounds.append(p50s[-1] / p50s_floor[-1])
            r_p50_lane_rounds.append(p50s[-1] / lat[lane_floor.name])
            r_dep_p50_floor_rounds.append(lat[deployed.name] / p50s_floor[-1])
        mixed(ours, mixed_small, 16)
        mixed(deployed, mixed_small, 16)

        # (e): gRPC, the same model, every server through the same generator and request bytes
        log("\n-- (e): OIP gRPC ModelInfer, batch 1, small model, concurrency 16 over 2 HTTP/2 connections; the same "
            "Python grpc.aio generator (bench/server/grpc_loadgen.py) and the same request bytes (raw_input_contents, "
            "as Triton's client sends) for every server; every answer checked --")  # fmt: skip
        gsrv = [ours, floor, *mls]
        grps: dict[str, list[float]] = {}
        gcpu: dict[str, list[float]] = {}
        for r in range(max(2, a.rounds // 2)):
            got = {}
            for s in gsrv if r % 2 == 0 else gsrv[::-1]:
                cpu0 = tree_cpu_seconds(s.proc.pid)
                m = grpc_measure(s, greq, exp_small, 16, a.duration)
                c = (
                    (tree_cpu_seconds(s.proc.pid) - cpu0)
                    / max(1, m.requests)
                    * 1e6
                    * (a.duration / (a.duration + 1))
                )
                count(s, m)
                log(f"gRPC round {r + 1} {s.name:30s} {m.rps:8.0f} req/s  p50 {m.p50_ms:7.3f} ms  p99 {m.p99_ms:7.2f} ms  "
                    f"server CPU {c:5.0f} us/req  checked {m.checked} wrong {m.wrong} failed {m.failed}")  # fmt: skip
                got[s.name] = m.rps
                grps.setdefault(s.name, []).append(m.rps)
                gcpu.setdefault(s.name, []).append(c)
            r_grpc_floor_rounds.append(got[ours.name] / got[floor.name])
            if mls:
                best = max(got[x.name] for x in mls)
                r_grpc_rounds.append(got[ours.name] / best)
                r_grpc_floor_ml_rounds.append(got[floor.name] / best)
                log(f"gRPC round {r + 1} ratio: vs best MLServer {r_grpc_rounds[-1]:.2f}x; vs the gRPC floor "
                    f"{r_grpc_floor_rounds[-1]:.2f}x; the floor vs best MLServer {r_grpc_floor_ml_rounds[-1]:.2f}x")  # fmt: skip

        before_f = scrape(ours)
        predlog_rows = before_f.get("kubeloop_server_prediction_log_written_rows_total", 0.0)
        predlog_dropped = sum(
            v for k, v in before_f.items() if k.startswith("kubeloop_server_prediction_log_dropped_rows")
        )
        log(f"\nprediction log of kubeloop-server after (a), (b), (d), (e): {predlog_rows:.0f} rows written to MinIO "
            f"in {before_f.get('kubeloop_server_prediction_log_parts_total', 0):.0f} Parquet parts, "
            f"{predlog_dropped:.0f} dropped (the rest is flushed at shutdown)")  # fmt: skip

        # (f): one 1,000-row request, binary extension vs JSON, our server, the same generator
        log("\n-- (f): one 1,000-row OIP request, binary tensor data extension (in and out) vs JSON (in and out), "
            "kubeloop-server, concurrency 4, the Python load generator for both; every answer checked --")  # fmt: skip
        rows1000 = np.asarray(
            [[r[f] for f in rt_small.feature_names] for r in random_records(1000, seed=5)], dtype=np.float32
        )
        ref = ort.InferenceSession(small.read_bytes(), providers=["CPUExecutionProvider"])
        exp1000 = ref.run(None, {ref.get_inputs()[0].name: rows1000})[0]
        bodies = batch_bodies(rt_small, rows1000)
        checks = batch_check(exp1000)
        url = ours.base + ours.infer_path.format(model="tabular")
        for kind, (b, _) in bodies.items():
            log(f"{kind} request body: {len(b)} bytes")
        for r in range(2):
            for kind in ("json", "binary") if r % 2 == 0 else ("binary", "json"):
                b, headers = bodies[kind]
                ctype = "application/json" if kind == "json" else "application/octet-stream"
                cpu0 = tree_cpu_seconds(ours.proc.pid)
                res = asyncio.run(
                    run_load(url, b, concurrency=4, duration_s=a.duration, warmup_s=1.0, max_requests=200_000,
                             check=checks[kind], headers=headers, content_type=ctype)
                )  # fmt: skip
                c = (
                    (tree_cpu_seconds(ours.proc.pid) - cpu0)
                    / max(1, res.requests)
                    * 1e6
                    * (a.duration / (a.duration + 1))
                )
                m = Measure(res.rps, res.percentile(50) * 1e3, res.percentile(99) * 1e3, res.requests,
                            res.requests - res.ok, res.errors, res.checked, res.wrong,
                            res.wrong_sample.decode(errors="replace"))  # fmt: skip
                count(ours, m)
                batch_rps.setdefault(kind, []).append(m.rps)
                batch_cpu.setdefault(kind, []).append(c)
                log(f"1,000 rows round {r + 1} {kind:7s} {m.rps:7.1f} req/s ({m.rps * 1000:8.0f} rows/s)  p50 "
                    f"{m.p50_ms:7.2f} ms  server CPU {c:7.0f} us/req  checked {m.checked} wrong {m.wrong} failed {m.failed}")  # fmt: skip
        final = scrape(ours)
        dropped_f = sum(
            v for k, v in final.items() if k.startswith("kubeloop_server_prediction_log_dropped_rows")
        )
        dropped_f -= predlog_dropped
        written_f = final.get("kubeloop_server_prediction_log_written_rows_total", 0.0) - predlog_rows
        log(f"prediction log during (f): {written_f:.0f} rows written, {dropped_f:.0f} dropped: at several hundred "
            "thousand rows/s the log's buffer bound (prediction_log_max_buffer_rows) drops rows and counts them, "
            "and serving never waits for storage; such a deployment would set a sample rate")  # fmt: skip

    # (c): batching on the heavy model
    log("\n-- (c): adaptive batching, heavy model, single-row requests, concurrency 64 --")
    on = start_ours(
        "heavy-batching-on", heavy, work, BATCHING_ENABLED="true", MAX_BATCH_SIZE="64", MAX_LATENCY_MS="2",
        **logging_env("heavy-on"),
    )  # fmt: skip
    gains: list[float] = []
    rows: dict[str, list[float]] = {}
    with servers_stopped([on]):
        off = start_ours(
            "heavy-batching-off", heavy, work, BATCHING_ENABLED="false", **logging_env("heavy-off")
        )
        with servers_stopped([off]):
            for r in range(2):
                m_off, _ = measure(off, 64, f"round {r + 1}", "rows/s")
                m_on, _ = measure(on, 64, f"round {r + 1}", "rows/s")
                rows.setdefault("off", []).append(m_off.rps)
                rows.setdefault("on", []).append(m_on.rps)
                gains.append(m_on.rps / m_off.rps if m_off.rps else float("nan"))
        mixed(on, mixed_heavy, 64)

    med = statistics.median
    r_ml = med(r_ml_rounds) if r_ml_rounds else float("nan")
    r_noop = med(r_noop_rounds)
    r_floor = med(r_floor_rounds)
    r_batch = med(gains)
    p50 = med(p50s)
    r_p50 = p50 / inproc_small
    r_p50_floor = med(r_p50_floor_rounds)
    r_lane = med(r_lane_rounds)
    r_p50_lane = med(r_p50_lane_rounds)
    r_dep_floor = med(r_dep_floor_rounds)
    r_dep_p50_floor = med(r_dep_p50_floor_rounds)
    best_ml = max(mls, key=lambda x: med(rps[x.name])) if mls else None
    log("\n== summary (medians over rounds; ratios are medians of per-round ratios) ==")
    for name in rps:
        log(f"{name:32s} {med(rps[name]):8.0f} req/s   server CPU {med(cpu[name]):5.0f} us/request")
    log(f"(a) kubeloop-server vs best MLServer config, per round: {', '.join(f'{x:.2f}' for x in r_ml_rounds)} "
        f"-> {r_ml:.2f}x (goal >= 3)")  # fmt: skip
    log(f"(b) kubeloop-server vs the raw-ASGI floor on our uvicorn settings, per round: "
        f"{', '.join(f'{x:.2f}' for x in r_floor_rounds)} -> {r_floor:.2f}x "
        f"({med(rps[ours.name]):.0f} vs {med(rps[floor.name]):.0f} req/s)")  # fmt: skip
    log(f"(b) kubeloop-server (its HTTP fast lane) vs the fast lane answering a fixed reply, like for like, per round: "
        f"{', '.join(f'{x:.2f}' for x in r_lane_rounds)} -> {r_lane:.2f}x ({med(rps[lane_floor.name]):.0f} req/s); "
        f"p50 at c=1, per round: {', '.join(f'{x:.2f}' for x in r_p50_lane_rounds)} -> {r_p50_lane:.2f}x")  # fmt: skip
    log(f"(b) kubeloop-server as a default ModelDeployment runs it (batching on, max_latency_ms {spec.max_latency_ms:g}: "
        "merging what is already waiting) vs the floor, per round: "
        f"{', '.join(f'{x:.2f}' for x in r_dep_floor_rounds)} -> {r_dep_floor:.2f}x "
        f"({med(rps[deployed.name]):.0f} req/s); its p50 at c=1 vs the floor's, per round: "
        f"{', '.join(f'{x:.2f}' for x in r_dep_p50_floor_rounds)} -> {r_dep_p50_floor:.2f}x")  # fmt: skip
    log(f"(b) kubeloop-server vs no-op FastAPI, per round: {', '.join(f'{x:.2f}' for x in r_noop_rounds)} "
        f"-> {r_noop:.2f}x ({med(rps[ours.name]):.0f} vs {med(rps[noop.name]):.0f} req/s; goal >= 0.7)")  # fmt: skip
    log(f"(c) batching on {med(rows['on']):.0f} rows/s vs off {med(rows['off']):.0f} rows/s, per round: "
        f"{', '.join(f'{x:.2f}' for x in gains)} -> {r_batch:.2f}x (goal >= 3)")  # fmt: skip
    log(f"(d) p50 at c=1 {p50 * 1e6:.0f} us vs in-process session.run p50 {inproc_small * 1e6:.1f} us -> "
        f"{r_p50:.1f}x (goal <= 15); vs the floor's p50 {med(p50s_floor) * 1e6:.0f} us, per round "
        f"{', '.join(f'{x:.2f}' for x in r_p50_floor_rounds)} -> {r_p50_floor:.2f}x; the FastAPI no-op: "
        f"p50 {med(p50s_noop) * 1e6:.0f} us")  # fmt: skip
    r_grpc = med(r_grpc_rounds) if r_grpc_rounds else float("nan")
    r_grpc_floor = med(r_grpc_floor_rounds)
    r_grpc_floor_ml = med(r_grpc_floor_ml_rounds) if r_grpc_floor_ml_rounds else float("nan")
    best_gml = max(mls, key=lambda x: med(grps[x.name])) if mls else None
    log(f"(e) gRPC: kubeloop-server {med(grps[ours.name]):.0f} req/s (server CPU {med(gcpu[ours.name]):.0f} us/req)"
        + "".join(f", {x.name} {med(grps[x.name]):.0f} req/s (server CPU {med(gcpu[x.name]):.0f} us/req)" for x in [floor, *mls])
        + f"; vs best MLServer, per round: {', '.join(f'{x:.2f}' for x in r_grpc_rounds)} -> {r_grpc:.2f}x (goal >= 3)")  # fmt: skip
    log(f"(e) gRPC: kubeloop-server vs the gRPC floor (our gRPC wire answering a fixed message), per round: "
        f"{', '.join(f'{x:.2f}' for x in r_grpc_floor_rounds)} -> {r_grpc_floor:.2f}x; the floor itself vs best "
        f"MLServer, per round: {', '.join(f'{x:.2f}' for x in r_grpc_floor_ml_rounds)} -> {r_grpc_floor_ml:.2f}x "
        "(the most any server on this gRPC stack and generator could show)")  # fmt: skip
    r_binary = med(batch_rps["binary"]) / med(batch_rps["json"])
    log(f"(f) one 1,000-row request: binary extension {med(batch_rps['binary']):.1f} req/s (server CPU "
        f"{med(batch_cpu['binary']):.0f} us/req) vs JSON {med(batch_rps['json']):.1f} req/s (server CPU "
        f"{med(batch_cpu['json']):.0f} us/req) -> {r_binary:.2f}x")  # fmt: skip
    log("answers (every 2xx compared with in-process onnxruntime; failed = non-2xx + transport errors):")
    for s in every:
        c = s.counts
        log(f"  {s.name:32s} checked {c['checked']:8d}  wrong {c['wrong']:3d}  failed {c['failed']:3d}")
    fatal = [s for s in every if s.counts["wrong"] or (s.counts["failed"] and not s.peer)]
    checked = sum(s.counts["checked"] for s in every)
    wrong = sum(s.counts["wrong"] for s in every)
    failed = sum(s.counts["failed"] for s in every if not s.peer)
    peer_failed = sum(s.counts["failed"] for s in every if s.peer)
    log(
        f"load generator: {tool}; load average now {os.getloadavg()[0]:.2f}; total {time.monotonic() - t_begin:.0f} s"
    )
    if fatal:
        log(f"FAILED: wrong or failed answers from {', '.join(s.name for s in fatal)}")
    print(
        f"RESULT server_vs_mlserver={r_ml:.2f} server_vs_noop={r_noop:.2f} server_vs_floor={r_floor:.2f} "
        f"batching_gain={r_batch:.2f} p50_vs_inprocess={r_p50:.2f} p50_vs_floor={r_p50_floor:.2f} "
        f"server_rps={med(rps[ours.name]):.0f} floor_rps={med(rps[floor.name]):.0f} "
        f"noop_rps={med(rps[noop.name]):.0f} "
        f"server_vs_lane_floor={r_lane:.2f} p50_vs_lane_floor={r_p50_lane:.2f} "
        f"lane_floor_rps={med(rps[lane_floor.name]):.0f} "
        f"deployed_vs_floor={r_dep_floor:.2f} deployed_p50_vs_floor={r_dep_p50_floor:.2f} "
        f"deployed_rps={med(rps[deployed.name]):.0f} "
        f"mlserver_rps={med(rps[best_ml.name]) if best_ml else float('nan'):.0f} "
        f"server_p50_us={p50 * 1e6:.0f} floor_p50_us={med(p50s_floor) * 1e6:.0f} "
        f"inprocess_p50_us={inproc_small * 1e6:.1f} "
        f"grpc_vs_mlserver={r_grpc:.2f} grpc_rps={med(grps[ours.name]):.0f} "
        f"mlserver_grpc_rps={med(grps[best_gml.name]) if best_gml else float('nan'):.0f} "
        f"grpc_vs_floor={r_grpc_floor:.2f} grpc_floor_rps={med(grps[floor.name]):.0f} "
        f"grpc_floor_vs_mlserver={r_grpc_floor_ml:.2f} "
        f"binary_vs_json_1000rows={r_binary:.2f} binary_1000rows_rps={med(batch_rps['binary']):.1f} "
        f"json_1000rows_rps={med(batch_rps['json']):.1f} "
        f"predlog_rows={predlog_rows:.0f} predlog_dropped={predlog_dropped:.0f} predlog_dropped_1000rows={dropped_f:.0f} "
        f"load_avg_start={load_start:.2f} load_avg_end={os.getloadavg()[0]:.2f} "
        f"checked={checked} wrong={wrong} failed={failed} mlserver_failed={peer_failed}",
        flush=True,
    )
    if fatal:
        sys.exit(1)


if __name__ == "__main__":
    main()

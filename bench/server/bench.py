"""kubeloop-server benchmark (``make bench-server``): loopback only, every step bounded in time and count.

(a) OIP infer requests/s at batch 1 on a small MLP (30 features), concurrency 16, against MLServer
    (same ONNX model through the minimal custom ONNX Runtime MLServer runtime, same worker processes);
(b) the same against a no-op FastAPI endpoint served the same way (uvicorn, 1 process, uvloop+httptools);
(c) adaptive batching on a compute-heavy wide MLP: single-row requests at concurrency 64, rows/s with
    batching on against off;
(d) p50 latency at concurrency 1 against in-process ``session.run`` p50 on the small model.

Last line: ``RESULT server_vs_mlserver=<r> server_vs_noop=<r> batching_gain=<r> p50_vs_inprocess=<r>``.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kubeloop_server import codec
from kubeloop_server.model import ModelRuntime, cpu_limit
from kubeloop_server.testing import mlp_model, random_records
from loadgen import run_load  # bench/server/loadgen.py (this script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
NOOP_APP = """
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/v2/models/{model_name}/infer")
async def infer(model_name: str, request: Request) -> Response:
    await request.body()
    return Response(b'{"outputs":[]}', media_type="application/json")


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


def start_ours(name: str, model: Path, work: Path, **env: str) -> Server:
    port = free_port()
    e = {
        "KUBELOOP_SERVER_MODEL_URI": str(model),
        "KUBELOOP_SERVER_HOST": HOST,
        "KUBELOOP_SERVER_PORT": str(port),
        "KUBELOOP_SERVER_LOG_LEVEL": "warning",
        "KUBELOOP_SERVER_DRAIN_SECONDS": "0",
        **{f"KUBELOOP_SERVER_{k.upper()}": v for k, v in env.items()},
    }
    cmd = [sys.executable, "-m", "kubeloop_server"]
    return spawn(name, cmd, e, work, port, "/v2/models/{model}/infer", "/v2/health/ready")


def start_noop(work: Path) -> Server:
    port = free_port()
    (work / "noop_app.py").write_text(NOOP_APP)
    cmd = [
        sys.executable, "-m", "uvicorn", "noop_app:app", "--host", HOST, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return spawn("noop-fastapi", cmd, {}, work, port, "/v2/models/{model}/infer", "/v2/health/ready")


def start_mlserver(mlserver_python: Path, model: Path, work: Path, workers: int, threads: int) -> Server:
    d = work / f"mlserver-w{workers}"
    d.mkdir()
    shutil.copy(model, d / "model.onnx")
    shutil.copy(HERE / "mlserver_runtime.py", d / "mlserver_runtime.py")
    port = free_port()
    settings = {
        "debug": False,
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
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
    return spawn(
        f"mlserver(parallel_workers={workers})",
        [str(mlserver), "start", str(d)],
        env,
        d,
        port,
        "/v2/models/{model}/infer",
        "/v2/models/tabular/ready",
    )


# --- load generation --------------------------------------------------------------------------------------


@dataclass
class Measure:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    errors: int


def _wrk_latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m[1]), m[2]
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def load(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    tool: str,
    work: Path,
    after_warmup: Callable[[], None] = lambda: None,
) -> Measure:
    """1 s warm-up (not counted), then ``duration`` seconds of closed-loop load."""
    if tool == "wrk":
        body_file = work / f"body-{abs(hash(body))}.json"
        body_file.write_bytes(body)
        script = work / f"post-{abs(hash(body))}.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        )
        threads = "1" if concurrency <= 16 else "2"
        base = ["wrk", "-t", threads, "-c", str(concurrency), "-s", str(script), "--latency"]
        subprocess.run([*base, "-d", "1s", url], capture_output=True, timeout=30, check=True)  # warm-up
        after_warmup()
        out = subprocess.run(
            [*base, "-d", f"{duration:.0f}s", "--timeout", "10s", url],
            capture_output=True, text=True, timeout=duration + 60, check=True,
        ).stdout  # fmt: skip
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
        total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        non2xx = int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        if non2xx:
            rps *= (total - non2xx) / total
        return Measure(rps, _wrk_latency_ms(out, "50"), _wrk_latency_ms(out, "99"), total, non2xx, errs)
    asyncio.run(
        run_load(url, body, concurrency=concurrency, duration_s=1.0, warmup_s=0.0, max_requests=200_000)
    )
    after_warmup()
    res = asyncio.run(
        run_load(
            url, body, concurrency=concurrency, duration_s=duration, warmup_s=0.0, max_requests=2_000_000
        )
    )
    non2xx = res.requests - res.ok
    return Measure(
        res.rps, res.percentile(50) * 1e3, res.percentile(99) * 1e3, res.requests, non2xx, res.errors
    )


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


def stage_costs(rt: ModelRuntime, body: bytes, n: int = 2000) -> dict[str, float]:
    """Per-request cost of each step of our OIP path, in-process (microseconds)."""
    parsed = orjson.loads(body)
    req = codec.decode_infer_request(rt, parsed, 10_000)
    outs = rt.run(req.feeds)
    enc = codec.encode_infer_response(rt, req, outs)
    steps = {
        "orjson.loads": lambda: orjson.loads(body),
        "decode+validate": lambda: codec.decode_infer_request(rt, parsed, 10_000),
        "session.run": lambda: rt.run(req.feeds),
        "encode": lambda: codec.encode_infer_response(rt, req, outs),
        "orjson.dumps": lambda: orjson.dumps(enc, option=orjson.OPT_SERIALIZE_NUMPY),
    }
    out: dict[str, float] = {}
    for name, fn in steps.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


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
    p = argparse.ArgumentParser(description=__doc__)
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
    cpus = cpu_limit()
    log("== kubeloop-server benchmark ==")
    log(
        f"machine: {os.cpu_count()} CPUs ({cpus} usable by this cgroup), load average {os.getloadavg()[0]:.2f}"
    )
    log(f"NOTE: the load generator ({tool}) shares these {cpus} cores with the server under test; on this")
    log("      machine other jobs may also be running, so absolute numbers are noisy; ratios come from")
    log("      interleaved runs of the same load generator against each server.")
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
    feeds = codec.decode_infer_request(rt_small, orjson.loads(body), 10).feeds
    inproc_small = inprocess_p50(rt_small, feeds)
    inproc_heavy = inprocess_p50(rt_heavy, feeds, n=300)
    batch_feeds = {"input": np.repeat(feeds["input"], 64, axis=0)}
    inproc_heavy64 = inprocess_p50(rt_heavy, batch_feeds, n=50)
    log(
        f"models: small MLP 30-64-32-3, heavy MLP 30-2048-2048-2048-3; ORT intra-op threads {rt_small.threads}"
    )
    log(f"in-process session.run p50: small {inproc_small * 1e6:.1f} us; heavy 1 row {inproc_heavy * 1e3:.2f} ms, "
        f"64 rows {inproc_heavy64 * 1e3:.2f} ms ({64 * inproc_heavy / inproc_heavy64:.1f}x rows/s from batching in-process)")  # fmt: skip
    log("our OIP path, in-process cost per request (us): "
        + ", ".join(f"{k} {v:.1f}" for k, v in stage_costs(rt_small, body).items()))  # fmt: skip
    del rt_heavy
    log(
        f"ORT thread-pool spinning (in-process p50): {spinning_check(small.read_bytes(), heavy.read_bytes(), feeds)}"
    )

    mlpy = a.mlserver_python
    url_of = {}  # server name -> infer URL

    def measure(s: Server, concurrency: int, label: str, unit: str = "req/s") -> tuple[Measure, float]:
        """One bounded load run; returns the client-side figures and the server's CPU us per request."""
        url = url_of.setdefault(s.name, s.base + s.infer_path.format(model="tabular"))
        ours_ = s.name.startswith(("kubeloop", "heavy"))
        before = scrape(s) if ours_ else {}
        cpu0 = tree_cpu_seconds(s.proc.pid)
        m = load(url, body, concurrency, a.duration, tool, work)
        cpu_us = (
            (tree_cpu_seconds(s.proc.pid) - cpu0) / max(1, m.requests) * 1e6 * (a.duration / (a.duration + 1))
        )
        extra = f"  [{server_side(before, scrape(s), '/v2/models/{model_name}/infer')}]" if ours_ else ""
        log(f"{label} {s.name:30s} {m.rps:8.0f} {unit}  p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  "
            f"server CPU {cpu_us:5.0f} us/req  non-2xx {m.non2xx} errors {m.errors}{extra}")  # fmt: skip
        return m, cpu_us

    # (a) + (b): small model, concurrency 16, paired rounds (the load on this machine drifts)
    log("\n-- (a)/(b): OIP infer, batch 1, small model, concurrency 16, 1 server process each --")
    ours = start_ours("kubeloop-server", small, work)
    noop = start_noop(work)
    mls: list[Server] = []
    srv = [ours, noop]
    r_ml_rounds: list[float] = []
    r_noop_rounds: list[float] = []
    rps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with servers_stopped(srv):
        for workers in (0, 1):
            try:
                mls.append(start_mlserver(mlpy, small, work, workers, rt_small.threads))
                srv.append(mls[-1])
            except RuntimeError as e:
                log(f"MLServer with parallel_workers={workers} failed to start: {e}")
        for r in range(a.rounds):
            got = {}
            for s in srv:
                m, c = measure(s, 16, f"round {r + 1}")
                got[s.name] = m.rps
                rps.setdefault(s.name, []).append(m.rps)
                cpu.setdefault(s.name, []).append(c)
            r_noop_rounds.append(got[ours.name] / got[noop.name])
            if mls:
                r_ml_rounds.append(got[ours.name] / max(got[x.name] for x in mls))
            log(f"round {r + 1} ratios: vs no-op {r_noop_rounds[-1]:.2f}x"
                + (f", vs best MLServer {r_ml_rounds[-1]:.2f}x" if mls else ""))  # fmt: skip
        # (d): concurrency 1, ours and the no-op interleaved
        log("\n-- (d): latency at concurrency 1, small model --")
        p50s: list[float] = []
        p50s_noop: list[float] = []
        for r in range(max(2, a.rounds // 2)):
            p50s.append(measure(ours, 1, f"c=1 round {r + 1}")[0].p50_ms / 1e3)
            p50s_noop.append(measure(noop, 1, f"c=1 round {r + 1}")[0].p50_ms / 1e3)

    # (c): batching on the heavy model
    log("\n-- (c): adaptive batching, heavy model, single-row requests, concurrency 64 --")
    on = start_ours(
        "heavy-batching-on", heavy, work, BATCHING_ENABLED="true", MAX_BATCH_SIZE="64", MAX_LATENCY_MS="2"
    )
    off = start_ours("heavy-batching-off", heavy, work, BATCHING_ENABLED="false")
    gains: list[float] = []
    rows: dict[str, list[float]] = {}
    with servers_stopped([on, off]):
        for r in range(2):
            m_off, _ = measure(off, 64, f"round {r + 1}", "rows/s")
            m_on, _ = measure(on, 64, f"round {r + 1}", "rows/s")
            rows.setdefault("off", []).append(m_off.rps)
            rows.setdefault("on", []).append(m_on.rps)
            gains.append(m_on.rps / m_off.rps if m_off.rps else float("nan"))

    med = statistics.median
    r_ml = med(r_ml_rounds) if r_ml_rounds else float("nan")
    r_noop = med(r_noop_rounds)
    r_batch = med(gains)
    p50 = med(p50s)
    r_p50 = p50 / inproc_small
    log("\n== summary (medians over rounds; ratios are medians of per-round ratios) ==")
    for name in rps:
        log(f"{name:32s} {med(rps[name]):8.0f} req/s   server CPU {med(cpu[name]):5.0f} us/request")
    log(f"(a) kubeloop-server vs best MLServer config, per round: {', '.join(f'{x:.2f}' for x in r_ml_rounds)} "
        f"-> {r_ml:.2f}x (goal >= 3)")  # fmt: skip
    log(f"(b) kubeloop-server vs no-op FastAPI, per round: {', '.join(f'{x:.2f}' for x in r_noop_rounds)} "
        f"-> {r_noop:.2f}x (goal >= 0.7)")  # fmt: skip
    log(f"(c) batching on {med(rows['on']):.0f} rows/s vs off {med(rows['off']):.0f} rows/s, per round: "
        f"{', '.join(f'{x:.2f}' for x in gains)} -> {r_batch:.2f}x (goal >= 3)")  # fmt: skip
    log(f"(d) p50 at c=1 {p50 * 1e6:.0f} us vs in-process session.run p50 {inproc_small * 1e6:.1f} us -> "
        f"{r_p50:.1f}x (goal <= 15); the no-op endpoint alone: p50 {med(p50s_noop) * 1e6:.0f} us = "
        f"{med(p50s_noop) / inproc_small:.1f}x")  # fmt: skip
    log(
        f"load generator: {tool}; load average now {os.getloadavg()[0]:.2f}; total {time.monotonic() - t_begin:.0f} s"
    )
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"RESULT server_vs_mlserver={r_ml:.2f} server_vs_noop={r_noop:.2f} "
        f"batching_gain={r_batch:.2f} p50_vs_inprocess={r_p50:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()

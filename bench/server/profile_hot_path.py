"""Where one OIP infer request's time goes: a reproducible per-request breakdown (bench code, never shipped).

    uv run --frozen python bench/server/profile_hot_path.py [--n 2000] [--rounds 5] [--cprofile]

Everything runs in this process, no sockets: the 30-feature MLP of ``make bench-server``, prediction logging
on (every row, to an in-memory store, the Parquet flush counted per row) and metrics on, as the benchmark
runs the server.

REST: uvicorn's own HTTP protocol (httptools, on uvloop, the server's settings) is fed the raw request
bytes through an in-memory transport, once with the benchmark's floor app (reads the body, answers a fixed
JSON) and once with our app: the difference is our cost over the HTTP floor. That cost is then broken down
by *ablation*: the whole request is timed again with one step replaced by its precomputed result
(session.run, reading the body, encode, metrics, prediction log), so each step is priced in place,
with the caches and allocator state of a real request, not alone in a tight loop; once through uvicorn
(what a served request costs), once straight into the ASGI app (without uvicorn's code between requests,
every step costs less: the difference is what running among uvicorn's code, uvloop and the kernel's
takes from the caches).

gRPC: ``ModelInfer`` at batch 1 (``raw_input_contents``, as Triton's client sends it) as the wire runs a
call at once: the protobuf parse, the servicer (answer serialised), then the deferred observation, with the
same ablations but request metrics; the wire's own per-call cost (HTTP/2 framing, HPACK, the request
metrics) is outside what this measures.

CPU microseconds per request of this thread (``time.thread_time``), best of ``--rounds`` runs of ``--n``
requests; the load average is printed, since the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import uvloop
from kubeloop_server import codec, grpcapi, rest
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_server.predlog import PredictionLogger
from kubeloop_server.protocol import make_protocol
from kubeloop_server.rest import ServerApp
from kubeloop_server.settings import ServerSettings
from kubeloop_testing.onnx_models import mlp_model, random_records
from kubeloop_testing.storage import MemoryStore
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

FLOOR_ANSWER = b'{"model_name":"tabular","model_version":"1","id":"x","outputs":[]}'


class MemoryTransport:
    """What uvicorn's protocol needs of a transport; counts the response writes of each request."""

    def __init__(self) -> None:
        self.writes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.last = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.writes == 1:
            self.last = data
        elif self.waiter is not None and not self.waiter.done():  # start + body: the answer is out
            self.waiter.set_result(None)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def make_app(**overrides: Any) -> tuple[ServerApp, bytes]:
    model = mlp_model(n_numeric=30, hidden=(64, 32), name="tabular", version="1")
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(model)
        f.flush()
        settings = ServerSettings(
            model_uri=f.name, grpc_port=0, log_level="warning", prediction_logging_enabled=True,
            s3_endpoint="in-memory:1", prediction_log_flush_rows=10**9, prediction_log_max_buffer_rows=10**9,
            prediction_log_flush_interval_s=3600, **overrides,
        )  # fmt: skip
        app = ServerApp(settings, store=MemoryStore())
    rt = app.runtime
    rec = random_records(1, seed=7)[0]
    row = [rec[f] for f in rt.feature_names]
    body = orjson.dumps(
        {"inputs": [{"name": rt.inputs[0].name, "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    )
    return app, body


async def floor_app(scope: Any, receive: Any, send: Any) -> None:
    """bench/server/floor_app.py's no-op."""
    more = True
    while more:
        more = bool((await receive()).get("more_body", False))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(FLOOR_ANSWER)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": FLOOR_ANSWER})


def uvicorn_config(app: Any) -> Config:
    """The server's uvicorn settings that matter here, for an in-memory connection."""
    config = Config(
        app, lifespan="off", access_log=False, server_header=False, proxy_headers=False, log_level="warning"
    )
    config.load()
    return config


def uvicorn_runner(app: Any, raw: bytes, n: int) -> Callable[[], None]:
    """n keep-alive requests through uvicorn's httptools protocol on uvloop, in memory."""
    config = uvicorn_config(app)

    def go() -> None:
        loop = uvloop.new_event_loop()
        try:
            proto = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
            transport = MemoryTransport()
            proto.connection_made(transport)  # type: ignore[arg-type]

            async def drive() -> None:
                for _ in range(n):
                    transport.writes = 0
                    transport.waiter = loop.create_future()
                    proto.data_received(raw)
                    await transport.waiter
                    if not transport.last.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"unexpected answer: {transport.last[:200]!r}")

            loop.run_until_complete(drive())
            proto.connection_lost(None)
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.close()

    return go


def lane_runner(app: ServerApp, raw: bytes, n: int, fixed: bool = False) -> Callable[[], None]:
    """n keep-alive requests through the server's HTTP fast lane (kubeloop_server.protocol: uvicorn's
    httptools protocol answering in the parser's callback), in memory, one per loop turn, as a lone client's
    requests arrive; ``fixed``: the lane's floor, its answer a fixed reply (the parsing, response write and
    bookkeeping of the lane, nothing of ours)."""
    reply = (200, FLOOR_ANSWER, b"application/json", None)
    go = lane_wave_runner(app, raw, n, 1)

    def go_fixed() -> None:
        with contextlib_stack(((app, "infer_now", lambda *_a: reply),)):
            go()

    return go_fixed if fixed else go


def lane_wave_runner(app: ServerApp, raw: bytes, n: int, wave: int) -> Callable[[], None]:
    """n requests through the fast lane, ``wave`` connections at once: each sends one request in the same
    loop turn (as when their bytes arrive together), then the turn ends (a merging lane runs them then;
    without merging, the answers held for the end of the turn leave then)."""
    config = uvicorn_config(app.app)
    protocol = make_protocol(app)

    def go() -> None:
        loop = uvloop.new_event_loop()
        try:
            conns = []
            for _ in range(wave):
                proto = protocol(config, ServerState(), {}, _loop=loop)
                transport = MemoryTransport()
                proto.connection_made(transport)  # type: ignore[arg-type]
                conns.append((proto, transport))
            waves = n // wave
            failed: list[bytes] = []

            def send_wave() -> None:
                for proto, transport in conns:
                    transport.writes = 0
                    proto.data_received(raw)
                loop.call_soon(check_wave)  # queued after whatever the wave queued (a merging lane's run)

            def check_wave() -> None:
                nonlocal waves
                for _, transport in conns:
                    if transport.writes != 1 or not transport.last.startswith(b"HTTP/1.1 200"):
                        failed.append(transport.last[:200])
                waves -= 1
                if waves and not failed:
                    loop.call_soon(send_wave)  # the next turn
                else:
                    loop.stop()

            loop.call_soon(send_wave)
            loop.run_forever()
            if failed:
                raise RuntimeError(f"unexpected answer: {failed[0]!r}")
            for proto, _ in conns:
                proto.connection_lost(None)
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.close()

    return go


def asgi_runner(app: Any, body: bytes, n: int, wave: int = 1, predictor: Any = None) -> Callable[[], None]:
    """n requests straight into an ASGI app (no HTTP parsing), on uvloop; ``wave`` > 1: that many at once
    (each its own task, started in the same loop turn, as uvicorn starts the requests whose bytes arrived
    together)."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/tabular/infer",
        "headers": headers,
        "query_string": b"",
    }
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_msg: Any) -> None:
        return None

    async def go() -> None:
        if predictor is not None:  # a batcher's task lives in the loop that serves the requests
            await predictor.start()
            try:
                await requests()
            finally:
                await predictor.stop()
        else:
            await requests()

    async def requests() -> None:
        if wave == 1:
            for _ in range(n):
                await app(dict(scope), receive, send)
            return
        for _ in range(n // wave):
            await asyncio.gather(*(app(dict(scope), receive, send) for _ in range(wave)))

    return lambda: uvloop.run(go())


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each variant once per round, the order rotating every round (the machine's load drifts); the best
    (lowest) figure of each."""
    names = list(variants)
    best_of: dict[str, float] = {}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = variants[name]()
            best_of[name] = min(t, best_of.get(name, t))
    return best_of


def rest_breakdown(app: ServerApp, body: bytes, n: int, rounds: int) -> list[tuple[str, float]]:
    rt, dp, m = app.runtime, app.dataplane, app.metrics
    predlog = app.predlog
    assert predlog is not None
    raw = (
        b"POST /v2/models/tabular/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    doc = orjson.loads(body)
    req = codec.decode_infer_request(rt, doc, 10_000)
    outs = rt.run(req.feeds)
    answer = codec.encode_infer_response(rt, req, outs)

    def timed(fn: Callable[[], None], *patches: tuple[Any, str, Any]) -> Callable[[], float]:
        """One timed run of n requests; the prediction log's Parquet flush of its rows added per row."""

        def go() -> float:
            with contextlib_stack(patches):
                predlog.flush()
                t0 = time.thread_time()
                fn()
                t = time.thread_time() - t0
                rows = predlog._buffered
                t0 = time.thread_time()
                predlog.flush()
                t += (time.thread_time() - t0) if rows else 0.0
            return t / n * 1e6

        return go

    run_stub = lambda *_a: list(outs)  # noqa: E731
    ablations: dict[str, tuple[tuple[Any, str, Any], ...]] = {
        "session.run (ONNX Runtime, 1 row)": ((rt, "_run", run_stub),),
        # the common body is read from its bytes in C (codec.PlainBodyReader): no orjson parse, no codec checks
        "read + validate (C reader: body bytes to tensor)": (
            (codec.PlainBodyReader, "read", lambda _s, _b: req),
        ),
        "encode + orjson.dumps": ((rest, "encode_infer_response", lambda *_a: answer),),
        "request metrics (count, latency)": ((m, "observe_request", lambda *_a: None),),
        "run metrics (batch size, run time)": ((m, "observe_run", lambda *_a: None),),
        "prediction metrics (class counts)": ((m, "observe_classes", lambda *_a: None),),
        "prediction log: record + Parquet flush per row": ((dp, "predlog", None),),
    }
    everything = tuple(p for ps in ablations.values() for p in ps)
    ours = asgi_runner(app.app, body, n)
    uv_ours = uvicorn_runner(app.app, raw, n)
    lane = lane_runner(app, raw, n)
    variants = {
        "lane_floor": timed(lane_runner(app, raw, n, fixed=True)),
        "lane": timed(lane),
        "lane_stubbed": timed(lane, *everything),
        **{f"lane {k}": timed(lane, *ps) for k, ps in ablations.items()},
        "uv_floor": timed(uvicorn_runner(floor_app, raw, n)),
        "uv_ours": timed(uv_ours),
        "uv_stubbed": timed(uv_ours, *everything),
        **{f"uv {k}": timed(uv_ours, *ps) for k, ps in ablations.items()},
        "asgi_floor": timed(asgi_runner(floor_app, body, n)),
        "whole": timed(ours),
        "stubbed": timed(ours, *everything),
        **{k: timed(ours, *ps) for k, ps in ablations.items()},
    }
    b = interleaved(variants, rounds)
    out: list[tuple[str, float]] = [
        ("HTTP fast lane (what the server runs): uvicorn's httptools protocol, answered without ASGI", b["lane"]),
        ("  its floor: the lane answering a fixed reply (HTTP parse, response write, bookkeeping)",
         b["lane_floor"]),
        ("  = ours over the lane's floor, shared out below (each step: whole - whole without it)",
         b["lane"] - b["lane_floor"]),
        *((f"    {k}", b["lane"] - b[f"lane {k}"]) for k in ablations),
        ("    payload parse, data-plane calls, reply (all the above stubbed)",
         b["lane_stubbed"] - b["lane_floor"]),
        ("    steps' sum vs the whole: interleaving",
         b["lane"] - b["lane_stubbed"] - sum(b["lane"] - b[f"lane {k}"] for k in ablations)),
        ("uvicorn + floor app (HTTP parse, ASGI, response write): the floor", b["uv_floor"]),
        ("uvicorn + our app (logging + metrics on, Parquet flush per row)", b["uv_ours"]),
        ("  = ours over the floor, shared out below (each step: whole - whole without it)",
         b["uv_ours"] - b["uv_floor"]),
        *((f"    {k}", b["uv_ours"] - b[f"uv {k}"]) for k in ablations),
        ("    routing, body read, data-plane calls, response (all the above stubbed)",
         b["uv_stubbed"] - b["uv_floor"]),
        ("    steps' sum vs the whole: interleaving",
         b["uv_ours"] - b["uv_stubbed"] - sum(b["uv_ours"] - b[f"uv {k}"] for k in ablations)),
        ("ASGI only: floor app", b["asgi_floor"]),
        ("ASGI only: our app, whole request", b["whole"]),
        ("  = ours over the floor app, shared out below (each step: whole - whole without it)",
         b["whole"] - b["asgi_floor"]),
    ]  # fmt: skip
    out += [(f"    {k}", b["whole"] - b[k]) for k in ablations]
    out.append(
        (
            "    routing, body read, data-plane calls, response (all the above stubbed)",
            b["stubbed"] - b["asgi_floor"],
        )
    )
    out.append(
        (
            "    steps' sum vs the whole: interleaving",
            b["whole"] - b["stubbed"] - sum(b["whole"] - b[k] for k in ablations),
        )
    )
    return out


@contextmanager
def contextlib_stack(patches: tuple[tuple[Any, str, Any], ...]) -> Iterator[None]:
    if not patches:
        yield
        return
    (obj, name, value), rest_ = patches[0], patches[1:]
    with patched(obj, name, value), contextlib_stack(rest_):
        yield


def concurrency_breakdown(n: int, rounds: int) -> list[tuple[str, float]]:
    """Whole ASGI requests in waves of 1 and 16 at once, one session.run per request (batching off, the
    default) against the adaptive batcher merging what is already waiting (max_latency_ms 0)."""
    apps = {
        "batching off": make_app(),
        "batching on, max_latency_ms 0": make_app(batching_enabled=True, max_latency_ms=0.0),
    }
    variants: dict[str, Callable[[], float]] = {}
    for label, (app, body) in apps.items():
        predlog = app.predlog
        assert predlog is not None
        raw = (
            b"POST /v2/models/tabular/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        ) + body
        for wave in (1, 16):
            fn = lane_wave_runner(app, raw, n, wave)

            def go_lane(fn: Callable[[], None] = fn, predlog: PredictionLogger = predlog) -> float:
                predlog.flush()
                t0 = time.thread_time()
                fn()
                predlog.flush()
                return (time.thread_time() - t0) / n * 1e6

            variants[f"fast lane (HTTP parse included), {label}, {wave} connections at once"] = go_lane
        for wave in (1, 16):
            fn = asgi_runner(app.app, body, n, wave, app.predictor)

            def go(fn: Callable[[], None] = fn, predlog: PredictionLogger = predlog) -> float:
                predlog.flush()
                t0 = time.thread_time()
                fn()
                predlog.flush()
                return (time.thread_time() - t0) / n * 1e6

            variants[f"ASGI only, {label}, {wave} at once"] = go
    b = interleaved(variants, rounds)
    return [(k, v) for k, v in b.items()]


def grpc_breakdown(app: ServerApp, body: bytes, n: int, rounds: int) -> list[tuple[str, float]]:
    rt, m, dp = app.runtime, app.metrics, app.dataplane
    predlog = app.predlog
    assert predlog is not None
    servicer = grpcapi.InferenceServicer(dp, m)
    data = orjson.loads(body)["inputs"][0]["data"]
    msg = pb.ModelInferRequest(model_name="tabular")
    msg.inputs.add(name=rt.inputs[0].name, datatype="FP32", shape=[1, len(data)])
    msg.raw_input_contents.append(np.asarray(data, dtype="<f4").tobytes())
    wire = msg.SerializeToString()
    req = grpcapi.decode_grpc_request(rt, msg, 10_000, True)
    outs = rt.run(req.feeds)
    reply = grpcapi.encode_grpc_response(rt, req, outs)
    parse = pb.ModelInferRequest.FromString

    def calls() -> None:  # as the wire runs a call at once: parse, answer (serialised), then observe
        call = servicer.model_infer
        after = dp.observe_deferred
        for _ in range(n):
            call(parse(wire))
            after()

    def timed(*patches: tuple[Any, str, Any]) -> Callable[[], float]:
        def go() -> float:
            with contextlib_stack(patches):
                predlog.flush()
                t0 = time.thread_time()
                calls()
                t = time.thread_time() - t0
                t0 = time.thread_time()
                predlog.flush()
                t += time.thread_time() - t0
            return t / n * 1e6

        return go

    def alone(fn: Callable[[], object]) -> Callable[[], float]:
        def go() -> float:
            t0 = time.thread_time()
            for _ in range(n):
                fn()
            return (time.thread_time() - t0) / n * 1e6

        return go

    ablations: dict[str, tuple[tuple[Any, str, Any], ...]] = {
        "session.run (ONNX Runtime, 1 row)": ((rt, "_run", lambda *_a: list(outs)),),
        "decode + validate": ((grpcapi, "decode_grpc_request", lambda *_a: req),),
        "encode (response message)": ((grpcapi, "encode_grpc_response", lambda *_a: reply),),
        "run + prediction metrics": (
            (m, "observe_run", lambda *_a: None),
            (m, "observe_classes", lambda *_a: None),
        ),
        "prediction log: record + Parquet flush per row": ((dp, "predlog", None),),
    }
    variants = {
        "whole": timed(),
        **{k: timed(*ps) for k, ps in ablations.items()},
        "parse": alone(lambda: parse(wire)),
        "serialise": alone(reply.SerializeToString),
    }
    b = interleaved(variants, rounds)
    out = [("gRPC ModelInfer in-process (parse, servicer, serialise; logging + metrics on)", b["whole"])]
    out += [(f"    {k}", b["whole"] - b[k]) for k in ablations]
    out.append(("    protobuf parse of the request (alone)", b["parse"]))
    out.append(("    protobuf serialise of the answer (alone)", b["serialise"]))
    return out


def breakdown(n: int, rounds: int, cprofile: bool = False) -> list[tuple[str, list[tuple[str, float]]]]:
    """Every section's figures (make bench-server prints the same), titled."""
    app, body = make_app()
    uvloop.run(app.predictor.start())
    assert app.predlog is not None
    app.predlog.start()  # as the lifespan does: Parquet's first-use costs paid now
    gc.collect()
    gc.freeze()  # as the lifespan does
    try:
        sections = [
            ("REST POST /v2/models/tabular/infer, 1 row, 30 features:", rest_breakdown(app, body, n, rounds)),
            (
                "Whole requests (logging + metrics on), one at a time or 16 in one loop turn:",
                concurrency_breakdown(n, rounds),
            ),
            ("gRPC ModelInfer, batch 1, raw_input_contents:", grpc_breakdown(app, body, n, rounds)),
        ]
        if cprofile:
            prof = cProfile.Profile()
            prof.enable()
            asgi_runner(app.app, body, n)()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    finally:
        app.predlog.stop(30)
        gc.unfreeze()
    return sections


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="requests per timed run")
    p.add_argument("--rounds", type=int, default=9, help="timed runs per figure (the best is kept)")
    p.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions (REST, ASGI)")
    a = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; CPU us per request, best of {a.rounds} x {a.n}")
    for title, rows in breakdown(a.n, a.rounds, a.cprofile):
        print(title)
        for k, v in rows:
            print(f"  {k:78s} {v:7.1f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

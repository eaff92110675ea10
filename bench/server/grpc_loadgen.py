"""A small closed-loop gRPC load generator for OIP ``ModelInfer`` (grpc.aio; bench code, never shipped).

Every server under test gets the very same generator and the very same request bytes: the request is
serialised once and sent through a raw unary-unary method (no per-call serialisation on the client), and
each answer is parsed and checked by ``check(answer_bytes)`` (warm-up included). Bounded by a request
count and a duration; loopback targets only.

    python bench/server/grpc_loadgen.py --target 127.0.0.1:8081 --model tabular --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class GrpcLoadResult:
    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # status code name -> count
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checked: int = 0
    wrong: int = 0
    wrong_sample: bytes = b""

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def _loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


async def run_grpc_load(
    target: str,
    request: bytes,
    *,
    concurrency: int = 16,
    channels: int = 2,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    max_requests: int = 1_000_000,
    check: Callable[[bytes], bool] | None = None,
) -> GrpcLoadResult:
    """``concurrency`` callers over ``channels`` HTTP/2 connections, each sending its next call when the
    last one answered; stops at ``duration_s`` after ``warmup_s`` (not counted) or ``max_requests``."""
    if not _loopback(target):
        raise ValueError(f"refusing to load a non-loopback target {target!r}")
    chans = [aio.insecure_channel(target) for _ in range(channels)]
    calls = [ch.unary_unary(METHOD) for ch in chans]  # bytes in, bytes out
    result = GrpcLoadResult()
    loop = asyncio.get_running_loop()
    t_measure = loop.time() + warmup_s
    t_end = t_measure + duration_s
    perf = time.perf_counter

    async def caller(w: int) -> None:
        call = calls[w % len(calls)]
        while True:
            now = loop.time()
            if now >= t_end or result.requests >= max_requests:
                return
            t0 = perf()
            try:
                answer: Any = await call(request, timeout=30)
            except grpc.RpcError as e:
                code = e.code().name if isinstance(e, aio.AioRpcError) else "ERROR"
                if now >= t_measure:
                    result.requests += 1
                    result.errors[code] = result.errors.get(code, 0) + 1
                await asyncio.sleep(0.005)
                continue
            if now >= t_measure:
                result.latencies.append(perf() - t0)
                result.requests += 1
                result.ok += 1
            if check is not None:
                result.checked += 1
                if not check(answer):
                    result.wrong += 1
                    result.wrong_sample = result.wrong_sample or bytes(answer[:300])

    try:
        for ch in chans:
            await asyncio.wait_for(ch.channel_ready(), 30)
        await asyncio.gather(*(caller(w) for w in range(concurrency)))
    finally:
        for ch in chans:
            await ch.close()
    result.seconds = max(1e-9, min(loop.time(), t_end) - t_measure)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="host:port (loopback only)")
    p.add_argument("--request", required=True, help="a serialised ModelInferRequest, @file")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args(argv)
    if not _loopback(a.target):
        sys.exit("refusing to load a non-loopback target")
    with open(a.request.removeprefix("@"), "rb") as fh:
        request = fh.read()
    res = asyncio.run(run_grpc_load(a.target, request, concurrency=a.concurrency, duration_s=a.duration))
    print(
        json.dumps(
            {"rps": round(res.rps, 1), "ok": res.ok, "errors": res.errors, "p50_ms": res.percentile(50) * 1e3}
        )
    )


if __name__ == "__main__":
    main()

"""A small, efficient closed-loop HTTP/1.1 load generator (asyncio + uvloop, raw keep-alive sockets).

Used by the benchmark (``make bench-server``; bench code, so it lives in bench/ and never ships in the
server's wheel) and, for its raw HTTP/1.1 client, by the server's graceful-shutdown test. Every run is
bounded by a request count and a duration; it only talks to loopback addresses.

    python bench/server/loadgen.py --url http://127.0.0.1:8080/v2/models/m/infer --body @req.json \
        --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse


class HttpConnection:
    """One keep-alive connection; ``request()`` sends and reads one response (Content-Length bodies)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    def send(self, raw: bytes) -> None:
        assert self.writer is not None
        self.writer.write(raw)

    async def drain(self) -> None:
        assert self.writer is not None
        await self.writer.drain()

    async def read_response(self) -> tuple[int, bytes]:
        reader = self.reader
        assert reader is not None
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        close = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
            elif k == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this load generator")
        body = await reader.readexactly(length) if length > 0 else b""
        if close:
            await self.close()
        return status, body

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        self.send(raw)
        return await self.read_response()


def build_request(
    method: str,
    url: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    u = urlparse(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}"]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0  # transport errors (connection reset, ...)
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checked: int = 0  # 2xx responses whose body went through ``check``
    wrong: int = 0  # ... and that ``check`` refused
    wrong_sample: bytes = b""  # the first refused body

    @property
    def failed(self) -> int:
        """Requests that got no 2xx answer: transport errors and non-2xx statuses."""
        return self.errors + self.requests - self.ok

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": self.statuses,
            "checked": self.checked,
            "wrong": self.wrong,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50) * 1e3, 3),
            "p90_ms": round(self.percentile(90) * 1e3, 3),
            "p99_ms": round(self.percentile(99) * 1e3, 3),
        }


async def run_load(
    url: str,
    body: bytes | None,
    *,
    method: str = "POST",
    concurrency: int = 16,
    duration_s: float = 10.0,
    max_requests: int = 1_000_000,
    warmup_s: float = 1.0,
    bodies: Sequence[bytes] = (),
    check: Callable[[int, bytes], bool] | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> LoadResult:
    """Closed loop: ``concurrency`` connections each send the next request when the last answered.

    Stops at ``duration_s`` (after ``warmup_s`` not counted) or ``max_requests``, whichever comes first.
    With ``bodies``, connection ``w`` sends ``bodies[(w + k) % len(bodies)]`` as its k-th request (``body``
    is then ignored). ``check(index, response_body)`` (index into ``bodies``, 0 without them) judges every
    2xx answer, warm-up included; refusals are counted in ``wrong``.
    """
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    raws = [build_request(method, url, b, content_type, headers) for b in bodies] or [
        build_request(method, url, body, content_type, headers)
    ]
    result = LoadResult()
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s
    perf = time.perf_counter
    lat = result.latencies
    statuses = result.statuses

    async def worker(w: int) -> None:
        conn = HttpConnection(host, port)
        k = w
        try:
            while True:
                now = loop.time()
                if now >= t_end or result.requests >= max_requests:
                    return
                i = k % len(raws)
                k += 1
                t0 = perf()
                try:
                    status, answer = await conn.request(raws[i])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if now >= t_measure:
                        result.errors += 1
                    await conn.close()
                    await asyncio.sleep(0.01)
                    continue
                if now >= t_measure:
                    lat.append(perf() - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                    result.requests += 1
                if check is not None and 200 <= status < 300:
                    result.checked += 1
                    if not check(i, answer):
                        result.wrong += 1
                        result.wrong_sample = result.wrong_sample or answer[:500]
        finally:
            await conn.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result.seconds = max(1e-9, min(loop.time(), t_end) - t_measure)
    return result


def _event_loop_policy() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--method", default="POST")
    p.add_argument("--body", default=None, help="request body, or @file")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    a = p.parse_args(argv)
    host = urlparse(a.url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        sys.exit("refusing to load a non-loopback address")
    body: bytes | None = None
    if a.body is not None:
        body = open(a.body[1:], "rb").read() if a.body.startswith("@") else a.body.encode()  # noqa: SIM115
    _event_loop_policy()
    res = asyncio.run(
        run_load(
            a.url,
            body,
            method=a.method,
            concurrency=a.concurrency,
            duration_s=a.duration,
            max_requests=a.max_requests,
            warmup_s=a.warmup,
        )
    )
    print(json.dumps(res.summary()))


if __name__ == "__main__":
    main()

"""Driving the app as uvicorn does (HTTP/1.1, ASGI ``spec_version`` 2.3) in unit tests: streams really are
open at the same time, and the client's hang-up arrives as a server delivers it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI


class Idle(httpx.AsyncByteStream):
    """An upstream body (a watch, a followed log) that sends nothing until it is closed."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""


async def call(app: FastAPI, path: str, gone: asyncio.Event, headers: dict[str, str]) -> list[dict[str, Any]]:
    """One GET as uvicorn serves it; the client hangs up once ``gone`` is set. Returns what was sent."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {**headers, "host": "test"}.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    first = [True]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent

"""The kubelet's log endpoint, so that ``kubectl logs`` works: ``GET /containerLogs/{ns}/{pod}/{container}``.

HTTPS on the node's InternalIP (the bridge address) and kubelet port; clients must present a
certificate from the cluster CA, and only the API server's kubelet-client identity (or
system:masters) may read. Supports ``follow``, ``tailLines``, ``limitBytes`` and ``previous``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("nodeagent.logs")

# (namespace, pod, container, previous) -> (log file, is the container still running?) or None
Lookup = Callable[[str, str, str, bool], "tuple[Path, Callable[[], bool]] | None"]
ALLOWED_USERS = {"kube-apiserver-kubelet-client", "system:kube-apiserver"}


def _subject(cert: Any) -> tuple[str, set[str]]:
    cn, orgs = "", set()
    for rdn in (cert or {}).get("subject", ()) or ():
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
            elif key == "organizationName":
                orgs.add(str(value))
    return cn, orgs


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


async def _respond(writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str = "text/plain") -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(code, "Error")
    head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


class LogServer:
    def __init__(self, host: str, port: int, cert: Path, key: Path, ca: Path, lookup: Lookup) -> None:
        self.host, self.port, self.lookup = host, port, lookup
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self.ctx, reuse_address=True
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(self._serve(reader, writer), timeout=None)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except Exception:
            log.exception("log request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await asyncio.wait_for(reader.readline(), 10)
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line in (b"\r\n", b"\n", b""):
                break
        parts = request.decode(errors="replace").split()
        if len(parts) < 2 or parts[0] != "GET":
            await _respond(writer, 400, b"bad request\n")
            return
        url = urllib.parse.urlsplit(parts[1])
        if url.path == "/healthz":
            await _respond(writer, 200, b"ok")
            return
        sslobj = writer.get_extra_info("ssl_object")
        cn, orgs = _subject(sslobj.getpeercert() if sslobj else None)
        if cn not in ALLOWED_USERS and "system:masters" not in orgs:
            await _respond(
                writer, 403, f"Forbidden (user={cn}, verb=get, resource=nodes, subresource=log)\n".encode()
            )
            return
        segs = [urllib.parse.unquote(s) for s in url.path.strip("/").split("/")]
        if len(segs) != 4 or segs[0] != "containerLogs":
            await _respond(writer, 404, b"404 page not found\n")
            return
        _, ns, pod, container = segs
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        previous = q.get("previous", "false").lower() == "true"
        found = self.lookup(ns, pod, container, previous)
        if found is None:
            msg = (
                f'previous terminated container "{container}" in pod "{pod}" not found'
                if previous
                else f'container "{container}" in pod "{pod}" is not available'
            )
            await _respond(writer, 404, msg.encode() + b"\n")
            return
        path, running = found
        follow = q.get("follow", "false").lower() == "true" and not previous
        tail = int(q.get("tailLines", "-1") or -1)
        limit = int(q.get("limitBytes", "0") or 0)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        offset = len(data)
        data = _tail(data, tail)
        if limit:
            data = data[:limit]
        if not follow:
            await _respond(writer, 200, data)
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        sent = 0

        async def chunk(b: bytes) -> None:
            nonlocal sent
            if limit:
                b = b[: max(0, limit - sent)]
            if b:
                writer.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
                await writer.drain()
                sent += len(b)

        await chunk(data)
        idle_after_exit = 0
        while not (limit and sent >= limit):
            await asyncio.sleep(0.2)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    more = fh.read()
            except FileNotFoundError:
                break
            if more:
                offset += len(more)
                await chunk(more)
                continue
            if not running():
                idle_after_exit += 1
                if idle_after_exit > 2:
                    break
        writer.write(b"0\r\n\r\n")
        await writer.drain()

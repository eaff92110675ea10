"""gRPC's unary calls over HTTP/2 (RFC 9113, gRPC's PROTOCOL-HTTP2), on asyncio, in the server's event loop.

Why not grpcio's server: it spent ~280 us of CPU per call here answering a fixed message, 5-6x what
ONNX Runtime and our codec spend on a one-row request, and more than the whole REST request costs. OIP's
service is unary only, so the wire is small: HTTP/2 framing, HPACK (the ``hpack`` package decodes; answers
use literal fields that never touch the dynamic table, so they are built once), flow control both ways,
and gRPC's length-prefixed messages and status trailers. A call whose method can run at once runs inside
``data_received`` and is answered in the same write as every other call that arrived in that read.

What a client gets:
* any conforming HTTP/2 gRPC client (grpcio, grpc-go, grpc-java ...), prior knowledge (h2c), no TLS (the
  pod network or a mesh carries TLS);
* request messages compressed with gzip or deflate, or not; answers uncompressed (gRPC allows it);
* ``grpc-timeout`` honoured for calls that wait (DEADLINE_EXCEEDED); a client's RST_STREAM cancels;
* a bounded server: 10 s for a new connection to send HTTP/2's preface, frames up to ``MAX_FRAME``, header blocks up to ``MAX_HEADER_LIST``, ``MAX_STREAMS``
  open streams per connection (more are refused with REFUSED_STREAM), messages up to
  ``max_message_bytes`` and unfinished requests up to ``max_held_bytes`` per connection (both
  RESOURCE_EXHAUSTED), flow-control windows enforced; an answer waiting for window is reset with
  CANCEL once none of the connection's answers has moved for ``stall_timeout_s`` (30 s), a connection
  with no call and no frame for ``idle_timeout_s`` (300 s) gets GOAWAY(NO_ERROR) and is closed, past
  ``max_connections`` (4,096) a new connection gets GOAWAY(ENHANCE_YOUR_CALM, "too many connections")
  and is closed, and a close that cannot flush (the client reads nothing) ends in an abort after
  ``close_grace_s`` (10 s);
* a malformed call gets a gRPC status naming the problem; a broken connection gets GOAWAY with the
  HTTP/2 error code and is closed; an HTTP/1 request on this port gets a 400 saying it is gRPC's port;
* graceful stop as grpc-core does it: GOAWAY(2^31-1) and a PING; once the PING's answer is back, every
  call the client sent before it has arrived, and the final GOAWAY names the last one; calls in flight
  finish, then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote

import hpack

from kubeloop_server.errors import (
    GRPC_CODES,
    InvalidInputError,
    PayloadTooLargeError,
    UnimplementedError,
    error_status,
)

log = logging.getLogger("kubeloop_server.grpc")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20
# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM: Final = 11
# settings identifiers
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 1, 2, 3, 4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 5, 6

MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME: Final = 1 << 20  # what we accept (advertised); the peer's own limit governs what we send
MAX_HEADER_LIST: Final = 64 * 1024
MAX_STREAMS: Final = 1024
MAX_CONTINUATIONS: Final = 16  # frames one header block may span
MAX_SETTINGS: Final = 32  # entries one SETTINGS frame may carry
MAX_STATUS_MESSAGE: Final = 1024  # bytes of grpc-message, percent-encoded: the trailers stay one small frame
NEW_MODE, TRAILERS_MODE, CLOSED_MODE = 0, 1, 2  # what a header block is to its stream
STREAM_WINDOW: Final = 1 << 20  # each call may send this much before waiting for a WINDOW_UPDATE
CONN_WINDOW: Final = 16 << 20
DRAIN_PING: Final = b"kl-drain"
ENCODINGS: Final = (b"identity", b"gzip", b"deflate")
HTTP1_REFUSAL: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 52\r\n\r\n"
    b"this port serves gRPC (HTTP/2 with prior knowledge)\n"
)


class H2ConnectionError(Exception):
    """An HTTP/2 connection error: GOAWAY with its code, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the fixed parts of answers: HPACK literals that never touch the dynamic table ----------------------------


def _hpack_int(n: int, prefix_bits: int, first: int = 0) -> bytes:
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([first | n])
    out = bytearray([first | top])
    n -= top
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One header as 'literal without indexing, new name' (RFC 7541 6.2.2): stateless, so reusable."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


STATUS_200: Final = b"\x88"  # static table entry 8, ':status: 200'
RESPONSE_HEADERS: Final = STATUS_200 + literal(b"content-type", b"application/grpc")
OK_TRAILERS: Final = literal(b"grpc-status", b"0")


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (len(payload) << 8 | kind).to_bytes(4, "big") + bytes([flags]) + sid.to_bytes(4, "big") + payload


def status_block(code: str, message: str) -> bytes:
    # grpc-message is percent-encoded UTF-8 (PROTOCOL-HTTP2); bounded so a header block fits one frame
    msg = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    if len(msg) > MAX_STATUS_MESSAGE:
        cut = msg[: MAX_STATUS_MESSAGE - 3]
        escape = cut.rfind("%", len(cut) - 2)  # never cut a %XX escape in two
        msg = (cut if escape < 0 else cut[:escape]) + "..."
    return literal(b"grpc-status", str(GRPC_CODES[code]).encode()) + literal(b"grpc-message", msg.encode())


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout``: up to 8 digits and a unit (H M S m u n); None when absent or malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    scale = {72: 3600.0, 77: 60.0, 83: 1.0, 109: 1e-3, 117: 1e-6, 110: 1e-9}.get(value[-1])
    return None if scale is None else int(value[:-1]) * scale


def unframe(body: bytes, encoding: bytes, limit: int) -> bytes:
    """The one length-prefixed message of a unary call (decompressed when flagged)."""
    if len(body) < 5:
        raise InvalidInputError(
            "the call carries no request message"
            if not body
            else "the request message's 5-byte prefix is cut short",
        )
    compressed = body[0]
    length = int.from_bytes(body[1:5], "big")
    if compressed > 1:
        raise InvalidInputError(f"message prefix flag {compressed} is neither 0 nor 1")
    if length != len(body) - 5:
        raise InvalidInputError(
            f"the message prefix says {length} bytes but {len(body) - 5} follow; a unary call carries one message",
        )
    msg = body[5:]
    if not compressed:
        return msg
    if encoding in (b"", b"identity"):
        raise InvalidInputError("the message is flagged compressed but grpc-encoding names none")
    d = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
    try:
        out = d.decompress(msg, limit + 1)
    except zlib.error as e:
        raise InvalidInputError(f"the {encoding.decode()} message does not decompress: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLargeError(f"the decompressed message exceeds the limit of {limit} bytes")
    if not d.eof:
        raise InvalidInputError(f"the {encoding.decode()} message is cut short")
    return out


# --- methods -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Method:
    """One unary RPC: ``parse`` reads the request message; ``run`` answers it at once, or ``run_async``
    (when set) answers it in a task. Both return the serialised reply or raise; errors become statuses
    through :func:`kubeloop_server.errors.error_status`. ``after`` runs once an at-once answer is written."""

    name: str
    parse: Callable[[bytes], Any]
    run: Callable[[Any], bytes]
    run_async: Callable[[Any], Awaitable[bytes]] | None = None
    after: Callable[[], None] | None = None


# (method name, gRPC code name, seconds) for every call answered with a status or cancelled by its client
Observe = Callable[[str, str, float], None]


class _Stream:
    __slots__ = (
        "chunks",
        "ctype",
        "encoding",
        "ended",
        "method",
        "path",
        "pending",
        "recv_window",
        "send_window",
        "sid",
        "since",
        "size",
        "t0",
        "task",
        "timeout",
    )  # fmt: skip

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.method = b""
        self.path = b""
        self.ctype = b""
        self.encoding = b""
        self.timeout: float | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.recv_window = STREAM_WINDOW
        self.send_window = send_window
        self.ended = False  # the client's half is closed
        self.task: asyncio.Task[None] | None = None
        self.pending: bytes | memoryview = b""  # answer bytes not yet sent (waiting for flow-control window)
        self.t0 = 0.0
        self.since = 0.0  # while blocked: when its answer last moved (loop time)


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcWire) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()  # made by the loop's server, in the loop
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # less than a frame header
        self.parts: list[bytes] = []  # a frame being gathered: its parts, their length, the frame's length
        self.have = 0
        self.need = 0
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.streams: dict[int, _Stream] = {}  # open: receiving, running, or sending
        self.blocked: dict[int, _Stream] = {}  # streams whose answer waits for flow-control window
        self.last_sid = 0
        # a header block awaiting CONTINUATION: its stream, mode, first flags, parts and their size
        self.cont: tuple[_Stream, int, int, list[bytes], int] | None = None
        self.peer_window = 65535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = 16384
        self.send_window = 65535  # connection-level, ours to spend
        self.recv_window = CONN_WINDOW  # ours, granted at connection_made
        self.held = 0  # bytes of requests still arriving (streams not ended), bounded by max_held_bytes
        self.sent = 0  # DATA bytes sent: whether a connection's answers move at all (_send_pending)
        self.out: list[bytes] = []
        self.goaway_last: int | None = None  # set by the final GOAWAY: streams above it are refused
        self.preface_timer: asyncio.TimerHandle | None = None
        self.watch: asyncio.TimerHandle | None = None  # the stall and idle checks (_watch)
        self.reads = 0  # data_received calls, to tell an idle connection from a busy one
        self.seen_reads = 0
        self.quiet_since = 0.0
        self.draining = False
        self.closed = False
        self.lost = False  # connection_lost has run

    # --- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of asyncio's
        if len(self.server.conns) >= self.server.max_connections:
            # each connection holds a socket and buffers: past the limit, a new one is told why and closed
            log.warning("refusing a gRPC connection: %d are open, the most allowed", len(self.server.conns))
            goaway = (0).to_bytes(4, "big") + ENHANCE_YOUR_CALM.to_bytes(4, "big") + b"too many connections"
            self.transport.write(frame(SETTINGS, 0, 0) + frame(GOAWAY, 0, 0, goaway))
            self._close_transport()
            self.closed = True
            return
        self.server.conns.add(self)
        # a connection that never says it is HTTP/2 holds a socket for nothing: closed after a while
        self.preface_timer = self.loop.call_later(self.server.preface_timeout_s, self._close)
        if self.server.stopping:
            self.begin_drain()

    def _send_settings(self) -> None:
        settings = b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big")
            for k, v in (
                (S_ENABLE_PUSH, 0),
                (S_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
                (S_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (S_MAX_FRAME_SIZE, MAX_FRAME),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            )
        )
        self.out.append(frame(SETTINGS, 0, 0, settings))
        self.out.append(frame(WINDOW_UPDATE, 0, 0, (CONN_WINDOW - 65535).to_bytes(4, "big")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = True
        if self.preface_timer is not None:
            self.preface_timer.cancel()
        if self.watch is not None:
            self.watch.cancel()
        self.server.conns.discard(self)
        for s in self.streams.values():
            if s.task is not None:
                s.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:  # a client that does not read its answers stops being read
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # after GOAWAY with an error, or the HTTP/1 refusal: nothing more is read
            return
        self.reads += 1
        if self.need:  # a frame longer than one read: gather its parts and join them once
            self.parts.append(data)
            self.have += len(data)
            if self.have < self.need:
                return
            buf = b"".join(self.parts)
            self.parts, self.have, self.need = [], 0, 0
        else:
            buf = self.buf + data if self.buf else data
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(buf):
                    self._refuse_http1()
                else:
                    self.buf = buf
                return
            if not buf.startswith(PREFACE):
                self._refuse_http1()
                return
            buf = buf[len(PREFACE) :]
            self.preface = True
            if self.preface_timer is not None:
                self.preface_timer.cancel()
                self.preface_timer = None
            self.quiet_since = self.loop.time()
            self.watch = self.loop.call_later(self.server.watch_interval_s, self._watch)
            self._send_settings()  # after the client's preface, so an HTTP/1 client reads only its 400
        ready: list[_Stream] = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 9:
                length = int.from_bytes(buf[pos : pos + 3], "big")
                if length > MAX_FRAME:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, f"a {length}-byte frame exceeds {MAX_FRAME}")
                end = pos + 9 + length
                if end > n:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = buf[pos + 9 : end]
                pos = end
                if self.cont is not None and kind != CONTINUATION:
                    raise H2ConnectionError(
                        PROTOCOL_ERROR, "a header block was interrupted before END_HEADERS"
                    )
                if kind == DATA:
                    self._data(sid, flags, payload, ready)
                elif kind == HEADERS:
                    self._headers(sid, flags, payload, ready)
                else:
                    self._control(kind, sid, flags, payload, ready)
        except H2ConnectionError as e:
            self._fail(e.code, str(e))
            return
        rest = buf[pos:]
        if len(rest) >= 9:  # the next frame's header is here, its payload not yet
            self.parts, self.have, self.need = [rest], len(rest), 9 + int.from_bytes(rest[:3], "big")
            self.buf = b""
        else:
            self.buf = rest
        after: list[Callable[[], None]] = []
        for s in ready:
            self._dispatch(s, after)
        self._flush()
        for fn in after:
            fn()

    # --- frames --------------------------------------------------------------------------------------------

    def _data(self, sid: int, flags: int, payload: bytes, ready: list[_Stream]) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        if self.recv_window < CONN_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, (CONN_WINDOW - self.recv_window).to_bytes(4, "big")))
            self.recv_window = CONN_WINDOW
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA padding longer than the frame")
            payload = payload[1 : size - payload[0]]
        s = self.streams.get(sid)
        if s is None or s.ended:
            if sid > self.last_sid:
                raise H2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if s is not None:  # the client's half was already closed
                self._reset(s, STREAM_CLOSED)
            return  # a stream we already answered or refused: its data is discarded
        s.recv_window -= size
        if s.recv_window < 0:
            self._reset(s, FLOW_CONTROL_ERROR)
            return
        if payload:
            s.chunks.append(payload)
            s.size += len(payload)
            self.held += len(payload)
            if s.size > self.server.max_message_bytes + 5:
                self._answer(s, None, "RESOURCE_EXHAUSTED",
                             f"the request message exceeds the limit of {self.server.max_message_bytes} bytes")  # fmt: skip
                return
            if self.held > self.server.max_held_bytes:
                self._answer(s, None, "RESOURCE_EXHAUSTED",
                             f"this connection holds {self.held} bytes of requests still arriving, over its limit of "
                             f"{self.server.max_held_bytes}; send fewer large requests at once")  # fmt: skip
                return
        if flags & END_STREAM:
            self._end(s, ready)
        elif s.recv_window < STREAM_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, sid, (STREAM_WINDOW - s.recv_window).to_bytes(4, "big")))
            s.recv_window = STREAM_WINDOW

    def _headers(self, sid: int, flags: int, payload: bytes, ready: list[_Stream]) -> None:
        if sid == 0 or sid % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on stream {sid}, not a client stream")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload or payload[0] >= end:
                raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
            end -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
            if start > end:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
        s = self.streams.get(sid)
        if s is None:
            if sid <= self.last_sid:  # a stream we closed: its late header block is decoded and dropped
                s, mode = _Stream(sid, 0), CLOSED_MODE
            else:
                self.last_sid = sid
                s, mode = _Stream(sid, self.peer_window), NEW_MODE
                s.t0 = time.perf_counter()
        elif s.ended or s.task is not None:
            mode = CLOSED_MODE  # the client already ended this stream: decoded, then the stream is reset
        else:
            mode = TRAILERS_MODE  # a request's trailers: decoded (HPACK's state), otherwise ignored
        block = payload[start:end]
        if len(block) > MAX_HEADER_LIST:
            raise H2ConnectionError(COMPRESSION_ERROR, f"a header block over {MAX_HEADER_LIST} bytes")
        if flags & END_HEADERS:
            self._header_block(s, mode, flags, block, ready)
        else:
            self.cont = (s, mode, flags, [block], len(block))

    def _continuation(self, sid: int, flags: int, payload: bytes, ready: list[_Stream]) -> None:
        if self.cont is None:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block before it")
        s, mode, first_flags, parts, size = self.cont
        if s.sid != sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION on another stream than its HEADERS")
        size += len(payload)
        if size > MAX_HEADER_LIST:
            raise H2ConnectionError(COMPRESSION_ERROR, f"a header block over {MAX_HEADER_LIST} bytes")
        if len(parts) >= MAX_CONTINUATIONS or (not payload and not flags & END_HEADERS):
            # a flood of tiny or empty CONTINUATION frames costs us per frame and moves the block nowhere
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a header block in over {MAX_CONTINUATIONS} frames")
        parts.append(payload)
        if flags & END_HEADERS:
            self.cont = None
            self._header_block(s, mode, first_flags, b"".join(parts), ready)
        else:
            self.cont = (s, mode, first_flags, parts, size)

    def _header_block(self, s: _Stream, mode: int, flags: int, block: bytes, ready: list[_Stream]) -> None:
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as e:
            raise H2ConnectionError(COMPRESSION_ERROR, f"header block does not decode: {e}") from None
        if mode == CLOSED_MODE:
            if self.streams.get(s.sid) is s:
                self._reset(s, STREAM_CLOSED)
            return
        if mode == TRAILERS_MODE:
            if not flags & END_STREAM:
                raise H2ConnectionError(PROTOCOL_ERROR, "request trailers without END_STREAM")
            self._end(s, ready)
            return
        if self.goaway_last is not None or len(self.streams) >= MAX_STREAMS:
            self.out.append(frame(RST_STREAM, 0, s.sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        for name, value in headers:
            if name == b":path":
                s.path = value
            elif name == b":method":
                s.method = value
            elif name == b"content-type":
                s.ctype = value
            elif name == b"grpc-encoding":
                s.encoding = value
            elif name == b"grpc-timeout":
                s.timeout = parse_timeout(value)
        self.streams[s.sid] = s
        if flags & END_STREAM:
            self._end(s, ready)

    def _control(self, kind: int, sid: int, flags: int, payload: bytes, ready: list[_Stream]) -> None:
        n = len(payload)
        if kind == CONTINUATION:
            self._continuation(sid, flags, payload, ready)
        elif kind == SETTINGS:
            if sid != 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
                if n:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
                return
            if n % 6:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
            if n > 6 * MAX_SETTINGS:
                raise H2ConnectionError(ENHANCE_YOUR_CALM, f"a SETTINGS frame of over {MAX_SETTINGS} entries")
            window = self.peer_window
            for i in range(0, n, 6):
                key = int.from_bytes(payload[i : i + 2], "big")
                value = int.from_bytes(payload[i + 2 : i + 6], "big")
                if key == S_INITIAL_WINDOW_SIZE:
                    if value > MAX_WINDOW:
                        raise H2ConnectionError(
                            FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"
                        )
                    window = value
                elif key == S_MAX_FRAME_SIZE:
                    if not 16384 <= value <= 16777215:
                        raise H2ConnectionError(
                            PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range"
                        )
                    self.peer_max_frame = value
                elif key == S_ENABLE_PUSH and value > 1:
                    raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH neither 0 nor 1")
            if window != self.peer_window:  # applies to every open stream's window (RFC 9113 6.9.2)
                delta = window - self.peer_window
                self.peer_window = window
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise H2ConnectionError(FLOW_CONTROL_ERROR, f"stream {st.sid}'s window above 2^31-1")
            self.out.append(frame(SETTINGS, ACK, 0))
            self._send_pending()
        elif kind == PING:
            if sid != 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if n != 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "PING payload not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
            elif payload == DRAIN_PING and self.draining and self.goaway_last is None:
                self._final_goaway()
        elif kind == WINDOW_UPDATE:
            if n != 4:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload not 4 bytes")
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if sid == 0:
                if inc == 0:
                    raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                self.send_window += inc
                if self.send_window > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            else:
                s = self.streams.get(sid)
                if s is None:
                    if sid > self.last_sid:
                        raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
                    return
                if inc == 0:
                    self._reset(s, PROTOCOL_ERROR)
                    return
                s.send_window += inc
                if s.send_window > MAX_WINDOW:
                    self._reset(s, FLOW_CONTROL_ERROR)
                elif s.sid in self.blocked:
                    self._send_stream(s)
                return
            self._send_pending()
        elif kind == RST_STREAM:
            if sid == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if n != 4:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload not 4 bytes")
            if sid > self.last_sid:
                raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            s = self.streams.get(sid)
            if s is not None:
                self._forget(s)
                if s in ready:
                    ready.remove(s)
                if s.task is not None:
                    s.task.cancel()
                if not s.pending:  # one with an answer on its way was observed when answered
                    self.server.observe(self.server.label(s.path), "CANCELLED", time.perf_counter() - s.t0)
        elif kind == PRIORITY:
            if n != 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload not 5 bytes")
        elif kind == GOAWAY:
            if sid != 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        elif kind == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other frame types are extensions: ignored (RFC 9113 5.5)

    # --- calls ---------------------------------------------------------------------------------------------

    def _dispatch(self, s: _Stream, after: list[Callable[[], None]]) -> None:
        if self.streams.get(s.sid) is not s:
            return  # reset or answered in the meantime
        try:
            method, msg = self._prepare(s)
            if method.run_async is not None:
                s.task = self.loop.create_task(self._run(s, method.run_async(msg)))
                return
            reply = method.run(msg)
        except Exception as e:
            _, code, message = error_status(e)
            self._answer(s, None, code, message)
            return
        self._answer(s, reply, "OK", "")
        if method.after is not None and method.after not in after:
            after.append(method.after)

    def _prepare(self, s: _Stream) -> tuple[Method, Any]:
        if s.method != b"POST":
            raise UnimplementedError(f"gRPC calls are POST requests, not {s.method.decode(errors='replace')}")
        if not s.ctype.startswith(b"application/grpc"):
            raise InvalidInputError(
                f"content-type {s.ctype.decode(errors='replace')!r} is not application/grpc",
            )
        method = self.server.methods.get(s.path)
        if method is None:
            raise UnimplementedError(f"unknown method {s.path.decode(errors='replace')}")
        if s.encoding not in ENCODINGS and s.encoding:
            raise UnimplementedError(
                f"grpc-encoding {s.encoding.decode(errors='replace')!r} is not supported; use identity, gzip or deflate",
            )
        body = s.chunks[0] if len(s.chunks) == 1 else b"".join(s.chunks)
        s.chunks = []
        raw = unframe(body, s.encoding, self.server.max_message_bytes)
        try:
            return method, method.parse(raw)
        except Exception as e:  # protobuf's DecodeError and kin
            raise InvalidInputError(
                f"the request is not a valid {method.name} request message: {e}"
            ) from None

    async def _run(self, s: _Stream, work: Awaitable[bytes]) -> None:
        try:
            if s.timeout is not None:
                reply = await asyncio.wait_for(work, s.timeout)
            else:
                reply = await work
        except asyncio.CancelledError:
            return  # the client reset the stream, or the connection is gone
        except TimeoutError:
            self._answer(s, None, "DEADLINE_EXCEEDED", f"the call's deadline of {s.timeout:g} s passed")
        except Exception as e:
            _, code, message = error_status(e)
            self._answer(s, None, code, message)
        else:
            self._answer(s, reply, "OK", "")
        finally:
            s.task = None
        self._flush()

    def _answer(self, s: _Stream, reply: bytes | None, code: str, message: str) -> None:
        if self.closed or self.streams.get(s.sid) is not s:
            return
        self.server.observe(self.server.label(s.path), code, time.perf_counter() - s.t0)
        sid = s.sid
        if reply is None:
            block = RESPONSE_HEADERS + status_block(code, message)
            self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            self._close_stream(s)
            return
        self.out.append(frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS))
        s.pending = len(reply).to_bytes(5, "big") + reply
        self._send_stream(s)

    def _send_stream(self, s: _Stream) -> bool:
        """Send what the windows allow of a stream's pending answer; True once all of it (and the trailers)
        is out."""
        moved = False
        while s.pending:
            room = min(s.send_window, self.send_window, self.peer_max_frame)
            if room <= 0:
                if moved or s.sid not in self.blocked:  # the stall clock (_watch) runs from here
                    s.since = self.loop.time()
                self.blocked[s.sid] = s
                return False
            moved = True
            body = s.pending
            if len(body) <= room:  # the usual case: all of it at once, no copy
                chunk, s.pending = bytes(body), b""
            else:  # a view, so the rest is not copied for every frame
                view = memoryview(body)
                chunk, s.pending = bytes(view[:room]), view[room:]
            s.send_window -= len(chunk)
            self.send_window -= len(chunk)
            self.sent += len(chunk)
            self.out.append(frame(DATA, 0, s.sid, chunk))
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, s.sid, OK_TRAILERS))
        self._close_stream(s)
        return True

    def _send_pending(self) -> None:
        if not self.blocked:
            return
        sent = self.sent
        for s in list(self.blocked.values()):
            if not self._send_stream(s) and self.send_window <= 0:
                break
        if self.sent != sent and self.blocked:
            # the client is taking answers: those queued behind the connection's window are not stalled
            now = self.loop.time()
            for s in self.blocked.values():
                s.since = now

    def _end(self, s: _Stream, ready: list[_Stream]) -> None:
        """The client's half of the stream is done: the request is complete."""
        s.ended = True
        self.held -= s.size  # no longer arriving
        ready.append(s)

    def _forget(self, s: _Stream) -> None:
        self.streams.pop(s.sid, None)
        self.blocked.pop(s.sid, None)
        if not s.ended:  # its bytes no longer count against the connection's holding
            self.held -= s.size
            s.size = 0
        if (
            self.goaway_last is not None and not self.streams
        ):  # drained: close once this read's writes are out
            self.loop.call_soon(self._close)

    def _close_stream(self, s: _Stream) -> None:
        if not s.ended:  # answered before the client finished sending (RFC 9113 8.1)
            self.out.append(frame(RST_STREAM, 0, s.sid, NO_ERROR.to_bytes(4, "big")))
        self._forget(s)

    def _reset(self, s: _Stream, code: int) -> None:
        self._forget(s)
        if s.task is not None:
            s.task.cancel()
        self.out.append(frame(RST_STREAM, 0, s.sid, code.to_bytes(4, "big")))

    # --- connection ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Every few seconds: reset streams whose answers the client has not let move for stall_timeout_s
        (each holds its answer's bytes), and close a connection with no stream and no frame for
        idle_timeout_s (it holds a socket and its buffers)."""
        self.watch = None
        if self.closed:
            return
        server, now = self.server, self.loop.time()
        for s in [s for s in self.blocked.values() if now - s.since >= server.stall_timeout_s]:
            log.info(
                "resetting gRPC stream %d: its answer (%d bytes left) waited %.0f s for the client's "
                "flow-control window",
                s.sid,
                len(s.pending),
                now - s.since,
            )
            self._reset(s, CANCEL)
        if self.streams or self.reads != self.seen_reads:
            self.seen_reads, self.quiet_since = self.reads, now
        elif now - self.quiet_since >= server.idle_timeout_s:
            log.info("closing a gRPC connection idle for %.0f s", now - self.quiet_since)
            self.goaway_last = self.last_sid
            last = self.last_sid.to_bytes(4, "big")
            self.out.append(frame(GOAWAY, 0, 0, last + NO_ERROR.to_bytes(4, "big") + b"idle"))
            self._close()
            return
        self._flush()
        self.watch = self.loop.call_later(server.watch_interval_s, self._watch)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            out, self.out = self.out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def begin_drain(self) -> None:
        """Stop taking calls: GOAWAY(2^31-1) and a PING; the PING's answer brings the final GOAWAY."""
        if self.draining or self.closed:
            return
        self.draining = True
        if not self.preface:
            self._close()
            return
        self.out.append(frame(GOAWAY, 0, 0, MAX_WINDOW.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        self.out.append(frame(PING, 0, 0, DRAIN_PING))
        self._flush()

    def _final_goaway(self) -> None:
        self.goaway_last = self.last_sid
        self.out.append(frame(GOAWAY, 0, 0, self.last_sid.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        self._flush()
        if not self.streams:
            self._close()

    def _close(self) -> None:
        self._flush()
        if not self.closed:
            self._close_transport()

    def _close_transport(self) -> None:
        """Close once what is written has gone out; a client that does not read it (its window or its
        socket full) would hold the connection open for ever, so it is aborted after close_grace_s."""
        if self.transport is not None:
            self.transport.close()
            self.loop.call_later(self.server.close_grace_s, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.lost and self.transport is not None:
            log.info("aborting a gRPC connection whose client did not read what was left to send")
            self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _fail(self, code: int, message: str) -> None:
        log.info("closing a gRPC connection: HTTP/2 error %d: %s", code, message)
        self.out.append(
            frame(
                GOAWAY,
                0,
                0,
                self.last_sid.to_bytes(4, "big") + code.to_bytes(4, "big") + message.encode()[:256],
            )
        )
        self._close()
        self.closed = True

    def _refuse_http1(self) -> None:
        if self.transport is not None:
            self.transport.write(HTTP1_REFUSAL)
            self._close_transport()
        self.closed = True


class GrpcWire:
    """The listener: one :class:`_Connection` per client connection, calls routed by path to ``methods``."""

    def __init__(self, methods: dict[str, Method], observe: Observe, max_message_bytes: int) -> None:
        self.methods = {k.encode(): v for k, v in methods.items()}
        self.observe = observe
        self.max_message_bytes = max_message_bytes
        # What one connection may hold of unfinished requests: a few full-size messages at once, not one per
        # stream (1,024 streams of max_message_bytes each would be gigabytes).
        self.max_held_bytes = max(4 * (max_message_bytes + 5), 32 << 20)
        self.conns: set[_Connection] = set()
        self.preface_timeout_s = 10.0
        # What misbehaving clients may hold: answers the client will not take, idle connections, sockets.
        self.stall_timeout_s = 30.0
        self.idle_timeout_s = 300.0
        self.max_connections = 4096
        self.close_grace_s = 10.0
        self.server: asyncio.Server | None = None
        self.stopping = False
        self.port = 0

    @property
    def watch_interval_s(self) -> float:
        return max(0.05, min(self.stall_timeout_s, self.idle_timeout_s) / 4)

    def label(self, path: bytes) -> str:
        """A bounded metrics label: the method's name, or "unknown" for a path we do not serve."""
        m = self.methods.get(path)
        return "unknown" if m is None else m.name

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    def begin_stop(self) -> None:
        """Stop accepting connections and calls; calls in flight go on."""
        if self.stopping:
            return
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            c.begin_drain()

    async def stop(self, grace_s: float) -> None:
        """:meth:`begin_stop`, then wait up to ``grace_s`` for connections to finish; abort the rest."""
        self.begin_stop()
        deadline = time.monotonic() + grace_s
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            c.abort()
        if self.server is not None:
            await self.server.wait_closed()

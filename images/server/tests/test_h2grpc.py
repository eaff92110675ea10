"""The server's own gRPC wire (kubeloop_server.h2grpc), driven below grpcio: an independent HTTP/2 client
(python-hyper's h2) for flow control and malformed calls, raw frames for broken connections, and a fuzz
of generated frame sequences. Every refusal names its problem; nothing crashes the server, and a normal
grpcio call works after each case."""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeloop_server.oip import grpc_predict_v2_pb2 as pb
from kubeloop_testing.onnx_models import random_records

ROW = np.array([random_records(1, seed=21)[0][f"f{i}"] for i in range(30)], dtype=np.float32)
INFER = b"/inference.GRPCInferenceService/ModelInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def infer_message(rows: np.ndarray) -> bytes:
    req = pb.ModelInferRequest(model_name="iris-like", id="w")
    req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    req.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    return bytes(req.SerializeToString())


def framed(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


class H2Client:
    """A blocking HTTP/2 client on h2: one call at a time, flow control honoured both ways."""

    def __init__(self, port: int, **local_settings: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        if local_settings:
            self.conn.update_settings(
                {getattr(h2.settings.SettingCodes, k): v for k, v in local_settings.items()}
            )
        self.acknowledge = True
        self._send()

    def _send(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def _events(self) -> list[Any]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return list(self.conn.receive_data(data))

    def call(
        self, body: bytes | None, path: bytes = INFER, headers: tuple[tuple[bytes, bytes], ...] = (),
        method: bytes = b"POST", content_type: bytes = b"application/grpc", trailers: bool = False,
    ) -> tuple[dict[bytes, bytes], bytes]:  # fmt: skip
        """(response headers and trailers merged, DATA bytes) of one call."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"test"),
             (b"content-type", content_type), (b"te", b"trailers"), *headers],
            end_stream=body is None,
        )  # fmt: skip
        self._send()
        got: dict[bytes, bytes] = {}
        data = bytearray()
        pending = body or b""
        sent_all = body is None
        while True:
            while not sent_all:
                room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if room <= 0 and pending:
                    break
                chunk, pending = pending[:room], pending[room:]
                self.conn.send_data(sid, chunk, end_stream=not pending and not trailers)
                sent_all = not pending
                if sent_all and trailers:  # the request ends with a header block, not with its DATA
                    self.conn.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
            self._send()
            for ev in self._events():
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got.update(dict(ev.headers))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    if self.acknowledge:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self._send()
                    return got, bytes(data)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    got[b"rst"] = str(int(ev.error_code)).encode()
                    return got, bytes(data)
            self._send()

    def open_call(self) -> int:
        """A ModelInfer stream with its request headers sent, for tests that drive the rest themselves."""
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER), (b":authority", b"test"),
             (b"content-type", b"application/grpc"), (b"te", b"trailers")],
        )  # fmt: skip
        return sid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(make_grpc: Callable[..., tuple[Any, Any]], packed_clf: bytes) -> Callable[..., tuple[int, Any]]:
    """``wire(**settings)`` -> (the gRPC port, a grpcio stub) of an in-process server on ``packed_clf``."""

    def make(**overrides: Any) -> tuple[int, Any]:
        client, stub = make_grpc(packed_clf, **overrides)
        return int(client.server_app.settings.grpc_port), stub

    return make


def expected_probabilities(reference: Any, model: bytes, rows: np.ndarray) -> np.ndarray:
    return np.asarray(reference(model).session.run(None, {"input": rows})[0], dtype=np.float32)


def answer_outputs(data: bytes) -> dict[str, np.ndarray]:
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == len(data) - 5
    res = pb.ModelInferResponse.FromString(data[5:])
    dt = {"FP32": np.float32, "INT64": np.int64}
    return {
        o.name: np.frombuffer(raw, dtype=dt[o.datatype]).reshape(list(o.shape))
        for o, raw in zip(res.outputs, res.raw_output_contents, strict=True)
    }


def test_flow_control_both_ways_with_an_independent_http2_client(wire, reference, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A 1.2 MB request crosses the server's 1 MiB stream window; its ~100 kB answer goes out against the
    client's 1,000-byte window, frame by frame, as the client acknowledges."""
    port, _ = wire(max_request_rows=20_000, max_body_bytes=4 << 20)
    rows = np.tile(ROW, (10_000, 1)) + np.arange(10_000, dtype=np.float32)[:, None] / 1e4
    c = H2Client(port, INITIAL_WINDOW_SIZE=1000)
    try:
        head, data = c.call(framed(infer_message(rows)))
    finally:
        c.close()
    assert head[b":status"] == b"200", head
    assert head[b"grpc-status"] == b"0", head
    out = answer_outputs(data)
    np.testing.assert_allclose(
        out["probabilities"], expected_probabilities(reference, packed_clf, rows), rtol=1e-5
    )


def test_compressed_requests_from_grpcio(wire, reference, packed_clf) -> None:  # type: ignore[no-untyped-def]
    port, _ = wire()
    want = expected_probabilities(reference, packed_clf, ROW[None, :])
    req = pb.ModelInferRequest.FromString(infer_message(ROW[None, :]))
    for algo in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        with grpc.insecure_channel(f"127.0.0.1:{port}", compression=algo) as ch:
            call = ch.unary_unary(
                INFER.decode(), pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
            )
            res = call(req, timeout=10)
        got = np.frombuffer(res.raw_output_contents[0], "<f4")
        np.testing.assert_allclose(got, want[0], rtol=1e-6)


MSG = infer_message(ROW[None, :])
BOMB = gzip.compress(b"\0" * (8 << 20))
# (case, call kwargs, gRPC status, words the message must hold)
CALLS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown method", {"body": framed(MSG), "path": b"/inference.GRPCInferenceService/Nope"}, 12, "unknown method /inference.GRPCInferenceService/Nope"),
    ("unknown service", {"body": framed(MSG), "path": b"/x.Y/ModelInfer"}, 12, "unknown method /x.Y/ModelInfer"),
    ("GET", {"body": None, "method": b"GET"}, 12, "gRPC calls are POST requests, not GET"),
    ("content-type", {"body": framed(MSG), "content_type": b"application/json"}, 3, "content-type 'application/json' is not application/grpc"),
    ("encoding", {"body": framed(MSG, 1), "headers": ((b"grpc-encoding", b"br"),)}, 12, "grpc-encoding 'br' is not supported"),
    ("no message", {"body": None}, 3, "the call carries no request message"),
    ("short prefix", {"body": b"\0\0\0"}, 3, "5-byte prefix is cut short"),
    ("length too long", {"body": framed(MSG)[:-1]}, 3, f"prefix says {len(MSG)} bytes but {len(MSG) - 1} follow"),
    ("two messages", {"body": framed(MSG) + framed(MSG)}, 3, "a unary call carries one message"),
    ("flag 2", {"body": framed(MSG, 2)}, 3, "message prefix flag 2 is neither 0 nor 1"),
    ("compressed, no encoding", {"body": framed(MSG, 1)}, 3, "flagged compressed but grpc-encoding names none"),
    ("bad gzip", {"body": framed(b"not gzip", 1), "headers": ((b"grpc-encoding", b"gzip"),)}, 3, "the gzip message does not decompress"),
    ("cut gzip", {"body": framed(gzip.compress(MSG)[:-12], 1), "headers": ((b"grpc-encoding", b"gzip"),)}, 3, "the gzip message is cut short"),
    ("bad deflate", {"body": framed(b"\x78\x9c\xff\xff", 1), "headers": ((b"grpc-encoding", b"deflate"),)}, 3, "the deflate message does not decompress"),
    ("not protobuf", {"body": framed(b"\xff\xff\xff")}, 3, "not a valid ModelInfer request message"),
    ("zip bomb", {"body": framed(BOMB, 1), "headers": ((b"grpc-encoding", b"gzip"),)}, 8, "decompressed message exceeds the limit of 65536 bytes"),
    ("too big", {"body": framed(b"\0" * 70_000)}, 8, "the request message exceeds the limit of 65536 bytes"),
]  # fmt: skip


def test_malformed_calls_get_a_status_naming_the_problem(wire) -> None:  # type: ignore[no-untyped-def]
    port, stub = wire(max_body_bytes=65536)
    c = H2Client(port)
    try:
        for case, kwargs, code, words in CALLS:
            head, data = c.call(**kwargs)
            assert head.get(b"grpc-status") == str(code).encode(), (case, head)
            message = head.get(b"grpc-message", b"").decode()
            assert words in unquote(message), (case, unquote(message))
            assert data == b"", case
        ok, data = c.call(framed(MSG))  # the same connection still serves
        assert ok[b"grpc-status"] == b"0"
    finally:
        c.close()
    assert len(CALLS) >= 15
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def raw_frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def headers_block(path: bytes = INFER) -> bytes:
    return bytes(hpack.Encoder().encode(
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"t"),
         (b"content-type", b"application/grpc")]
    ))  # fmt: skip


def exchange(port: int, data: bytes, preface: bool = True) -> bytes:
    """Everything the server sends back before it closes (or goes quiet for 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall((PREFACE + raw_frame(4, 0, 0) if preface else b"") + data)
        out = bytearray()
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return bytes(out)


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while len(data) - pos >= 9:
        n = int.from_bytes(data[pos : pos + 3], "big")
        out.append(
            (
                data[pos + 3],
                data[pos + 4],
                int.from_bytes(data[pos + 5 : pos + 9], "big"),
                data[pos + 9 : pos + 9 + n],
            )
        )
        pos += 9 + n
    return out


def goaway_code(data: bytes) -> int | None:
    for kind, _, _, payload in frames(data):
        if kind == 7 and int.from_bytes(payload[4:8], "big") != 0:
            return int.from_bytes(payload[4:8], "big")
    return None


BROKEN: list[tuple[str, bytes, int]] = [
    ("DATA on stream 0", raw_frame(0, 1, 0, b"x"), 1),
    ("HEADERS on an even stream", raw_frame(1, 5, 2, headers_block()), 1),
    ("a frame over 1 MiB", (2 << 20).to_bytes(3, "big") + b"\0\0\0\0\0\0", 6),
    ("HPACK garbage", raw_frame(1, 5, 1, b"\xff\xff\xff\xff\xff\xff"), 9),
    ("CONTINUATION alone", raw_frame(9, 4, 1, headers_block()), 1),
    ("interrupted header block", raw_frame(1, 0, 1, headers_block()) + raw_frame(6, 0, 0, b"\0" * 8), 1),
    ("PING of 3 bytes", raw_frame(6, 0, 0, b"abc"), 6),
    ("SETTINGS on a stream", raw_frame(4, 0, 1, b""), 1),
    ("SETTINGS of 5 bytes", raw_frame(4, 0, 0, b"\0" * 5), 6),
    ("window above 2^31-1", raw_frame(4, 0, 0, b"\0\x04\x80\0\0\0"), 3),
    ("WINDOW_UPDATE of 0", raw_frame(8, 0, 0, b"\0\0\0\0"), 1),
    ("PUSH_PROMISE", raw_frame(5, 4, 1, b"\0\0\0\2"), 1),
    ("DATA on an idle stream", raw_frame(0, 1, 5, framed(MSG)), 1),
    ("padding past the frame", raw_frame(0, 8, 1, b"\x09abc"), 1),
    ("RST_STREAM on stream 0", raw_frame(3, 0, 0, b"\0\0\0\0"), 1),
    ("a CONTINUATION flood", raw_frame(1, 0, 1, headers_block()[:3]) + raw_frame(9, 0, 1, b"\0") * 40, 11),
    ("an empty CONTINUATION", raw_frame(1, 0, 1, headers_block()[:3]) + raw_frame(9, 0, 1), 11),
    ("a 64 KiB header block", raw_frame(1, 5, 1, b"\x20" * (64 * 1024 + 1)), 9),
    ("SETTINGS of 33 entries", raw_frame(4, 0, 0, b"\0\x03\0\0\0\x01" * 33), 11),
    (
        "a stream window pushed past 2^31-1",
        raw_frame(1, 4, 1, headers_block())
        + raw_frame(8, 0, 1, (2**31 - 1 - 65535).to_bytes(4, "big"))
        + raw_frame(4, 0, 0, b"\0\x04\0\x01\0\0"),
        3,
    ),
]


def test_broken_connections_get_goaway_with_the_error_and_the_server_goes_on(wire) -> None:  # type: ignore[no-untyped-def]
    port, stub = wire()
    for case, data, code in BROKEN:
        assert goaway_code(exchange(port, data)) == code, case
    refusal = exchange(port, b"POST /v2/models/x/infer HTTP/1.1\r\nhost: x\r\n\r\n", preface=False)
    assert refusal.startswith(b"HTTP/1.1 400 ")
    assert b"this port serves gRPC" in refusal
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_ping_gets_its_ack_and_the_stream_limit_is_enforced(wire) -> None:  # type: ignore[no-untyped-def]
    port, _ = wire()
    enc = hpack.Encoder()
    opened = b"".join(
        raw_frame(1, 4, 2 * i + 1, bytes(enc.encode([(b":method", b"POST"), (b":path", INFER)])))
        for i in range(1025)
    )  # 1,025 requests whose bodies never come: one more than the server's 1,024
    got = frames(exchange(port, raw_frame(6, 0, 0, b"12345678") + opened))
    assert (6, 1, 0, b"12345678") in got
    resets = [(sid, int.from_bytes(p, "big")) for kind, _, sid, p in got if kind == 3]
    assert resets == [(2049, 7)]  # REFUSED_STREAM for the 1,025th


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.integers(0, 11),
            st.integers(0, 255),
            st.sampled_from([0, 1, 2, 3, 5, 7]),
            # the lengths control frames must have (RST_STREAM, WINDOW_UPDATE 4; PRIORITY 5; SETTINGS 6;
            # PING 8), and any other
            st.one_of([st.binary(min_size=k, max_size=k) for k in (4, 5, 6, 8)] + [st.binary(max_size=40)]),
        ),
        max_size=8,
    ),
)
def test_generated_frame_sequences_never_break_the_server(
    grpc_wire_port: tuple[int, Any],
    caplog: pytest.LogCaptureFixture,
    sequence: list[tuple[int, int, int, bytes]],
) -> None:
    port, stub = grpc_wire_port
    with caplog.at_level(logging.WARNING):
        data = b"".join(
            raw_frame(kind, flags, sid, headers_block() if kind == 1 and payload[:1] == b"H" else payload)
            for kind, flags, sid, payload in sequence
        )
        exchange(port, data + raw_frame(0, 1, 1, framed(MSG)))
        bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


@pytest.fixture
def grpc_wire_port(wire: Callable[..., tuple[int, Any]]) -> tuple[int, Any]:
    """One server for the whole fuzz: a function-scoped fixture is made once per test, and hypothesis runs
    every example inside that one call (a fresh server per example would dominate its time)."""
    return wire()


def test_a_connection_holds_a_bounded_amount_of_unfinished_requests(wire) -> None:  # type: ignore[no-untyped-def]
    """33 streams each send 1 MiB and never finish: the one that takes the connection past 32 MiB is refused
    with RESOURCE_EXHAUSTED (each alone is within max_body_bytes); the others are left waiting."""
    port, stub = wire(max_body_bytes=2 << 20)
    enc = hpack.Encoder()
    chunk = b"\0" * (1 << 20)
    data = b"".join(
        raw_frame(1, 4, sid, bytes(enc.encode([(b":method", b"POST"), (b":path", INFER)])))
        + raw_frame(0, 0, sid, chunk)
        for sid in range(1, 67, 2)
    )
    dec = hpack.Decoder()
    statuses = {
        sid: dict(dec.decode(payload, raw=True)).get(b"grpc-status")
        for kind, _, sid, payload in frames(exchange(port, data))
        if kind == 1
    }
    assert statuses == {65: b"8"}, statuses
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_requests_ending_in_trailers_release_their_bytes(wire) -> None:  # type: ignore[no-untyped-def]
    """A request may end with a header block (trailers) instead of END_STREAM on its DATA: 40 calls of 1 MiB,
    one after another on one connection, hold nothing after they end (each alone fits; 40 at once would not)."""
    port, _ = wire(max_body_bytes=2 << 20)
    c = H2Client(port)
    try:
        for _ in range(40):
            head, _data = c.call(framed(b"\0" * (1 << 20)), trailers=True)
            assert head.get(b"grpc-status") == b"3", head  # zeros are no ModelInferRequest; not 8 (held)
    finally:
        c.close()


def test_a_long_status_message_stays_small(wire) -> None:  # type: ignore[no-untyped-def]
    """A status naming a 3,000-byte non-UTF-8 path is cut to 1 KiB, so the trailers fit the client's frame
    size (an h2 client refuses anything longer than 16,384 bytes)."""
    port, _ = wire()
    c = H2Client(port)
    try:
        head, _ = c.call(framed(MSG), path=b"/" + b"\xff" * 3000)
    finally:
        c.close()
    assert head[b"grpc-status"] == b"12"
    message = head[b"grpc-message"]
    assert len(message) <= 1024
    assert message.endswith(b"...")
    assert unquote(message.decode()).startswith("unknown method /\ufffd")


def test_a_connection_that_never_speaks_http2_is_closed(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A socket that sends nothing (or half a preface) is closed after the preface timeout; one that sends
    the preface in time stays open."""
    client, stub = make_grpc(packed_clf)
    app = client.server_app
    assert app.grpc is not None
    app.grpc.wire.preface_timeout_s = 0.3
    port = app.settings.grpc_port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as quiet,
        socket.create_connection(("127.0.0.1", port), timeout=5) as half,
        socket.create_connection(("127.0.0.1", port), timeout=5) as talker,
    ):
        half.sendall(PREFACE[:10])
        talker.sendall(PREFACE + raw_frame(4, 0, 0))
        t0 = time.monotonic()
        assert quiet.recv(100) == b""  # closed by the server
        assert half.recv(100) == b""
        assert time.monotonic() - t0 < 3
        talker.settimeout(1.0)
        assert frames(talker.recv(65536))[0][0] == 4  # its SETTINGS, and nothing closes it
        with pytest.raises(TimeoutError):
            talker.recv(100)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def _wire_of(
    make_grpc: Callable[..., tuple[Any, Any]], packed_clf: bytes, **overrides: Any
) -> tuple[Any, int, Any]:
    client, stub = make_grpc(packed_clf, **overrides)
    app = client.server_app
    assert app.grpc is not None
    return app.grpc.wire, int(app.settings.grpc_port), stub


def test_an_answer_the_client_never_lets_through_is_reset_and_its_bytes_freed(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A client that opens no flow-control window holds its answer on the server; after the stall timeout
    the stream is reset with CANCEL and nothing of it is kept. The connection and the server go on."""
    wire, port, stub = _wire_of(make_grpc, packed_clf)
    wire.stall_timeout_s = 0.3
    c = H2Client(port, INITIAL_WINDOW_SIZE=0)
    try:
        t0 = time.monotonic()
        head, data = c.call(framed(MSG))
        waited = time.monotonic() - t0
        assert head[b":status"] == b"200", head
        assert head[b"rst"] == b"8", head  # CANCEL
        assert data == b""  # not one byte could move
        assert 0.25 < waited < 3, waited
        mine = c.sock.getsockname()
        (conn,) = [k for k in wire.conns if k.transport.get_extra_info("peername") == mine]
        assert not conn.blocked
        assert not conn.streams
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        c._send()
        head, data = c.call(framed(MSG))  # the same connection, now with a window
        assert head[b"grpc-status"] == b"0", head
        assert answer_outputs(data)["probabilities"].shape == (1, 3)
    finally:
        c.close()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    wire, port, _ = _wire_of(make_grpc, packed_clf)
    wire.idle_timeout_s = 1.0
    wire.stall_timeout_s = 1.0
    busy = H2Client(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            idle.sendall(PREFACE + raw_frame(4, 0, 0))
            t0 = time.monotonic()
            for _ in range(25):  # 2.5 s of calls, 0.1 s apart, on one connection: past the idle timeout
                head, _ = busy.call(framed(MSG))
                assert head[b"grpc-status"] == b"0", head
                time.sleep(0.1)
            got = bytearray()
            while chunk := idle.recv(65536):
                got += chunk
            assert time.monotonic() - t0 < 10
            goaway = [payload for kind, _, _, payload in frames(bytes(got)) if kind == 7]
            assert goaway, frames(bytes(got))
            assert int.from_bytes(goaway[0][4:8], "big") == 0  # NO_ERROR: a graceful close
            assert goaway[0][8:] == b"idle"
        head, _ = busy.call(framed(MSG))  # the busy one stayed open throughout
        assert head[b"grpc-status"] == b"0", head
    finally:
        busy.close()


def test_connections_past_the_limit_are_told_why_and_closed(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    wire, port, stub = _wire_of(make_grpc, packed_clf)
    wire.max_connections = len(wire.conns) + 2
    first, second = H2Client(port), H2Client(port)
    try:
        refused = exchange(port, b"")
        assert goaway_code(refused) == 11, frames(refused)  # ENHANCE_YOUR_CALM
        assert b"too many connections" in refused
        assert len(wire.conns) == wire.max_connections
        for c in (first, second):  # those already open are served
            head, _ = c.call(framed(MSG))
            assert head[b"grpc-status"] == b"0", head
        first.close()
        deadline = time.monotonic() + 5
        while len(wire.conns) >= wire.max_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        third = H2Client(port)  # room again
        try:
            head, _ = third.call(framed(MSG))
            assert head[b"grpc-status"] == b"0", head
        finally:
            third.close()
    finally:
        first.close()
        second.close()
    wire.max_connections = 4096  # the stub's own connection may not be open yet
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_window_updates_that_move_nothing_do_not_keep_a_stalled_answer(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """Connection-level WINDOW_UPDATEs while the stream's own window stays 0: the answer does not move, so
    the stall clock is not restarted by them and the stream is still reset in time."""
    wire, port, _ = _wire_of(make_grpc, packed_clf)
    wire.stall_timeout_s = 0.3
    c = H2Client(port, INITIAL_WINDOW_SIZE=0)
    try:
        sid = c.open_call()
        c.conn.send_data(sid, framed(MSG), end_stream=True)
        c._send()
        c.sock.settimeout(0.1)
        t0 = time.monotonic()
        reset = None
        while reset is None and time.monotonic() - t0 < 3:
            c.conn.increment_flow_control_window(1000)  # the connection's window, not the stream's
            c._send()
            try:
                events = c._events()
            except TimeoutError:
                continue
            reset = next((e for e in events if isinstance(e, h2.events.StreamReset)), None)
        assert reset is not None
        assert reset.error_code == 8  # CANCEL
        assert time.monotonic() - t0 < 2
    finally:
        c.close()


def test_answers_queued_behind_a_slow_reader_are_not_taken_for_stalled(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """Two ~240 kB answers over a connection window the client opens 8 kB every 50 ms: the second waits
    behind the first for longer than the stall timeout, yet the client is reading, so both arrive whole."""
    wire, port, _ = _wire_of(make_grpc, packed_clf, max_request_rows=20_000, max_body_bytes=4 << 20)
    wire.stall_timeout_s = 0.5
    rows = np.tile(ROW, (20_000, 1))
    c = H2Client(port, INITIAL_WINDOW_SIZE=2**31 - 1)  # stream windows never limit; the connection's does
    data: dict[int, int] = {}
    ended: dict[int, dict[bytes, bytes]] = {}

    def take(events: list[Any]) -> None:
        for ev in events:
            assert not isinstance(ev, h2.events.StreamReset), f"stream {ev.stream_id} reset ({ev.error_code})"
            if isinstance(ev, h2.events.DataReceived):
                data[ev.stream_id] = data.get(ev.stream_id, 0) + len(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived):
                ended[ev.stream_id] = dict(ev.headers)

    try:
        sids = []
        for _ in range(2):
            sid = c.open_call()
            body = framed(infer_message(rows))
            while body:  # the request, against the server's windows
                room = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
                if room <= 0:
                    take(c._events())
                    continue
                c.conn.send_data(sid, body[:room], end_stream=len(body) <= room)
                body = body[room:]
                c._send()
            sids.append(sid)
        c.sock.settimeout(0.05)
        t0 = time.monotonic()
        while len(ended) < 2 and time.monotonic() - t0 < 30:
            c.conn.increment_flow_control_window(8192)  # the connection's window, a little at a time
            c._send()
            time.sleep(0.05)
            with contextlib.suppress(TimeoutError):
                take(c._events())
        took = time.monotonic() - t0
        assert [ended[sid][b"grpc-status"] for sid in sids] == [b"0", b"0"], ended
        assert data[sids[0]] == data[sids[1]] > 200_000, data
        assert took > 2 * wire.stall_timeout_s, took  # the second answer did wait that long
    finally:
        c.close()


def test_a_client_that_reads_nothing_cannot_keep_its_closed_connection(make_grpc, packed_clf) -> None:  # type: ignore[no-untyped-def]
    """A client that sends PINGs but never reads their answers fills the socket, so the server stops reading
    it, finds it idle and closes it; the close cannot flush, and the connection is aborted after the
    grace instead of holding a socket (and a place under max_connections) for ever."""
    wire, port, stub = _wire_of(make_grpc, packed_clf)
    wire.idle_timeout_s = 0.3
    wire.close_grace_s = 0.5
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.settimeout(3)
        pings = raw_frame(6, 0, 0, b"12345678") * 400_000  # 6.8 MB of PINGs: as much again of answers
        with contextlib.suppress(TimeoutError, ConnectionError):
            s.sendall(PREFACE + raw_frame(4, 0, 0) + pings)
        mine = s.getsockname()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not [k for k in list(wire.conns) if k.transport.get_extra_info("peername") == mine]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the connection is still open")
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live

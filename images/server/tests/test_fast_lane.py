"""The HTTP fast lane (kubeloop_server.protocol): OIP infer answered in uvicorn's parser callback, without
ASGI. It must answer exactly what the ASGI endpoint answers (bodies, statuses, errors, headers that matter),
keep HTTP/1.1's rules (keep-alive, Connection: close, HTTP/1.0, pipelined answers in request order, flow
control, the graceful shutdown) and leave every other request to ASGI.

The protocol runs here on a real event loop over an in-memory transport; test_process.py covers the real
server (sockets, SIGTERM drain) with the lane on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import uvloop
from kubeloop_server.protocol import InferProtocol, fast_routes, make_protocol
from kubeloop_server.rest import ServerApp
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

ROW = [0.5 + k / 10 for k in range(30)]


def infer_body(**extra: Any) -> bytes:
    doc = {"id": "req-1", "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    return orjson.dumps({**doc, **extra})


def post(path: bytes, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST " + path + b" HTTP/" + version, b"host: test", b"content-type: application/json"]
    head += [b"content-length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Transport:
    """The transport calls uvicorn's protocol makes; collects what is written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size() reports

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Response:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


def responses(data: bytes) -> list[Response]:
    """Every complete HTTP response in ``data``, in order (each has a Content-Length, as all of ours do)."""
    out: list[Response] = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers = {}
        for line in lines:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers[b"content-length"])
        out.append(Response(int(status_line.split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


class Conn:
    """One connection: the server's fast-lane protocol on a uvloop loop, fed raw bytes."""

    def __init__(self, app: ServerApp, protocol: type[InferProtocol] | None = None) -> None:
        self.loop = uvloop.new_event_loop()
        config = Config(app.app, lifespan="off", access_log=False, log_level="warning", server_header=False)
        config.load()
        self.state = ServerState()
        cls = protocol or make_protocol(app)
        self.proto = cls(config=config, server_state=self.state, app_state={}, _loop=self.loop)
        self.transport = Transport()
        self.proto.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.proto.data_received(data)

    def settle(self) -> None:
        """Let ASGI tasks (requests not in the lane) run to their end."""
        for _ in range(50):
            self.loop.run_until_complete(asyncio.sleep(0.001))
            if not self.state.tasks:
                return

    def answers(self) -> list[Response]:
        self.settle()
        return responses(bytes(self.transport.data))

    def close(self) -> None:
        self.proto.connection_lost(None)
        self.settle()
        self.loop.close()


@pytest.fixture
def lane(make_client: Callable[..., Any], packed_clf: bytes) -> Iterator[tuple[Any, Callable[[], Conn]]]:
    """(TestClient over the ASGI app, a factory of fast-lane connections to the same server)."""
    client = make_client(packed_clf, model_name="iris-like", model_version="3", max_body_bytes=4096)
    app: ServerApp = client.server_app
    assert app.fast_lane_refusal() is None
    conns: list[Conn] = []

    def connect() -> Conn:
        conns.append(Conn(app))
        return conns[-1]

    yield client, connect
    for c in conns:
        c.close()


INFER = b"/v2/models/iris-like/infer"
INFER_V = b"/v2/models/iris-like/versions/3/infer"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (INFER, infer_body(), ()),
        (INFER_V, infer_body(), ()),
        (INFER, infer_body(outputs=[{"name": "probabilities"}]), ()),
        (INFER, b'{"inputs": [', ()),  # not JSON
        (INFER, b"", ()),  # empty
        (INFER, b"[1, 2]", ()),  # JSON, not an object
        (
            INFER,
            orjson.dumps(
                {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [True] * 30}]}
            ),
            (),
        ),
        (
            INFER,
            orjson.dumps({"inputs": [{"name": "nope", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
            (),
        ),
        (INFER, infer_body(), (b"content-encoding: gzip",)),
        (INFER, infer_body(), (b"inference-header-content-length: 99999",)),
        (INFER, infer_body(), (b"inference-header-content-length: x1",)),
        (
            b"/v2/models/iris-like/versions/4/infer",
            infer_body(),
            (),
        ),  # another version: 404 by the data plane
    ],
)
def test_lane_answers_as_asgi_does(lane: Any, path: bytes, body: bytes, headers: tuple[bytes, ...]) -> None:
    client, connect = lane
    conn = connect()
    conn.send(post(path, body, *headers))
    (got,) = conn.answers()
    want = client.post(
        path.decode(),
        content=body,
        headers={"content-type": "application/json", **dict(h.decode().split(": ", 1) for h in headers)},
    )
    assert got.status == want.status_code
    assert got.body == want.content
    assert got.headers[b"content-type"] == want.headers["content-type"].encode()
    assert int(got.headers[b"content-length"]) == len(got.body)
    assert not conn.transport.closed  # keep-alive


def test_lane_takes_only_the_served_models_infer_paths(lane: Any) -> None:
    """The lane's routes are the served model's two infer paths, spelled exactly; everything else (a query
    string, a percent-escape, another model, GET) is ASGI's, which answers it as before."""
    client, connect = lane
    app: ServerApp = client.server_app
    assert set(fast_routes("iris-like", "3")) == {INFER, INFER_V}
    assert fast_routes("a b", "1") == {}  # needs escaping: ASGI only
    assert set(fast_routes("m", "v/1")) == {b"/v2/models/m/infer"}
    taken: list[bytes] = []
    real = app.infer_now

    def spy(*a: Any) -> Any:
        taken.append(a[3])
        return real(*a)

    app.infer_now = spy  # type: ignore[method-assign]
    conn = connect()
    conn.send(post(INFER + b"?x=1", infer_body()))
    conn.send(post(b"/v2/models/iris%2Dlike/infer", infer_body()))
    conn.send(post(b"/v2/models/other/infer", infer_body()))
    conn.send(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
    conn.settle()
    assert taken == []
    conn.send(post(INFER, infer_body()))
    got = conn.answers()
    assert [r.status for r in got] == [200, 200, 404, 200, 200]
    assert got[0].json() == got[1].json() == got[4].json()
    assert len(taken) == 1


def test_lane_request_metrics_match_asgi(lane: Any) -> None:
    client, connect = lane
    conn = connect()
    conn.send(post(INFER, infer_body()) + post(INFER, b"{"))
    assert [r.status for r in conn.answers()] == [200, 400]
    client.post(INFER.decode(), content=infer_body())  # the same, through ASGI
    client.post(INFER.decode(), content=b"{")
    text = client.get("/metrics").text
    endpoint = 'endpoint="/v2/models/{model_name}/infer",protocol="rest"'
    counts = {
        status: [
            ln
            for ln in text.splitlines()
            if ln.startswith("kubeloop_server_request_duration_seconds_count")
            and endpoint in ln
            and status in ln
        ]
        for status in ('status="200"', 'status="400"')
    }
    # one series per status, counting the lane's request and ASGI's alike
    assert all(len(v) == 1 and v[0].endswith(" 2.0") for v in counts.values()), counts


def test_pipelined_answers_keep_request_order(lane: Any) -> None:
    """A lane request, an ASGI request and a lane request in one read: answered in that order; the lane
    waits for the ASGI answer before taking the next request (uvicorn's pipeline queue)."""
    _, connect = lane
    conn = connect()
    conn.send(
        post(INFER, infer_body()) + b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n" + post(INFER, b"{")
    )
    got = conn.answers()
    assert [r.status for r in got] == [200, 200, 400]
    assert "outputs" in got[0].json()
    assert got[1].json() == {"ready": True}
    assert "not valid JSON" in got[2].json()["error"]


def test_body_over_the_limit_is_413_and_the_connection_lives(lane: Any) -> None:
    _, connect = lane
    conn = connect()
    big = b'{"inputs": [' + b" " * 5000 + b"]}"
    # sent in pieces, as a socket delivers a large body
    raw = post(INFER, big)
    for k in range(0, len(raw), 1000):
        conn.send(raw[k : k + 1000])
    conn.send(post(INFER, infer_body()))
    got = conn.answers()
    assert [r.status for r in got] == [413, 200]
    assert "exceeds the limit of 4096 bytes" in got[0].json()["error"]
    assert str(len(big)) in got[0].json()["error"]


def test_body_in_pieces(lane: Any) -> None:
    _, connect = lane
    conn = connect()
    raw = post(INFER, infer_body())
    for k in range(0, len(raw), 7):
        conn.send(raw[k : k + 7])
    (got,) = conn.answers()
    assert got.status == 200
    assert got.json()["id"] == "req-1"


@pytest.mark.parametrize(
    ("raw", "closes"),
    [
        (post(INFER, infer_body()), False),
        (post(INFER, infer_body(), b"connection: close"), True),
        (post(INFER, infer_body(), version=b"1.0"), True),
        (post(INFER, infer_body(), b"connection: keep-alive", version=b"1.0"), True),  # as uvicorn does
    ],
)
def test_keep_alive_rules(lane: Any, raw: bytes, closes: bool) -> None:
    """As uvicorn's own protocol decides for an ASGI request."""
    client, connect = lane
    conn = connect()
    conn.send(raw)
    (got,) = conn.answers()
    assert got.status == 200
    assert conn.transport.closed is closes
    assert (got.headers.get(b"connection") == b"close") is closes
    plain = Conn(client.server_app, HttpToolsProtocol)  # type: ignore[arg-type]
    plain.send(raw)
    (want,) = plain.answers()
    assert want.status == 200
    assert plain.transport.closed is closes
    assert want.headers.get(b"connection") == got.headers.get(b"connection")
    plain.close()
    assert conn.state.total_requests == 1
    # the keep-alive timer is armed only on a connection that stays
    assert (conn.proto.timeout_keep_alive_task is not None) is not closes


def test_shutdown_mid_request_answers_then_closes(lane: Any) -> None:
    """uvicorn's graceful shutdown calls shutdown() on every connection: a request the lane is reading is
    still answered (Connection: close), an idle connection closes at once."""
    _, connect = lane
    conn = connect()
    raw = post(INFER, infer_body())
    conn.send(raw[:-10])
    conn.proto.shutdown()
    assert not conn.transport.closed
    conn.send(raw[-10:])
    (got,) = conn.answers()
    assert got.status == 200
    assert got.headers[b"connection"] == b"close"
    assert conn.transport.closed
    idle = connect()
    idle.send(post(INFER, infer_body()))
    idle.proto.shutdown()
    assert idle.transport.closed


def test_a_client_that_does_not_read_stops_being_read(lane: Any) -> None:
    """Flow control: once the transport's buffer is over its high-water mark, the lane stops parsing that
    client's requests until the buffer drains."""
    _, connect = lane
    conn = connect()
    conn.proto.pause_writing()  # what the transport calls past its high-water mark
    conn.send(post(INFER, infer_body()))
    assert not conn.transport.reading
    conn.proto.resume_writing()
    assert conn.transport.reading
    assert [r.status for r in conn.answers()] == [200]


def test_lane_off_when_it_cannot_answer_inline(make_client: Callable[..., Any], packed_clf: bytes) -> None:
    """Batching, a thread per run, the access log or the setting: the whole server stays on ASGI."""
    for overrides, reason in [
        ({"fast_lane": False}, "fast_lane=false"),
        ({"access_log": True}, "access log"),
        ({"batching_enabled": True}, "AdaptiveBatcher"),
        ({"run_in_thread": "always"}, "DirectPredictor"),
    ]:
        app: ServerApp = make_client(packed_clf, **overrides).server_app
        refusal = app.fast_lane_refusal()
        assert refusal is not None, overrides
        assert reason in refusal, (overrides, refusal)

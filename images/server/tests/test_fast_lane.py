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

import numpy as np
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

    def __init__(
        self,
        app: ServerApp,
        protocol: type[InferProtocol] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.own_loop = loop is None
        self.loop = loop or uvloop.new_event_loop()
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
        if self.own_loop:
            self.loop.close()


def _connections(client: Any) -> Iterator[tuple[Any, Callable[[], Conn]]]:
    """(client, connect): fast-lane connections to the client's server, one protocol class and one loop for
    all of them, as a uvicorn server has."""
    app: ServerApp = client.server_app
    protocol = make_protocol(app)
    loop = uvloop.new_event_loop()
    conns: list[Conn] = []

    def connect() -> Conn:
        conns.append(Conn(app, protocol, loop))
        return conns[-1]

    yield client, connect
    for c in conns:
        c.close()
    loop.close()


@pytest.fixture
def lane(make_client: Callable[..., Any], packed_clf: bytes) -> Iterator[tuple[Any, Callable[[], Conn]]]:
    """(TestClient over the ASGI app, a factory of fast-lane connections to the same server)."""
    client = make_client(packed_clf, model_name="iris-like", model_version="3", max_body_bytes=4096)
    app: ServerApp = client.server_app
    assert app.fast_lane_refusal() is None
    yield from _connections(client)


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


def test_answers_read_in_one_turn_leave_together_at_its_end(lane: Any) -> None:
    """Without merging, while requests come one to a loop turn each answer is written at once; once a turn
    brings several, answers wait for the end of their turn and leave together, in the order they were read
    (an ASGI request read after them on a connection is answered after them), until a turn answers one."""
    client, connect = lane
    a, b, c = connect(), connect(), connect()
    a.send(post(INFER, infer_body(id="a")))
    assert [r.json()["id"] for r in responses(bytes(a.transport.data))] == ["a"]  # first: at once
    b.send(post(INFER, infer_body(id="b1")) + post(INFER, b"{"))
    c.send(post(INFER, infer_body(id="c")) + b"GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n")
    assert bytes(b.transport.data) == bytes(c.transport.data) == b""  # an error waits too
    a.loop.run_until_complete(asyncio.sleep(0))  # the turn ends
    got_b = responses(bytes(b.transport.data))
    assert [r.status for r in got_b] == [200, 400]
    assert got_b[0].body == client.post(INFER.decode(), content=infer_body(id="b1")).content
    assert [r.status for r in c.answers()] == [200, 200]
    assert c.answers()[0].json()["id"] == "c"
    assert c.answers()[1].json() == {"ready": True}
    ids = lambda: [r.json()["id"] for r in responses(bytes(a.transport.data))]  # noqa: E731
    a.send(post(INFER, infer_body(id="a2")))  # the turn after a busy one: waits for the end of the turn
    assert ids() == ["a"]
    a.loop.run_until_complete(asyncio.sleep(0))
    assert ids() == ["a", "a2"]
    a.send(post(INFER, infer_body(id="a3")))  # the last turn answered one: at once again
    assert ids() == ["a", "a2", "a3"]
    b.send(post(INFER, infer_body(id="b3")))  # a second in this turn: waits; the turn answered two
    a.loop.run_until_complete(asyncio.sleep(0))
    assert responses(bytes(b.transport.data))[-1].json()["id"] == "b3"
    a.send(post(INFER, infer_body(id="a4")))
    assert ids() == ["a", "a2", "a3"]


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


def test_batching_without_a_wait_keeps_the_lane(make_client: Callable[..., Any], packed_clf: bytes) -> None:
    """Batching as a ModelDeployment has it by default (no wait; the settings' default max_latency_ms): the
    lane stays on and merges."""
    app: ServerApp = make_client(packed_clf, batching_enabled=True).server_app
    assert app.fast_lane_refusal() is None
    assert app.lane_merges


def test_lane_off_when_it_cannot_answer_inline(make_client: Callable[..., Any], packed_clf: bytes) -> None:
    """Batching, a thread per run, the access log or the setting: the whole server stays on ASGI."""
    for overrides, reason in [
        ({"fast_lane": False}, "fast_lane=false"),
        ({"access_log": True}, "access log"),
        ({"batching_enabled": True, "max_latency_ms": 2.0}, "AdaptiveBatcher"),
        ({"run_in_thread": "always"}, "DirectPredictor"),
    ]:
        app: ServerApp = make_client(packed_clf, **overrides).server_app
        refusal = app.fast_lane_refusal()
        assert refusal is not None, overrides
        assert reason in refusal, (overrides, refusal)


# --- merging: batching that merges only what is already waiting (max_latency_ms 0) -----------------------------


def rows_body(rows: list[list[float]], req_id: str) -> bytes:
    return orjson.dumps(
        {
            "id": req_id,
            "inputs": [{"name": "input", "shape": [len(rows), 30], "datatype": "FP32", "data": rows}],
        }
    )


def metric(text: str, name: str) -> float:
    """The sum of a metric's series (all label values)."""
    return sum(
        float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith((name + " ", name + "{"))
    )


@pytest.fixture
def merging(make_client: Callable[..., Any], packed_clf: bytes) -> Iterator[tuple[Any, Callable[[], Conn]]]:
    client = make_client(
        packed_clf, model_name="iris-like", model_version="3", batching_enabled=True, max_latency_ms=0.0,
        max_batch_size=4,
    )  # fmt: skip
    app: ServerApp = client.server_app
    assert app.fast_lane_refusal() is None
    assert app.lane_merges
    yield from _connections(client)


def test_merging_lane_runs_one_turns_requests_together(merging: Any) -> None:
    """Requests that arrive in one loop turn, on several connections, run as one session.run (up to
    max_batch_size rows), at the end of the turn; every answer is its own rows, as ASGI answers it, and a
    bad request among them gets its own error."""
    client, connect = merging
    a, b = connect(), connect()
    a.proto.coalescer.inline = False  # as after a turn with two requests (test below)
    bodies_a = [rows_body([ROW], "a1"), rows_body([ROW[::-1], ROW], "a2")]
    bodies_b = [b'{"inputs": 1}', rows_body([[v * 2 for v in ROW]], "b2")]
    a.send(b"".join(post(INFER, x) for x in bodies_a))
    assert bytes(a.transport.data) == b""  # 3 rows wait for the end of the turn
    b.send(post(INFER, bodies_b[0]))
    assert bytes(b.transport.data) == b""  # an error waits too: it may not overtake earlier answers
    b.send(post(INFER, bodies_b[1]))  # 4 rows: max_batch_size, run at once
    assert len(responses(bytes(a.transport.data))) == 2
    got_a, got_b = a.answers(), b.answers()
    for body, got in zip(bodies_a + bodies_b, got_a + got_b, strict=True):
        want = client.post(INFER.decode(), content=body)
        assert got.status == want.status_code
        assert got.body == want.content
    assert [r.status for r in got_b] == [400, 200]
    text = client.get("/metrics").text
    # the lane's 4 rows ran as one run (ASGI's 4 requests above ran one each: 3 single rows... + 1 of 2 rows)
    assert metric(text, "kubeloop_server_batch_size_rows_count") == 1 + 3
    assert metric(text, "kubeloop_server_batch_size_rows_sum") == 4 + 4


def test_merging_lane_keeps_batches_within_max_batch_size(merging: Any) -> None:
    client, connect = merging
    conn = connect()
    conn.send(b"".join(post(INFER, rows_body([ROW] * k, f"r{k}")) for k in (4, 3, 2, 1, 5)))
    got = conn.answers()
    assert [len(r.json()["outputs"][0]["data"]) for r in got] == [12, 9, 6, 3, 15]
    text = client.get("/metrics").text
    # the first of the turn at once (lone so far), then merging: 3 | 2+1 | 5 (past the limit: alone)
    assert metric(text, "kubeloop_server_batch_size_rows_count") == 4
    assert metric(text, "kubeloop_server_batch_size_rows_sum") == 15


def test_merging_lane_runs_lone_requests_at_once_and_merges_when_turns_bring_several(merging: Any) -> None:
    """Requests one at a time run at once (no wait for the end of the turn); a turn that brings two switches
    to merging; LONELY_BATCHES lone runs in a row switch back."""
    from kubeloop_server.batching import LONELY_BATCHES

    client, connect = merging
    conn, other = connect(), connect()
    coalescer = conn.proto.coalescer
    for _ in range(3):
        before = len(conn.transport.data)
        conn.send(post(INFER, infer_body()))
        assert len(conn.transport.data) > before  # answered inside the callback
        conn.settle()  # the turn ends
    assert coalescer.inline
    conn.send(post(INFER, infer_body()))  # answered at once: the first of its turn
    other.send(post(INFER, infer_body()))  # a second in the same turn: waits, merging from now on
    assert not coalescer.inline
    assert bytes(other.transport.data) == b""
    conn.settle()
    assert len(other.answers()) == 1  # its run, of one request, is the first lone one
    for k in range(LONELY_BATCHES - 1):
        assert not coalescer.inline, k
        before = len(conn.transport.data)
        conn.send(post(INFER, infer_body()))
        assert len(conn.transport.data) == before  # waits for the end of the turn
        conn.settle()
    assert coalescer.inline
    assert [r.status for r in conn.answers()] == [200] * (3 + LONELY_BATCHES)
    text = client.get("/metrics").text
    assert metric(text, "kubeloop_server_batch_size_rows_count") == 4 + LONELY_BATCHES


def test_merging_lane_answers_before_a_request_asgi_takes(merging: Any) -> None:
    _, connect = merging
    conn = connect()
    conn.send(
        post(INFER, infer_body()) + b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n" + post(INFER, b"{")
    )
    assert [r.status for r in conn.answers()] == [200, 200, 400]


@pytest.mark.parametrize("server", ["lane", "merging"])
def test_requests_waiting_for_the_turn_end_on_shutdown_and_departed_clients(
    server: str, request: pytest.FixtureRequest
) -> None:
    """A request waiting for the end of its turn (its answer in the outbox, or the request in the merging
    lane's coalescer) is still answered when the server shuts down (then the connection closes), and is
    dropped (499) when its client left meanwhile."""
    client, connect = request.getfixturevalue(server)
    staying, leaving = connect(), connect()
    if server == "merging":
        staying.proto.coalescer.inline = False  # merging: requests wait for the end of the turn
    else:
        connect().send(post(INFER, infer_body()))  # the turn's first answer leaves at once, later ones wait
    staying.send(post(INFER, infer_body()))
    leaving.send(post(INFER, infer_body()))
    staying.proto.shutdown()  # its request waits for the turn: answered, then the connection closes
    assert not staying.transport.closed
    leaving.transport.closed = True  # the client went away before the turn ended
    (got,) = staying.answers()
    assert got.status == 200
    assert got.headers[b"connection"] == b"close"
    assert staying.transport.closed
    assert bytes(leaving.transport.data) == b""
    assert 'status="499"' in client.get("/metrics").text


def _logging_lane(
    make_client: Callable[..., Any], model: bytes, merging: bool
) -> tuple[Any, ServerApp, Conn]:
    """A server logging every prediction to memory (never flushed during the test), and a lane connection;
    ``merging``: batching without a wait, the coalescer already merging."""
    from kubeloop_testing.storage import MemoryStore

    client = make_client(
        model, store=MemoryStore(), model_name="iris-like", model_version="3", batching_enabled=merging,
        max_latency_ms=0.0, prediction_logging_enabled=True, s3_endpoint="in-memory:1",
        prediction_log_flush_rows=10**6, prediction_log_flush_interval_s=3600,
    )  # fmt: skip
    app: ServerApp = client.server_app
    assert app.predlog is not None
    assert app.fast_lane_refusal() is None
    conn = Conn(app, make_protocol(app))
    if merging:
        conn.proto.coalescer.inline = False
    return client, app, conn


def test_merging_lane_records_predictions_once_per_run(
    make_client: Callable[..., Any], packed_clf: bytes
) -> None:
    """The prediction metrics and the prediction log see every row of a merged run, once."""
    client, app, conn = _logging_lane(make_client, packed_clf, merging=True)
    assert app.predlog is not None
    conn.send(b"".join(post(INFER, rows_body([ROW] * k, f"r{k}")) for k in (1, 2, 3)))
    assert [r.status for r in conn.answers()] == [200, 200, 200]
    conn.close()
    assert app.predlog._buffered == 6
    assert metric(client.get("/metrics").text, "kubeloop_server_predictions_total") == 6


@pytest.mark.parametrize("merging", [False, True])
def test_lane_records_predictions_after_the_answer_is_written(
    make_client: Callable[..., Any], packed_clf: bytes, merging: bool
) -> None:
    """The prediction metrics and log are no part of the answer: the lane writes it first (the client is not
    kept waiting for them), then records every row, once, before the callback returns."""
    client, app, conn = _logging_lane(make_client, packed_clf, merging)
    assert app.predlog is not None
    seen_at_write: list[int] = []
    write = conn.transport.write

    def spy(data: bytes) -> None:
        seen_at_write.append(app.predlog._buffered)
        write(data)

    conn.transport.write = spy  # type: ignore[method-assign]
    conn.send(b"".join(post(INFER, rows_body([ROW] * k, f"r{k}")) for k in (1, 2)))
    assert [r.status for r in conn.answers()] == [200, 200]
    conn.close()
    assert seen_at_write == [0, 0] if merging else seen_at_write == [0, 1]
    assert app.predlog._buffered == 3
    assert metric(client.get("/metrics").text, "kubeloop_server_predictions_total") == 3


def test_a_busy_turns_answers_are_logged_as_one_chunk(
    make_client: Callable[..., Any], packed_clf: bytes
) -> None:
    """The requests answered together at the end of a turn are observed together: one prediction-log chunk
    holding their rows in the order they were read, and every row counted once."""
    client, app, conn = _logging_lane(make_client, packed_clf, merging=False)
    assert app.predlog is not None
    other = Conn(app, type(conn.proto), conn.loop)  # the same server: one outbox
    rows = {"r1": [ROW], "r2": [ROW[::-1], [v * 2 for v in ROW]], "r3": [[v / 2 for v in ROW]]}
    conn.send(post(INFER, rows_body(rows["r1"], "r1")))  # alone in its turn: written and observed at once
    assert len(app.predlog._buffer) == 1
    other.send(post(INFER, rows_body(rows["r2"], "r2")))
    conn.send(post(INFER, rows_body(rows["r3"], "r3")))
    assert len(app.predlog._buffer) == 1  # waiting for the end of the turn
    got = conn.answers() + other.answers()
    assert [r.json()["id"] for r in got] == ["r1", "r3", "r2"]
    first, turn = app.predlog._buffer
    assert (first.rows, turn.rows) == (1, 3)
    np.testing.assert_array_equal(turn.feeds["input"], np.array(rows["r2"] + rows["r3"], dtype=np.float32))
    for r in got:  # as ASGI answers them (these requests are logged too: after the checks above)
        key = r.json()["id"]
        assert r.body == client.post(INFER.decode(), content=rows_body(rows[key], key)).content
    other.close()
    conn.close()
    # the ASGI requests above counted their 4 rows too
    assert metric(client.get("/metrics").text, "kubeloop_server_predictions_total") == 4 + 4


def test_deferred_observation_merges_only_tensors_that_line_up(
    make_client: Callable[..., Any], packed_clf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests are observed as one run only when every tensor lines up past the batch axis and every model
    output has one entry per row; otherwise one by one, as they were run."""
    dp = make_client(packed_clf).server_app.dataplane
    seen: list[tuple[Any, Any, int]] = []
    monkeypatch.setattr(dp, "observe", lambda f, o, n: seen.append((f, o, n)))
    n_out = len(dp.runtime.outputs)
    a = ({"input": np.ones((1, 30), np.float32)}, [np.ones((1, 3), np.float32)] * n_out, 1)
    b = ({"input": np.zeros((2, 30), np.float32)}, [np.zeros((2, 3), np.float32)] * n_out, 2)
    odd = ({"input": np.ones((1, 5), np.float32)}, [np.ones((1, 3), np.float32)] * n_out, 1)
    dp._unobserved = [a, b]
    dp.observe_deferred()
    ((feeds, outputs, n),) = seen
    assert n == 3
    np.testing.assert_array_equal(feeds["input"], np.concatenate([a[0]["input"], b[0]["input"]]))
    assert [o.shape for o in outputs] == [(3, 3)] * n_out
    for pending in ([a, odd], [odd]):
        seen.clear()
        dp._unobserved = list(pending)
        dp.observe_deferred()
        assert seen == pending
    seen.clear()
    monkeypatch.setattr(dp.runtime, "batchable", False)
    dp._unobserved = [a, b]
    dp.observe_deferred()
    assert seen == [a, b]
    assert dp._unobserved == []


class FakeRuntime:
    """run() doubles its one input, and refuses (as ONNX Runtime would) any negative value."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        x = feeds["x"]
        self.calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative")
        return [x * 2]


class FakeMetrics:
    def __init__(self) -> None:
        self.runs: list[int] = []

    def observe_run(self, rows: int, seconds: float) -> None:
        self.runs.append(rows)


def test_run_coalesced_one_requests_inputs_never_decide_anothers_answer() -> None:
    import numpy as np
    from kubeloop_server.batching import run_coalesced

    ok1, bad, ok2 = np.ones((1, 2)), -np.ones((1, 2)), np.full((2, 2), 3.0)
    wide = np.ones((1, 3))
    rt, m = FakeRuntime(), FakeMetrics()
    batch = [({"x": ok1}, 1), ({"x": bad}, 1), ({"x": ok2}, 2), ({"x": wide}, 1)]
    results, runs = run_coalesced(rt, m, batch)  # type: ignore[arg-type]
    # all four cannot be stacked (widths 2 and 3); the width-2 group fails (a negative); then each alone
    assert rt.calls == [4, 1, 1, 2, 1]  # the stack of all four fails before any run
    assert isinstance(results[1], ValueError)
    for k in (0, 2, 3):
        out = results[k]
        assert not isinstance(out, Exception)
        np.testing.assert_array_equal(out[0], batch[k][0]["x"] * 2)
    assert m.runs == [1, 2, 1]
    assert [n for *_, n in runs] == [1, 2, 1]
    # all stackable and fine: one run, each its own rows
    rt, m = FakeRuntime(), FakeMetrics()
    results, runs = run_coalesced(rt, m, [({"x": ok1}, 1), ({"x": ok2}, 2)])  # type: ignore[arg-type]
    assert rt.calls == [3]
    assert m.runs == [3]
    np.testing.assert_array_equal(results[1][0], ok2 * 2)  # type: ignore[index]
    # all stackable, one refused: the merged run fails, then each alone (not the same stack again)
    rt, m = FakeRuntime(), FakeMetrics()
    results, runs = run_coalesced(rt, m, [({"x": ok1}, 1), ({"x": bad}, 1)])  # type: ignore[arg-type]
    assert rt.calls == [2, 1, 1]
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], Exception)


# --- the real server: sockets, concurrent clients, SIGTERM -----------------------------------------------------

CLIENTS = 32


async def _client(port: int, rows: list[list[float]], stop_at: float, out: list[Any]) -> None:
    """One keep-alive connection sending its rows one request at a time until ``stop_at`` (monotonic);
    records (row index, sent before SIGTERM?, status, body or error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    k = 0
    try:
        while loop.time() < stop_at and k < len(rows):
            writer.write(post(INFER, rows_body([rows[k]], f"r{k}")))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(
                next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(
                    b":"
                )[1]
            )
            body = await reader.readexactly(n)
            out.append((k, int(head.split()[1]), body))
            k += 1
            if b"connection: close" in head.lower():
                break
    except (OSError, asyncio.IncompleteReadError) as e:
        out.append((k, 0, repr(e).encode()))
    finally:
        writer.close()


@pytest.mark.parametrize("merging", [False, True], ids=["inline", "merging"])
def test_real_server_concurrent_answers_and_sigterm(
    start_server: Callable[..., Any], tmp_path: Any, packed_clf: bytes, reference: Any, merging: bool
) -> None:
    """32 keep-alive clients, each row its own, through the lane of a real server process (merging or not);
    SIGTERM after 1 s, clients go on sending through the 1 s drain: every request gets its own right
    answer (a wrong one would mean rows mixed up across merged requests or connections); none fails; the
    server exits 0 after closing the connections."""
    import numpy as np

    model = tmp_path / "m.onnx"
    model.write_bytes(packed_clf)
    env = {"batching_enabled": "true", "max_latency_ms": "0"} if merging else {}
    srv = start_server(
        model_uri=str(model), model_name="iris-like", model_version="3", drain_seconds="1.0", **env
    )
    assert "HTTP fast lane on" in srv.log(), srv.log()
    rng = np.random.default_rng(5)
    rows = [rng.normal(size=(400, 30)).round(3).astype(np.float32) for _ in range(CLIENTS)]
    results: list[list[Any]] = [[] for _ in range(CLIENTS)]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + 1.6  # past SIGTERM (at 1.0 s), within the 1 s drain
        tasks = [
            asyncio.create_task(_client(srv.port, rows[c].tolist(), stop_at, results[c]))
            for c in range(CLIENTS)
        ]
        await asyncio.sleep(1.0)
        srv.terminate()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert srv.wait(30) == 0, srv.log()
    ref = reference(packed_clf).session
    total = 0
    for c in range(CLIENTS):
        assert results[c], f"client {c} got nothing"
        for k, status, body in results[c]:
            assert status == 200, (c, k, body[:300])
            out = orjson.loads(body)
            assert out["id"] == f"r{k}"
            want = ref.run(None, {"input": rows[c][k : k + 1]})[0].reshape(-1)
            np.testing.assert_allclose(out["outputs"][0]["data"], want, rtol=1e-5, atol=1e-6)
            total += 1
    assert total > CLIENTS * 20, total

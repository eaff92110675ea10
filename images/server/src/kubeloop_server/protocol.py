"""The HTTP fast lane: uvicorn's httptools protocol, with OIP inference for the served model answered in the
parser's own callback instead of through ASGI.

Why: on this project's 2-core machine, under wrk at 16 connections, uvicorn's ASGI layer (a scope dict, a
request-response cycle, an ``asyncio.Event`` and a task per request, two ``send`` coroutines and their
message dicts) costs about 45 µs of CPU per request, more than the HTTP parsing and socket writes under it
(a no-op answered here costs ~29 µs against ~76 µs for the same no-op as an ASGI app). For a small tabular
model that layer was a third of the whole request. The fast lane keeps everything uvicorn does around the
request (listening, connections, keep-alive timeouts, flow control, the lifespan, signals and the graceful
drain) and replaces only the per-request ASGI round trip with one call into
:meth:`kubeloop_server.rest.ServerApp.infer_now` (the same payload parsing, data plane, codec, metrics,
prediction log and error mapping as the ASGI endpoint) and one ``transport.write``.

What takes the lane: ``POST /v2/models/<served name>[/versions/<served version>]/infer`` spelled exactly (no
query string, no percent-escapes), without ``Expect: 100-continue`` or an upgrade, on a connection whose
previous request is answered. Everything else goes to the ASGI application unchanged, so a request
pipelined behind one the ASGI app is still answering queues as before, and answers leave in request order
(a fast-lane request is answered at once or at the end of its event-loop turn (:class:`Outbox`), before
the ASGI task of a later request on its connection takes its first step). With batching that merges only
what is already waiting (``max_latency_ms`` 0) the lane merges the requests of one event-loop turn itself
(:class:`Coalescer`).
:meth:`ServerApp.fast_lane_refusal` says when the lane is off altogether (access log on, batching that
waits, a model slow enough to run in a thread).
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kubeloop_server.batching import LONELY_BATCHES, AdaptiveBatcher, DirectPredictor, run_coalesced
from kubeloop_server.codec import InferRequest
from kubeloop_server.errors import PayloadTooLargeError
from kubeloop_server.rest import PROTOCOL, Reply, ServerApp, error_reply

# Characters a path segment carries as they are; a name with any other needs escaping in a URL, and then
# only the ASGI route (which unescapes) can match it.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def fast_routes(name: str, version: str) -> dict[bytes, tuple[str, str | None, str]]:
    """Request target -> (model name, version or None, metrics label) for the served model's infer paths."""
    routes: dict[bytes, tuple[str, str | None, str]] = {}
    if _PLAIN_SEGMENT.fullmatch(name):
        routes[f"/v2/models/{name}/infer".encode()] = (name, None, "/v2/models/{model_name}/infer")
        if _PLAIN_SEGMENT.fullmatch(version):
            routes[f"/v2/models/{name}/versions/{version}/infer".encode()] = (
                name,
                version,
                "/v2/models/{model_name}/versions/{model_version}/infer",
            )
    return routes


class _Waiting:
    """A fast-lane request decoded and waiting for the end of the loop turn (merging)."""

    __slots__ = ("keep_alive", "label", "proto", "reply", "req", "t0")

    def __init__(
        self, proto: InferProtocol, label: str, t0: float, got: InferRequest | Reply, keep_alive: bool
    ) -> None:
        self.proto = proto
        self.label = label
        self.t0 = t0
        self.req = got if isinstance(got, InferRequest) else None
        self.reply = got if not isinstance(got, InferRequest) else None
        self.keep_alive = keep_alive


class Coalescer:
    """The lane's merging, for batching that merges only what is already waiting (``max_latency_ms`` 0, runs
    on the loop): the requests whose bytes arrived in one event-loop turn run as one ``session.run`` (at
    most ``max_batch_size`` rows), at the end of that turn (``call_soon``); their prediction metrics and log
    rows are recorded once per run. Answers leave in arrival order, so each connection's stay in request
    order.

    While requests come one at a time there is nothing to merge, and waiting for the end of the turn would
    only add a loop pass to each. So, as :class:`~kubeloop_server.batching.AdaptiveBatcher` does, the
    coalescer watches the turns: while no turn has brought two requests, each runs at once; a second one in
    a turn switches to merging, and :data:`~kubeloop_server.batching.LONELY_BATCHES` runs of a single
    request in a row switch back."""

    def __init__(self, server_app: ServerApp, max_rows: int) -> None:
        self.app = server_app
        self.max_rows = max_rows
        self.waiting: list[_Waiting] = []
        self.rows = 0
        self.inline = True
        self._turn_started = False  # inline: this turn has had its request
        self._lonely = 0  # merging: runs of one request in a row
        # What a request that runs at once runs with: the lane's unmerged path (ServerApp.infer_now), which
        # costs less than a batch of one.
        self.direct = DirectPredictor(server_app.runtime, server_app.metrics, in_thread=False)

    def claim_inline(self, loop: Any) -> bool:
        """True when the request being read runs at once (the first of its turn while requests come one at a
        time); the caller then answers it through :attr:`direct`. Nothing is waiting then: while
        :attr:`inline`, a second request in a turn is the first to wait."""
        if not self.inline or self._turn_started:
            return False
        self._turn_started = True
        loop.call_soon(self._end_turn)
        return True

    def add(self, item: _Waiting, loop: Any) -> None:
        """A request that did not run at once (:meth:`claim_inline`) waits for the end of the turn."""
        if self.inline:  # two in one turn: merge from now on
            self.inline = False
            self._lonely = 0
        rows = item.req.rows if item.req is not None else 0
        if self.rows and self.rows + rows > self.max_rows:
            self.flush()  # a full batch goes now; this request starts the next
        if not self.waiting:
            loop.call_soon(self.flush)
        self.waiting.append(item)
        self.rows += rows
        if self.rows >= self.max_rows:
            self.flush()

    def _end_turn(self) -> None:
        self._turn_started = False

    def flush(self) -> None:
        """Answer everything waiting (at the end of the turn, or at once for a full batch)."""
        waiting, self.waiting, self.rows = self.waiting, [], 0
        if not waiting:
            return
        self._lonely = self._lonely + 1 if len(waiting) == 1 else 0
        if self._lonely >= LONELY_BATCHES:
            self.inline = True
        self._answer(waiting)

    def _answer(self, waiting: list[_Waiting]) -> None:
        app = self.app
        run = [w for w in waiting if w.req is not None]  # add() keeps them within max_rows together
        if run:
            results, merged = run_coalesced(
                app.runtime, app.metrics, [(w.req.feeds, w.req.rows) for w in run if w.req is not None]
            )
            for w, result in zip(run, results, strict=True):
                assert w.req is not None
                w.reply = app.lane_reply(w.req, result)
        for w in waiting:
            assert w.reply is not None
            w.proto._waiting -= 1
            w.proto._respond(w.reply, w.label, w.t0, w.keep_alive)
        if run:  # the prediction metrics and log, once the answers are on their way
            for feeds, outputs, n in merged:
                app.dataplane.observe(feeds, outputs, n)


class Outbox:
    """How the lane's answers leave without merging (batching off, and a merging lane's lone requests run
    at once): while requests come several to an event-loop turn, their answers wait for the end of the
    turn and are written together, each batch followed by the prediction metrics and log of what it
    answered; while they come one to a turn, each is written at once, as the coalescer runs them at once.

    Why: a client waiting for its answer sleeps in ``epoll_wait``, and each write that wakes it costs the
    writer a wake-up through the kernel (an inter-processor interrupt on a virtual machine). At 16
    connections, writing each answer as soon as it was computed woke the load generator once per request;
    under wrk on this project's 2-core machine those wake-ups took about 40 µs of the server's CPU per
    request, nearly half of it (99-139 against 58-67 µs per request in ``make bench-server``).
    Answers that leave together wake it once. An answer waits only while the requests read in the same turn
    are computed. Answers on one connection keep their order: they share the one queue, and an ASGI
    request read after them starts its task only after the end of the turn (``call_soon``, first in first
    out)."""

    def __init__(self, server_app: ServerApp) -> None:
        self.app = server_app
        self.queued: list[tuple[InferProtocol, Reply, str, float, bool]] = []
        self._turn_started = False
        self._lone = True  # the last turn answered one request at most: this turn's first is written at once
        self._written = 0  # answers this turn wrote at once

    def answer(self, proto: InferProtocol, reply: Reply, label: str, t0: float, keep_alive: bool) -> None:
        if not self._turn_started:
            self._turn_started = True
            proto.loop.call_soon(self.flush)
            if self._lone:
                self._written = 1
                proto._respond(reply, label, t0, keep_alive)
                self.app.dataplane.observe_deferred()
                return
        proto._waiting += 1
        self.queued.append((proto, reply, label, t0, keep_alive))

    def flush(self) -> None:
        """The end of the turn: the waiting answers leave, then their requests' metrics and log rows."""
        queued, self.queued = self.queued, []
        self._lone = len(queued) + self._written <= 1
        self._turn_started = False
        self._written = 0
        for proto, reply, label, t0, keep_alive in queued:
            proto._waiting -= 1
            proto._respond(reply, label, t0, keep_alive)
        if queued:
            self.app.dataplane.observe_deferred()


class InferProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the fast lane (module docstring); bound to a server by
    :func:`make_protocol`."""

    server_app: ClassVar[ServerApp]
    routes: ClassVar[dict[bytes, tuple[str, str | None, str]]]
    body_limit: ClassVar[int]
    coalescer: ClassVar[Coalescer | None]  # None: each request runs at once, inline
    outbox: ClassVar[Outbox]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lane: tuple[str, str | None, str] | None = None  # the request being read takes the lane
        self._chunks: list[bytes] = []
        self._size = 0
        self._t0 = 0.0
        self._close_after = False  # shutdown() came while a fast-lane request was being read
        self._reading_paused = False  # by the lane, until the client reads its answers
        self._headers_for: object = None
        self._default_headers = b""
        self._waiting = 0  # this connection's requests waiting in the coalescer or the outbox

    # --- parser callbacks ------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._lane = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        lane = self.routes.get(self.url)
        if (
            lane is not None
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and not self.parser.should_upgrade()
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._lane = lane
            self._chunks = []
            self._size = 0
            self._t0 = time.perf_counter()
            return
        # A merging lane's requests waiting on this connection are answered first without help: the turn's
        # flush was queued (call_soon) before the ASGI task this starts.
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._lane is None:
            super().on_body(body)
            return
        self._size += len(body)
        if self._size <= self.body_limit:
            self._chunks.append(body)
        elif self._chunks:  # past the limit: the rest is read and dropped, the 413 goes out at the end
            self._chunks = []

    def on_message_complete(self) -> None:
        if self._lane is None:
            super().on_message_complete()
            return
        name, version, label = self._lane
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        chunks, self._chunks = self._chunks, []
        self._lane = None
        coalescer = self.coalescer
        now = coalescer is None or coalescer.claim_inline(self.loop)
        got: InferRequest | Reply
        if self._size > self.body_limit:
            got = error_reply(
                PayloadTooLargeError(
                    f"request body of {self._size} bytes exceeds the limit of {self.body_limit} bytes"
                )
            )
        else:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if now:
                got = self.server_app.infer_now(
                    name, version, self.headers, body, None if coalescer is None else coalescer.direct
                )
            else:
                got = self.server_app.lane_decode(name, version, self.headers, body)
        if now or coalescer is None:
            assert not isinstance(got, InferRequest)
            self.outbox.answer(self, got, label, self._t0, keep_alive)
            return
        self._waiting += 1
        coalescer.add(_Waiting(self, label, self._t0, got, keep_alive), self.loop)

    # --- answering -----------------------------------------------------------------------------------------

    def _respond(self, reply: Reply, label: str, t0: float, keep_alive: bool) -> None:
        if self.transport.is_closing():  # the client left while its request waited for the turn's run
            self.server_app.metrics.observe_request(PROTOCOL, label, 499, time.perf_counter() - t0)
            return
        status, payload, ctype, extra = reply
        keep_alive = keep_alive and not self._close_after
        defaults = self.server_state.default_headers  # uvicorn renews the list (its Date) once a second
        if defaults is not self._headers_for:
            self._headers_for = defaults
            self._default_headers = b"".join(b"%s: %s\r\n" % (k, v) for k, v in defaults)
        parts = [
            STATUS_LINE[status],
            self._default_headers,
            b"content-type: %s\r\ncontent-length: %d\r\n" % (ctype, len(payload)),
        ]
        if extra:
            parts += [b"%s: %s\r\n" % (k, v) for k, v in extra]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", payload]
        self.transport.write(b"".join(parts))
        self.server_app.metrics.observe_request(PROTOCOL, label, status, time.perf_counter() - t0)
        if not keep_alive:
            self.transport.close()
        # uvicorn's own end of a response: the request count, the keep-alive timer, reading resumed.
        self.on_response_complete()
        if self.flow.write_paused and not self.transport.is_closing():
            # The client is not reading its answers: stop parsing its requests until it does.
            self.flow.pause_reading()
            self._reading_paused = True

    # --- connection events ------------------------------------------------------------------------------------

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._reading_paused:
            self._reading_paused = False
            self.flow.resume_reading()

    def shutdown(self) -> None:
        """The server is stopping: a fast-lane request being read is still answered, then the connection
        closes (as uvicorn does for a request in an ASGI cycle)."""
        if self._lane is not None or self._waiting:
            self._close_after = True
            return
        super().shutdown()


def make_protocol(server_app: ServerApp) -> type[InferProtocol]:
    """The protocol class uvicorn instantiates per connection (``uvicorn.Config(http=...)``), bound to one
    server."""

    class BoundInferProtocol(InferProtocol):
        pass

    BoundInferProtocol.server_app = server_app
    BoundInferProtocol.routes = fast_routes(server_app.runtime.name, server_app.runtime.version)
    BoundInferProtocol.body_limit = server_app.settings.max_body_bytes
    predictor = server_app.predictor
    BoundInferProtocol.coalescer = (
        Coalescer(server_app, predictor.max_batch_size)
        if server_app.lane_merges and isinstance(predictor, AdaptiveBatcher)
        else None
    )
    BoundInferProtocol.outbox = Outbox(server_app)
    return BoundInferProtocol

"""The REST layer: thin routes over the data plane; errors become HTTP statuses through
:func:`kubeloop_server.errors.error_status` (the mapping the gRPC layer uses too).

Routes are raw ASGI endpoints mounted in a FastAPI application (which provides the lifespan, the
middleware stack and the 404/405 handling). Each endpoint reads a bounded body, calls one data-plane
method and sends pre-serialised orjson bytes: no per-request pydantic models, Request or Response
objects on the hot path.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kubeloop.storage import ObjectStore
from kubeloop_server import __version__
from kubeloop_server.batching import AdaptiveBatcher, Predictor, make_predictor
from kubeloop_server.codec import InferRequest, PlainBodyReader, decode_infer_request, encode_infer_response
from kubeloop_server.dataplane import DataPlane
from kubeloop_server.errors import InvalidInputError, PayloadTooLargeError, error_status
from kubeloop_server.grpcapi import GrpcServer
from kubeloop_server.metrics import CONTENT_TYPE, ServerMetrics
from kubeloop_server.model import ModelRuntime, Outputs
from kubeloop_server.predlog import PredictionLogger
from kubeloop_server.settings import ServerSettings
from kubeloop_server.storage import fetch_model_bytes, make_store

log = logging.getLogger("kubeloop_server.rest")

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
PROTOCOL = "rest"
# The binary tensor data extension: the JSON part's length; the rest of the body is raw tensors.
HEADER_LENGTH = b"inference-header-content-length"
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY
_dumps = orjson.dumps
_loads = orjson.loads

# A handler gets the ASGI scope and the body (None for GET) and returns (status, payload, content type,
# extra headers or None).
Reply = tuple[int, bytes, bytes, list[tuple[bytes, bytes]] | None]
Handler = Callable[[Scope, bytes | None], Awaitable[Reply]]


def infer_payload(
    headers: list[tuple[bytes, bytes]], body: bytes | None, plain: PlainBodyReader | None = None
) -> tuple[Any, memoryview | None]:
    """An OIP infer request's JSON document and, with the binary tensor data extension
    (``Inference-Header-Content-Length``), the raw tensors after it (None without the header). A body that
    ``plain`` reads comes back as its :class:`InferRequest`, which ``decode_infer_request`` passes on."""
    header_length = None
    for k, v in headers:
        if k == HEADER_LENGTH:
            header_length = v
        elif k == b"content-encoding" and v.lower() != b"identity":
            raise InvalidInputError(
                f"Content-Encoding {v.decode(errors='replace')} is not supported; send the body uncompressed"
            )
    if header_length is None:
        if plain is not None and body:
            req = plain.read(body)
            if req is not None:
                return req, None
        return parse_infer_json(body), None
    return split_binary_request(body, header_length)


def infer_reply(rt: ModelRuntime, req: InferRequest, outputs: Outputs) -> Reply:
    """The answer to an OIP infer request: JSON, or a JSON header and binary outputs."""
    payload, json_length = encode_infer_response(rt, req, outputs)
    if json_length is None:
        return 200, payload, JSON, None
    return 200, payload, OCTET_STREAM, [(HEADER_LENGTH, str(json_length).encode())]


class ClientDisconnectedError(Exception):
    """The client went away before sending the whole body; nothing is sent back."""


def error_reply(exc: BaseException) -> Reply:
    """An error as an HTTP answer ``{"error": message}`` (status from :func:`error_status`)."""
    status, _, message = error_status(exc)
    return status, _dumps({"error": message}), JSON, None


def ok(obj: Any, status: int = 200) -> Reply:
    return status, _dumps(obj, option=_DUMPS_OPTS), JSON, None


def parse_json(body: bytes | memoryview | None, what: str = "request body") -> Any:
    if not body:
        raise InvalidInputError(f"{what} is empty; send a JSON document")
    try:
        return _loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"{what} is not valid JSON: {e}") from None


def parse_infer_json(body: bytes | None) -> Any:
    """An OIP request without the binary extension's header; raw tensors there get a hint, not a riddle."""
    try:
        return parse_json(body)
    except InvalidInputError as e:
        try:
            (body or b"").decode()
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"{e.message}; the body holds binary data: a request with binary tensors (binary tensor data "
                "extension) needs the Inference-Header-Content-Length header"
            ) from None
        raise


def split_binary_request(body: bytes | None, header_length: bytes) -> tuple[Any, memoryview]:
    """A binary tensor data request: the JSON header (``Inference-Header-Content-Length`` bytes) and the
    raw tensors after it."""
    text = header_length.decode(errors="replace").strip()
    if not (text.isascii() and text.isdigit()):  # str.isdigit() takes '²', which int() refuses
        raise InvalidInputError(f"Inference-Header-Content-Length {text!r} is not a non-negative integer")
    n = int(text)
    size = len(body or b"")
    if n > size:
        raise InvalidInputError(
            f"Inference-Header-Content-Length {n} exceeds the request body of {size} bytes"
        )
    view = memoryview(body or b"")
    return parse_json(view[:n], "the JSON header of the binary request"), view[n:]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body; 413 past ``limit`` bytes (before reading the rest when Content-Length says so)."""
    msg = await receive()
    if msg["type"] != "http.request":
        raise ClientDisconnectedError
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):  # the usual case: the body came in one piece
        if len(body) > limit:
            raise PayloadTooLargeError(
                f"request body of {len(body)} bytes exceeds the limit of {limit} bytes"
            )
        return body
    for k, v in scope["headers"]:
        if k == b"content-length":
            if not v.isdigit():
                raise InvalidInputError(f"Content-Length {v.decode(errors='replace')!r} is not a number")
            if int(v) > limit:
                raise PayloadTooLargeError(
                    f"request body of {int(v)} bytes exceeds the limit of {limit} bytes"
                )
            break
    parts = [body]
    size = len(body)
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ClientDisconnectedError
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)


class Endpoint:
    """A raw ASGI endpoint: counts and times the request, reads the body, maps errors, sends the reply."""

    def __init__(self, label: str, handler: Handler, metrics: ServerMetrics, body_limit: int | None) -> None:
        self.label = label
        self.handler = handler
        self.metrics = metrics
        self.body_limit = body_limit
        self.__doc__ = handler.__doc__

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            body = None if self.body_limit is None else await read_body(scope, receive, self.body_limit)
            status, payload, ctype, extra = await self.handler(scope, body)
        except ClientDisconnectedError:
            metrics.in_flight -= 1
            metrics.observe_request(PROTOCOL, self.label, 499, time.perf_counter() - t0)
            return
        except Exception as e:
            status, payload, ctype, extra = error_reply(e)
        metrics.in_flight -= 1
        headers = [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        metrics.observe_request(PROTOCOL, self.label, status, time.perf_counter() - t0)


class FastLane:
    """The ASGI entry point: our routes go straight to their endpoint; everything else (lifespan, unknown
    paths and methods) goes to the FastAPI application, which has the same routes registered.

    The inference hot path thereby skips the framework's middleware stack and linear route matching
    (about a third of a no-op FastAPI request's cost): one dict lookup for fixed paths and for the served
    model's own ``/v2/models/<name>[/versions/<version>]/...`` paths, one regex for other model names
    (which get their 404 from the data plane). Behaviour is identical either way; the endpoints handle
    their own errors.
    """

    def __init__(
        self, app: FastAPI, routes: list[tuple[str, str, Endpoint]], model_name: str, model_version: str
    ) -> None:
        self.app = app
        self.fixed: dict[tuple[str, str], tuple[Endpoint, dict[str, str]]] = {}
        self.templated: list[tuple[str, re.Pattern[str], Endpoint]] = []
        served = {"model_name": model_name, "model_version": model_version}
        for method, path, endpoint in routes:
            if "{" in path:
                rx = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path))
                self.templated.append((method, rx, endpoint))
                names = re.findall(r"\{(\w+)\}", path)
                if "/" not in model_name and "/" not in model_version:
                    concrete = path.replace("{model_name}", model_name).replace(
                        "{model_version}", model_version
                    )
                    self.fixed[(method, concrete)] = (endpoint, {k: served[k] for k in names})
            else:
                self.fixed[(method, path)] = (endpoint, {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = scope["path"]
            hit = self.fixed.get((method, path))
            if hit is not None:
                scope["path_params"] = hit[1]  # read-only for the endpoints
                return await hit[0](scope, receive, send)
            if path.startswith("/v2/models/"):
                for m, rx, ep in self.templated:
                    if m == method and (match := rx.fullmatch(path)) is not None:
                        scope["path_params"] = match.groupdict()
                        return await ep(scope, receive, send)
        await self.app(scope, receive, send)


class ServerApp:
    """Everything one server process holds: runtime, predictor, prediction logger, data plane, app."""

    def __init__(
        self,
        settings: ServerSettings,
        runtime: ModelRuntime | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.settings = s = settings
        if store is None:
            store = make_store(s)
        self.store = store
        if runtime is None:
            model_bytes = fetch_model_bytes(s.model_uri, store)
            runtime = ModelRuntime(
                model_bytes,
                name=s.model_name,
                version=s.model_version,
                device=s.device,
                intra_op_threads=s.intra_op_threads,
                allow_spinning=s.allow_spinning,
            )
        self.runtime = rt = runtime
        self.metrics = ServerMetrics()
        self.metrics.set_model(rt.name, rt.version, rt.task, rt.provider, rt.layout, rt.classes, rt.kind)
        self.predictor = make_predictor(
            rt,
            self.metrics,
            batching=s.batching_enabled,
            max_batch_size=s.max_batch_size,
            max_latency_ms=s.max_latency_ms,
            run_in_thread=s.run_in_thread,
            inline_run_max_ms=s.inline_run_max_ms,
        )
        self.predlog: PredictionLogger | None = None
        if s.prediction_logging_enabled and s.prediction_logging_sample_rate > 0:
            if store is None:
                raise ValueError("prediction logging needs an object store")
            self.predlog = PredictionLogger(
                rt,
                store,
                self.metrics,
                bucket=s.bucket,
                namespace=s.namespace,
                deployment=s.deployment,
                sample_rate=s.prediction_logging_sample_rate,
                flush_rows=s.prediction_log_flush_rows,
                flush_interval_s=s.prediction_log_flush_interval_s,
                max_buffer_rows=s.prediction_log_max_buffer_rows,
                pod_name=s.pod_name,
            )
        self.dataplane = DataPlane(
            rt, self.predictor, self.metrics, self.predlog, s.max_request_rows, s.allow_missing
        )
        self.plain = PlainBodyReader.for_model(rt, s.max_request_rows)
        self.grpc: GrpcServer | None = None
        if s.grpc_port:
            self.grpc = GrpcServer(self.dataplane, self.metrics, s.host, s.grpc_port, s.max_body_bytes)
        self.fastapi, routes = self._build_app()
        self.app = FastLane(self.fastapi, routes, rt.name, rt.version)

    # --- the HTTP fast lane (kubeloop_server.protocol) ----------------------------------------------------

    def fast_lane_refusal(self) -> str | None:
        """Why OIP infer cannot be answered in the HTTP parser's callback; None when it can."""
        s = self.settings
        if not s.fast_lane:
            return "turned off (fast_lane=false)"
        if s.access_log:
            return "the access log is on (uvicorn writes it per ASGI request)"
        if not (self.predictor.always_inline or self.lane_merges):
            return (
                f"{type(self.predictor).__name__} waits or uses a thread (batching with max_latency_ms > 0, "
                "or a model slow enough to run in a thread)"
            )
        return None

    @property
    def lane_merges(self) -> bool:
        """Batching that merges only what is already waiting, on the loop: the lane merges the requests of
        one event-loop turn into one run itself (kubeloop_server.protocol.Coalescer)."""
        p = self.predictor
        return isinstance(p, AdaptiveBatcher) and p.coalesce_only

    def lane_decode(
        self, model_name: str, model_version: str | None, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> InferRequest | Reply:
        """The merging lane's first half: the request decoded, or its error answer."""
        try:
            doc, binary = infer_payload(headers, body, self.plain)
            return self.dataplane.decode_now(model_name, model_version, decode_infer_request, doc, binary)
        except Exception as e:
            return error_reply(e)

    def lane_reply(self, req: InferRequest, outputs: Outputs | Exception) -> Reply:
        """The merging lane's second half: a request's answer from its rows of a run (or the run's error)."""
        if isinstance(outputs, Exception):
            return error_reply(outputs)
        try:
            return infer_reply(self.runtime, req, outputs)
        except Exception as e:
            return error_reply(e)

    def infer_now(
        self,
        model_name: str,
        model_version: str | None,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        predictor: Predictor | None = None,
    ) -> Reply:
        """The fast lane's OIP infer: what the ASGI ``infer`` endpoint answers, errors included, without a
        coroutine (only while :meth:`fast_lane_refusal` is None; ``predictor``: see
        :meth:`DataPlane.infer_now`). The prediction metrics and log are left for
        ``dataplane.observe_deferred()``, which the lane calls once the answer is written: the client does
        not wait for them."""
        try:
            doc, binary = infer_payload(headers, body, self.plain)
            req, outputs = self.dataplane.infer_now(
                model_name, model_version, decode_infer_request, doc, binary, predictor
            )
            return infer_reply(self.runtime, req, outputs)
        except Exception as e:
            return error_reply(e)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def begin_grpc_stop(self) -> None:
        """The HTTP listener is closing: gRPC stops accepting RPCs too; those in flight may finish."""
        if self.grpc is not None:
            self.grpc.begin_stop()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.predictor.start()
        if self.predlog is not None:
            self.predlog.start()
        if self.grpc is not None:
            await self.grpc.start()
        # Everything allocated so far (modules, the model, the app) lives for the whole process: move it
        # out of the collector's reach so full collections stay short and tail latency stays low.
        gc.collect()
        gc.freeze()
        self.dataplane.set_ready(True)
        rt = self.runtime
        log.info(
            "serving %s version %s, a %s (%s); REST on port %d, gRPC %s; predictor=%s prediction_logging=%s",
            rt.name,
            rt.version,
            "Kubeloop model" if rt.kind == "kubeloop" else "foreign ONNX model (no Kubeloop metadata)",
            rt.provider,
            self.settings.port,
            f"on port {self.grpc.port}" if self.grpc is not None else "off",
            type(self.predictor).__name__,
            self.predlog is not None,
        )
        try:
            yield
        finally:
            self.dataplane.start_draining()
            if self.grpc is not None:  # in-flight RPCs finish before the batcher and the log stop
                await self.grpc.stop(self.settings.graceful_timeout_s)
            await self.predictor.stop()
            if self.predlog is not None:
                await asyncio.to_thread(self.predlog.stop, self.settings.flush_timeout_s)
                written, dropped, unconfirmed = self.predlog.counts()
                log.info(
                    "prediction log flushed: %d rows written, %d dropped%s",
                    written,
                    dropped,
                    f", {unconfirmed} unconfirmed (in a write that outlived the deadline: the process exits "
                    "without waiting for it)"
                    if unconfirmed
                    else "",
                )

    # --- routes -------------------------------------------------------------------------------------------------

    def _build_app(self) -> tuple[FastAPI, list[tuple[str, str, Endpoint]]]:
        dp = self.dataplane
        metrics = self.metrics

        rt = self.runtime
        plain = self.plain

        async def infer(scope: Scope, body: bytes | None) -> Reply:
            """OIP inference: tensors named as the graph inputs (or, for a packed model, one per feature);
            JSON or the binary tensor data extension (Inference-Header-Content-Length), in and out."""
            p = scope["path_params"]
            doc, binary = infer_payload(scope["headers"], body, plain)
            req, outputs = await dp.infer(
                p["model_name"], p.get("model_version"), decode_infer_request, doc, binary
            )
            return infer_reply(rt, req, outputs)

        async def forward(scope: Scope, body: bytes | None) -> Reply:
            """One record (a JSON object keyed by feature name) -> label and probabilities, or prediction."""
            return ok(await dp.forward(parse_json(body)))

        async def forward_batch(scope: Scope, body: bytes | None) -> Reply:
            """A JSON array of records -> {"predictions": [...]}."""
            return ok(await dp.forward_batch(parse_json(body)))

        async def server_metadata(scope: Scope, body: bytes | None) -> Reply:
            """OIP server metadata."""
            return ok(dp.server_metadata())

        async def live(scope: Scope, body: bytes | None) -> Reply:
            """OIP server liveness: 200 while the process runs."""
            return ok({"live": True})

        async def ready(scope: Scope, body: bytes | None) -> Reply:
            """OIP server readiness: 503 while starting or draining after SIGTERM."""
            is_ready = dp.is_ready()
            return ok({"ready": is_ready}, 200 if is_ready else 503)

        async def model_metadata(scope: Scope, body: bytes | None) -> Reply:
            """OIP model metadata (inputs and outputs of the graph)."""
            p = scope["path_params"]
            return ok(dp.model_metadata(p["model_name"], p.get("model_version")))

        async def model_ready(scope: Scope, body: bytes | None) -> Reply:
            """OIP model readiness."""
            p = scope["path_params"]
            is_ready, reply = dp.model_ready(p["model_name"], p.get("model_version"))
            return ok(reply, 200 if is_ready else 503)

        async def metadata(scope: Scope, body: bytes | None) -> Reply:
            """Features, types, classes, task and version of the served model."""
            return ok(dp.metadata())

        async def prometheus(scope: Scope, body: bytes | None) -> Reply:
            """Prometheus metrics."""
            return 200, metrics.render(), CONTENT_TYPE.encode(), None

        limit = self.settings.max_body_bytes
        # Most frequent first: the router tries routes in order.
        routes: list[tuple[str, str, Handler, int | None]] = [
            ("POST", "/v2/models/{model_name}/infer", infer, limit),
            ("POST", "/forward", forward, limit),
            ("POST", "/forward_batch", forward_batch, limit),
            ("POST", "/v2/models/{model_name}/versions/{model_version}/infer", infer, limit),
            ("GET", "/v2/health/ready", ready, None),
            ("GET", "/v2/health/live", live, None),
            ("GET", "/metrics", prometheus, None),
            ("GET", "/v2", server_metadata, None),
            ("GET", "/v2/models/{model_name}", model_metadata, None),
            ("GET", "/v2/models/{model_name}/versions/{model_version}", model_metadata, None),
            ("GET", "/v2/models/{model_name}/ready", model_ready, None),
            ("GET", "/v2/models/{model_name}/versions/{model_version}/ready", model_ready, None),
            ("GET", "/metadata", metadata, None),
        ]
        app = FastAPI(
            title="Kubeloop inference server",
            version=__version__,
            lifespan=self.lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        endpoints: list[tuple[str, str, Endpoint]] = []
        for method, path, handler, body_limit in routes:
            endpoint = Endpoint(path, handler, metrics, body_limit)
            app.router.routes.append(Route(path, endpoint, methods=[method], name=path))
            endpoints.append((method, path, endpoint))

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            metrics.observe_request(PROTOCOL, "other", exc.status_code, 0.0)
            if exc.status_code == 404:
                msg = f"no route {request.method} {request.url.path}"
            elif exc.status_code == 405:
                msg = f"method {request.method} not allowed on {request.url.path}"
            else:
                msg = str(exc.detail)
            return Response(
                _dumps({"error": msg}),
                status_code=exc.status_code,
                media_type="application/json",
                headers=exc.headers,
            )

        return app, endpoints


def create_app(settings: ServerSettings | None = None, **kwargs: Any) -> FastLane:
    """App factory (``uvicorn --factory kubeloop_server.rest:create_app``); settings from the environment."""
    return ServerApp(settings or ServerSettings(), **kwargs).app

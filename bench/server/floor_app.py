"""The HTTP floor of ``make bench-server``: a raw ASGI app that reads the request body and answers a fixed
JSON, served with exactly the uvicorn settings kubeloop-server uses.

Run it as ``python floor_app.py`` with the server's environment (``KUBELOOP_SERVER_*``, a model included)
plus ``BENCH_FLOOR_RESPONSE``, a file holding the fixed answer. It starts kubeloop-server's own entry point
with ``uvicorn.Config`` patched so that whatever configuration the server builds (event loop, HTTP parser,
lifespan, keep-alive, headers, its uvicorn.Server subclass, ...) serves this app instead of the server's.
The server's start-up still loads the model and its lifespan still runs (gRPC server, gc.freeze), but no
HTTP request ever reaches it. The settings used are
printed to stderr (the bench shows them), so a reader can see that both sides run on the same ones.

Whatever time a request to kubeloop-server takes beyond a request to this app is ours: routing, parsing,
validation, session.run, encoding, metrics and logging.

The floor is uvicorn's own httptools protocol (``http="httptools"``) serving the ASGI no-op, whatever
protocol the server passes: the issue's definition of the HTTP floor. kubeloop-server answers OIP infer in
its HTTP fast lane (kubeloop_server.protocol: uvicorn's protocol without the ASGI round trip), which costs
less per request than any ASGI app can, so the ratio against this floor is not like for like on its own.
``BENCH_FLOOR_KIND=lane`` gives the like-for-like floor of the lane: the unchanged server, fast lane and
all, with ``ServerApp.infer_now`` answering the fixed response (no parsing, inference, metrics or logging).

The gRPC floor: with ``BENCH_FLOOR_GRPC_RESPONSE`` (a file holding a serialised ModelInferResponse, the one
kubeloop-server gives to the benchmark's request), the server's own gRPC wire (kubeloop_server.h2grpc:
same framing, routing and event loop) answers ``ModelInfer`` with that message, serialised per call, and
does nothing else: what the gRPC stack alone costs per call on these settings.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
RESPONSE = Path(os.environ["BENCH_FLOOR_RESPONSE"]).read_bytes()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]


async def floor(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "http":
        more = True
        while more:  # read the whole body, as any real endpoint must
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            more = bool(msg.get("more_body", False))
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": RESPONSE})
    elif scope["type"] == "lifespan" and _server_app is not None:
        # The server's own start-up and shut-down: its gRPC server, gc.freeze(), readiness.
        await _server_app(scope, receive, send)


_server_app: Any = None


_config_init = uvicorn.Config.__init__


def _floor_config_init(self: uvicorn.Config, app: Any, *args: Any, **kwargs: Any) -> None:
    used = {**kwargs, "http": "httptools"}  # uvicorn's own protocol, whatever the server's is
    shown = {"positional": [str(a) for a in args], **{k: str(v) for k, v in used.items()}}
    print(
        f"floor: serving the no-op with kubeloop-server's uvicorn.Config (app {type(app).__name__} swapped "
        f"for the floor, the server's http={kwargs.get('http')!s} for uvicorn's httptools): "
        f"{json.dumps(shown, sort_keys=True)}",
        file=sys.stderr,
        flush=True,
    )
    global _server_app
    _server_app = app
    _config_init(self, floor, *args, **used)


def _patch_grpc(path: str) -> None:
    from kubeloop_server import grpcapi
    from kubeloop_server.oip import grpc_predict_v2_pb2 as pb

    answer = pb.ModelInferResponse.FromString(Path(path).read_bytes())

    def model_infer(self: Any, request: Any) -> bytes:
        return bytes(answer.SerializeToString())  # serialised per call, as kubeloop-server's answer is

    grpcapi.InferenceServicer.model_infer = model_infer  # type: ignore[method-assign]
    print(
        f"floor: gRPC ModelInfer answers a fixed {answer.ByteSize()}-byte message",
        file=sys.stderr,
        flush=True,
    )


def _patch_lane() -> None:
    from kubeloop_server.rest import ServerApp

    reply = (200, RESPONSE, b"application/json", None)

    def infer_now(self: Any, *_args: Any) -> Any:
        return reply

    ServerApp.infer_now = infer_now  # type: ignore[method-assign,assignment]
    print("floor: the server's HTTP fast lane answers a fixed reply", file=sys.stderr, flush=True)


def main() -> None:
    if os.environ.get("BENCH_FLOOR_KIND", "asgi") == "lane":
        _patch_lane()
    else:
        uvicorn.Config.__init__ = _floor_config_init  # type: ignore[method-assign]
    grpc_answer = os.environ.get("BENCH_FLOOR_GRPC_RESPONSE")
    if grpc_answer:
        _patch_grpc(grpc_answer)
    from kubeloop_server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()

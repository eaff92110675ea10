"""``kubeloop-server``: load the model, then serve it with uvicorn until SIGTERM.

Shutdown sequence on SIGTERM (or SIGINT):

1. readiness (``/v2/health/ready``, model ready) answers 503 at once, requests are still served for
   ``drain_seconds`` so the endpoints controller can take the pod out of the Service;
2. the HTTP listener closes and gRPC stops accepting RPCs; in-flight requests and RPCs finish (at most
   ``graceful_timeout_s``);
3. the batcher drains, the prediction log flushes (at most ``flush_timeout_s``), the process exits 0.

A second signal skips the drain wait.

A server that cannot start writes a one-line reason to ``termination_log`` (the Kubernetes termination
message: ``ModelLoadFailed: <why>`` or ``InvalidSettings: <why>``) and exits 2; a listener that cannot
bind exits 3.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from kubeloop_server.errors import ModelLoadError
from kubeloop_server.protocol import make_protocol
from kubeloop_server.rest import ServerApp
from kubeloop_server.settings import ServerSettings

log = logging.getLogger("kubeloop_server")

MODEL_LOAD_FAILED = "ModelLoadFailed"
INVALID_SETTINGS = "InvalidSettings"
EXIT_START_FAILED = 2
# Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_TERMINATION_MESSAGE = 4096


def write_termination(path: str, reason: str, message: str) -> None:
    """``<reason>: <message>`` on one line into the termination-message file; skipped if unwritable."""
    line = f"{reason}: {' '.join(message.split())}"
    data = line.encode()[: _MAX_TERMINATION_MESSAGE - 1].decode(errors="ignore") + "\n"
    try:
        Path(path).write_text(data)
    except OSError as e:
        log.debug("termination message not written to %s: %s", path, e)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase between the signal and closing the listener."""

    def __init__(self, config: uvicorn.Config, server_app: ServerApp, drain_seconds: float) -> None:
        super().__init__(config)
        self._server_app = server_app
        self._drain_seconds = drain_seconds
        self._drain_deadline: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only set flags, the main loop acts on them. Unlike
        # uvicorn's own handler it does not re-raise the signal after a graceful stop, so the exit code is 0.
        self._server_app.dataplane.start_draining()
        if self._drain_deadline is None and self._drain_seconds > 0:
            self._drain_deadline = time.monotonic() + self._drain_seconds
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The HTTP listener closes now: so does gRPC's; in-flight work on both finishes, then the lifespan
        # shutdown (batcher, prediction log) runs.
        self._server_app.begin_grpc_stop()
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if not self._drain_logged:
                log.info("signal received: readiness is 503, draining for %.1fs", self._drain_seconds)
                self._drain_logged = True
            if time.monotonic() >= self._drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def main(argv: list[str] | None = None) -> None:
    # Read before the settings are validated: a level logging does not know is reported by the settings
    # (InvalidSettings), not raised here.
    level = os.environ.get("KUBELOOP_SERVER_LOG_LEVEL", "info").upper()
    logging.basicConfig(
        level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = ServerSettings()
    except ValidationError as e:
        termination = os.environ.get("KUBELOOP_SERVER_TERMINATION_LOG", "/dev/termination-log")
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'settings'}: {err['msg']}" for err in e.errors()
        )
        log.error("invalid settings: %s", problems)
        write_termination(termination, INVALID_SETTINGS, problems)
        sys.exit(EXIT_START_FAILED)
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        server_app = ServerApp(settings)
    except ModelLoadError as e:
        log.error("model failed to load: %s", e.message)
        write_termination(settings.termination_log, MODEL_LOAD_FAILED, e.message)
        sys.exit(EXIT_START_FAILED)
    refusal = server_app.fast_lane_refusal()
    if refusal is None:
        log.info("HTTP fast lane on: OIP infer for %s is answered without ASGI", server_app.runtime.name)
    else:
        log.info("HTTP fast lane off: %s", refusal)
    config = uvicorn.Config(
        server_app.app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=make_protocol(server_app) if refusal is None else "httptools",
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s + 0.999),
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # no trusted proxy in front of a pod; saves a middleware per request
    )
    server = DrainingServer(config, server_app, settings.drain_seconds)
    server.run()
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()

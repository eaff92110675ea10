"""The server's error hierarchy and the one place where errors become protocol answers.

Every class carries its HTTP status and its gRPC status code; :func:`error_status` turns any exception
into (HTTP status, gRPC code name, message) for the REST layer (:mod:`kubeloop_server.rest`) and the gRPC
layer (:mod:`kubeloop_server.grpcapi`) alike. Bad input is a 4xx / INVALID_ARGUMENT whose message names
the field; anything that is not a :class:`ServerError` becomes a 500 / INTERNAL, is logged, and is a bug.
"""

from __future__ import annotations

import logging
from typing import Final

log = logging.getLogger("kubeloop_server.errors")


class ServerError(Exception):
    """Base class; ``status_code`` is the HTTP status, ``grpc_code`` the gRPC status code's name."""

    status_code: int = 500
    grpc_code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServerError):
    """The request is malformed or does not fit the model (unknown/missing feature, type, shape, NaN)."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServerError):
    """The request names a model or version this server does not serve."""

    status_code = 404
    grpc_code = "NOT_FOUND"


class RecordApiUnavailableError(ServerError):
    """The record API (/forward, /forward_batch, /metadata features) does not fit the served graph."""

    status_code = 422
    grpc_code = "FAILED_PRECONDITION"


class PayloadTooLargeError(ServerError):
    """The body or the number of rows exceeds the configured limit."""

    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class NotReadyError(ServerError):
    """The server is starting or draining."""

    status_code = 503
    grpc_code = "UNAVAILABLE"


class ModelLoadError(ServerError):
    """The model could not be fetched, parsed or run at start-up (the process exits)."""

    status_code = 500
    grpc_code = "INTERNAL"


class UnimplementedError(ServerError):
    """A method or extension this server does not serve (gRPC's model repository RPCs)."""

    status_code = 501
    grpc_code = "UNIMPLEMENTED"


class InferenceError(ServerError):
    """ONNX Runtime failed on inputs that passed validation: a model fault, reported as a 500."""

    status_code = 500
    grpc_code = "INTERNAL"


# gRPC status codes by name (grpc/doc/statuscodes.md): the numbers that travel in grpc-status
GRPC_CODES: Final = {
    name: number
    for number, name in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}


def error_status(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC code name, message) for any exception; a non-ServerError is a bug and logged."""
    if isinstance(exc, ServerError):
        return exc.status_code, exc.grpc_code, exc.message
    log.error("internal error (a bug): %r", exc, exc_info=exc)
    return 500, "INTERNAL", f"internal server error: {type(exc).__name__}"

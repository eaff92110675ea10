"""The server's error hierarchy: every class carries its HTTP status, mapped to a response in one place
(:func:`kubeloop_server.rest.install_error_handlers`). Bad input is a 4xx whose message names the field;
anything that is not a :class:`ServerError` becomes a 500 and is a bug.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base class; ``status_code`` is the HTTP status the REST layer answers with."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServerError):
    """The request is malformed or does not fit the model (unknown/missing feature, type, shape, NaN)."""

    status_code = 400


class ModelNotFoundError(ServerError):
    """The request names a model or version this server does not serve."""

    status_code = 404


class PayloadTooLargeError(ServerError):
    """The body or the number of rows exceeds the configured limit."""

    status_code = 413


class NotReadyError(ServerError):
    """The server is starting or draining."""

    status_code = 503


class ModelLoadError(ServerError):
    """The model could not be fetched, parsed or run at start-up (the process exits)."""

    status_code = 500


class InferenceError(ServerError):
    """ONNX Runtime failed on inputs that passed validation: a model fault, reported as a 500."""

    status_code = 500

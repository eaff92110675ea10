"""The facade's one error hierarchy. Every class carries its HTTP status; :func:`install_error_handlers`
turns them (and FastAPI's own validation errors) into responses, in this one place.

Error bodies are Kubernetes ``Status`` objects (``kind: Status``, ``reason``, ``message``, ``code``,
``details.causes[].field``), the format kubectl and client libraries already understand, so that an
error the API server gave us can be passed on unchanged. Bad input is a 4xx whose message starts with the
field it is about. Anything that is not an :class:`ApiError` becomes a 500 and is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("kubeloop_api")


class ApiError(Exception):
    """Base class; ``status_code`` is the HTTP status and ``reason`` the Kubernetes StatusReason."""

    status_code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        causes: Sequence[Mapping[str, str]] | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        upstream_reason: str | None = None,
        log_detail: str | None = None,
    ) -> None:
        if field and not message.startswith(f"{field}:"):
            message = f"{field}: {message}"
        super().__init__(message)
        self.message = message
        self.causes = [dict(c) for c in causes or ()]
        if field and not self.causes:
            self.causes = [{"field": field, "message": message.removeprefix(f"{field}: ")}]
        self.details = dict(details or {})
        self.headers = dict(headers or {})
        self.upstream_reason = upstream_reason
        self.log_detail = log_detail

    @property
    def log_text(self) -> str:
        """The message with what was kept from the caller: a backing service's own error text, which
        can name internal addresses, database URLs, whatever a proxy echoed (the log redacts
        credentials)."""
        return f"{self.message} ({self.log_detail})" if self.log_detail else self.message

    def body(self) -> dict[str, Any]:
        details = dict(self.details)
        if self.causes:
            details["causes"] = self.causes
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.upstream_reason or self.reason,
            "code": self.status_code,
        }
        if details:
            out["details"] = details
        return out


class BadRequestError(ApiError):
    """The request is malformed (a parameter or body that cannot be used at all)."""

    status_code = 400
    reason = "BadRequest"


class UnauthorizedError(ApiError):
    """No credential, or one that is unknown, expired or revoked."""

    status_code = 401
    reason = "Unauthorized"

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="kubeloop"'})
        super().__init__(message, **kw)


class ForbiddenError(ApiError):
    """The caller is known but RBAC does not allow the operation."""

    status_code = 403
    reason = "Forbidden"


class NotFoundError(ApiError):
    status_code = 404
    reason = "NotFound"


class MethodNotAllowedError(ApiError):
    status_code = 405
    reason = "MethodNotAllowed"


class NotAcceptableError(ApiError):
    status_code = 406
    reason = "NotAcceptable"


class ConflictError(ApiError):
    """The object exists already, or changed since it was read."""

    status_code = 409
    reason = "Conflict"


class GoneError(ApiError):
    """A continue token or resourceVersion too old to resume from."""

    status_code = 410
    reason = "Expired"


class PayloadTooLargeError(ApiError):
    status_code = 413
    reason = "RequestEntityTooLarge"


class UnsupportedMediaTypeError(ApiError):
    status_code = 415
    reason = "UnsupportedMediaType"


class InvalidError(ApiError):
    """The body or a parameter is well-formed but not valid; ``causes`` name every bad field."""

    status_code = 422
    reason = "Invalid"


class TooManyRequestsError(ApiError):
    status_code = 429
    reason = "TooManyRequests"


class UpstreamError(ApiError):
    """A backing service (API server, MLflow, object store, model server) failed: not the caller's fault
    and not ours either."""

    status_code = 502
    reason = "BadGateway"


class UnavailableError(ApiError):
    """A backing service is unreachable or not configured, or the facade is at its limit."""

    status_code = 503
    reason = "ServiceUnavailable"


class UpstreamTimeoutError(ApiError):
    status_code = 504
    reason = "Timeout"


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    406: NotAcceptableError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidError,
    429: TooManyRequestsError,
}


def from_status(status: int, message: str, **kw: Any) -> ApiError:
    """The class for an HTTP status another service answered with (4xx kept, anything else a 502)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = UpstreamError if status >= 500 or status < 400 else BadRequestError
    return cls(message, **kw)


def from_kubernetes(status: int, body: Any, what: str) -> ApiError:
    """The API server's refusal, passed on faithfully: same status, reason, message and causes.

    Its 401 means the facade's own credentials failed (the caller was authenticated already), so it is
    a 502 for the caller; its 5xx are a 502 as well."""
    message = f"Kubernetes API returned {status} for {what}"
    kw: dict[str, Any] = {}
    if isinstance(body, dict) and body.get("kind") == "Status":
        message = str(body.get("message") or message)
        kw["upstream_reason"] = body.get("reason") or None
        det = body.get("details")
        if isinstance(det, dict):
            kw["causes"] = [c for c in det.get("causes", []) if isinstance(c, dict)]
            kw["details"] = {
                k: v for k, v in det.items() if k in ("name", "group", "kind", "retryAfterSeconds")
            }
    if status == 401:
        return UpstreamError(f"the facade's own Kubernetes credentials were refused ({what})")
    if status >= 500:
        # Its text is about the cluster's insides (an admission webhook's Service address, etcd): logged.
        reason = f" {kw['upstream_reason']}" if kw.get("upstream_reason") else ""
        return UpstreamError(f"Kubernetes API failed ({status}{reason}) for {what}", log_detail=message)
    if status == 429:
        retry = kw.get("details", {}).get("retryAfterSeconds")
        if retry:
            kw["headers"] = {"Retry-After": str(retry)}
    return from_status(status, message, **kw)


def list_parameter_error(err: ApiError, params: Mapping[str, object]) -> ApiError:
    """The API server's refusal of a list, naming the query parameter it is about (``labelSelector``,
    ``fieldSelector`` or ``continue``, of those in ``params``): its own messages do not ("found '=',
    expected: ',' or 'end of string'"). Status, reason and message are kept; any other error is
    returned as it is."""
    if err.status_code not in (400, 410) or err.causes:
        return err
    msg = err.message
    given = {k for k, v in params.items() if v not in (None, "")}
    field = None
    if "continue" in given and (err.status_code == 410 or msg.startswith("invalid continue token")):
        field = "continue"
    elif err.status_code == 400:
        about_fields = msg.startswith("invalid selector") or "field label" in msg or "field selector" in msg
        if "fieldSelector" in given and (about_fields or "labelSelector" not in given):
            field = "fieldSelector"
        elif "labelSelector" in given:
            field = "labelSelector"
    if field is None:
        return err
    return type(err)(
        msg, field=field, details=err.details, headers=err.headers, upstream_reason=err.upstream_reason
    )


def _field_of(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]  # a field of the body or a parameter by its name; the body itself is "body"
    return ".".join(parts)


def validation_causes(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    causes = []
    for e in errors:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        causes.append({"reason": "FieldValueInvalid", "field": _field_of(e.get("loc", ())), "message": msg})
    return causes


def _response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """The one place where errors become HTTP responses."""

    async def api_error(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.log_text)
        return _response(exc)

    async def request_validation(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # a typed body FastAPI could not parse: loc is an offset
                why = str((e.get("ctx") or {}).get("error") or e.get("msg") or "")
                at = f" at character {e['loc'][-1]}" if len(e.get("loc", ())) > 1 else ""
                return _response(BadRequestError(f"body: not valid JSON: {why[:200]}{at}"))
        causes = validation_causes(exc.errors())
        message = "; ".join(f"{c['field']}: {c['message']}" if c["field"] else c["message"] for c in causes)
        return _response(InvalidError(message or "invalid request", causes=causes))

    async def http_exception(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        err = from_status(exc.status_code, str(exc.detail), headers=exc.headers)
        if exc.status_code == 404:
            err = NotFoundError("no such route")
        return _response(err)

    async def unexpected(_req: Request, exc: Exception) -> JSONResponse:
        # A bug: say so without details (they could contain anything), keep the trace in the log.
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return _response(ApiError("internal error: this is a bug in the Kubeloop API"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(Exception, unexpected)

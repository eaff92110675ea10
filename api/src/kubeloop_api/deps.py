"""What every route needs: the app's services, the authenticated caller, path parameter types and the
admission of long-lived streams (request bodies: :mod:`kubeloop_api.bodies`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import Depends, Path, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive, Scope, Send

from kubeloop.resources import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from kubeloop_api.errors import (
    UnavailableError,
)
from kubeloop_api.identity import Principal
from kubeloop_api.readiness import ReadinessLog

if TYPE_CHECKING:
    from kubeloop_api.auth import Authenticator, Authorizer
    from kubeloop_api.kube import Kube
    from kubeloop_api.metrics import ApiMetrics
    from kubeloop_api.objects import Objects
    from kubeloop_api.registry import Registry
    from kubeloop_api.settings import ApiSettings
    from kubeloop_api.tokens import TokenStore


@dataclass
class Services:
    """Everything one app holds; built by the app factory, closed by its lifespan."""

    settings: ApiSettings
    metrics: ApiMetrics
    kube: Kube
    tokens: TokenStore
    authn: Authenticator
    authz: Authorizer
    registry: Registry | None = None
    objects: Objects | None = None
    sse_clients: int = 0
    log_follows: int = 0
    readiness: ReadinessLog = field(default_factory=ReadinessLog)
    extra: dict[str, Any] = field(default_factory=dict)


class HeldStreamingResponse(StreamingResponse):
    """A long-lived streamed answer that gives back what it holds (``release``: its place among the
    streams the facade lets in) when it ends, however it ends: also when the client is gone before its
    body starts, when the body's own ``finally`` never runs."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def admit_stream(
    count: Callable[[], int], limit: int, change: Callable[[int], None], what: str
) -> Callable[[], None]:
    """A place among at most ``limit`` long-lived streams of one kind, taken at once (before anything
    that takes a while, so that streams opening together each count from here), or 503 with
    Retry-After; returns its release (which acts once). ``change(+1/-1)`` keeps the count."""
    if count() >= limit:
        raise UnavailableError(f"too many open {what}; retry later", headers={"Retry-After": "5"})
    change(1)
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            change(-1)

    return release


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


_bearer: Final = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token the cluster accepts (ServiceAccount, OIDC, …; checked with TokenReview) or a "
    "Kubeloop API token (klp_…).",
)


async def _caller(
    request: Request, _cred: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    return await services(request).authn.authenticate(request.headers.get("authorization"))


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(_caller)]

Namespace = Annotated[
    str,
    Path(
        pattern=DNS_LABEL_PATTERN,
        min_length=1,
        max_length=63,
        description="Kubernetes namespace (a DNS label).",
    ),
]
Name = Annotated[
    str,
    Path(
        pattern=DNS_SUBDOMAIN_PATTERN,
        min_length=1,
        max_length=253,
        description="Object name (a DNS subdomain).",
    ),
]

"""The one module that talks to the Kubernetes API server.

Requests are made with the facade's own credentials and, for everything a caller asks for, with
impersonation headers for that caller, so the API server's RBAC decides (``as_user``). Only the
authentication machinery (TokenReview, SubjectAccessReview, the API-token Secrets) and the Service
lookup behind predictions use the facade's identity alone.

The client is asynchronous (httpx) so that hundreds of watches behind SSE streams cost one coroutine
each. Errors come back as the facade's :mod:`~kubeloop_api.errors`, Kubernetes' own Status kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson

from kubeloop.resources import GROUP, VERSION
from kubeloop_api.errors import (
    ApiError,
    UnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    from_kubernetes,
)
from kubeloop_api.identity import Principal
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

log = logging.getLogger("kubeloop_api.kube")

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
FIELD_MANAGER: Final = "kubeloop-api"
_SA_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"


def crd_path(namespace: str, plural: str, name: str | None = None, sub: str | None = None) -> str:
    """``/apis/kubeloop.io/v1alpha1/namespaces/<ns>/<plural>[/<name>[/<sub>]]``."""
    p = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        p += f"/{quote(name, safe='')}"
        if sub:
            p += f"/{sub}"
    return p


def core_path(namespace: str, resource: str, name: str | None = None, sub: str | None = None) -> str:
    p = f"/api/v1/namespaces/{quote(namespace, safe='')}/{resource}"
    if name is not None:
        p += f"/{quote(name, safe='')}"
        if sub:
            p += f"/{sub}"
    return p


class _Credentials:
    """Server address, TLS and the facade's own credentials, from a kubeconfig or the pod's
    ServiceAccount (the kubernetes package parses kubeconfigs, exec plugins and token refresh)."""

    def __init__(self, settings: ApiSettings) -> None:
        from kubernetes import config as kconfig
        from kubernetes.client import Configuration

        cfg = Configuration()
        in_cluster = (
            settings.kubeconfig is None
            and os.environ.get("KUBERNETES_SERVICE_HOST")
            and (os.path.exists(f"{_SA_DIR}/token"))
        )
        if in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig,
                context=settings.kube_context,
                client_configuration=cfg,
                persist_config=False,
            )
        self._cfg = cfg
        self.server: str = str(cfg.host).rstrip("/")
        ctx = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.ssl_ca_cert
            else ssl.create_default_context()
        )
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.ssl = ctx

    def authorization(self) -> str | None:
        value = self._cfg.get_api_key_with_prefix("BearerToken") or self._cfg.get_api_key_with_prefix(
            "authorization"
        )
        return str(value) if value else None


class Kube:
    """Asynchronous Kubernetes API access with per-request impersonation."""

    def __init__(
        self,
        settings: ApiSettings,
        metrics: ApiMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
        server: str | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._creds: _Credentials | None = None
        kw: dict[str, Any] = {}
        if transport is not None:
            # Unit tests: a fake API server behind an httpx transport.
            base = server or "https://kube.test"
            kw["transport"] = transport
        else:
            self._creds = _Credentials(settings)
            base = self._creds.server
            kw["verify"] = self._creds.ssl
        limits = httpx.Limits(
            max_connections=settings.kube_max_connections,
            max_keepalive_connections=min(256, settings.kube_max_connections),
        )
        self.server = base
        self._client = httpx.AsyncClient(base_url=base, timeout=settings.kube_timeout_s, limits=limits, **kw)
        # Watches and followed logs hold a connection each for minutes: in the pool of the short calls
        # they would take every connection (sse_max_clients is larger than it), and lists, creates and
        # TokenReviews would wait for one until they time out. They have their own, bounded by the
        # number of streams the facade lets in.
        self._streams = httpx.AsyncClient(
            base_url=base,
            timeout=settings.kube_timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            **kw,
        )

    async def close(self) -> None:
        await self._client.aclose()
        await self._streams.aclose()

    def _headers(
        self, as_user: Principal | None, content_type: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[str, str]] = [("Accept", JSON)]
        if self._creds is not None and (auth := self._creds.authorization()):
            headers.append(("Authorization", auth))
        if as_user is not None:
            headers += as_user.impersonation_headers()
        if content_type:
            headers.append(("Content-Type", content_type))
        # UTF-8 bytes, as client-go sends them: httpx encodes a str as ASCII, and fails on the Unicode
        # user and group names OIDC providers give.
        return [(k.encode(), v.encode()) for k, v in headers]

    async def request(
        self,
        method: str,
        path: str,
        *,
        as_user: Principal | None,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
        what: str = "",
    ) -> Any:
        """One API call; returns the decoded JSON body or raises the matching :class:`ApiError`."""
        return _decode(await self.request_raw(method, path, as_user=as_user, params=params, body=body,
                                              content_type=content_type, what=what))  # fmt: skip

    async def request_raw(
        self,
        method: str,
        path: str,
        *,
        as_user: Principal | None,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = JSON,
        what: str = "",
    ) -> httpx.Response:
        """One API call; returns the successful response undecoded (a facade route can pass the API
        server's JSON on as it is) or raises the matching :class:`ApiError`."""
        content = orjson.dumps(body) if body is not None else None
        headers = self._headers(as_user, content_type if content is not None else None)
        for attempt in range(self.settings.kube_throttle_retries + 1):
            t0 = time.perf_counter()
            code = 0
            try:
                resp = await self._client.request(
                    method, path, params=_params(params), content=content, headers=headers
                )
                code = resp.status_code
            except httpx.TimeoutException as e:
                raise UpstreamTimeoutError(f"Kubernetes API did not answer in time ({what or path})") from e
            except httpx.HTTPError as e:
                raise UnavailableError(f"Kubernetes API unreachable: {type(e).__name__}") from e
            finally:
                self.metrics.observe_upstream("kubernetes", code, time.perf_counter() - t0)
            if resp.is_success:
                return resp
            if not await self._throttled(resp, attempt):
                break
        raise from_kubernetes(resp.status_code, _decode(resp), what or f"{method} {path}")

    async def _throttled(self, resp: httpx.Response, attempt: int) -> bool:
        """Wait and say True when the API server shed the request (429 from priority and fairness, which
        never ran it, so any verb may be sent again), as client-go does; False to give up."""
        if resp.status_code != 429 or attempt >= self.settings.kube_throttle_retries:
            return False
        try:
            wait = float(resp.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        await asyncio.sleep(min(max(wait, 0.1), 5.0) * (0.5 + random.random()))
        return True

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        *,
        as_user: Principal | None,
        params: Mapping[str, str | int | bool] | None = None,
        what: str = "",
        read_timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streaming GET (watches, followed logs); the response is open inside the context."""
        headers = self._headers(as_user)
        timeout = httpx.Timeout(self.settings.kube_timeout_s, read=read_timeout)
        for attempt in range(self.settings.kube_throttle_retries + 1):
            req = self._streams.build_request(
                "GET", path, params=_params(params), headers=headers, timeout=timeout
            )
            try:
                resp = await self._streams.send(req, stream=True)
            except httpx.TimeoutException as e:
                raise UpstreamTimeoutError(f"Kubernetes API did not answer in time ({what or path})") from e
            except httpx.HTTPError as e:
                raise UnavailableError(f"Kubernetes API unreachable: {type(e).__name__}") from e
            if resp.status_code != 429 or attempt >= self.settings.kube_throttle_retries:
                break
            await resp.aclose()
            await self._throttled(resp, attempt)
        try:
            if not resp.is_success:
                await resp.aread()
                raise from_kubernetes(resp.status_code, _decode(resp), what or f"GET {path}")
            yield resp
        finally:
            await resp.aclose()

    async def watch(
        self,
        path: str,
        *,
        as_user: Principal | None,
        params: Mapping[str, str | int | bool],
        what: str = "",
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) until the server ends the watch."""
        p = {**params, "watch": "true", "allowWatchBookmarks": "true"}
        async with self.stream(path, as_user=as_user, params=p, what=what) as resp:
            try:
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError as e:
                        raise UpstreamError("Kubernetes watch sent a line that is not JSON") from e
                    if isinstance(event, dict):
                        yield event
            except httpx.HTTPError as e:
                raise UnavailableError(f"Kubernetes watch broke: {type(e).__name__}") from e

    # --- the few calls made with the facade's own identity ------------------------------------------

    async def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        out = await self.request(
            "POST", "/apis/authentication.k8s.io/v1/tokenreviews", as_user=None, body=body, what="TokenReview"
        )
        return dict(out.get("status") or {}) if isinstance(out, dict) else {}

    async def access_review(self, principal: Principal, attributes: Mapping[str, str]) -> tuple[bool, str]:
        groups = list(principal.groups)
        # The API server adds this group to every impersonated user but the anonymous one (and an API
        # token's record does not carry it): the review must see the groups the impersonated calls have.
        if principal.username != "system:anonymous" and "system:authenticated" not in groups:
            groups.append("system:authenticated")
        spec: dict[str, Any] = {
            "user": principal.username,
            "groups": groups,
            "resourceAttributes": dict(attributes),
        }
        if principal.uid:
            spec["uid"] = principal.uid
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        out = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            as_user=None,
            body=body,
            what="SubjectAccessReview",
        )
        status = out.get("status") or {} if isinstance(out, dict) else {}
        return bool(status.get("allowed")) and not status.get("denied"), str(status.get("reason") or "")

    async def ping(self) -> None:
        """Raises unless the API server answers /readyz (used by the facade's own /readyz)."""
        try:
            resp = await self._client.get("/readyz", headers=self._headers(None), timeout=5.0)
        except httpx.HTTPError as e:
            raise UnavailableError(f"Kubernetes API unreachable: {type(e).__name__}") from e
        if resp.status_code != 200:
            raise UnavailableError(f"Kubernetes API not ready ({resp.status_code})")


def _params(params: Mapping[str, str | int | bool] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for k, v in params.items():
        if v is None or v == "":
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def _decode(resp: httpx.Response) -> Any:
    if not resp.content:
        return None
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return {"text": resp.text[:2000]}


__all__ = ["FIELD_MANAGER", "JSON", "MERGE_PATCH", "ApiError", "Kube", "core_path", "crd_path"]

"""The app factory: settings -> a FastAPI application with every router, the error handlers, metrics and
the OpenAPI document (which carries the three resource schemas from the core models)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubeloop.resources import DNS_SUBDOMAIN_PATTERN
from kubeloop_api import __version__
from kubeloop_api.auth import Authenticator, Authorizer
from kubeloop_api.deps import Services
from kubeloop_api.errors import install_error_handlers
from kubeloop_api.kube import Kube
from kubeloop_api.manifests import MODELS
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.objects import Objects
from kubeloop_api.registry import Registry
from kubeloop_api.routers import datasets, health, logs, predict, registry, resources, tokens, watch
from kubeloop_api.settings import ApiSettings
from kubeloop_api.tokens import TokenStore

log = logging.getLogger("kubeloop_api")

DESCRIPTION = """
Kubeloop's REST facade. Every request is authenticated (a Bearer token the cluster accepts, or a
Kubeloop API token) and every Kubernetes call is made impersonating the caller, so Kubernetes RBAC
decides. Errors are Kubernetes `Status` objects whose `details.causes[].field` names the bad field.
"""


_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "name (or generateName), labels and annotations; the namespace comes from the URL (a "
    "namespace given here must match it).",
    "properties": {
        "name": {"type": "string", "pattern": DNS_SUBDOMAIN_PATTERN, "maxLength": 253},
        "generateName": {"type": "string", "maxLength": 200},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    "required": ["name"],
    "additionalProperties": False,
}


class _RequestMetrics:
    """Counts and times every request by route template (a bounded label), as a plain ASGI middleware
    so that streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        observed = [False]

        def observe(status: int) -> None:
            observed[0] = True
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(path, scope["method"], status, time.perf_counter() - t0)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and not observed[0]:
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # A bug: Starlette's outermost middleware answers it with a 500, outside this one.
            if not observed[0]:
                observe(500)
            raise


def build_services(settings: ApiSettings, **overrides: Any) -> Services:
    metrics = overrides.pop("metrics", None) or ApiMetrics()
    kube = overrides.pop("kube", None) or Kube(settings, metrics)
    token_store = TokenStore(kube, settings.namespace)
    reg = overrides.pop("registry", None)
    if reg is None and settings.mlflow_tracking_uri:
        reg = Registry(settings, metrics)
    objects = overrides.pop("objects", None)
    if objects is None and settings.s3_endpoint:
        objects = Objects.from_settings(settings, metrics)
    svc = Services(
        settings=settings,
        metrics=metrics,
        kube=kube,
        tokens=token_store,
        authn=Authenticator(kube, token_store, settings, metrics),
        authz=Authorizer(kube, settings, metrics),
        registry=reg,
        objects=objects,
    )
    svc.extra["predict_client"] = httpx.AsyncClient(
        timeout=settings.predict_timeout_s,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        # The model server is reached directly; no proxy from the environment applies in the cluster.
        trust_env=False,
    )
    if overrides:
        raise TypeError(f"unknown overrides: {sorted(overrides)}")
    return svc


def create_app(settings: ApiSettings | None = None, **overrides: Any) -> FastAPI:
    """The application. ``overrides`` replace services (``kube``, ``registry``, ``objects``,
    ``metrics``) in unit tests."""
    settings = settings or ApiSettings()
    svc = build_services(settings, **overrides)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("Kubeloop API %s: Kubernetes at %s", __version__, svc.kube.server)
        try:
            yield
        finally:
            await svc.kube.close()
            if svc.registry is not None:
                await svc.registry.close()
            await svc.extra["predict_client"].aclose()

    docs = settings.docs_enabled
    app = FastAPI(
        title="Kubeloop API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.services = svc
    install_error_handlers(app)
    for r in (
        health.router,
        tokens.router,
        resources.router,
        watch.router,
        logs.router,
        predict.router,
        registry.router,
        datasets.router,
    ):
        app.include_router(r)
    app.add_middleware(_RequestMetrics, metrics=svc.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in MODELS.values():
            js = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            js["properties"]["kind"] = {"type": "string", "enum": [model.kind]}
            # What the facade accepts in metadata (the envelope model keeps it free-form).
            js["properties"]["metadata"] = _METADATA_SCHEMA
            js["required"] = sorted({*js.get("required", []), "metadata", "spec"})
            js["properties"].pop("status", None)
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

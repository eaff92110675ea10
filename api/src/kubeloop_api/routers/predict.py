"""Predictions, proxied to a ModelDeployment's Service (OIP v2 REST, /forward, /forward_batch, /metadata).

The caller's permission comes first: the ModelDeployment is read impersonating the caller (RBAC ``get``
on modeldeployments; 403/404 otherwise). Only then does the facade look up the Service (its own
identity: the caller needs no rights on Services) and forward the request. The caller's credentials are
never forwarded to the model server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Final
from urllib.parse import urlparse

import httpx
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from kubeloop.naming import model_deployment_service_name
from kubeloop_api.bodies import read_body
from kubeloop_api.deps import Caller, Name, Namespace, Services, Svc
from kubeloop_api.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    UnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from kubeloop_api.identity import Principal
from kubeloop_api.kube import core_path, crd_path

router = APIRouter(prefix="/api/v1/namespaces/{namespace}/modeldeployments/{name}", tags=["predictions"])

_FORWARD_HEADERS: Final = ("content-type", "accept", "inference-header-content-length")
_RETURN_HEADERS: Final = ("content-type", "inference-header-content-length")

OipPath = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9._~/-]{1,512}$",
        description="OIP v2 path below /v2, e.g. models/breast-cancer/infer or health/ready.",
    ),
]


async def _target(svc: Services, caller: Principal, namespace: str, name: str) -> str:
    """``http://<clusterIP>:<port>`` of the deployment's Service, after the caller's RBAC check."""
    md = await svc.kube.request(
        "GET",
        crd_path(namespace, "modeldeployments", name),
        as_user=caller,
        what=f"get modeldeployments/{name}",
    )
    url = str((md.get("status") or {}).get("url") or "")
    host = urlparse(url).hostname if url else None
    # Until the operator writes status.url, the Service's name is derived as the operator derives it.
    service = host.split(".")[0] if host else model_deployment_service_name(name)
    try:
        svc_obj = await svc.kube.request(
            "GET", core_path(namespace, "services", service), as_user=None, what=f"get service {service}"
        )
    except NotFoundError:
        # Not deployed (yet): a state of the resource the caller can see, not an outage.
        raise ConflictError(f'ModelDeployment "{name}" is not serving yet: it has no Service') from None
    spec = svc_obj.get("spec") or {}
    ip = spec.get("clusterIP")
    ports = spec.get("ports") or []
    if not ip or ip == "None" or not ports:
        raise UnavailableError(f'Service "{service}" of ModelDeployment "{name}" has no cluster IP or port')
    port = next((p["port"] for p in ports if p.get("name") == "http"), ports[0].get("port"))
    return f"http://{ip}:{port}"


async def _proxy(
    request: Request, svc: Services, caller: Principal, namespace: str, name: str, path: str
) -> Response:
    if any(seg in (".", "..") for seg in path.split("/")):
        raise InvalidError("must not contain '.' or '..' segments", field="path")
    base = await _target(svc, caller, namespace, name)
    body = None
    if request.method in ("POST", "PUT"):
        body = await read_body(request, svc.settings.predict_max_body_bytes)
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD_HEADERS}
    client: httpx.AsyncClient = svc.extra["predict_client"]
    timeout = svc.settings.predict_timeout_s
    t0 = time.perf_counter()
    code = 0
    resp: httpx.Response | None = None
    try:
        # One deadline for the whole exchange: httpx's timeouts bound each read, so a server dribbling
        # its answer would otherwise hold the caller and both connections for ever. The answer is read
        # whole (predictions are documents; half of one is no use) so that this ends in a clean status.
        async with asyncio.timeout(timeout):
            req = client.build_request(request.method, base + path, content=body, headers=headers)
            resp = await client.send(req, stream=True)
            code = resp.status_code
            content = await _read_answer(resp, svc.settings.predict_max_response_bytes, name)
    except (TimeoutError, httpx.TimeoutException) as e:
        raise UpstreamTimeoutError(f'ModelDeployment "{name}" did not answer within {timeout:g} s') from e
    except httpx.HTTPError as e:
        if resp is not None:
            raise UpstreamError(f'ModelDeployment "{name}" broke off its answer ({type(e).__name__})') from e
        raise UnavailableError(
            f'ModelDeployment "{name}" is not reachable ({type(e).__name__}); is it Ready?'
        ) from e
    finally:
        if resp is not None:
            await resp.aclose()
        svc.metrics.observe_upstream("model", code, time.perf_counter() - t0)
    if resp.status_code >= 500:
        text = content.decode(errors="replace")[:500]
        raise UpstreamError(f'ModelDeployment "{name}" failed ({resp.status_code}): {text}')
    out_headers = {k: v for k, v in resp.headers.items() if k.lower() in _RETURN_HEADERS}
    # Decoded bytes: the model server may compress, and Content-Encoding is not passed back.
    return Response(content, status_code=resp.status_code, headers=out_headers)


async def _read_answer(resp: httpx.Response, limit: int, name: str) -> bytes:
    """The whole answer, or 502 as soon as it passes ``limit`` bytes."""

    def too_large() -> UpstreamError:
        return UpstreamError(
            f'ModelDeployment "{name}" answered more than the limit of {limit} bytes '
            "(KUBELOOP_API_PREDICT_MAX_RESPONSE_BYTES)"
        )

    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


_JSON_BODY: Final[dict[str, Any]] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}
}


@router.post(
    "/forward", summary="One record (JSON object by feature name) -> prediction", openapi_extra=_JSON_BODY
)
async def forward(request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
    return await _proxy(request, svc, caller, namespace, name, "/forward")


@router.post("/forward_batch", summary="A JSON array of records -> predictions", openapi_extra=_JSON_BODY)
async def forward_batch(
    request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name
) -> Response:
    return await _proxy(request, svc, caller, namespace, name, "/forward_batch")


@router.get("/metadata", summary="Features, types, classes and version of the served model")
async def metadata(request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
    return await _proxy(request, svc, caller, namespace, name, "/metadata")


@router.get("/v2", summary="OIP v2 server metadata")
async def oip_server(
    request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name
) -> Response:
    return await _proxy(request, svc, caller, namespace, name, "/v2")


@router.get("/v2/{path:path}", summary="OIP v2 REST (GET: health, model metadata, readiness)")
async def oip_get(
    request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name, path: OipPath
) -> Response:
    return await _proxy(request, svc, caller, namespace, name, f"/v2/{path}")


@router.post(
    "/v2/{path:path}",
    summary="OIP v2 REST (POST: models/{model}/infer, JSON or binary tensors)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {}}, "application/octet-stream": {"schema": {}}},
        }
    },
)
async def oip_post(
    request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name, path: OipPath
) -> Response:
    return await _proxy(request, svc, caller, namespace, name, f"/v2/{path}")

"""Liveness, readiness and Prometheus metrics (no authentication: probes and scrapers call them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from kubeloop_api.deps import Svc
from kubeloop_api.errors import ApiError
from kubeloop_api.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 while the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: 200 when the Kubernetes API answers (optional backends are reported, not required)",
    responses={503: {"description": "The Kubernetes API is not reachable"}},
)
async def readyz(svc: Svc) -> JSONResponse:
    checks: dict[str, Any] = {}
    ready = True
    try:
        await svc.kube.ping()
        checks["kubernetes"] = "ok"
    except ApiError as e:
        checks["kubernetes"] = e.message
        ready = False
    if svc.registry is None:
        checks["mlflow"] = "disabled"
    else:
        try:
            await svc.registry.ping()
            checks["mlflow"] = "ok"
        except ApiError as e:
            checks["mlflow"] = e.message
    if svc.objects is None:
        checks["objectStore"] = "disabled"
    else:
        try:
            await svc.objects.ping()
            checks["objectStore"] = "ok"
        except ApiError as e:
            checks["objectStore"] = e.message
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (kubeloop_api_*)", response_class=Response)
async def metrics(svc: Svc) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

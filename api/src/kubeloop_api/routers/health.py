"""Liveness, readiness and Prometheus metrics (no authentication: probes and scrapers call them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
    description=(
        "Each check is `ok`, `failed` or `disabled` (not configured), as Kubernetes' own /readyz?verbose "
        "names its checks. Why a check failed is in the facade's log, not here: this endpoint takes no "
        "credentials. A failure is logged when it starts, at most once a minute while it lasts, and its "
        "recovery once."
    ),
    responses={503: {"description": "The Kubernetes API is not reachable"}},
)
async def readyz(svc: Svc) -> JSONResponse:
    async def check(name: str, ping: Callable[[], Awaitable[None]] | None) -> str:
        if ping is None:
            return "disabled"
        try:
            await ping()
        except ApiError as e:
            # Backend error text can name endpoints, buckets or whatever a proxy echoed back: anyone
            # may call this endpoint, so it stays in the log (rate-limited: probes come every few s).
            svc.readiness.failed(name, e.log_text)
            return "failed"
        svc.readiness.ok(name)
        return "ok"

    checks = {
        "kubernetes": await check("kubernetes", svc.kube.ping),
        "mlflow": await check("mlflow", svc.registry.ping if svc.registry is not None else None),
        "objectStore": await check("objectStore", svc.objects.ping if svc.objects is not None else None),
    }
    ready = checks["kubernetes"] == "ok"
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (kubeloop_api_*)", response_class=Response)
async def metrics(svc: Svc) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

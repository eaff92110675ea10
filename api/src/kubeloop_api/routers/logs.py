"""Training logs of a TrainingJob's pods: live (follow, tail, per rank) from Kubernetes, impersonating the
caller (RBAC ``get pods/log``); and the kept log of a failed pod, which the operator copies to object
storage before any cleanup (``logs/<namespace>/<trainingjob>/<pod>.log``), authorised by a
SubjectAccessReview for the same permission.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from enum import StrEnum
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from kubeloop.contracts import (
    JOB_COMPLETION_INDEX_ANNOTATION,
    JOB_COMPLETION_INDEX_LABEL,
    Labels,
    training_log,
    training_logs_prefix,
)
from kubeloop_api.auth import ACCESS
from kubeloop_api.deps import Caller, HeldStreamingResponse, Name, Namespace, Services, Svc, admit_stream
from kubeloop_api.errors import ApiError, NotFoundError, UnavailableError
from kubeloop_api.identity import Principal
from kubeloop_api.kube import core_path, crd_path

router = APIRouter(prefix="/api/v1/namespaces/{namespace}/trainingjobs/{name}", tags=["training logs"])

_LOG_ACCESS: Final = ACCESS["logs.kept"]
_POD_INDEX: Final = re.compile(r"-(\d+)-[a-z0-9]{5}$")
_TEXT: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "The log as text.", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


class Source(StrEnum):
    auto = "auto"
    live = "live"
    kept = "kept"


def _rank_of(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(JOB_COMPLETION_INDEX_LABEL) or (meta.get("annotations") or {}).get(
        JOB_COMPLETION_INDEX_ANNOTATION
    )
    try:
        return int(value) if value is not None else _rank_from_name(str(meta.get("name", "")))
    except ValueError:
        return None


def _rank_from_name(pod_name: str) -> int | None:
    m = _POD_INDEX.search(pod_name)
    return int(m[1]) if m else None


async def _live_pods(
    svc: Services, caller: Principal, namespace: str, tj: dict[str, Any]
) -> list[dict[str, Any]]:
    uid = tj["metadata"]["uid"]
    out = await svc.kube.request(
        "GET",
        core_path(namespace, "pods"),
        as_user=caller,
        params={"labelSelector": f"{Labels.OWNER_UID}={uid}"},
        what="list the TrainingJob's pods",
    )
    pods: list[dict[str, Any]] = out.get("items", [])
    return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True)


async def _kept(svc: Services, caller: Principal, namespace: str, name: str) -> list[dict[str, Any]]:
    """Kept logs (newest first), or [] when object storage is not configured or the caller may not read
    pod logs in the namespace."""
    if svc.objects is None:
        return []
    if not await svc.authz.allowed(caller, _LOG_ACCESS, namespace):
        return []
    prefix = training_logs_prefix(namespace, name, svc.settings.bucket)
    infos = await svc.objects.list(prefix.key + "/")
    out = []
    for info in infos:
        pod = info.key.rsplit("/", 1)[-1].removesuffix(".log")
        out.append(
            {"pod": pod, "rank": _rank_from_name(pod), "sizeBytes": info.size, "modified": info.modified}
        )
    return sorted(out, key=lambda k: str(k["modified"]), reverse=True)


async def _trainingjob(svc: Services, caller: Principal, namespace: str, name: str) -> dict[str, Any]:
    tj: dict[str, Any] = await svc.kube.request(
        "GET", crd_path(namespace, "trainingjobs", name), as_user=caller, what=f"get trainingjobs/{name}"
    )
    return tj


@router.get("/pods", summary="The TrainingJob's pods (live) and kept logs of failed pods, with ranks")
async def pods(svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> dict[str, Any]:
    tj = await _trainingjob(svc, caller, namespace, name)
    live = [
        {
            "pod": p["metadata"]["name"],
            "rank": _rank_of(p),
            "phase": (p.get("status") or {}).get("phase"),
            "containers": [c.get("name") for c in (p.get("spec") or {}).get("containers", [])],
        }
        for p in await _live_pods(svc, caller, namespace, tj)
    ]
    return {"live": live, "kept": await _kept(svc, caller, namespace, name)}


@router.get("/logs", summary="Training logs (live: follow, tail, per rank; kept: a failed pod's whole log)",
            response_class=PlainTextResponse, responses=_TEXT)  # fmt: skip
async def logs(
    svc: Svc,
    caller: Caller,
    namespace: Namespace,
    name: Name,
    rank: Annotated[int, Query(ge=0, le=255, description="Rank (completion index) of the pod.")] = 0,
    pod: Annotated[
        str | None,
        Query(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253, description="A pod by name."),
    ] = None,
    container: Annotated[str | None, Query(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] = None,
    follow: Annotated[bool, Query(description="Stream new lines as they are written (live only).")] = False,
    tail_lines: Annotated[
        int | None, Query(alias="tailLines", ge=0, description="Only the last N lines.")
    ] = None,
    previous: Annotated[bool, Query(description="The previous container run (after a restart).")] = False,
    timestamps: Annotated[bool, Query(description="Prefix lines with their time (live only).")] = False,
    source: Annotated[
        Source,
        Query(description="live pod, kept log, or auto: the live pod if it exists, else the kept log."),
    ] = Source.auto,
) -> Response:
    if tail_lines is not None and tail_lines > svc.settings.logs_max_tail_lines:
        tail_lines = svc.settings.logs_max_tail_lines
    tj = await _trainingjob(svc, caller, namespace, name)
    if source != Source.kept:
        live = await _live_pods(svc, caller, namespace, tj)
        chosen = [p for p in live if (p["metadata"]["name"] == pod if pod else _rank_of(p) == rank)]
        if chosen:
            return await _stream_live(
                svc, caller, namespace, chosen[0]["metadata"]["name"], container, follow, tail_lines, previous,
                timestamps,
            )  # fmt: skip
        if source == Source.live:
            raise NotFoundError(f'TrainingJob "{name}" has no live pod {_which(pod, rank)}')
    if svc.objects is None:
        raise (UnavailableError("object storage is not configured") if source == Source.kept else NotFoundError(
            f'TrainingJob "{name}" has no pod {_which(pod, rank)}'))  # fmt: skip
    await svc.authz.require(caller, "logs.kept", namespace)
    kept = await _kept(svc, caller, namespace, name)
    match = [k for k in kept if (k["pod"] == pod if pod else k["rank"] == rank)]
    if not match:
        raise NotFoundError(f'TrainingJob "{name}" has no live pod and no kept log {_which(pod, rank)}')
    ref = training_log(namespace, name, match[0]["pod"], svc.settings.bucket)
    data = await svc.objects.get(ref.key)
    if data is None:
        raise NotFoundError(f"the kept log of pod {match[0]['pod']} is gone")
    text = data.decode("utf-8", errors="replace")
    if tail_lines is not None:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-tail_lines:]) if tail_lines else ""
    return PlainTextResponse(
        text, headers={"X-Kubeloop-Log-Source": "kept", "X-Kubeloop-Pod": match[0]["pod"]}
    )


def _admit_follow(svc: Services) -> Callable[[], None]:
    """A followed log holds an API server log stream for as long as its client stays: bounded."""

    def change(by: int) -> None:
        svc.log_follows += by

    return admit_stream(lambda: svc.log_follows, svc.settings.logs_max_follows, change, "followed logs")


def _which(pod: str | None, rank: int) -> str:
    return f'"{pod}"' if pod else f"of rank {rank}"


async def _stream_live(
    svc: Services,
    caller: Principal,
    namespace: str,
    pod: str,
    container: str | None,
    follow: bool,
    tail_lines: int | None,
    previous: bool,
    timestamps: bool,
) -> HeldStreamingResponse:
    params: dict[str, str | int | bool] = {"follow": follow, "previous": previous, "timestamps": timestamps}
    if container:
        params["container"] = container
    if tail_lines is not None:
        params["tailLines"] = tail_lines
    release = _admit_follow(svc) if follow else (lambda: None)
    stack = AsyncExitStack()
    try:
        # Opened before the response starts: Kubernetes' 400/403/404 become this request's status.
        resp = await stack.enter_async_context(
            svc.kube.stream(
                core_path(namespace, "pods", pod, "log"),
                as_user=caller,
                params=params,
                what=f"logs of pod {pod}",
                read_timeout=None if follow else svc.settings.kube_timeout_s,
            )
        )
    except BaseException:
        release()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except Exception as e:  # the log stream broke (pod deleted, node gone): end the response
            if not isinstance(e, ApiError | OSError) and type(e).__module__.split(".")[0] != "httpx":
                raise
        finally:
            await stack.aclose()

    return HeldStreamingResponse(
        body(),
        release,
        media_type="text/plain; charset=utf-8",
        headers={"X-Kubeloop-Log-Source": "live", "X-Kubeloop-Pod": pod, "Cache-Control": "no-cache"},
    )

"""Server-Sent-Event status streams of one object or of a namespace (see :mod:`kubeloop_api.sse`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from kubeloop_api.deps import Caller, HeldStreamingResponse, Name, Namespace, Services, Svc, admit_stream
from kubeloop_api.errors import ApiError, NotFoundError, list_parameter_error
from kubeloop_api.identity import Principal
from kubeloop_api.kube import crd_path
from kubeloop_api.manifests import MODELS, Kind
from kubeloop_api.sse import StatusStream

router = APIRouter(prefix="/api/v1/watch", tags=["status streams"])

_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text/event-stream of status changes.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
_PAGE = 500

ResumeQuery = Annotated[
    str | None,
    Query(
        alias="resourceVersion",
        pattern=r"^[0-9]{1,20}$",
        description="Resume after this resourceVersion (the id of the last event seen).",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^[0-9]{1,20}$",
        description="Sent by EventSource on reconnect; same as resourceVersion.",
    ),
]


def _stream(
    svc: Services,
    caller: Principal,
    kind: Kind,
    path: str,
    selector: dict[str, str | int | bool],
    resume: str | None,
    initial: tuple[list[dict[str, Any]], str] | None,
    release: Callable[[], None],
) -> StreamingResponse:
    first = [initial]

    async def list_fn() -> tuple[list[dict[str, Any]], str]:
        if first[0] is not None:
            out, first[0] = first[0], None
            return out
        return await _list_all(svc, caller, path, selector, kind)

    def watch_fn(rv: str) -> AsyncIterator[dict[str, Any]]:
        params = {**selector, "resourceVersion": rv, "timeoutSeconds": svc.settings.sse_watch_timeout_s}
        return svc.kube.watch(path, as_user=caller, params=params, what=f"watch {kind.value}")

    m = svc.metrics
    stream = StatusStream(
        list_fn,
        watch_fn,
        resume_from=resume,
        buffer=svc.settings.sse_buffer_events,
        heartbeat_s=svc.settings.sse_heartbeat_s,
        on_event=lambda t: m.sse_events.labels(t).inc(),
        on_overflow=m.sse_overflows.inc,
    )

    return HeldStreamingResponse(
        stream.events(),
        release,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _admit(svc: Services) -> Callable[[], None]:
    def change(by: int) -> None:
        svc.sse_clients += by
        svc.metrics.sse_clients.inc(by)

    return admit_stream(lambda: svc.sse_clients, svc.settings.sse_max_clients, change, "status streams")


class _SingleFlight:
    """Identical lists (same caller, same path and selector) that are in flight at the same time share
    one request: when many streams of one caller open together (a dashboard reconnecting), the API
    server lists once. Nothing is kept after the list returns, so every stream still starts from a
    fresh list; what a caller sees is exactly what its own request would have returned."""

    def __init__(self) -> None:
        self._inflight: dict[tuple[object, ...], asyncio.Future[tuple[list[dict[str, Any]], str]]] = {}

    async def run(
        self, key: tuple[object, ...], fn: Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]]
    ) -> tuple[list[dict[str, Any]], str]:
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await fn()
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[key]


async def _list_all(
    svc: Services, caller: Principal, path: str, selector: dict[str, str | int | bool], kind: Kind
) -> tuple[list[dict[str, Any]], str]:
    flights = svc.extra.setdefault("sse_list_flights", _SingleFlight())
    key = (caller.username, caller.groups, path, tuple(sorted(selector.items())))
    result: tuple[list[dict[str, Any]], str] = await flights.run(
        key, lambda: _list_pages(svc, caller, path, selector, kind)
    )
    return result


async def _list_pages(
    svc: Services, caller: Principal, path: str, selector: dict[str, str | int | bool], kind: Kind
) -> tuple[list[dict[str, Any]], str]:
    items: list[dict[str, Any]] = []
    cont = ""
    while True:
        params = {**selector, "limit": _PAGE, **({"continue": cont} if cont else {})}
        out = await svc.kube.request("GET", path, as_user=caller, params=params, what=f"list {kind.value}")
        items += out.get("items", [])
        meta = out.get("metadata") or {}
        cont = meta.get("continue") or ""
        if not cont:
            return items, str(meta.get("resourceVersion", ""))


async def _open(
    svc: Services,
    caller: Principal,
    namespace: str,
    kind: Kind,
    resume: str | None,
    name: str | None,
    label_selector: str | None,
) -> StreamingResponse:
    release = _admit(svc)
    try:
        return await _start(svc, caller, namespace, kind, resume, name, label_selector, release)
    except BaseException:
        release()
        raise


async def _start(
    svc: Services,
    caller: Principal,
    namespace: str,
    kind: Kind,
    resume: str | None,
    name: str | None,
    label_selector: str | None,
    release: Callable[[], None],
) -> StreamingResponse:
    path = crd_path(namespace, kind.value)
    selector: dict[str, str | int | bool] = {}
    if name is not None:
        selector["fieldSelector"] = f"metadata.name={name}"
    if label_selector:
        selector["labelSelector"] = label_selector
    # The first list runs before the response starts, so that 401/403/404 are HTTP statuses and not
    # events; it doubles as the snapshot (or, when resuming, as the permission check).
    try:
        initial = await _list_all(svc, caller, path, selector, kind) if resume is None else None
        if resume is not None:
            await svc.kube.request(
                "GET", path, as_user=caller, params={**selector, "limit": 1}, what=f"list {kind.value}"
            )
    except ApiError as e:
        raise list_parameter_error(e, selector) from None
    if resume is None and name is not None and not initial[0]:  # type: ignore[index]
        raise NotFoundError(f'{kind.value}.kubeloop.io "{name}" not found', details={"name": name})
    return _stream(svc, caller, kind, path, selector, resume, initial, release)


def _register(kind: Kind) -> None:
    title = MODELS[kind].kind

    async def watch_namespace(
        svc: Svc,
        caller: Caller,
        namespace: Namespace,
        resource_version: ResumeQuery = None,
        last_event_id: LastEventId = None,
        label_selector: Annotated[str | None, Query(alias="labelSelector", max_length=4096)] = None,
    ) -> StreamingResponse:
        resume = last_event_id or resource_version
        return await _open(svc, caller, namespace, kind, resume, None, label_selector)

    async def watch_one(
        svc: Svc,
        caller: Caller,
        namespace: Namespace,
        name: Name,
        resource_version: ResumeQuery = None,
        last_event_id: LastEventId = None,
    ) -> StreamingResponse:
        resume = last_event_id or resource_version
        return await _open(svc, caller, namespace, kind, resume, name, None)

    router.add_api_route(
        f"/namespaces/{{namespace}}/{kind.value}",
        watch_namespace,
        methods=["GET"],
        summary=f"Stream status changes of every {title} in a namespace (SSE)",
        response_class=StreamingResponse,
        responses=_SSE_RESPONSE,
        operation_id=f"watch_{kind.value}",
    )
    router.add_api_route(
        f"/namespaces/{{namespace}}/{kind.value}/{{name}}",
        watch_one,
        methods=["GET"],
        summary=f"Stream status changes of one {title} (SSE)",
        response_class=StreamingResponse,
        responses=_SSE_RESPONSE,
        operation_id=f"watch_{kind.value}_one",
    )


for _kind in Kind:
    _register(_kind)

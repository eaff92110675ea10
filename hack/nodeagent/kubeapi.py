"""A small asyncio client for the Kubernetes API (JSON dicts), with list+watch informers.

Each agent role talks with its own identity, as the real components do: the kubelet part as
``system:node:<name>``, the scheduler part as ``system:kube-scheduler``, the proxy part as
``system:kube-proxy`` (both bound by the default RBAC policy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("nodeagent.api")

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            self.message = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError):
            self.reason, self.message = "", body
        super().__init__(f"{method} {path}: {status} {self.message}")


class Api:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path, *, user_agent: str) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self.server = server
        self._client = httpx.AsyncClient(
            base_url=server,
            verify=ctx,
            timeout=httpx.Timeout(30.0, connect=5.0),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            trust_env=False,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )
        self._watch_client = httpx.AsyncClient(
            base_url=server,
            verify=ctx,
            timeout=httpx.Timeout(None, connect=5.0),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            trust_env=False,
        )

    async def close(self) -> None:
        await self._client.aclose()
        await self._watch_client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else {}
        resp = await self._client.request(method, path, content=content, params=params, headers=headers)
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.text, method, path)
        if not resp.content:
            return {}
        result: Obj = resp.json()
        return result

    async def get(self, path: str, **params: Any) -> Obj:
        return await self.request("GET", path, params=params or None)

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def post(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def put(self, path: str, body: Obj) -> Obj:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, kind: str = "strategic") -> Obj:
        ctype = {
            "strategic": "application/strategic-merge-patch+json",
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return await self.request("PATCH", path, body=body, content_type=ctype)

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body=body)

    async def watch_stream(
        self, path: str, params: dict[str, Any], on_event: Callable[[str, Obj], Awaitable[None] | None]
    ) -> None:
        async with self._watch_client.stream("GET", path, params=params) as resp:
            if resp.status_code >= 400:
                body = (await resp.aread()).decode(errors="replace")
                raise ApiError(resp.status_code, body, "WATCH", path)
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                result = on_event(event["type"], event["object"])
                if asyncio.iscoroutine(result):
                    await result


Handler = Callable[[str, Obj, Obj | None], None]
"""(event type ADDED/MODIFIED/DELETED/SYNC, object, previous object)"""


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Informer:
    """List, then watch from the list's resourceVersion; relist on expiry; resync handlers periodically."""

    def __init__(
        self,
        api: Api,
        path: str,
        *,
        name: str,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resync: float = 60.0,
    ) -> None:
        self.api = api
        self.path = path
        self.name = name
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.resync = resync
        self.store: dict[str, Obj] = {}
        self.handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self._rv = ""

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def _emit(self, kind: str, obj: Obj, old: Obj | None) -> None:
        for h in self.handlers:
            try:
                h(kind, obj, old)
            except Exception:
                log.exception("%s handler failed on %s %s", self.name, kind, key_of(obj))

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    async def _list(self) -> None:
        data = await self.api.get(self.path, **self._params())
        self._rv = data["metadata"].get("resourceVersion", "")
        fresh: dict[str, Obj] = {}
        for item in data.get("items") or []:
            fresh[key_of(item)] = item
        for k, gone in list(self.store.items()):
            if k not in fresh:
                del self.store[k]
                self._emit("DELETED", gone, gone)
        for k, obj in fresh.items():
            old = self.store.get(k)
            self.store[k] = obj
            if old is None:
                self._emit("ADDED", obj, None)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj, old)
        self.synced.set()

    def _on_event(self, kind: str, obj: Obj) -> None:
        if kind == "BOOKMARK":
            self._rv = obj["metadata"].get("resourceVersion", self._rv)
            return
        if kind == "ERROR":
            code = obj.get("code")
            raise ApiError(int(code or 500), json.dumps(obj), "WATCH", self.path)
        self._rv = obj["metadata"].get("resourceVersion", self._rv)
        k = key_of(obj)
        old = self.store.get(k)
        if kind == "DELETED":
            self.store.pop(k, None)
            self._emit("DELETED", obj, old)
        else:
            self.store[k] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)

    async def run(self) -> None:
        backoff = 0.5
        need_list = True
        last_resync = asyncio.get_running_loop().time()
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    backoff = 0.5
                params = {
                    **self._params(),
                    "watch": "1",
                    "resourceVersion": self._rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(int(self.resync + random.uniform(0, 10))),
                }
                await self.api.watch_stream(self.path, params, lambda k, o: self._on_event(k, o))
                now = asyncio.get_running_loop().time()
                if now - last_resync >= self.resync:
                    last_resync = now
                    for obj in list(self.store.values()):
                        self._emit("SYNC", obj, obj)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 410:
                    need_list = True
                    continue
                log.warning("%s watch failed: %s", self.name, exc)
                need_list = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                log.warning("%s watch interrupted: %r", self.name, exc)
                need_list = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

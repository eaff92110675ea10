"""The model registry through MLflow's REST API: models and versions with metrics and lineage, aliases.

MLflow has no namespaces; Kubeloop gives each registered model and version one. A version belongs to
the namespace of the TrainingJob that produced it: the ``kubeloop.io/namespace`` tag of the version, or
else of its run (the trainer tags every run with it). A model belongs to the namespace named by its own
``kubeloop.io/namespace`` tag, or else to that of its oldest version (the TrainingJob that created the
name). The routes only ever show, and only let aliases point at, what belongs to the namespace in the
URL; anything else is a 404, exactly as if it did not exist.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from kubeloop.contracts import MlflowTags
from kubeloop_api.errors import (
    ApiError,
    InvalidError,
    NotFoundError,
    UnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

_PAGE: Final = 1000
_CACHE_MAX: Final = 10000
_MODEL_NS_TTL_S: Final = 30.0


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value", "")) for t in obj.get("tags") or [] if t.get("key")}


def _time(ms: Any) -> str | None:
    try:
        return (
            datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    except (TypeError, ValueError):
        return None


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Registry:
    def __init__(
        self, settings: ApiSettings, metrics: ApiMetrics, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.metrics = metrics
        headers = {}
        if settings.mlflow_token.get_secret_value():
            headers["Authorization"] = f"Bearer {settings.mlflow_token.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=settings.mlflow_tracking_uri.rstrip("/") + "/api/2.0/mlflow",
            timeout=settings.mlflow_timeout_s,
            headers=headers,
            transport=transport,
        )
        self._run_ns: OrderedDict[str, str | None] = OrderedDict()
        self._model_ns: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        code = 0
        try:
            resp = await self._client.request(method, path, **kw)
            code = resp.status_code
        except httpx.TimeoutException as e:
            raise UpstreamTimeoutError("MLflow did not answer in time") from e
        except httpx.HTTPError as e:
            raise UnavailableError(f"MLflow unreachable: {type(e).__name__}") from e
        finally:
            self.metrics.observe_upstream("mlflow", code, time.perf_counter() - t0)
        try:
            data = resp.json() if resp.content else {}
        except ValueError:
            data = {}
        if resp.is_success:
            return data if isinstance(data, dict) else {}
        err = str(data.get("error_code", "")) if isinstance(data, dict) else ""
        msg = str(data.get("message", "")) if isinstance(data, dict) else ""
        # Only MLflow's own error codes speak of the request: a bare 404 or 400 (its web server's page for
        # a path it does not serve, behind a wrong tracking URI; a proxy's) means no registry answered.
        if err == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(msg or "not found in the model registry")
        if err == "INVALID_PARAMETER_VALUE":
            raise InvalidError(msg or "refused by the model registry")
        # MLflow's text on a failure can carry its database URL and host names: for the log only.
        detail = (msg or resp.text)[:300] or None
        if resp.status_code == 503:
            # Unavailable for now (overloaded, restarting, its proxy's backend down): the caller may retry,
            # after MLflow's own Retry-After when it sent one, which a 502 would not tell it.
            retry = resp.headers.get("retry-after", "").strip()
            headers = {"Retry-After": retry} if retry.isascii() and retry.isdigit() else None
            raise UnavailableError(f"MLflow answered 503 {err}".rstrip(), headers=headers, log_detail=detail)
        raise UpstreamError(f"MLflow answered {resp.status_code} {err}".rstrip(), log_detail=detail)

    async def ping(self) -> None:
        await self._call("GET", "/registered-models/search", params={"max_results": 1})

    # --- namespaces -----------------------------------------------------------------------------

    async def _run_namespace(self, run_id: str) -> str | None:
        if run_id in self._run_ns:
            return self._run_ns[run_id]
        try:
            run = (await self._call("GET", "/runs/get", params={"run_id": run_id})).get("run") or {}
        except NotFoundError:
            run = {}
        ns = _tags(run.get("data") or {}).get(MlflowTags.NAMESPACE)
        self._run_ns[run_id] = ns
        while len(self._run_ns) > _CACHE_MAX:
            self._run_ns.popitem(last=False)
        return ns

    async def version_namespace(self, version: dict[str, Any]) -> str | None:
        ns = _tags(version).get(MlflowTags.NAMESPACE)
        if ns:
            return ns
        run_id = version.get("run_id")
        return await self._run_namespace(str(run_id)) if run_id else None

    async def model_namespace(self, model: dict[str, Any]) -> str | None:
        ns = _tags(model).get(MlflowTags.NAMESPACE)
        if ns:
            return ns
        name = str(model.get("name", ""))
        hit = self._model_ns.get(name)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        versions = await self._versions(name)
        result = await self.version_namespace(versions[0]) if versions else None
        self._model_ns[name] = (result, time.monotonic() + _MODEL_NS_TTL_S)
        while len(self._model_ns) > _CACHE_MAX:
            self._model_ns.popitem(last=False)
        return result

    # --- reads -----------------------------------------------------------------------------------

    async def _versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name``, oldest first."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            params: dict[str, Any] = {"filter": f"name = {_quote(name)}", "max_results": _PAGE}
            if token:
                params["page_token"] = token
            page = await self._call("GET", "/model-versions/search", params=params)
            out += page.get("model_versions") or []
            token = str(page.get("next_page_token") or "")
            if not token:
                break
        return sorted(out, key=lambda v: int(v.get("version", 0)))

    async def _model(self, name: str) -> dict[str, Any]:
        out = await self._call("GET", "/registered-models/get", params={"name": name})
        return dict(out.get("registered_model") or {})

    async def model_in(self, namespace: str, name: str) -> dict[str, Any]:
        """The registered model, if it belongs to ``namespace``; 404 otherwise."""
        try:
            model = await self._model(name)
        except NotFoundError:
            model = {}
        if not model or await self.model_namespace(model) != namespace:
            raise NotFoundError(f'registered model "{name}" not found in namespace "{namespace}"')
        return model

    async def list_models(self, namespace: str) -> list[dict[str, Any]]:
        out = []
        token = ""
        while True:
            params: dict[str, Any] = {"max_results": _PAGE}
            if token:
                params["page_token"] = token
            page = await self._call("GET", "/registered-models/search", params=params)
            for m in page.get("registered_models") or []:
                if await self.model_namespace(m) == namespace:
                    out.append(self._model_view(m, namespace))
            token = str(page.get("next_page_token") or "")
            if not token:
                return sorted(out, key=lambda m: str(m["name"]))

    async def get_model(self, namespace: str, name: str) -> dict[str, Any]:
        model = await self.model_in(namespace, name)
        view = self._model_view(model, namespace)
        view["versions"] = await self.list_versions(namespace, name, model=model)
        return view

    async def list_versions(
        self, namespace: str, name: str, model: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if model is None:
            model = await self.model_in(namespace, name)
        out = []
        for v in await self._versions(name):
            if await self.version_namespace(v) == namespace:
                out.append(await self._version_view(v, namespace))
        return out

    async def _version_raw(self, namespace: str, name: str, version: int) -> dict[str, Any]:
        await self.model_in(namespace, name)
        try:
            out = await self._call(
                "GET", "/model-versions/get", params={"name": name, "version": str(version)}
            )
        except NotFoundError:
            out = {}
        v = dict(out.get("model_version") or {})
        if not v or await self.version_namespace(v) != namespace:
            raise NotFoundError(
                f'version {version} of registered model "{name}" not found in namespace "{namespace}"'
            )
        return v

    async def get_version(self, namespace: str, name: str, version: int) -> dict[str, Any]:
        return await self._version_view(await self._version_raw(namespace, name, version), namespace)

    # --- aliases -----------------------------------------------------------------------------------

    async def set_alias(self, namespace: str, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point ``alias`` at ``version`` (set or move: promotion and roll-back are the same call)."""
        await self._version_raw(namespace, name, version)
        await self._call(
            "POST", "/registered-models/alias", json={"name": name, "alias": alias, "version": str(version)}
        )
        return await self.get_model(namespace, name)

    async def delete_alias(self, namespace: str, name: str, alias: str) -> dict[str, Any]:
        model = await self.model_in(namespace, name)
        if alias not in {a.get("alias") for a in model.get("aliases") or []}:
            raise NotFoundError(f'registered model "{name}" has no alias "{alias}"')
        await self._call("DELETE", "/registered-models/alias", json={"name": name, "alias": alias})
        return await self.get_model(namespace, name)

    # --- views -------------------------------------------------------------------------------------

    @staticmethod
    def _model_view(m: dict[str, Any], namespace: str) -> dict[str, Any]:
        aliases = {str(a["alias"]): int(a["version"]) for a in m.get("aliases") or [] if "alias" in a}
        latest = [int(v.get("version", 0)) for v in m.get("latest_versions") or []]
        return {
            "name": m.get("name"),
            "namespace": namespace,
            "description": m.get("description") or "",
            "aliases": aliases,
            "latestVersion": max(latest) if latest else None,
            "createdAt": _time(m.get("creation_timestamp")),
            "updatedAt": _time(m.get("last_updated_timestamp")),
            "tags": _tags(m),
        }

    async def _version_view(self, v: dict[str, Any], namespace: str) -> dict[str, Any]:
        tags = _tags(v)
        run_id = str(v.get("run_id") or "")
        metrics: dict[str, float] = {}
        if run_id:
            try:
                run = (await self._call("GET", "/runs/get", params={"run_id": run_id})).get("run") or {}
            except ApiError:
                run = {}
            for m in (run.get("data") or {}).get("metrics") or []:
                try:
                    metrics[str(m["key"])] = float(m["value"])
                except (KeyError, TypeError, ValueError):
                    continue
        tj = tags.get(MlflowTags.TRAININGJOB)
        return {
            "model": v.get("name"),
            "version": int(v.get("version", 0)),
            "namespace": namespace,
            "status": v.get("status"),
            "aliases": list(v.get("aliases") or []),
            "createdAt": _time(v.get("creation_timestamp")),
            "runId": run_id or None,
            "source": v.get("source"),
            "metrics": metrics,
            "lineage": {
                "trainingJob": {"namespace": namespace, "name": tj, "uid": tags.get(MlflowTags.UID)}
                if tj
                else None,
                "runId": run_id or None,
                "onnxUri": tags.get(MlflowTags.MODEL_URI),
                "baselineUri": tags.get(MlflowTags.BASELINE_URI),
            },
            "tags": tags,
        }

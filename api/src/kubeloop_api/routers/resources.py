"""CRUD of TrainingJobs, ModelDeployments and DriftMonitors, and the patch helpers.

Every Kubernetes call impersonates the caller, so RBAC decides and the API server's refusals (404, 409,
403, 422, 410 for an expired continue token) come back as it gave them. Bodies are validated with the
core models first: an invalid object is refused with the field path before it reaches the API server.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.resources import Alias
from kubeloop_api.bodies import StrictJsonRoute, read_document
from kubeloop_api.deps import Caller, Name, Namespace, Svc
from kubeloop_api.errors import ApiError, list_parameter_error
from kubeloop_api.identity import Principal
from kubeloop_api.kube import FIELD_MANAGER, MERGE_PATCH, crd_path
from kubeloop_api.manifests import (
    MODELS,
    Kind,
    alias_patch,
    canary_patch,
    check_patch,
    patched,
    suspend_patch,
    validate,
)

router = APIRouter(prefix="/api/v1", tags=["resources"], route_class=StrictJsonRoute)

KubeObject = dict[str, Any]
_RETRIES = 3


class Propagation(StrEnum):
    Background = "Background"
    Foreground = "Foreground"
    Orphan = "Orphan"


# Strict: a JSON "3" or true is no number, as for kubectl and the API server (lax mode would take them).
class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    replicas: int = Field(ge=0, le=1000, description="Desired replicas of the ModelDeployment.")


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    traffic_percent: int = Field(
        alias="trafficPercent", ge=0, le=100, description="Share of requests sent to the canary, 0..100."
    )


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    alias: Alias = Field(description="Registry alias the ModelDeployment follows (e.g. champion).")


def _create_body(kind: Kind) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": "The manifest, as for kubectl apply (the namespace may be left out).",
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{MODELS[kind].__name__}"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    }


def _patch_body() -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object"},
            "metadata": {
                "type": "object",
                "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                    "annotations": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                    "resourceVersion": {"type": "string"},
                },
            },
        },
    }
    return {
        "requestBody": {
            "required": True,
            "description": "A JSON merge patch (RFC 7386) of spec, labels and annotations.",
            "content": {
                "application/merge-patch+json": {"schema": schema},
                "application/json": {"schema": schema},
            },
        }
    }


def _register(kind: Kind) -> None:
    """The routes of one kind (literal paths, so each has its own schema in the OpenAPI document)."""
    k = kind.value
    title = MODELS[kind].kind
    base = f"/namespaces/{{namespace}}/{k}"

    async def create(
        request: Request,
        svc: Svc,
        caller: Caller,
        namespace: Namespace,
        dry_run: Annotated[
            bool, Query(alias="dryRun", description="Validate and admit, but do not persist.")
        ] = False,
    ) -> Response:
        body = await read_document(request, svc.settings.max_body_bytes)
        manifest = validate(kind, body, namespace)
        params: dict[str, str | int | bool] = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            params["dryRun"] = "All"
        resp = await svc.kube.request_raw(
            "POST", crd_path(namespace, k), as_user=caller, body=manifest, params=params, what=f"create {k}"
        )
        return _passthrough(resp)

    async def list_objects(
        svc: Svc,
        caller: Caller,
        namespace: Namespace,
        label_selector: Annotated[
            str | None, Query(alias="labelSelector", max_length=4096, description="e.g. team=a,tier!=dev")
        ] = None,
        field_selector: Annotated[
            str | None, Query(alias="fieldSelector", max_length=4096, description="e.g. metadata.name=x")
        ] = None,
        limit: Annotated[int | None, Query(ge=1, le=5000, description="Page size.")] = None,
        continue_token: Annotated[
            str | None,
            Query(alias="continue", max_length=8192, description="Token from the previous page's metadata."),
        ] = None,
    ) -> Response:
        size = min(limit or svc.settings.list_default_limit, svc.settings.list_max_limit)
        params: dict[str, str | int | bool] = {"limit": size}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if continue_token:
            params["continue"] = continue_token
        try:
            resp = await svc.kube.request_raw(
                "GET", crd_path(namespace, k), as_user=caller, params=params, what=f"list {k}"
            )
        except ApiError as e:
            raise list_parameter_error(e, params) from None
        return _passthrough(resp)

    async def get_object(svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
        resp = await svc.kube.request_raw(
            "GET", crd_path(namespace, k, name), as_user=caller, what=f"get {k}/{name}"
        )
        return _passthrough(resp)

    async def delete_object(
        svc: Svc,
        caller: Caller,
        namespace: Namespace,
        name: Name,
        propagation_policy: Annotated[
            Propagation, Query(alias="propagationPolicy", description="How children are removed.")
        ] = Propagation.Background,
    ) -> Response:
        resp = await svc.kube.request_raw(
            "DELETE",
            crd_path(namespace, k, name),
            as_user=caller,
            params={"propagationPolicy": propagation_policy.value},
            what=f"delete {k}/{name}",
        )
        return _passthrough(resp)

    async def patch_object(
        request: Request, svc: Svc, caller: Caller, namespace: Namespace, name: Name
    ) -> Response:
        body = check_patch(await read_document(request, svc.settings.max_body_bytes))
        return await _patch(svc, caller, namespace, kind, name, lambda _cur: body)

    async def suspend(svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
        return await _patch(svc, caller, namespace, kind, name, lambda _cur: suspend_patch(kind, True))

    async def resume(svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
        return await _patch(svc, caller, namespace, kind, name, lambda _cur: suspend_patch(kind, False))

    tags: list[str | Enum] = [title]
    router.add_api_route(
        base,
        create,
        methods=["POST"],
        status_code=201,
        summary=f"Create a {title}",
        tags=tags,
        operation_id=f"create_{k}",
        openapi_extra=_create_body(kind),
        responses={
            409: {"description": "Already exists"},
            422: {"description": "InvalidError (names the field)"},
        },
    )
    router.add_api_route(
        base,
        list_objects,
        methods=["GET"],
        summary=f"List {title}s (label selectors, continue-token pagination)",
        tags=tags,
        operation_id=f"list_{k}",
    )
    router.add_api_route(
        f"{base}/{{name}}", get_object, methods=["GET"], summary=f"Read a {title}", tags=tags,
        operation_id=f"get_{k}",
    )  # fmt: skip
    router.add_api_route(
        f"{base}/{{name}}",
        delete_object,
        methods=["DELETE"],
        summary=f"Delete a {title}",
        tags=tags,
        operation_id=f"delete_{k}",
    )
    router.add_api_route(
        f"{base}/{{name}}",
        patch_object,
        methods=["PATCH"],
        summary=f"Merge-patch a {title}'s spec, labels or annotations (validated)",
        tags=tags,
        operation_id=f"patch_{k}",
        openapi_extra=_patch_body(),
    )
    router.add_api_route(
        f"{base}/{{name}}/suspend",
        suspend,
        methods=["POST"],
        summary=f"Suspend a {title}",
        tags=tags,
        operation_id=f"suspend_{k}",
    )
    router.add_api_route(
        f"{base}/{{name}}/resume",
        resume,
        methods=["POST"],
        summary=f"Resume a suspended {title}",
        tags=tags,
        operation_id=f"resume_{k}",
    )


def _passthrough(resp: httpx.Response) -> Response:
    """The API server's answer as it is: its JSON is not decoded and encoded again (lists are large)."""
    return Response(resp.content, status_code=resp.status_code, media_type="application/json")


async def _patch(
    svc: Svc,
    caller: Principal,
    namespace: str,
    kind: Kind,
    name: str,
    make_patch: Any,
) -> Response:
    """Read, build the patch from what is there, validate the result with the core model, and send it
    with the read resourceVersion as a precondition (so what was validated is what is changed); a
    concurrent change is retried from a fresh read."""
    path = crd_path(namespace, kind.value, name)
    for attempt in range(_RETRIES):
        current = await svc.kube.request("GET", path, as_user=caller, what=f"get {kind.value}/{name}")
        patch = make_patch(current)
        patched(kind, current, patch, namespace)
        patch = {**patch, "metadata": {**(patch.get("metadata") or {})}}
        user_rv = patch["metadata"].get("resourceVersion")
        patch["metadata"]["resourceVersion"] = user_rv or current["metadata"]["resourceVersion"]
        try:
            resp = await svc.kube.request_raw(
                "PATCH",
                path,
                as_user=caller,
                body=patch,
                content_type=MERGE_PATCH,
                params={"fieldManager": FIELD_MANAGER},
                what=f"patch {kind.value}/{name}",
            )
            return _passthrough(resp)
        except ApiError as e:
            # A resourceVersion the caller gave is their precondition: their 409 to handle.
            if e.status_code != 409 or user_rv or attempt == _RETRIES - 1:
                raise
    raise AssertionError("unreachable")


@router.get("/namespaces/{namespace}/modeldeployments/{name}/scale", summary="Read the scale subresource")
async def get_scale(svc: Svc, caller: Caller, namespace: Namespace, name: Name) -> Response:
    resp = await svc.kube.request_raw(
        "GET",
        crd_path(namespace, "modeldeployments", name, "scale"),
        as_user=caller,
        what=f"get modeldeployments/{name}/scale",
    )
    return _passthrough(resp)


@router.put(
    "/namespaces/{namespace}/modeldeployments/{name}/scale",
    summary="Scale a ModelDeployment (the scale subresource, as kubectl scale)",
)
async def scale(svc: Svc, caller: Caller, namespace: Namespace, name: Name, req: ScaleRequest) -> Response:
    resp = await svc.kube.request_raw(
        "PATCH",
        crd_path(namespace, "modeldeployments", name, "scale"),
        as_user=caller,
        body={"spec": {"replicas": req.replicas}},
        content_type=MERGE_PATCH,
        params={"fieldManager": FIELD_MANAGER},
        what=f"scale modeldeployments/{name}",
    )
    return _passthrough(resp)


@router.put(
    "/namespaces/{namespace}/modeldeployments/{name}/canary",
    summary="Set the share of traffic the canary gets",
)
async def set_canary(
    svc: Svc, caller: Caller, namespace: Namespace, name: Name, req: CanaryRequest
) -> Response:
    return await _patch(
        svc,
        caller,
        namespace,
        Kind.modeldeployments,
        name,
        lambda cur: canary_patch(cur, req.traffic_percent),
    )


@router.put(
    "/namespaces/{namespace}/modeldeployments/{name}/alias",
    summary="Follow a registry alias (promote/roll back by moving the alias or switching to another)",
)
async def set_alias(
    svc: Svc, caller: Caller, namespace: Namespace, name: Name, req: AliasRequest
) -> Response:
    return await _patch(
        svc, caller, namespace, Kind.modeldeployments, name, lambda cur: alias_patch(cur, req.alias)
    )


for _kind in Kind:
    _register(_kind)

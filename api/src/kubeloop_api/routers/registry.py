"""The model registry (MLflow): models, versions with metrics and lineage, aliases.

Authorised by SubjectAccessReview first (:data:`kubeloop_api.auth.ACCESS`): reading needs get/list on
trainingjobs, moving an alias needs update on modeldeployments, in the namespace of the URL.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.resources import ALIAS_PATTERN, MODEL_NAME_PATTERN, Alias
from kubeloop_api.bodies import StrictJsonRoute
from kubeloop_api.deps import Caller, Namespace, Services, Svc
from kubeloop_api.errors import UnavailableError
from kubeloop_api.registry import Registry

router = APIRouter(
    prefix="/api/v1/namespaces/{namespace}/models", tags=["model registry"], route_class=StrictJsonRoute
)

ModelName = Annotated[
    str, Path(pattern=MODEL_NAME_PATTERN, max_length=63, description="Registered model name.")
]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, max_length=63, description="Alias, e.g. champion.")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model version number.")]


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # a JSON "3" is no version number
    version: int = Field(ge=1, le=2**31 - 1, description="Version the alias should point at.")


def _registry(svc: Services) -> Registry:
    if svc.registry is None:
        raise UnavailableError("the model registry is not configured (KUBELOOP_API_MLFLOW_TRACKING_URI)")
    return svc.registry


@router.get("", summary="List the registered models of a namespace")
async def list_models(svc: Svc, caller: Caller, namespace: Namespace) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.list", namespace)
    return {"items": await reg.list_models(namespace)}


@router.get("/{model}", summary="A registered model with its aliases and versions")
async def get_model(svc: Svc, caller: Caller, namespace: Namespace, model: ModelName) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.get", namespace)
    return await reg.get_model(namespace, model)


@router.get("/{model}/versions", summary="Versions with metrics and lineage")
async def list_versions(svc: Svc, caller: Caller, namespace: Namespace, model: ModelName) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.list", namespace)
    return {"items": await reg.list_versions(namespace, model)}


@router.get(
    "/{model}/versions/{version}", summary="One version: metrics, lineage (TrainingJob, run, ONNX, baseline)"
)
async def get_version(
    svc: Svc, caller: Caller, namespace: Namespace, model: ModelName, version: Version
) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.get", namespace)
    return await reg.get_version(namespace, model, version)


@router.put("/{model}/aliases/{alias}", summary="Set or move an alias (promote, roll back)")
async def set_alias(
    svc: Svc,
    caller: Caller,
    namespace: Namespace,
    model: ModelName,
    alias: Annotated[Alias, Path(description="Alias, e.g. champion ('latest' and 'v<N>' are reserved).")],
    req: AliasRequest,
) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.alias", namespace)
    return await reg.set_alias(namespace, model, alias, req.version)


@router.delete("/{model}/aliases/{alias}", summary="Remove an alias")
async def delete_alias(
    svc: Svc, caller: Caller, namespace: Namespace, model: ModelName, alias: AliasName
) -> dict[str, Any]:
    reg = _registry(svc)
    await svc.authz.require(caller, "models.alias", namespace)
    return await reg.delete_alias(namespace, model, alias)

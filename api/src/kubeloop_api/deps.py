"""What every route needs: the app's services, the authenticated caller, path parameter types and body
reading with a size limit."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final

import yaml
from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from kubeloop.resources import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from kubeloop_api.errors import (
    BadRequestError,
    InvalidError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from kubeloop_api.identity import Principal
from kubeloop_api.readiness import ReadinessLog

if TYPE_CHECKING:
    from kubeloop_api.auth import Authenticator, Authorizer
    from kubeloop_api.kube import Kube
    from kubeloop_api.metrics import ApiMetrics
    from kubeloop_api.objects import Objects
    from kubeloop_api.registry import Registry
    from kubeloop_api.settings import ApiSettings
    from kubeloop_api.tokens import TokenStore


@dataclass
class Services:
    """Everything one app holds; built by the app factory, closed by its lifespan."""

    settings: ApiSettings
    metrics: ApiMetrics
    kube: Kube
    tokens: TokenStore
    authn: Authenticator
    authz: Authorizer
    registry: Registry | None = None
    objects: Objects | None = None
    sse_clients: int = 0
    readiness: ReadinessLog = field(default_factory=ReadinessLog)
    extra: dict[str, Any] = field(default_factory=dict)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


_bearer: Final = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token the cluster accepts (ServiceAccount, OIDC, …; checked with TokenReview) or a "
    "Kubeloop API token (klp_…).",
)


async def _caller(
    request: Request, _cred: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    return await services(request).authn.authenticate(request.headers.get("authorization"))


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(_caller)]

Namespace = Annotated[
    str,
    Path(
        pattern=DNS_LABEL_PATTERN,
        min_length=1,
        max_length=63,
        description="Kubernetes namespace (a DNS label).",
    ),
]
Name = Annotated[
    str,
    Path(
        pattern=DNS_SUBDOMAIN_PATTERN,
        min_length=1,
        max_length=253,
        description="Object name (a DNS subdomain).",
    ),
]


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but an unquoted date or time stays the string written, as kubectl's YAML
    reader (sigs.k8s.io/yaml, go-yaml v2) keeps it: the same file gives the same object either way."""


def _as_written(loader: _YamlLoader, node: yaml.Node) -> Any:
    return loader.construct_yaml_str(node)


_YamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_written)

JSON_TYPES: Final = ("application/json", "application/merge-patch+json", "")
YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLargeError(f"body: larger than the limit of {limit} bytes")
        except ValueError:
            raise BadRequestError("Content-Length: not a number") from None
    chunks: list[bytes] = []
    total = 0
    async for chunk in body_chunks(request):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"body: larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The body as it arrives; a client that hangs up half-way gets a 400 (nobody reads it, but it is
    the client's doing, not a fault of the facade)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise BadRequestError("body: the client closed the connection before sending all of it") from None


async def read_document(request: Request, limit: int) -> Any:
    """A JSON (or YAML) request body, decoded; 400 naming ``body`` when it cannot be parsed."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES and ctype not in YAML_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type: {ctype!r} is not supported; send application/json or application/yaml"
        )
    raw = await read_body(request, limit)
    if not raw.strip():
        raise BadRequestError("body: empty; expected a JSON object")
    try:
        if ctype in YAML_TYPES:
            return json_data(yaml.load(raw, Loader=_YamlLoader))
        return json_data(json.loads(raw, parse_constant=_no_constant))
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        kind = "YAML" if ctype in YAML_TYPES else "JSON"
        raise BadRequestError(f"body: not valid {kind}: {str(e).splitlines()[0][:200]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_MAX_DEPTH: Final = 200  # orjson, which encodes what is sent on, stops at 254 levels


def json_data(value: Any, path: str = "", depth: int = 0) -> Any:
    """``value`` as JSON carries it, or 422 naming the field JSON cannot carry: an integer outside int64
    or a float that is not finite (orjson would refuse the one and write ``null`` for the other), a
    YAML-only type, a map key that is not a name. Integer and boolean map keys become names, as
    kubectl's YAML reader (sigs.k8s.io/yaml) makes them."""
    field = path or "body"
    if depth > _MAX_DEPTH:
        raise InvalidError(f"nested more than {_MAX_DEPTH} levels deep", field=field)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, bool):
                key = "true" if k else "false"
            elif isinstance(k, int | str):
                key = str(k)
            else:
                raise InvalidError(f"map key {k!r} is not a name; quote it", field=field)
            out[key] = json_data(v, f"{path}.{key}" if path else key, depth + 1)
        return out
    if isinstance(value, list):
        return [json_data(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise InvalidError("integer out of range (64 bits)", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidError(f"{value} is not a JSON number", field=field)
    if value is None or isinstance(value, str | int | float):
        return value
    raise InvalidError(f"a YAML {type(value).__name__} has no JSON form", field=field)

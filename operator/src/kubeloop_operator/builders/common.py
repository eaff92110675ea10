"""What every kind's children share: owner references, labels, deterministic names, pod-spec pieces."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeloop.contracts import MANAGED_BY_OPERATOR, PART_OF_KUBELOOP, Labels
from kubeloop.naming import child_name as child_name
from kubeloop.naming import dns_label_name as dns_label_name
from kubeloop.naming import short_hash as _hash
from kubeloop.resources import GPU_RESOURCE, ResourceRequirements, Toleration, overcommit_allowed

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Owner:
    """The Kubeloop resource whose children are being built."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    generation: int = 1

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(
            api_version=str(body.get("apiVersion")),
            kind=str(body.get("kind")),
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 1),
        )


def label_value(text: str) -> str:
    """A valid label value for ``text`` (at most 63 characters; a hash keeps long values distinct)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:54].strip("-_.")
    return f"{cleaned}-{_hash(text)}" if cleaned else _hash(text)


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Makes the owner the children's controller: garbage collection deletes them with it."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(
    owner: Owner, *, name: str, component: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The labels of every child and of the pods it makes; ``OWNER_UID`` is how the operator finds them."""
    out = {
        Labels.NAME: name,
        Labels.COMPONENT: component,
        Labels.PART_OF: PART_OF_KUBELOOP,
        Labels.MANAGED_BY: MANAGED_BY_OPERATOR,
        Labels.OWNER_KIND: owner.kind.lower(),
        Labels.OWNER_NAME: label_value(owner.name),
        Labels.OWNER_UID: owner.uid,
    }
    out.update(extra or {})
    return out


def metadata(
    owner: Owner, name: str, child_labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(child_labels),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def container_resources(res: ResourceRequirements, gpus: int = 0) -> dict[str, Any]:
    """A container's ``resources``; ``gpus`` go into limits (and requests), as the device plugin wants, and
    a request of a resource that cannot be overcommitted gets the limit Kubernetes requires of it."""
    requests = {k: str(v) for k, v in res.requests.items()}
    limits = {k: str(v) for k, v in res.limits.items()}
    if gpus > 0:
        limits.setdefault(GPU_RESOURCE, str(gpus))
        requests.setdefault(GPU_RESOURCE, limits[GPU_RESOURCE])
    # The API server refuses a request without a limit for a resource that cannot be overcommitted
    # (extended resources such as nvidia.com/gpu, hugepages); the schema has made a given one equal.
    for name, request in requests.items():
        if not overcommit_allowed(name):
            limits.setdefault(name, request)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in items]


def service_env_prefix(service: str) -> str:
    """How the kubelet names a Service's link variables: ``my-svc`` -> ``MY_SVC`` (``MY_SVC_SERVICE_HOST``)."""
    return service.upper().replace("-", "_").replace(".", "_")


def merge_diff(live: Any, desired: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``live`` into ``desired``: keys the live object has
    and the desired one lacks become null, lists are replaced whole. ``{}`` when they are equal."""
    if not isinstance(live, Mapping) or not isinstance(desired, Mapping):
        return desired
    patch: dict[str, Any] = {}
    for k, v in desired.items():
        if k not in live:
            patch[k] = v
        elif live[k] != v:
            patch[k] = merge_diff(live[k], v) if isinstance(v, Mapping) else v
    for k in live:
        if k not in desired:
            patch[k] = None
    return patch

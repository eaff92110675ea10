"""What every kind's children share: owner references, labels, deterministic names, pod-spec pieces."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeloop.contracts import MANAGED_BY_OPERATOR, PART_OF_KUBELOOP, Labels
from kubeloop.resources import GPU_RESOURCE, ResourceRequirements, Toleration

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


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def child_name(base: str, suffix: str = "", *, max_len: int = 63) -> str:
    """``<base>[-<suffix>]``, deterministic and at most ``max_len`` characters (DNS label rules).

    A long base is cut and made unique again with a hash of the whole name, so two owners never
    share a child name and a restarted operator computes the same name again."""
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= max_len:
        return full
    tail = f"-{suffix}" if suffix else ""
    keep = max_len - len(tail) - 9
    return f"{base[:keep].rstrip('-.')}-{_hash(full)}{tail}"


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def dns_label_name(base: str, suffix: str = "", *, max_len: int = 63, letter_first: bool = False) -> str:
    """:func:`child_name` for a child whose name must be a DNS label: a Service (DNS-1035,
    ``letter_first``) or an Indexed Job (its pods' hostnames are ``<job>-<index>``). An owner's name
    is a DNS subdomain (dots, a leading digit): when ``child_name`` gives no valid label, dots become
    dashes, a leading digit gets an ``x`` before it, and a hash of the whole name keeps owners such
    as ``a.b`` and ``a-b`` apart. Names that are valid labels stay as ``child_name`` makes them."""
    name = child_name(base, suffix, max_len=max_len)
    if (_DNS1035_LABEL if letter_first else _DNS1123_LABEL).match(name):
        return name
    cleaned = base.replace(".", "-")
    if letter_first and not cleaned[:1].isalpha():
        cleaned = "x" + cleaned
    tail = f"-{suffix}" if suffix else ""
    keep = max_len - len(tail) - 9
    full = f"{base}-{suffix}" if suffix else base
    return f"{cleaned[:keep].rstrip('-')}-{_hash(full)}{tail}"


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
    """A container's ``resources``; GPUs go into limits (and requests), as the device plugin wants."""
    requests = {k: str(v) for k, v in res.requests.items()}
    limits = {k: str(v) for k, v in res.limits.items()}
    if gpus > 0:
        limits.setdefault(GPU_RESOURCE, str(gpus))
        requests.setdefault(GPU_RESOURCE, limits[GPU_RESOURCE])
    elif GPU_RESOURCE in requests:  # the API server refuses a GPU request without the same limit
        limits.setdefault(GPU_RESOURCE, requests[GPU_RESOURCE])
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

"""What every kind's children share: owner references, labels, deterministic names, pod-spec pieces."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubeloop.contracts import MANAGED_BY_OPERATOR, PART_OF_KUBELOOP, Labels
from kubeloop.naming import child_name as child_name
from kubeloop.naming import dns_label_name as dns_label_name
from kubeloop.naming import short_hash as _hash
from kubeloop.resources import (
    GPU_RESOURCE,
    ResourceRequirements,
    Toleration,
    overcommit_allowed,
    parse_quantity,
)

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


# --- the fields of a pod template the operator owns ---------------------------------------------------
#
# ``kubectl edit`` keeps a child's hash annotation, so the annotation cannot tell whether the live
# template is still the one built. :func:`owned_pod_template` projects a pod template (built or live)
# onto the fields the operator owns, in a normal form in which what the API server fills in (defaults,
# canonical quantities) and what other tools add (``kubectl rollout restart``'s annotation, a mesh's
# labels) disappear: a built and a live template project the same unless someone edited one of them.

# Keys of a template's labels and annotations that are the operator's (it removes those it did not set).
_OWN_KEY_PREFIXES: Final = ("kubeloop.io/", "app.kubernetes.io/")
# Fields of the pod spec: those the builder sets, and those a hand edit may add that the API server
# never defaults (their absence is what the builder wants).
_POD_FIELDS: Final = (
    "containers",
    "initContainers",
    "volumes",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "terminationGracePeriodSeconds",
    "nodeSelector",
    "tolerations",
    "affinity",
    "hostNetwork",
    "serviceAccountName",
)
# What the API server fills in for a pod-spec field the builder may leave out: that value is no edit.
_POD_DEFAULTS: Final[dict[str, Any]] = {"terminationGracePeriodSeconds": 30}
# The same for a container. Left out: terminationMessagePath (always defaulted) and what none of our
# containers uses (stdin, tty).
_CONTAINER_FIELDS: Final = (
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "ports",
    "volumeMounts",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "lifecycle",
    "terminationMessagePolicy",
    "resources",
    "securityContext",
)


def own_keys(m: Any) -> dict[str, Any]:
    """The operator's keys of a labels or annotations map."""
    if not isinstance(m, Mapping):
        return {}
    return {k: v for k, v in m.items() if isinstance(k, str) and k.startswith(_OWN_KEY_PREFIXES)}


def _quantity(v: Any) -> Any:
    try:
        return str(parse_quantity(v).normalize())
    except (ValueError, ArithmeticError):
        return v


def _resources(r: Any) -> dict[str, Any]:
    if not isinstance(r, Mapping):
        return {}
    limits = {k: _quantity(v) for k, v in (r.get("limits") or {}).items()}
    # The API server makes a limit without a request the request too.
    requests = {**limits, **{k: _quantity(v) for k, v in (r.get("requests") or {}).items()}}
    out: dict[str, Any] = {k: v for k, v in r.items() if k not in ("limits", "requests") and v}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _probe(p: Any) -> Any:
    if not isinstance(p, Mapping):
        return p
    # successThreshold 1 is the API server's default (and the only value liveness and startup allow).
    return {k: v for k, v in p.items() if not (k == "successThreshold" and v == 1)}


def _env(env: Any) -> Any:
    if not isinstance(env, list):
        return env
    out = []
    for e in env:
        if isinstance(e, Mapping) and e.get("value") == "":  # the API server drops it (omitempty)
            e = {k: v for k, v in e.items() if k != "value"}
        ref = ((e.get("valueFrom") or {}).get("fieldRef") if isinstance(e, Mapping) else None) or None
        if isinstance(ref, Mapping) and ref.get("apiVersion") == "v1":  # defaulted
            e = {
                **e,
                "valueFrom": {
                    **e["valueFrom"],
                    "fieldRef": {k: v for k, v in ref.items() if k != "apiVersion"},
                },
            }
        out.append(e)
    return out


def _container(c: Any) -> Any:
    if not isinstance(c, Mapping):
        return c
    out: dict[str, Any] = {}
    for k in _CONTAINER_FIELDS:
        v = c.get(k)
        if k == "resources":
            v = _resources(v)
        elif k.endswith("Probe"):
            v = _probe(v)
        elif k == "env":
            v = _env(v)
        if v is not None and v != {} and v != []:
            out[k] = v
    return out


def owned_pod_template(tpl: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The owned fields of a pod template (see above); ``extra``: more pod-spec fields the builder
    sets (not in the list because the API server defaults them where the builder does not)."""
    tpl = tpl if isinstance(tpl, Mapping) else {}
    meta = tpl.get("metadata") or {}
    pod = tpl.get("spec") or {}
    tpl_meta = {f: own_keys(meta.get(f)) for f in ("labels", "annotations")}
    pod_out: dict[str, Any] = {}
    for k in (*_POD_FIELDS, *extra):
        v = pod.get(k)
        if k in ("containers", "initContainers") and isinstance(v, list):
            v = [_container(c) for c in v]
        if v is not None and v != {} and v != [] and not (k in _POD_DEFAULTS and _POD_DEFAULTS[k] == v):
            pod_out[k] = v
    return {"metadata": {k: v for k, v in tpl_meta.items() if v}, "spec": pod_out}


def owned_patch(have: Mapping[str, Any], want: Mapping[str, Any], raw: Any) -> dict[str, Any]:
    """The merge patch from projection ``have`` to projection ``want``; values are taken from the built
    manifest (``raw``, as the builder wrote them) where it has them, lists whole."""
    raw = raw if isinstance(raw, Mapping) else {}
    patch: dict[str, Any] = {}
    for k, v in want.items():
        if k in have and have[k] == v:
            continue
        if isinstance(v, Mapping) and isinstance(have.get(k), Mapping):
            sub = owned_patch(have[k], v, raw.get(k))
            if sub:
                patch[k] = sub
        else:
            patch[k] = copy.deepcopy(raw[k]) if k in raw else v
    for k in have:
        if k not in want:
            patch[k] = None
    return patch


# A Service's fields the operator sets (and those of each port); the API server's defaults are no edit.
_SERVICE_PORT_FIELDS: Final = ("name", "port", "targetPort", "protocol", "appProtocol")


def service_owned(svc: Mapping[str, Any]) -> dict[str, Any]:
    """A Service's owned fields in normal form: selector, ports, publishNotReadyAddresses, and the
    type unless it is the default (ClusterIP); clusterIP, sessionAffinity and the like are the API
    server's."""
    spec = svc.get("spec") or {}
    out: dict[str, Any] = {"selector": dict(spec.get("selector") or {})}
    if spec.get("type", "ClusterIP") != "ClusterIP":
        out["type"] = spec["type"]
    if spec.get("publishNotReadyAddresses"):  # false is the default
        out["publishNotReadyAddresses"] = True
    ports = []
    for p in spec.get("ports") or []:
        if not isinstance(p, Mapping):
            continue
        q = {k: p[k] for k in _SERVICE_PORT_FIELDS if p.get(k) is not None}
        q.setdefault("protocol", "TCP")
        q.setdefault("targetPort", q.get("port"))
        ports.append(q)
    out["ports"] = ports
    return out


def service_owned_hash(svc: Mapping[str, Any]) -> str:
    """Differs between a built Service and the live one exactly when its owned fields were edited."""
    return _hash(json.dumps(service_owned(svc), sort_keys=True, separators=(",", ":"), default=str), 16)

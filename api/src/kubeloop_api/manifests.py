"""Pure request -> manifest logic (no I/O): validating bodies with the core models, JSON merge patches,
and the patch helpers (suspend/resume, canary share, alias)."""

from __future__ import annotations

import copy
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

from kubeloop.resources import (
    API_VERSION,
    DriftMonitor,
    ManifestError,
    ModelDeployment,
    Resource,
    TrainingJob,
)
from kubeloop_api.errors import InvalidError


class Kind(StrEnum):
    """The three Kubeloop resources, by their plural (as in the URL)."""

    trainingjobs = "trainingjobs"
    modeldeployments = "modeldeployments"
    driftmonitors = "driftmonitors"


MODELS: Final[dict[Kind, type[Resource]]] = {
    Kind.trainingjobs: TrainingJob,
    Kind.modeldeployments: ModelDeployment,
    Kind.driftmonitors: DriftMonitor,
}

# Where each kind keeps its suspend flag.
SUSPEND_PATH: Final[dict[Kind, tuple[str, ...]]] = {
    Kind.trainingjobs: ("spec", "runPolicy", "suspend"),
    Kind.modeldeployments: ("spec", "suspend"),
    Kind.driftmonitors: ("spec", "suspend"),
}

_METADATA_WRITABLE: Final = frozenset({"name", "generateName", "namespace", "labels", "annotations"})
_PATCHABLE_METADATA: Final = frozenset({"labels", "annotations", "resourceVersion"})


def causes_of(err: ManifestError) -> list[dict[str, str]]:
    """``details.causes`` from the core's one-line-per-field message (``path: message``)."""
    causes = []
    for line in str(err).splitlines():
        field, sep, msg = line.partition(": ")
        if not sep:
            field, msg = "", line
        causes.append({"reason": "FieldValueInvalid", "field": field, "message": msg})
    return causes


def validate(kind: Kind, manifest: Any, namespace: str, *, require_name: bool = True) -> dict[str, Any]:
    """The manifest as it goes to the API server, after the core model accepted it.

    Refusals are 422 with every bad field named (``spec.dataset.target: Field required``), the same
    paths the API server's schema and CEL rules name. What is sent is the caller's manifest itself
    (namespace filled in, status dropped), so it is the object ``kubectl apply`` would create."""
    model = MODELS[kind]
    if not isinstance(manifest, dict):
        raise InvalidError("body: must be a JSON object (a manifest)", field="body")
    doc = copy.deepcopy(manifest)
    api_version = doc.setdefault("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise InvalidError(f"must be {API_VERSION}, got {api_version!r}", field="apiVersion")
    kind_name = doc.setdefault("kind", model.kind)
    if kind_name != model.kind:
        raise InvalidError(f"must be {model.kind} for /{kind.value}, got {kind_name!r}", field="kind")
    meta = doc.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise InvalidError("must be an object", field="metadata")
    unknown = sorted(set(meta) - _METADATA_WRITABLE - {"uid", "resourceVersion", "creationTimestamp"})
    if unknown:
        raise InvalidError(f"cannot be set: {', '.join(unknown)}", field=f"metadata.{unknown[0]}")
    ns = meta.get("namespace")
    if ns not in (None, "") and ns != namespace:  # empty is unset, as kubectl reads it
        raise InvalidError(
            f"{ns!r} does not match the namespace of the request ({namespace!r})", field="metadata.namespace"
        )
    meta["namespace"] = namespace
    if require_name and not meta.get("name") and not meta.get("generateName"):
        raise InvalidError("Required value: name or generateName is required", field="metadata.name")
    for key in ("labels", "annotations"):
        if key in meta and meta[key] is None:
            del meta[key]  # as the API server reads it: no labels (a YAML `labels:` with nothing under it)
        if key in meta and not (
            isinstance(meta[key], dict) and all(isinstance(v, str) for v in meta[key].values())
        ):
            raise InvalidError("must be a map of strings", field=f"metadata.{key}")
    doc.pop("status", None)
    check = dict(doc)
    check["metadata"] = {k: v for k, v in meta.items() if k in ("name", "namespace")}
    try:
        model.from_manifest(check)
    except ValidationError as e:
        err = ManifestError(e)
        raise InvalidError(str(err).replace("\n", "; "), causes=causes_of(err)) from None
    except ValueError as e:
        raise InvalidError(str(e)) from None
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what ``kubectl patch --type merge`` sends)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def check_patch(patch: Any) -> dict[str, Any]:
    """A caller's merge patch may change ``spec``, labels and annotations (status is the operator's)."""
    if not isinstance(patch, dict):
        raise InvalidError("body: a merge patch must be a JSON object", field="body")
    for key in patch:
        if key not in ("spec", "metadata", "apiVersion", "kind"):
            what = "is written by the operator only" if key == "status" else "cannot be patched"
            raise InvalidError(what, field=key)
    meta = patch.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise InvalidError("must be an object", field="metadata")
        bad = sorted(set(meta) - _PATCHABLE_METADATA)
        if bad:
            raise InvalidError("cannot be patched (only labels and annotations)", field=f"metadata.{bad[0]}")
    return patch


def patched(kind: Kind, current: dict[str, Any], patch: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Apply ``patch`` to ``current`` and validate the result (422 naming the field if invalid)."""
    result: dict[str, Any] = merge_patch(current, patch)
    if not isinstance(result.get("spec"), dict):
        raise InvalidError("must be an object", field="spec")
    candidate = {
        "apiVersion": result.get("apiVersion", API_VERSION),
        "kind": result.get("kind", MODELS[kind].kind),
        "metadata": {
            k: v for k, v in (result.get("metadata") or {}).items() if k in ("name", "labels", "annotations")
        },
        "spec": result["spec"],
    }
    validate(kind, candidate, namespace)
    return result


def set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A merge patch that sets ``path`` to ``value``."""
    out: dict[str, Any] = {}
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return out


def suspend_patch(kind: Kind, suspend: bool) -> dict[str, Any]:
    return set_path({}, SUSPEND_PATH[kind], suspend)


def canary_patch(current: dict[str, Any], percent: int) -> dict[str, Any]:
    if not (current.get("spec") or {}).get("canary"):
        raise InvalidError("this ModelDeployment has no canary; add spec.canary first", field="spec.canary")
    return {"spec": {"canary": {"trafficPercent": percent}}}


def alias_patch(current: dict[str, Any], alias: str) -> dict[str, Any]:
    """Serve whatever ``alias`` points at (drops a pinned version; the model name stays)."""
    model = (current.get("spec") or {}).get("model") or {}
    if not model.get("name"):
        raise InvalidError(
            "serves a model by uri; an alias needs a registered model name", field="spec.model.alias"
        )
    return {"spec": {"model": {"alias": alias, "version": None}}}

"""Helpers about pods shared by the scheduler and the kubelet part: quantities, requests, field refs."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from fractions import Fraction
from typing import Any

Obj = dict[str, Any]

_SUFFIX: dict[str, Fraction] = {
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000), "": Fraction(1), "k": Fraction(10**3), "M": Fraction(10**6),
    "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
}  # fmt: skip
_QTY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(value: str | int | float) -> Fraction:
    if isinstance(value, (int, float)):
        return Fraction(value)
    m = _QTY.match(value.strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = m.group(1), m.group(2) or ""
    return Fraction(number) * _SUFFIX[suffix]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def pod_requests(pod: Obj) -> dict[str, Fraction]:
    """Effective requests as the scheduler computes them: max(sum(containers), max(init)) + overhead.

    Restartable init containers (sidecars) count like regular containers."""
    spec = pod.get("spec", {})

    def reqs(c: Obj) -> dict[str, Fraction]:
        res = c.get("resources") or {}
        out = {k: parse_quantity(v) for k, v in (res.get("limits") or {}).items()}
        out.update({k: parse_quantity(v) for k, v in (res.get("requests") or {}).items()})
        return out

    total: dict[str, Fraction] = {}
    for c in spec.get("containers") or []:
        for k, v in reqs(c).items():
            total[k] = total.get(k, Fraction(0)) + v
    sidecars: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or []:
        r = reqs(c)
        if c.get("restartPolicy") == "Always":
            for k, v in r.items():
                sidecars[k] = sidecars.get(k, Fraction(0)) + v
                total[k] = total.get(k, Fraction(0)) + v
            continue
        for k, v in r.items():
            need = v + sidecars.get(k, Fraction(0))
            if need > total.get(k, Fraction(0)):
                total[k] = need
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, Fraction(0)) + parse_quantity(v)
    return total


def is_terminal(pod: Obj) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for t in tolerations or []:
        effect = t.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        key = t.get("key") or ""
        if not key and op == "Exists":
            return True
        if key != taint.get("key"):
            continue
        if op == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _match_expression(labels: dict[str, str], expr: Obj) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    has = key in labels
    if op == "In":
        return has and labels[key] in values
    if op == "NotIn":
        return not has or labels[key] not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    if op in ("Gt", "Lt") and has and values:
        try:
            a, b = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def node_affinity_matches(pod: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec", {})
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    name = node["metadata"]["name"]
    for term in terms:
        exprs = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not exprs and not fields:
            continue
        if all(_match_expression(labels, e) for e in exprs) and all(
            _match_expression({"metadata.name": name}, f) for f in fields
        ):
            return True
    return False


def _format_map(values: dict[str, str]) -> str:
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))


def field_value(pod: Obj, path: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of the pod (env vars and downwardAPI volumes)."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "metadata.labels": _format_map(meta.get("labels") or {}),
        "metadata.annotations": _format_map(meta.get("annotations") or {}),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path not in simple:
        raise ValueError(f"unsupported fieldPath {path!r}")
    return str(simple[path])


def resource_value(pod: Obj, ref: Obj, default_container: str, node_allocatable: dict[str, str]) -> str:
    """A ``resourceFieldRef`` (limits default to the node's allocatable, as the kubelet does)."""
    name = ref.get("containerName") or default_container
    container: Obj = next((c for c in pod["spec"].get("containers", []) if c["name"] == name), {})
    kind, _, res = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(res)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(res)
    if value is None:
        value = node_allocatable.get(res, "0") if kind == "limits" else "0"
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    if divisor == 0:
        divisor = Fraction(1)
    return str(math.ceil(parse_quantity(str(value)) / divisor))

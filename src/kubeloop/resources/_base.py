"""Building blocks shared by the three kinds: API group, patterns, validated scalar types, the base
model (camelCase on the wire, unknown fields refused, CEL rules beside the validators) and the
standard condition.

Every cross-field rule exists twice, once as a pydantic validator and once as CEL next to it (see
:func:`_cel`), so an invalid object is refused with the same field path by the SDK and by the API
server.
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, ROUND_UP, Context, Decimal, Inexact, Overflow
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from kubeloop import cron

GROUP: Final = "kubeloop.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "kubeloop"

# --- shared building blocks -------------------------------------------------------------------------

DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Registered model names end up in object keys, labels and MLflow: keep them boring.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
# MLflow aliases; "latest" and "v<N>" are reserved by MLflow and refused below.
ALIAS_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
DATASET_URI_PATTERN: Final = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|/.+)$"
MODEL_URI_PATTERN: Final = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\.onnx|/.+\.onnx)$"
# Go time.Duration syntax, as Kubernetes users write it (e.g. 90s, 6h, 1h30m).
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
# Kubernetes resource quantities, the regex of k8s.io/apimachinery/pkg/api/resource.
QUANTITY_PATTERN: Final = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
RESOURCE_NAME_PATTERN: Final = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# The extended resource a training pod asks for per GPU (the NVIDIA device plugin's name).
GPU_RESOURCE: Final = "nvidia.com/gpu"
# Label keys (a name of at most 63 characters after an optional DNS-subdomain prefix and '/') and label
# values (at most 63, or empty), as the API server checks nodeSelector entries and tolerations.
LABEL_KEY_PATTERN: Final = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN: Final = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"

_DURATION_UNITS_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """Parse a Go-style duration (``1h30m``) into seconds."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use Go duration syntax such as 90s, 30m, 6h or 1h30m")
    total_ns = sum(float(n) * _DURATION_UNITS_NS[u] for n, u in _DURATION_PART.findall(value))
    return total_ns / 1e9


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_cron(value: str) -> str:
    cron.validate(value)
    return value


def _check_alias(value: str) -> str:
    if value == "latest" or re.fullmatch(r"v[0-9]+", value):
        raise ValueError(f"alias {value!r} is reserved by MLflow ('latest' and 'v<number>')")
    return value


DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN, max_length=317)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=64), AfterValidator(_check_duration)]


# QUANTITY_PATTERN, split into number and suffix; an exponent is an integer (as resource.ParseQuantity
# reads it: its regex allows `1e1.5`, the parser does not).
_QUANTITY = re.compile(
    r"(?P<number>[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE](?P<exp>[+-]?[0-9]+))?"
)
_QUANTITY_MAX_LENGTH: Final = 64
_QUANTITY_FACTORS: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{f"{p}i": Decimal(2 ** (10 * (i + 1))) for i, p in enumerate("KMGTPE")},
}
# Exact: at most 64 digits times 2^60 fits 200 digits, exponents only move the decimal point, and an
# inexact result would raise rather than compare wrong.
_QUANTITY_CONTEXT: Final = Context(prec=200, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Overflow])


def parse_quantity(value: int | str) -> Decimal:
    """The exact value of a Kubernetes quantity (``500m`` -> 0.5, ``1Gi`` -> 1073741824, ``1e3`` -> 1000).

    Accepts what the API server's ``resource.ParseQuantity`` accepts (at most 64 characters, the CRDs'
    bound); raises ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a Kubernetes quantity such as 500m, 2 or 1Gi, got {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    m = _QUANTITY.fullmatch(value) if len(value) <= _QUANTITY_MAX_LENGTH else None
    if m is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    number = Decimal(m["number"])
    if m["exp"] is not None:
        return number.scaleb(int(m["exp"]), _QUANTITY_CONTEXT)
    return _QUANTITY_CONTEXT.multiply(number, _QUANTITY_FACTORS[m["suffix"] or ""])


def _check_quantity(value: Any) -> int | str:
    # A pod's requests and limits cannot be negative: the API server would refuse the child instead.
    if parse_quantity(value) < 0:
        raise ValueError(f"{value!r} is negative; resource quantities are 0 or more")
    return value  # type: ignore[no-any-return]


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "description": "A Kubernetes quantity such as 500m, 2 or 1Gi.",
            # Bounds the CEL cost estimate of isQuantity() below the API server's budget.
            "maxLength": 64,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a Kubernetes quantity such as 500m, 2 or 1Gi",
                },
                {
                    "rule": "type(self) == int ? self >= 0 : !isQuantity(self) || !quantity(self).isLessThan(quantity('0'))",
                    "message": "must not be negative",
                },
            ],
        }
    ),
]
Alias = Annotated[
    str,
    Field(
        pattern=ALIAS_PATTERN,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self != 'latest' && !self.matches('^v[0-9]+$')",
                    "message": "alias is reserved by MLflow ('latest' and 'v<number>')",
                }
            ]
        },
    ),
    AfterValidator(_check_alias),
]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, max_length=63)]


def _cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    reason: str | None = None,
    message_expression: str | None = None,
) -> dict[str, str]:
    """One CEL rule as it appears in ``x-kubernetes-validations``; ``message`` is the fallback when a
    ``message_expression`` is given."""
    out = {"rule": rule, "message": message}
    if message_expression:
        out["messageExpression"] = message_expression
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


class KubeloopModel(BaseModel):
    """Base for every spec/status object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    # CEL rules attached to this object's schema; each mirrors a model validator.
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [dict(r) for r in cls.cel_rules]
        # Defaults made by factories are invisible to JSON Schema; spell them out so the API server
        # fills them in too (an empty object default lets the nested defaults apply).
        for name, info in cls.model_fields.items():
            prop = target.get("properties", {}).get(info.alias or name)
            if prop is None or info.default_factory is None or "default" in prop:
                continue
            value = info.get_default(call_default_factory=True)
            prop["default"] = {} if isinstance(value, BaseModel) else value
        return schema


def _fail(field: str, message: str) -> ValueError:
    """A cross-field error that names the field it is about (the message starts with the path)."""
    return ValueError(f"{field}: {message}")


def overcommit_allowed(name: str) -> bool:
    """Whether a container may request less of resource ``name`` than its limit.

    Kubernetes' rule (pkg/apis/core/helper ``IsOvercommitAllowed``: ``IsNativeResource(name) &&
    !IsHugePageResourceName(name)``): native resources (no domain, or one containing ``kubernetes.io/``)
    may be overcommitted, except ``hugepages-*``; every extended resource (``nvidia.com/gpu``,
    ``example.com/fpga``) may not. For those, pkg/apis/core/validation ``ValidateResourceRequirements``
    refuses a request unlike its limit ("must be equal to <name> limit") and a request without a limit
    ("Limit must be set for non overcommitable resources")."""
    return ("/" not in name or "kubernetes.io/" in name) and not name.startswith("hugepages-")


def is_extended_resource(name: str) -> bool:
    """Whether ``name`` is an extended resource (pkg/apis/core/helper ``IsExtendedResourceName``): a
    domain-prefixed name outside kubernetes.io (``nvidia.com/gpu``), not a quota name (``requests.*``).

    Kubernetes counts these in whole units: ``ValidateResourceQuantityValue`` refuses ``500m`` ("must be
    an integer")."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


# Whole-number and page-size checks stop at this magnitude: CEL has no exact division, so its twin
# rounds asApproximateFloat(), exact far below 2^53 only; no device count or memory size comes near.
_CHECKED_BELOW: Final = Decimal(10**12)
_NANO: Final = Decimal("1e-9")


def _as_parsed(value: Decimal) -> Decimal:
    """``value`` as the API server holds it: resource.ParseQuantity rounds up (away from zero) to the
    next nano unit, so ``0.9999999999`` is 1 to it and to CEL's quantity()."""
    return value.quantize(_NANO, rounding=ROUND_UP, context=Context(prec=200))


def is_whole_quantity(value: int | str) -> bool:
    """Whether a quantity is a whole number (``2``, ``2000m``, ``1k``; not ``500m``), as far as it is
    checked: magnitudes from 10^12 up are taken as whole (see _CHECKED_BELOW)."""
    q = parse_quantity(value)
    if abs(q) >= _CHECKED_BELOW:
        return True
    q = _as_parsed(q)
    return q == q.to_integral_value()


def _is_whole_cel(value: str) -> str:
    """CEL twin of :func:`is_whole_quantity` for ``value`` (a CEL string expression); true for a
    malformed quantity, which its own rule refuses.

    isInteger() alone is no test: it is false for ``2000m``, ``1.0`` and 19-digit integers (it asks
    whether the parsed form is a plain int64). The nearest integers to asApproximateFloat() are compared
    exactly instead; below 10^12 the float is off by far less than 1, so one of them is the value when
    it is whole. (quantity(string(n)) would do too, but the cost estimate of a string made from an int
    is unbounded and the API server refuses the CRD; add(int) is exact and cheap.)"""
    q = f"quantity({value})"
    n = f"int({q}.asApproximateFloat())"
    return (
        f"(!isQuantity({value}) || {q}.isInteger() || !{q}.isLessThan(quantity('1e12'))"
        f" || !{q}.isGreaterThan(quantity('-1e12')) || {q}.compareTo(quantity('0').add({n})) == 0"
        f" || {q}.compareTo(quantity('1').add({n})) == 0)"
    )


_IS_EXTENDED_CEL: Final = "(k.contains('/') && !k.contains('kubernetes.io/') && !k.startsWith('requests.'))"
_NOT_WHOLE: Final = " is not a whole number (extended resources are counted in whole units)"


def _whole_rules(part: str) -> tuple[dict[str, str], ...]:
    """CEL: the extended resources of ``part`` (requests or limits) are whole numbers. nvidia.com/gpu has
    a rule of its own, so the server names the exact field; one rule over the map names any other."""
    gpu, value = repr(GPU_RESOURCE), f"string(self.{part}[{GPU_RESOURCE!r}])"
    others = f"k != {gpu} && {_IS_EXTENDED_CEL}"
    first = f"self.{part}.filter(k, {others} && !{_is_whole_cel(f'string(self.{part}[k])')})[0]"
    return (
        _cel(
            f"!has(self.{part}) || !({gpu} in self.{part}) || {_is_whole_cel(value)}",
            f"{part}.{GPU_RESOURCE} must be a whole number (extended resources are counted in whole units)",
            f".{part}[{gpu}]",
            message_expression=f"{value} + '{_NOT_WHOLE}'",
        ),
        _cel(
            f"!has(self.{part}) || self.{part}.all(k, !({others}) || {_is_whole_cel(f'string(self.{part}[k])')})",
            f"extended resources in {part} must be whole numbers (they are counted in whole units)",
            f".{part}",
            message_expression=f"{first} + ': ' + string(self.{part}[{first}]) + '{_NOT_WHOLE}'",
        ),
    )


# Page sizes as Kubernetes names them (the node's canonical binary quantity: hugepages-2Mi, -1Gi, -64Ki).
# Kubernetes takes any quantity after the prefix; we refuse other spellings (hugepages-2M), which no node
# advertises, so that CEL can read the page size as an int.
HUGEPAGES_PATTERN: Final = r"^hugepages-[1-9][0-9]{0,3}(Ki|Mi|Gi)$"
_PAGES_CHECKED_BELOW: Final = Decimal(10**15)
_NO_PAGE_SIZE: Final = " names no page size (hugepages-<size> with a size such as 64Ki, 2Mi or 1Gi)"
_HUGEPAGES_ALONE: Final = " needs a cpu or memory request or limit too (Kubernetes refuses hugepages alone)"


def hugepages_size(name: str) -> int | None:
    """The page size in bytes of a ``hugepages-<size>`` resource; None where the name gives none."""
    if not re.fullmatch(HUGEPAGES_PATTERN, name):
        return None
    return int(parse_quantity(name.removeprefix("hugepages-")))


def is_whole_pages(value: int | str, page_size: int) -> bool:
    """Whether a hugepages quantity is a whole number of pages (pkg/apis/core/helper
    ``IsHugePageResourceValueDivisible``), as far as it is checked: from 10^15 bytes up it is taken as
    whole. Kubernetes divides the value rounded up to a byte; a fractional byte count is refused here."""
    q = parse_quantity(value)
    if abs(q) >= _PAGES_CHECKED_BELOW:
        return True
    return _as_parsed(q) % page_size == 0


def _whole_pages_cel(value: str, key: str) -> str:
    """CEL twin of :func:`is_whole_pages` for ``value`` of hugepages resource ``key`` (CEL expressions;
    the key matches HUGEPAGES_PATTERN). As in :func:`_is_whole_cel`: the page counts next to the float
    quotient, multiplied back and compared exactly."""
    q, size = f"quantity({value})", f"quantity({key}.substring(10)).asInteger()"
    n = f"int({q}.asApproximateFloat() / double({size}))"
    return (
        f"(!isQuantity({value}) || !{q}.isLessThan(quantity('1e15')) || !{q}.isGreaterThan(quantity('-1e15'))"
        f" || {q}.compareTo(quantity('0').add({n} * {size})) == 0"
        f" || {q}.compareTo(quantity('0').add(({n} + 1) * {size})) == 0)"
    )


def _hugepages_rules(part: str) -> tuple[dict[str, str], ...]:
    """CEL: the hugepages resources of ``part`` (requests or limits) name a page size and are whole pages;
    hugepages come with cpu or memory (named on limits where both parts have hugepages)."""
    named = f"k.matches('{HUGEPAGES_PATTERN}')"
    whole = _whole_pages_cel(f"string(self.{part}[k])", "k")
    bad_name = f"self.{part}.filter(k, k.startsWith('hugepages-') && !{named})[0]"
    not_whole = f"self.{part}.filter(k, {named} && !{whole})[0]"
    has_huge = "has(self.{0}) && self.{0}.exists(k, k.startsWith('hugepages-'))"
    cpu_or_memory = " || ".join(
        f"(has(self.{p}) && ('cpu' in self.{p} || 'memory' in self.{p}))" for p in ("requests", "limits")
    )
    alone = f"!({has_huge.format(part)})" + (" || " + has_huge.format("limits") if part == "requests" else "")
    return (
        _cel(
            f"!has(self.{part}) || self.{part}.all(k, !k.startsWith('hugepages-') || {named})",
            f"hugepages-<size> in {part} must name a page size such as 64Ki, 2Mi or 1Gi",
            f".{part}",
            message_expression=f"{bad_name} + '{_NO_PAGE_SIZE}'",
        ),
        _cel(
            f"!has(self.{part}) || self.{part}.all(k, !{named} || {whole})",
            f"hugepages in {part} must be a whole number of pages of the size the name gives",
            f".{part}",
            message_expression=(
                f"{not_whole} + ': ' + string(self.{part}[{not_whole}]) + ' is not a whole number of '"
                f" + {not_whole}.substring(10) + ' pages'"
            ),
        ),
        _cel(
            f"{alone} || {cpu_or_memory}",
            "hugepages need a cpu or memory request or limit too (Kubernetes refuses hugepages alone)",
            f".{part}",
            message_expression=f"self.{part}.filter(k, k.startsWith('hugepages-'))[0] + '{_HUGEPAGES_ALONE}'",
        ),
    )


def _no_overcommit_reason(name: str) -> str:
    return "hugepages" if name.startswith("hugepages-") else "extended resources"


# Resources whose request-against-limit rule has a CEL rule of its own (see ResourceRequirements).
_NAMED_RESOURCES: Final = ("cpu", "memory", "ephemeral-storage", GPU_RESOURCE)


def _overcommit_allowed_cel(key: str) -> str:
    """CEL twin of :func:`overcommit_allowed` for ``key`` (a CEL string expression)."""
    return f"((!{key}.contains('/') || {key}.contains('kubernetes.io/')) && !{key}.startsWith('hugepages-'))"


def _request_fits_limit(key: str, overcommit: bool | None = None) -> str:
    """CEL: the request for ``key`` (a CEL string expression) is at most its limit (equal to it where
    the resource cannot be overcommitted), or either is absent. ``overcommit`` is known for a named
    resource; None decides per key.

    Values may be ints (int-or-string), hence string(); a malformed quantity is left to its own rule."""
    req, lim = f"quantity(string(self.requests[{key}]))", f"quantity(string(self.limits[{key}]))"
    within, equal = f"!{lim}.isLessThan({req})", f"{req}.compareTo({lim}) == 0"
    if overcommit is None:
        check = f"({_overcommit_allowed_cel(key)} ? {within} : {equal})"
    else:
        check = within if overcommit else equal
    return (
        f"!({key} in self.requests) || !({key} in self.limits) || !isQuantity(string(self.requests[{key}]))"
        f" || !isQuantity(string(self.limits[{key}])) || {check}"
    )


def _named_rule(name: str) -> dict[str, str]:
    """The rule for one named resource, with the server naming the exact field (requests[memory])."""
    k = repr(name)
    req, lim = f"string(self.requests[{k}])", f"string(self.limits[{k}])"
    if overcommit_allowed(name):
        message = f"requests.{name} must not be more than limits.{name}"
        expression = f"{req} + ' is more than limits.{name} ' + {lim}"
    else:
        reason = f"({_no_overcommit_reason(name)} cannot be overcommitted)"
        message = f"requests.{name} must equal limits.{name} {reason}"
        expression = f"{req} + ' must equal limits.{name} ' + {lim} + ' {reason}'"
    return _cel(
        f"!has(self.requests) || !has(self.limits) || {_request_fits_limit(k, overcommit_allowed(name))}",
        message,
        f".requests[{k}]",
        message_expression=expression,
    )


# CEL: the first resource, other than the named ones, whose request does not fit its limit.
_FIRST_OTHER_MISFIT: Final = (
    f"self.requests.filter(k, !(k in {list(_NAMED_RESOURCES)}) && !({_request_fits_limit('k')}))[0]"
)


def _other_misfit_message() -> str:
    """CEL: ``<key>: <request> is more than limits.<key> <limit>`` (``must equal``, with the reason, for a
    resource that cannot be overcommitted) for that first resource."""
    k = _FIRST_OTHER_MISFIT
    return (
        f"{k} + ': ' + string(self.requests[{k}]) + ({_overcommit_allowed_cel(k)} ? ' is more than limits.'"
        f" : ' must equal limits.') + {k} + ' ' + string(self.limits[{k}]) + ({_overcommit_allowed_cel(k)} ? ''"
        f" : {k}.startsWith('hugepages-') ? ' (hugepages cannot be overcommitted)'"
        " : ' (extended resources cannot be overcommitted)')"
    )


class ResourceRequirements(KubeloopModel):
    """Compute resources, as in a container's ``resources`` (cpu, memory, nvidia.com/gpu, …)."""

    requests: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN)], Quantity] = Field(
        default_factory=dict, max_length=32, description="Minimum resources the pod needs to be scheduled."
    )
    limits: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN)], Quantity] = Field(
        default_factory=dict, max_length=32, description="Maximum resources the pod may use."
    )

    # The API server refuses a container whose request exceeds its limit, or differs from it for a
    # resource that cannot be overcommitted (see overcommit_allowed), but only when the operator creates
    # the Job/Deployment: refuse it at admission of our object instead. The common resources get a rule
    # each, so the server names the exact field (requests[memory]) as the SDK does; one rule over the
    # map catches any other resource and names it in its message. A request without a limit is
    # accepted: the operator sets the limit to the request where Kubernetes needs one. Likewise the
    # quantity rules of ValidateResourceRequirements: extended resources in whole units, hugepages in
    # whole pages and never without cpu or memory.
    cel_rules = (
        *_whole_rules("limits"),
        *_whole_rules("requests"),
        *_hugepages_rules("limits"),
        *_hugepages_rules("requests"),
        *(_named_rule(k) for k in _NAMED_RESOURCES),
        _cel(
            "!has(self.requests) || !has(self.limits) || self.requests.all(k, "
            f"k in {list(_NAMED_RESOURCES)} || {_request_fits_limit('k')})",
            "a request must not be more than the limit of the same resource, nor differ from it where the "
            "resource cannot be overcommitted (extended resources, hugepages)",
            ".requests",
            # Names the first offender only: listing every one (map + join) is over the cost budget, and
            # cel.bind is not offered to CRD rules.
            message_expression=_other_misfit_message(),
        ),
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Self:
        # Limits first, as the API server checks them.
        for part in ("limits", "requests"):
            for name, quantity in getattr(self, part).items():
                if is_extended_resource(name) and not is_whole_quantity(quantity):
                    raise _fail(f"{part}.{name}", f"{quantity}{_NOT_WHOLE}")
        for part in ("limits", "requests"):
            for name, quantity in getattr(self, part).items():
                if not name.startswith("hugepages-"):
                    continue
                size = hugepages_size(name)
                if size is None:
                    raise _fail(f"{part}.{name}", f"{name}{_NO_PAGE_SIZE}")
                if not is_whole_pages(quantity, size):
                    raise _fail(f"{part}.{name}", f"{quantity} is not a whole number of {name[10:]} pages")
        huge = [
            (p, k) for p in ("limits", "requests") for k in getattr(self, p) if k.startswith("hugepages-")
        ]
        if huge and not {"cpu", "memory"} & (self.requests.keys() | self.limits.keys()):
            raise _fail(huge[0][0], f"{huge[0][1]}{_HUGEPAGES_ALONE}")
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is None:
                continue
            req, lim = parse_quantity(request), parse_quantity(limit)
            if not overcommit_allowed(name) and req != lim:
                raise _fail(
                    f"requests.{name}",
                    f"{request} must equal limits.{name} {limit} "
                    f"({_no_overcommit_reason(name)} cannot be overcommitted)",
                )
            if req > lim:
                raise _fail(f"requests.{name}", f"{request} is more than limits.{name} {limit}")
        return self


class Toleration(KubeloopModel):
    """A pod toleration (core/v1 Toleration)."""

    # An empty key (with Exists) tolerates every taint, as in core/v1.
    key: str | None = Field(
        default=None,
        pattern="^$|" + LABEL_KEY_PATTERN,
        max_length=317,
        description="Taint key the toleration applies to.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(default=None, description="Taint value matched with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )

    cel_rules = (
        _cel(
            "self.operator != 'Exists' || !has(self.value)",
            "value must be empty when operator is Exists",
            ".value",
        ),
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Self:
        if self.operator == "Exists" and self.value is not None:
            raise _fail("value", "must be empty when operator is Exists")
        return self


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeloopModel):
    """A standard metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=CONDITION_REASON_PATTERN,
        max_length=1024,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


_CONDITIONS_EXTRA: Final[dict[str, Any]] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}

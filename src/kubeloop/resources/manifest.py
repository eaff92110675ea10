"""The resource envelope (apiVersion, kind, metadata, spec, status), printer columns and the
formatting of validation errors as field paths."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kubeloop.resources._base import API_VERSION, DNS_SUBDOMAIN_PATTERN, KubeloopModel, _fail


class PrinterColumn(BaseModel):
    """An additionalPrinterColumns entry."""

    name: str
    type: Literal["integer", "number", "string", "boolean", "date"]
    json_path: str = Field(alias="jsonPath")
    description: str = ""
    priority: int = 0

    model_config = ConfigDict(populate_by_name=True)


class Resource(BaseModel):
    """A Kubeloop custom resource: metadata, spec and (optional) status."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    scale: ClassVar[bool] = False
    description: ClassVar[str]

    api_version: Literal["kubeloop.io/v1alpha1"] = Field(default="kubeloop.io/v1alpha1", alias="apiVersion")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: KubeloopModel
    status: KubeloopModel | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_envelope(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.kind} manifest must be a mapping")
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise _fail("kind", f"expected {cls.kind}, got {kind!r}")
        meta = data.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _fail("metadata", "must be a mapping")
        name = meta.get("name")
        if name is not None and (
            not isinstance(name, str) or len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name)
        ):
            raise _fail("metadata.name", f"{name!r} is not a valid lowercase DNS-1123 subdomain")
        return data

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Self:
        """Validate a plain manifest (as from YAML or the API server)."""
        return cls.model_validate(manifest)

    def to_manifest(self, *, include_defaults: bool = False) -> dict[str, Any]:
        """The plain manifest. Without ``include_defaults`` only what was set is written, so a
        manifest survives ``from_manifest`` → ``to_manifest`` unchanged."""
        body = self.model_dump(
            mode="json", by_alias=True, exclude_unset=not include_defaults, exclude_none=True
        )
        body["apiVersion"] = API_VERSION
        out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": self.kind}
        out.update({k: v for k, v in body.items() if k != "apiVersion"})
        return out

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = self.metadata.get("namespace")
        return str(ns) if ns is not None else None


def _cols(*cols: tuple[Any, ...]) -> tuple[PrinterColumn, ...]:
    keys = ("name", "type", "jsonPath", "description", "priority")
    return tuple(PrinterColumn.model_validate(dict(zip(keys, c, strict=False))) for c in cols)


_AGE = ("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with the dotted field path (camelCase, as in YAML)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not _SYNTHETIC_LOC.match(str(p)))
        msg = e["msg"].removeprefix("Value error, ")
        # Cross-field validators name their field first ("promotion.metric: ..."): fold it into the path.
        m = _FIELD_PREFIX.match(msg)
        if m:
            loc = ".".join(p for p in (loc, m["field"]) if p)
            msg = m["rest"]
        path = ".".join(p for p in (prefix, loc) if p)
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


_SYNTHETIC_LOC: Final = re.compile(r"^(function-(after|before|plain|wrap)\[.*\]|int|str|float|bool)$")
# Later parts may be map keys such as resource names (requests.nvidia.com/gpu, limits.ephemeral-storage).
_FIELD_PREFIX: Final = re.compile(
    r"^(?P<field>[a-z][A-Za-z0-9]*(\.[A-Za-z0-9][-A-Za-z0-9_/]*)*): (?P<rest>.+)$", re.S
)


class ManifestError(ValueError):
    """A manifest failed validation; ``str()`` names every bad field by its path."""

    def __init__(self, err: ValidationError, prefix: str = "") -> None:
        self.errors = err.errors()
        super().__init__(format_validation_error(err, prefix))

"""Request bodies: reading with a size limit, and decoding JSON or YAML into the plain JSON data the routes
and the core models take, refusing what would silently lose data (duplicate keys, keys that collapse into
one JSON name, alias bombs, values JSON cannot hold)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import yaml
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from kubeloop_api.errors import (
    BadRequestError,
    InvalidError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)


class DuplicateKeyError(ValueError):
    """A mapping names one key twice (written twice, or written differently but the same name in JSON).

    ``key`` is its name in JSON (or the key itself where it has none), ``line`` the 1-based line of the
    second occurrence (0: unknown), ``first`` the line of the first and ``written`` how that one was
    written where it was written differently."""

    def __init__(self, key: Any, line: int, first: int = 0, written: str = "") -> None:
        where = f" at line {line}" if line else ""
        before = f"first at line {first}" if first else ""
        if written:
            before += f", as {written}"
        super().__init__(f"duplicate key {key!r}{where}" + (f" ({before})" if before else ""))


def key_name(key: Any) -> Any:
    """The name a map key has in JSON: a string as it is, an integer or boolean as kubectl's YAML reader
    (sigs.k8s.io/yaml) writes it (``1`` -> "1", ``yes`` -> "true"); any other key unchanged (not a name:
    :func:`json_data` refuses it)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    return key


_MERGE: Final = "tag:yaml.org,2002:merge"


# libyaml's parser where PyYAML was built with it (the wheels are): ~3x faster than the pure-Python one on
# a large manifest, which matters as decoding holds the event loop. The constructor (below) is the same.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_SafeLoader):
    """PyYAML's safe loader, but

    - an unquoted date or time stays the string written, as kubectl's YAML reader (sigs.k8s.io/yaml,
      go-yaml v2) keeps it: the same file gives the same object either way;
    - a map never loses a key: keys are their JSON names (:func:`key_name`) as the map is built, so
      ``1`` and ``true`` (equal in Python) stay two keys as kubectl keeps them, and two keys with one
      name are a :class:`DuplicateKeyError` (kubectl refuses duplicate keys too). A key written next to
      a merge (``<<``) replaces the merged one: that is what a merge means."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Every mapping passes here before its merges are folded in (a merged one too, through the
        # recursion): the one point where the keys written in it can be told from the merged ones.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, tuple[int, str]] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # a key that is a list or map is refused as unhashable when the map is built
            name = key_name(self.construct_object(key_node))
            line = key_node.start_mark.line + 1
            style = key_node.style if key_node.style in ("'", '"') else ""
            written = f"{style}{key_node.value}{style}"
            try:
                first = seen.get(name)
            except TypeError:
                continue
            if first is not None:
                raise DuplicateKeyError(name, line, first[0], first[1] if first[1] != written else "")
            seen[name] = (line, written)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)  # merged pairs first, so the keys written here win
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_name(self.construct_object(key_node, deep=deep))
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                ) from None
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _as_written(loader: _YamlLoader, node: yaml.Node) -> Any:
    return loader.construct_yaml_str(node)


_YamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_written)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):  # the common case costs one comparison; finding the key only on error
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKeyError(k, 0)
            seen.add(k)
    return out


_JSON_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _json_duplicate(raw: bytes) -> DuplicateKeyError | None:
    """The first key given twice in one object of ``raw`` (JSON, valid up to that key), with its line.
    Only run on a body already found to have one (json gives the hook no position)."""
    text = raw.decode(json.detect_encoding(raw), "replace")
    objects: list[set[str] | None] = []  # per open bracket: the keys of an object, None for a list
    last: re.Match[str] | None = None
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok == "{":
            objects.append(set())
        elif tok == "[":
            objects.append(None)
        elif tok in ("}", "]"):
            if objects:
                objects.pop()
        elif tok == ":":
            keys = objects[-1] if objects else None
            if last is not None and keys is not None:
                key = json.loads(last.group())
                if key in keys:
                    return DuplicateKeyError(key, text.count("\n", 0, last.start()) + 1)
                keys.add(key)
        else:
            last = m
    return None


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
    return decode_document(await read_body(request, limit), ctype)


def decode_document(raw: bytes, ctype: str) -> Any:
    """``raw`` decoded as JSON, or YAML when ``ctype`` is one of :data:`YAML_TYPES` (no I/O)."""
    if not raw.strip():
        raise BadRequestError("body: empty; expected a JSON object")
    try:
        if ctype in YAML_TYPES:
            return json_data(yaml.load(raw, Loader=_YamlLoader), budget=_Budget(len(raw)))
        return json_data(json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_json_object))
    except DuplicateKeyError as e:
        if ctype not in YAML_TYPES:
            e = _json_duplicate(raw) or e
        raise BadRequestError(f"body: {e}") from None
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        kind = "YAML" if ctype in YAML_TYPES else "JSON"
        raise BadRequestError(f"body: not valid {kind}: {str(e).splitlines()[0][:200]}") from None


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                self._json = json.loads(raw, object_pairs_hook=_json_object)
            except DuplicateKeyError as e:
                found = _json_duplicate(raw) or e
                # FastAPI passes an HTTPException on as it is (anything else but a JSONDecodeError
                # becomes a 400 without the reason).
                raise HTTPException(400, f"body: {found}") from None
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose typed JSON body (one FastAPI decodes into a model) refuses duplicate keys as
    :func:`decode_document` does, instead of keeping the last one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_MAX_DEPTH: Final = 200  # orjson, which encodes what is sent on, stops at 254 levels


class _Budget:
    """How many values a decoded body may expand to. Without aliases a document has fewer values than
    bytes; YAML aliases are references, and a few hundred bytes can name 10^8 values ("billion laughs"),
    which walking (here, on the event loop) and sending on would take minutes and gigabytes. Anchors
    used for defaults stay far below the bound, 10 values per byte of the body (at least 100,000)."""

    def __init__(self, body_bytes: int) -> None:
        self.limit = max(100_000, 10 * body_bytes)
        self.left = self.limit

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise InvalidError(
                f"expands to more than {self.limit} values through YAML aliases; write it out",
                field="body",
            )


def json_data(value: Any, path: str = "", depth: int = 0, budget: _Budget | None = None) -> Any:
    """``value`` as JSON carries it, or 422 naming the field JSON cannot carry: an integer outside int64
    or a float that is not finite (orjson would refuse the one and write ``null`` for the other), a
    YAML-only type, a map key that is not a name, two keys with one name. Integer and boolean map keys
    become names (:func:`key_name`)."""
    field = path or "body"
    if budget is not None:
        budget.take()
    if depth > _MAX_DEPTH:
        raise InvalidError(f"nested more than {_MAX_DEPTH} levels deep", field=field)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = key_name(k)
            if not isinstance(key, str):
                raise InvalidError(f"map key {k!r} is not a name; quote it", field=field)
            if key in out:
                raise InvalidError(f"map key {key!r} given twice", field=field)
            out[key] = json_data(v, f"{path}.{key}" if path else key, depth + 1, budget)
        return out
    if isinstance(value, list):
        return [json_data(v, f"{field}[{i}]", depth + 1, budget) for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise InvalidError("integer out of range (64 bits)", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidError(f"{value} is not a JSON number", field=field)
    if value is None or isinstance(value, str | int | float):
        return value
    raise InvalidError(f"a YAML {type(value).__name__} has no JSON form", field=field)

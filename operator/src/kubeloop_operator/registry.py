"""The model registry (MLflow) and model references: the one place the operator talks to MLflow.

:class:`Registry` reads model versions and aliases through MLflow's REST API (two GETs; nothing here
writes to MLflow). :class:`Resolver` turns a ModelDeployment's model reference into the exact file a
track serves — :class:`~kubeloop_operator.builders.modeldeployment.ResolvedModel` — which the
operator then pins in status and in the pods' environment:

* ``name`` + ``version``: that version; ``name`` + ``alias``: the version the alias points at now;
  the ONNX file is the version's ``kubeloop.io/model-uri`` tag (the trainer sets it), else the
  storage layout's ``models/<name>/<version>/model.onnx``;
* ``uri``: that file, served under the ModelDeployment's name; its version is the file's digest
  (``sha256`` prefix), so a file replaced in place is a new version too.

The digest is computed from the object store once per file (by ETag) and reused; a version that is
already pinned keeps its digest without reading anything. A reference that does not resolve raises
:class:`ResolveError` with a reason users can act on: ModelNotFound, AliasNotFound, ModelNotReady,
RegistryUnavailable, RegistryNotConfigured, StorageUnavailable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubeloop.contracts import MlflowTags, ObjectRef, model_onnx
from kubeloop.resources import ModelRef
from kubeloop.storage import ObjectNotFoundError, ObjectStore, StorageError
from kubeloop_operator.builders.modeldeployment import ResolvedModel, ref_key
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.settings import OperatorSettings

log = logging.getLogger("kubeloop_operator.registry")

_DIGEST_CACHE_MAX: Final = 1024
_CHUNK: Final = 1 << 20


class ResolveError(Exception):
    """A model reference that does not resolve now: ``reason`` (CamelCase) and a message naming it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class RegistryVersion:
    name: str
    version: int
    status: str
    run_id: str
    tags: dict[str, str]


class Registry:
    """MLflow's model registry over its REST API (``/api/2.0/mlflow``), thread-safe, bounded timeouts."""

    def __init__(self, tracking_uri: str, *, timeout_s: float = 10.0, metrics: Metrics | None = None) -> None:
        self._base = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
        self._timeout = timeout_s
        self._metrics = metrics

    def _get(self, operation: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self._base}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        t0 = time.perf_counter()
        result = "error"
        try:
            try:
                with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                    doc = json.loads(resp.read() or b"{}")
                    result = "ok"
                    return doc if isinstance(doc, dict) else {}
            except urllib.error.HTTPError as e:
                body = e.read()
                try:
                    err = json.loads(body)
                except ValueError:
                    err = {}
                code = str(err.get("error_code", "")) if isinstance(err, dict) else ""
                msg = str(err.get("message", "")) if isinstance(err, dict) else ""
                if code == "RESOURCE_DOES_NOT_EXIST" or e.code == 404:
                    result = "not_found"
                    raise ResolveError("ModelNotFound", msg or f"not in the model registry ({e.code})") from e
                if code == "INVALID_PARAMETER_VALUE" and "alias" in msg.lower():
                    result = "not_found"
                    raise ResolveError("AliasNotFound", msg) from e
                raise ResolveError(
                    "RegistryUnavailable", f"MLflow answered {e.code} {code}: {msg[:300]}".rstrip(": ")
                ) from e
            except (OSError, ValueError) as e:  # unreachable, timeout, not JSON
                raise ResolveError("RegistryUnavailable", f"MLflow at {self._base} unreachable: {e}") from e
        finally:
            if self._metrics is not None:
                self._metrics.observe_registry(operation, result, time.perf_counter() - t0)

    @staticmethod
    def _version(doc: dict[str, Any]) -> RegistryVersion:
        mv = doc.get("model_version") or {}
        tags = {str(t.get("key")): str(t.get("value", "")) for t in mv.get("tags") or [] if t.get("key")}
        try:
            number = int(str(mv.get("version")))
        except (TypeError, ValueError) as e:
            raise ResolveError(
                "RegistryUnavailable", f"MLflow returned no version number: {mv!r:.200}"
            ) from e
        return RegistryVersion(
            name=str(mv.get("name", "")),
            version=number,
            status=str(mv.get("status") or "READY"),
            run_id=str(mv.get("run_id") or ""),
            tags=tags,
        )

    def version(self, name: str, version: int) -> RegistryVersion:
        return self._version(
            self._get("get_version", "/model-versions/get", {"name": name, "version": str(version)})
        )

    def alias(self, name: str, alias: str) -> RegistryVersion:
        return self._version(
            self._get("get_alias", "/registered-models/alias", {"name": name, "alias": alias})
        )


class Resolver:
    """ModelRef -> ResolvedModel, with the ONNX file's digest (cached by URI and ETag)."""

    def __init__(self, registry: Registry | None, store: ObjectStore | None, bucket: str) -> None:
        self.registry = registry
        self.store = store
        self.bucket = bucket
        self._digests: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, ref: ModelRef, served_as: str, pinned: ResolvedModel | None = None) -> ResolvedModel:
        """``served_as``: the name a ``uri`` model is served under. ``pinned``: what is pinned now, whose
        digest is reused when the same registered version comes back."""
        key = ref_key(ref)
        if ref.uri is not None:
            digest = self.digest(ref.uri)
            return ResolvedModel(
                ref=key, name=served_as, version=_digest_version(digest), uri=ref.uri, digest=digest
            )
        if self.registry is None:
            raise ResolveError(
                "RegistryNotConfigured",
                f"{key} is a registered model but the operator has no MLflow "
                "(KUBELOOP_OPERATOR_MLFLOW_TRACKING_URI)",
            )
        name = str(ref.name)
        if ref.alias is not None:
            try:
                mv = self.registry.alias(name, ref.alias)
            except ResolveError as e:
                if e.reason == "ModelNotFound":
                    raise ResolveError("ModelNotFound", f"registered model {name!r} not found") from e
                if e.reason == "AliasNotFound":
                    raise ResolveError("AliasNotFound", f"model {name!r} has no alias {ref.alias!r}") from e
                raise
        else:
            try:
                mv = self.registry.version(name, int(ref.version or 0))
            except ResolveError as e:
                if e.reason == "ModelNotFound":
                    raise ResolveError("ModelNotFound", f"model {name!r} has no version {ref.version}") from e
                raise
        if mv.status not in ("READY", ""):
            raise ResolveError("ModelNotReady", f"{name} version {mv.version} is {mv.status} in MLflow")
        uri = mv.tags.get(MlflowTags.MODEL_URI) or model_onnx(name, mv.version, self.bucket).uri
        version = str(mv.version)
        if (
            pinned is not None
            and (pinned.uri, pinned.version, pinned.name) == (uri, version, name)
            and pinned.digest
        ):
            file_digest: str | None = pinned.digest
        else:
            file_digest = self.digest(uri)
        return ResolvedModel(
            ref=key,
            name=name,
            version=version,
            uri=uri,
            digest=file_digest,
            baseline_uri=mv.tags.get(MlflowTags.BASELINE_URI) or None,
            alias=ref.alias,
        )

    def digest(self, uri: str) -> str | None:
        """``sha256:<hex>`` of the file at ``uri``; None for a path inside the pod or without a store
        (the operator cannot read those). Raises ResolveError when the file is not there."""
        if not uri.startswith("s3://") or self.store is None:
            return None
        try:
            ref = ObjectRef.parse(uri)
        except ValueError as e:
            raise ResolveError("InvalidModelURI", str(e)) from e
        try:
            info = self.store.stat(ref)
        except StorageError as e:
            raise ResolveError("StorageUnavailable", f"cannot read {uri}: {e}") from e
        if info is None:
            raise ResolveError("ModelNotFound", f"{uri} does not exist")
        key = (uri, f"{info.etag}/{info.size}")
        with self._lock:
            hit = self._digests.get(key)
            if hit is not None:
                self._digests.move_to_end(key)
                return hit
        computed = self._hash(ref, uri)
        with self._lock:
            self._digests[key] = computed
            while len(self._digests) > _DIGEST_CACHE_MAX:
                self._digests.popitem(last=False)
        return computed

    def _hash(self, ref: ObjectRef, uri: str) -> str:
        """Streamed through a temporary file: bounded memory whatever the model's size."""
        assert self.store is not None
        h = hashlib.sha256()
        with tempfile.TemporaryDirectory(prefix="kubeloop-digest-") as tmp:
            path = Path(tmp) / "model.onnx"
            try:
                self.store.get_file(ref, path)
            except ObjectNotFoundError as e:
                raise ResolveError("ModelNotFound", f"{uri} does not exist") from e
            except StorageError as e:
                raise ResolveError("StorageUnavailable", f"cannot read {uri}: {e}") from e
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        log.info("digest of %s: sha256:%s", uri, h.hexdigest())
        return f"sha256:{h.hexdigest()}"


def _digest_version(digest: str | None) -> str:
    """A file's version: the first 12 hex digits of its sha256 (empty when it cannot be read)."""
    return digest.removeprefix("sha256:")[:12] if digest else ""


def open_resolver(settings: OperatorSettings, store: ObjectStore | None, metrics: Metrics | None) -> Resolver:
    """The operator's resolver: MLflow when a tracking URI is configured, digests from its object store."""
    registry = (
        Registry(settings.mlflow_tracking_uri, timeout_s=settings.mlflow_timeout_s, metrics=metrics)
        if settings.mlflow_tracking_uri
        else None
    )
    return Resolver(registry, store, settings.bucket)

"""The platform's one object-store layer: a small protocol, its errors and its configuration.

Every component that reads or writes object storage (trainer, server, operator, drift check, API) talks
to an :class:`ObjectStore`. Two adapters implement it:

- :class:`kubeloop.storage.s3.S3Store` — MinIO or S3 through the ``minio`` client, with bounded
  timeouts and retries; install ``kubeloop[s3]``. It is the only module of the platform that imports
  ``minio`` (an import-linter contract says so), so this package and the rest of the core stay
  importable without it.
- :class:`kubeloop.storage.local.LocalStore` — a directory standing in for the store
  (``<root>/<bucket>/<key>``), for development without MinIO.

Every failure is one of the :class:`StorageError` subclasses below, raised by the adapter that saw it
(the mapping from client exceptions happens once, in the adapter); callers turn them into their own
exit codes or HTTP statuses. Messages name the object's ``s3://`` URI and never a credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from kubeloop.contracts import ObjectRef

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


# --- errors ----------------------------------------------------------------------------------------


class StorageError(Exception):
    """Object storage failed; ``uri`` names the object (or bucket) concerned when known."""

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class ObjectNotFoundError(StorageError):
    """The object, or the bucket it would be in, does not exist."""


class ObjectExistsError(StorageError):
    """A create-only write (:meth:`ObjectStore.put_file_if_absent`) found the object there already."""


class StorageAccessDeniedError(StorageError):
    """The store refused the credentials or the operation (wrong keys, missing permission)."""


class StorageUnavailableError(StorageError):
    """The store could not be reached or kept failing (connection refused, timeout, 5xx after the
    bounded retries). Worth retrying later; the data is not known to be missing."""


class StorageConfigError(StorageError, ValueError):
    """The store's configuration is unusable (e.g. a malformed endpoint)."""


# --- what the store returns ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Metadata of one stored object."""

    ref: ObjectRef
    size: int
    last_modified: datetime | None = None
    etag: str | None = None
    content_type: str | None = None


# --- the protocol ----------------------------------------------------------------------------------


@runtime_checkable
class ObjectStore(Protocol):
    """Object storage as the platform uses it. All methods block; call them from a worker thread in
    async code. Each raises a :class:`StorageError` subclass and nothing else."""

    def get(self, ref: ObjectRef) -> bytes:
        """The whole object in memory; :class:`ObjectNotFoundError` when it does not exist."""
        ...

    def get_file(self, ref: ObjectRef, path: Path) -> None:
        """Stream the object into ``path`` (written under a temporary name, then renamed), for
        objects too large to hold in memory."""
        ...

    def put(self, ref: ObjectRef, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Create or replace the object."""
        ...

    def put_file(self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Create or replace the object from a local file, streamed (multipart when large)."""
        ...

    def put_file_if_absent(
        self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        """Create the object from a local file only if no object has its key:
        :class:`ObjectExistsError` otherwise, the stored object left as it was. The store decides,
        atomically: of concurrent creates of one key exactly one succeeds and the object holds its
        whole file (a check with :meth:`stat` first would leave a window for another writer). A
        create that landed but whose answer was lost and retried (by the adapter or its HTTP client)
        still succeeds: the adapter tells its own object from another writer's, which it never
        reports as its own."""
        ...

    def stat(self, ref: ObjectRef) -> ObjectInfo | None:
        """The object's metadata, or None when it does not exist."""
        ...

    def exists(self, ref: ObjectRef) -> bool:
        """Whether the object exists."""
        ...

    def list(self, prefix: ObjectRef) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix.key`` (a plain string prefix, recursive), in key
        order. Use :func:`folder` to list the contents of a "directory" and nothing beside it. A
        missing bucket raises :class:`ObjectNotFoundError` (errors may surface while iterating)."""
        ...

    def delete(self, ref: ObjectRef) -> None:
        """Delete the object; deleting a missing object is not an error."""
        ...

    def presigned_get_url(self, ref: ObjectRef, expires: timedelta) -> str:
        """A URL anyone can GET the object from until ``expires`` has passed (no request is made)."""
        ...

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists (also a cheap reachability check)."""
        ...

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists."""
        ...


def folder(ref: ObjectRef) -> ObjectRef:
    """``ref`` as a "directory" prefix: ``models/m/3`` lists ``models/m/3/…`` but not ``models/m/30/…``."""
    return ObjectRef(ref.bucket, ref.key.rstrip("/") + "/")


# --- configuration ---------------------------------------------------------------------------------


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """An ``*_S3_ENDPOINT`` value as ``(host:port, tls)``: ``host:port`` keeps TLS per ``secure``;
    ``http(s)://host:port`` decides TLS from the scheme."""
    if "://" in endpoint:
        u = urlparse(endpoint)
        if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/"):
            raise StorageConfigError(
                f"object store endpoint must be host:port or http(s)://host:port, got {endpoint!r}"
            )
        return u.netloc, u.scheme == "https"
    if not endpoint or "/" in endpoint:
        raise StorageConfigError(
            f"object store endpoint must be host:port or http(s)://host:port, got {endpoint!r}"
        )
    return endpoint, secure


@dataclass(frozen=True, slots=True)
class S3Config:
    """How to reach MinIO/S3. Each component fills it from its own settings (``KUBELOOP_<C>_S3_*``).

    The timeouts and retry count bound how long one call can take against a store that is down:
    about ``(retries + 1) * (connect_timeout_s + backoff)`` for an unreachable host, rather than the
    minutes of the client library's defaults.
    """

    endpoint: str
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    secure: bool = False
    region: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    retries: int = 2
    max_connections: int = 10
    presign_endpoint: str = ""
    """Endpoint written into presigned URLs when clients reach the store under another address
    (e.g. a public ingress); default: ``endpoint``."""

    def __post_init__(self) -> None:
        split_endpoint(self.endpoint, self.secure)
        if self.presign_endpoint:
            split_endpoint(self.presign_endpoint, self.secure)
        if bool(self.access_key) != bool(self.secret_key):
            raise StorageConfigError("object store access key and secret key must be given together")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise StorageConfigError("object store timeouts must be positive")
        if self.retries < 0 or self.max_connections < 1:
            raise StorageConfigError("object store retries must be >= 0 and max_connections >= 1")


# --- reading a URI ---------------------------------------------------------------------------------


def read_uri(uri: str, store: ObjectStore | None) -> bytes:
    """The bytes at ``uri``: ``s3://bucket/key`` through ``store``; ``file:///path`` or a plain path
    from the local file system (a path inside the pod). Raises :class:`ObjectNotFoundError` when it
    does not exist, :class:`StorageConfigError` for an ``s3://`` URI without a store."""
    if uri.startswith("s3://"):
        try:
            ref = ObjectRef.parse(uri)
        except ValueError as e:
            raise StorageConfigError(str(e), uri) from e
        if store is None:
            raise StorageConfigError(f"{uri} is in object storage but no object store is configured", uri)
        return store.get(ref)
    # A file URI percent-encodes what a path may hold (spaces, '%', non-ASCII: RFC 8089).
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ObjectNotFoundError(f"{uri} does not exist", uri) from e
    except OSError as e:
        raise StorageError(f"cannot read {uri}: {e.strerror or e}", uri) from e


__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3Config",
    "StorageAccessDeniedError",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailableError",
    "folder",
    "read_uri",
    "split_endpoint",
]

"""A directory standing in for the object store, ``<root>/<bucket>/<key>``: the second adapter of
:class:`kubeloop.storage.ObjectStore`, for running a component without MinIO (development, the
trainer's local mode). It behaves like the S3 adapter where callers can tell: a missing bucket is
:class:`~kubeloop.storage.ObjectNotFoundError`, writes replace objects atomically, listings are
recursive and in key order."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    DEFAULT_CONTENT_TYPE,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
)

T = TypeVar("T")
_TMP_SUFFIX = ".kubeloop-tmp"


class LocalStore:
    """Objects as files under ``root``; buckets are its sub-directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise StorageConfigError(f"invalid bucket name {bucket!r}", f"s3://{bucket}")
        return self.root / bucket

    def _path(self, ref: ObjectRef) -> Path:
        parts = ref.key.split("/")
        if not ref.key or ref.key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]):
            raise StorageConfigError(f"invalid object key {ref.key!r}", ref.uri)
        if parts[-1] in ("", ".", "..") or parts[-1].endswith(_TMP_SUFFIX):
            raise StorageConfigError(f"invalid object key {ref.key!r}", ref.uri)
        return self._bucket(ref.bucket) / ref.key

    def _need_bucket(self, ref: ObjectRef) -> None:
        if not self._bucket(ref.bucket).is_dir():
            raise ObjectNotFoundError(f"{ref.uri} does not exist (NoSuchBucket)", ref.uri)

    @staticmethod
    def _io(what: str, ref: ObjectRef, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FileNotFoundError as e:
            raise ObjectNotFoundError(f"{ref.uri} does not exist", ref.uri) from e
        except OSError as e:
            raise StorageError(f"cannot {what} {ref.uri}: {e.strerror or e}", ref.uri) from e

    def _write(self, ref: ObjectRef, fill: Callable[[Path], object], *, create_only: bool = False) -> None:
        """Fill a temporary file, then publish it under the key whole: replacing what is there, or with
        ``create_only`` only where nothing is (ObjectExistsError otherwise)."""
        path = self._path(ref)
        self._need_bucket(ref)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # per thread: two writers of one key in one process must not share a temporary file
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{_TMP_SUFFIX}")
            try:
                fill(tmp)
                if create_only:
                    # A hard link to a new name fails when the name exists, atomically, and makes the
                    # whole file appear at once (rename would replace an object created meanwhile).
                    os.link(tmp, path)
                else:
                    tmp.replace(path)
            except FileExistsError:
                if not create_only:
                    raise
                raise ObjectExistsError(f"{ref.uri} already exists", ref.uri) from None
            finally:
                tmp.unlink(missing_ok=True)

        self._io("create" if create_only else "write", ref, write)

    # --- ObjectStore ---------------------------------------------------------------------------------

    def get(self, ref: ObjectRef) -> bytes:
        path = self._path(ref)
        self._need_bucket(ref)
        if not path.is_file():
            raise ObjectNotFoundError(f"{ref.uri} does not exist", ref.uri)
        return self._io("read", ref, path.read_bytes)

    def get_file(self, ref: ObjectRef, path: Path) -> None:
        src = self._path(ref)
        self._need_bucket(ref)
        if not src.is_file():
            raise ObjectNotFoundError(f"{ref.uri} does not exist", ref.uri)
        tmp = path.with_name(path.name + _TMP_SUFFIX)

        def copy() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(src, tmp)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)

        self._io("download", ref, copy)

    def put(self, ref: ObjectRef, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        self._write(ref, lambda tmp: tmp.write_bytes(data))

    def put_file(self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        if not path.is_file():
            raise StorageError(f"cannot upload {ref.uri}: {path} is not a file", ref.uri)
        self._write(ref, lambda tmp: shutil.copyfile(path, tmp))

    def put_file_if_absent(
        self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        if not path.is_file():
            raise StorageError(f"cannot upload {ref.uri}: {path} is not a file", ref.uri)
        self._write(ref, lambda tmp: shutil.copyfile(path, tmp), create_only=True)

    def _info(self, ref: ObjectRef, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(
            ref=ref,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            # Not an S3 ETag, but changes whenever the content does, which is all callers rely on.
            etag=hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}".encode(), usedforsecurity=False).hexdigest(),
            content_type=mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE,
        )

    def stat(self, ref: ObjectRef) -> ObjectInfo | None:
        path = self._path(ref)
        self._need_bucket(ref)
        if not path.is_file():
            return None
        return self._io("stat", ref, lambda: self._info(ref, path))

    def exists(self, ref: ObjectRef) -> bool:
        return self.stat(ref) is not None

    def list(self, prefix: ObjectRef) -> Iterator[ObjectInfo]:
        bucket = self._bucket(prefix.bucket)
        if not bucket.is_dir():
            raise ObjectNotFoundError(f"{prefix.uri} does not exist (NoSuchBucket)", prefix.uri)
        # Walk only the deepest directory the prefix names, then filter by the full string prefix.
        head, _, _ = prefix.key.rpartition("/")
        if prefix.key.startswith("/") or (head and any(p in ("", ".", "..") for p in head.split("/"))):
            # No key this store accepts starts so (S3 would list nothing); joined as a path, it would
            # walk outside the bucket (another bucket, or anything beside the root).
            return iter(())
        base = bucket / head if head else bucket
        if not base.is_dir():
            return iter(())
        keys = sorted(
            p.relative_to(bucket).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(_TMP_SUFFIX)
        )
        return self._infos(prefix.bucket, bucket, [k for k in keys if k.startswith(prefix.key)])

    def _infos(self, bucket_name: str, bucket: Path, keys: Sequence[str]) -> Iterator[ObjectInfo]:
        for k in keys:
            ref = ObjectRef(bucket_name, k)
            try:
                info = self._info(ref, bucket / k)
            except FileNotFoundError:
                continue  # deleted since the walk: gone, as from a later S3 page
            except OSError as e:
                raise StorageError(f"cannot stat {ref.uri}: {e.strerror or e}", ref.uri) from e
            yield info

    def delete(self, ref: ObjectRef) -> None:
        path = self._path(ref)
        if not self._bucket(ref.bucket).is_dir():
            return
        self._io("delete", ref, lambda: path.unlink(missing_ok=True))

    def presigned_get_url(self, ref: ObjectRef, expires: timedelta) -> str:
        # A local file needs no signature; the URL is only as good as the reader's file access.
        return self._path(ref).resolve().as_uri()

    def bucket_exists(self, bucket: str) -> bool:
        return self._bucket(bucket).is_dir()

    def ensure_bucket(self, bucket: str) -> None:
        path = self._bucket(bucket)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create bucket {bucket}: {e.strerror or e}", f"s3://{bucket}") from e

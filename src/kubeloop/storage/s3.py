"""The MinIO/S3 adapter of :class:`kubeloop.storage.ObjectStore` (needs ``kubeloop[s3]``).

This is the one module of the platform that imports ``minio``. Two things are decided here, once:

- Bounds. The minio client's default HTTP pool waits 5 minutes per read and retries 5 times; a store
  that is down would then hold a prediction-log flush or a pod start for many minutes. Every call
  here runs under :class:`~kubeloop.storage.S3Config`'s connect/read timeouts and retry count
  (connection errors and 500/502/503/504 for idempotent methods, with a short backoff).
- Errors. Every exception of the client (S3 error codes, HTTP server errors, urllib3 and socket
  errors) becomes a :class:`~kubeloop.storage.StorageError` subclass naming the object.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Final, TypeVar
from xml.etree import ElementTree as ET

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import DictType, md5sum_hash
from minio.xml import Element, SubElement, findtext, getbytes
from urllib3 import HTTPHeaderDict

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    DEFAULT_CONTENT_TYPE,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    S3Config,
    StorageAccessDeniedError,
    StorageError,
    StorageUnavailableError,
    split_endpoint,
)

T = TypeVar("T")

_NOT_FOUND: Final = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
# A conditional write's refusal: PreconditionFailed (412), or ConditionalRequestConflict (409) when
# another conditional write of the key is in flight.
_EXISTS: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# A create-only upload up to this size is one PutObject (the client signs a body held in memory);
# larger files go in parts of _PART_SIZE, so memory stays bounded for any dataset size.
_SINGLE_PUT_MAX = 16 * 1024 * 1024
_PART_SIZE = 16 * 1024 * 1024
# User metadata naming the create-only write that made an object: a random token per call, so that a
# write whose answer was lost can tell its own object from another writer's.
_WRITE_ID: Final = "x-amz-meta-kubeloop-write-id"
_DENIED: Final = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
# Presigning needs the bucket's region; naming it avoids a GetBucketLocation round trip. MinIO and
# most S3-compatible stores answer to this one.
_DEFAULT_REGION: Final = "us-east-1"


def _http_pool(config: S3Config) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s),
        maxsize=config.max_connections,
        cert_reqs="CERT_REQUIRED",
        # As the minio client's own default pool: SSL_CERT_FILE wins over the bundled CAs.
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=config.retries,
            connect=config.retries,
            read=config.retries,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
        ),
    )


def _minio(config: S3Config, host: str, secure: bool, region: str | None) -> Minio:
    return Minio(
        host,
        access_key=config.access_key or None,
        secret_key=config.secret_key or None,
        secure=secure,
        region=region,
        http_client=_http_pool(config),
    )


class S3Store:
    """MinIO or S3 (path-style), one client per store, safe to share between threads."""

    def __init__(self, config: S3Config) -> None:
        host, secure = split_endpoint(config.endpoint, config.secure)
        self.config = config
        self.endpoint = host
        self._client = _minio(config, host, secure, config.region or None)
        if config.presign_endpoint:
            p_host, p_secure = split_endpoint(config.presign_endpoint, config.secure)
        else:
            p_host, p_secure = host, secure
        # Presigning is local computation; a separate client carries the public host in the URL
        # and a fixed region, so it never sends a request.
        self._presigner = _minio(config, p_host, p_secure, config.region or _DEFAULT_REGION)

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r})"

    # --- the one place client errors become StorageErrors -------------------------------------------

    def _error(self, what: str, uri: str, e: Exception) -> StorageError:
        if isinstance(e, S3Error):
            detail = f"{e.code}: {e.message}" if e.message else str(e.code)
            if e.code in _NOT_FOUND:
                return ObjectNotFoundError(f"{uri} does not exist ({e.code})", uri)
            if e.code in _DENIED:
                return StorageAccessDeniedError(
                    f"cannot {what} {uri}: the object store at {self.endpoint} refused access ({detail})",
                    uri,
                )
            return StorageError(f"cannot {what} {uri}: {detail}", uri)
        if isinstance(e, ServerError | InvalidResponseError):
            return StorageUnavailableError(f"cannot {what} {uri}: object store at {self.endpoint}: {e}", uri)
        if isinstance(e, urllib3.exceptions.HTTPError | OSError):
            return StorageUnavailableError(
                f"cannot {what} {uri}: object store at {self.endpoint} unreachable "
                f"({type(e).__name__}: {_short(e)})",
                uri,
            )
        return StorageError(f"cannot {what} {uri}: {type(e).__name__}: {_short(e)}", uri)

    def _call(self, what: str, uri: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise self._error(what, uri, e) from e

    # --- ObjectStore ---------------------------------------------------------------------------------

    def get(self, ref: ObjectRef) -> bytes:
        def read() -> bytes:
            resp = self._client.get_object(ref.bucket, ref.key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("read", ref.uri, read)

    def get_file(self, ref: ObjectRef, path: Path) -> None:
        # fget_object streams into a temporary file and renames it when complete, but leaves that
        # partial file behind when the download breaks; it is named here so it can be removed.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part.minio")

        def download() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._client.fget_object(ref.bucket, ref.key, str(path), tmp_file_path=str(tmp))
            finally:
                tmp.unlink(missing_ok=True)

        self._call("download", ref.uri, download)

    def put(self, ref: ObjectRef, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        self._call(
            "write",
            ref.uri,
            lambda: self._client.put_object(
                ref.bucket, ref.key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def put_file(self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        # Else the client's FileNotFoundError reads as an unreachable store (worth a retry).
        if not path.is_file():
            raise StorageError(f"cannot upload {ref.uri}: {path} is not a file", ref.uri)
        self._call(
            "upload",
            ref.uri,
            lambda: self._client.fput_object(ref.bucket, ref.key, str(path), content_type=content_type),
        )

    def put_file_if_absent(
        self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        # S3 conditional writes: with If-None-Match: * the store refuses (412 PreconditionFailed) a
        # PutObject, or the CompleteMultipartUpload of a file sent in parts, when the key exists; the
        # check and the write are one step on the server. The minio client has no public way to send
        # that header, so this uses its request methods below put_object (pinned by the component test).
        if not path.is_file():
            raise StorageError(f"cannot upload {ref.uri}: {path} is not a file", ref.uri)
        client = self._client
        # The write may land while its answer is lost (reset, read timeout): the pool then retries the
        # PutObject and the store refuses it with 412 as if another writer had the key, and a
        # CompleteMultipartUpload (a POST, never retried) fails outright. The token lets _landed ask
        # the store whose object the key holds; no other writer can carry it.
        write_id = secrets.token_hex(16)
        headers: DictType = {"Content-Type": content_type, _WRITE_ID: write_id}

        def create() -> None:
            size = path.stat().st_size
            if size <= _SINGLE_PUT_MAX:
                client._put_object(ref.bucket, ref.key, path.read_bytes(), {**headers, "If-None-Match": "*"})
                return
            # The metadata given at CreateMultipartUpload is the completed object's.
            upload_id = client._create_multipart_upload(ref.bucket, ref.key, dict(headers))
            try:
                parts: list[Part] = []
                with path.open("rb") as f:
                    while chunk := f.read(_PART_SIZE):
                        n = len(parts) + 1
                        parts.append(
                            Part(n, client._upload_part(ref.bucket, ref.key, chunk, None, upload_id, n))
                        )
                self._complete_if_absent(ref, upload_id, parts)
            except BaseException:
                # After a Complete that committed, the store refuses this (NoSuchUpload) and keeps
                # the object.
                with contextlib.suppress(Exception):
                    client._abort_multipart_upload(ref.bucket, ref.key, upload_id)
                raise

        try:
            self._call("create", ref.uri, create)
        except StorageError as e:
            if self._landed(ref, write_id, e):
                return
            cause = e.__cause__
            if isinstance(cause, S3Error) and cause.code in _EXISTS:
                raise ObjectExistsError(f"{ref.uri} already exists", ref.uri) from cause
            raise

    def _landed(self, ref: ObjectRef, write_id: str, e: StorageError) -> bool:
        """Whether the create-only write tagged ``write_id`` that failed with ``e`` is in fact
        stored. Asked only when it may be: the store said the key exists, or the answer never came
        (not when no connection could be made at all: the store is down, a stat would wait as long
        again). When the stat fails too, nothing is known and ``e`` stands."""
        cause = e.__cause__
        exists = isinstance(e, ObjectExistsError) or (isinstance(cause, S3Error) and cause.code in _EXISTS)
        lost = isinstance(e, StorageUnavailableError) and not (
            isinstance(cause, urllib3.exceptions.MaxRetryError)
            and isinstance(cause.reason, urllib3.exceptions.ConnectTimeoutError)
        )
        if not (exists or lost):
            return False
        try:
            st = self._client.stat_object(ref.bucket, ref.key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError):
            return False
        # The client hands back the HEAD's response headers (case-insensitive) as the metadata.
        return HTTPHeaderDict(st.metadata or {}).get(_WRITE_ID) == write_id

    def _complete_if_absent(self, ref: ObjectRef, upload_id: str, parts: list[Part]) -> None:
        """The client's CompleteMultipartUpload, with If-None-Match: * added."""
        root = Element("CompleteMultipartUpload")
        for part in parts:
            tag = SubElement(root, "Part")
            SubElement(tag, "PartNumber", str(part.part_number))
            SubElement(tag, "ETag", f'"{part.etag}"')
        body = getbytes(root)
        headers: DictType = {
            "Content-Type": "application/xml",
            "Content-MD5": md5sum_hash(body) or "",
            "If-None-Match": "*",
        }
        resp = self._client._execute(
            "POST", ref.bucket, ref.key, body=body, headers=headers, query_params={"uploadId": upload_id}
        )
        # S3 may answer 200 and put the failure in the body (the request took long on the server).
        text = resp.data.decode(errors="replace")
        if "<Error>" in text:
            err = ET.fromstring(text)
            code = findtext(err, "Code") or "InternalError"
            if code in _EXISTS:
                raise ObjectExistsError(f"{ref.uri} already exists", ref.uri)
            raise StorageError(f"cannot create {ref.uri}: {code}: {findtext(err, 'Message') or ''}", ref.uri)

    def stat(self, ref: ObjectRef) -> ObjectInfo | None:
        try:
            st = self._call("stat", ref.uri, lambda: self._client.stat_object(ref.bucket, ref.key))
        except ObjectNotFoundError:
            return None
        return ObjectInfo(
            ref=ref,
            size=int(st.size or 0),
            last_modified=st.last_modified,
            etag=st.etag,
            content_type=st.content_type,
        )

    def exists(self, ref: ObjectRef) -> bool:
        return self.stat(ref) is not None

    def list(self, prefix: ObjectRef) -> Iterator[ObjectInfo]:
        objects = self._client.list_objects(prefix.bucket, prefix=prefix.key, recursive=True)
        it = iter(objects)
        while True:
            try:
                o = next(it)
            except StopIteration:
                return
            except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                raise self._error("list", prefix.uri, e) from e
            if o.object_name is None or o.is_dir:
                continue
            yield ObjectInfo(
                ref=ObjectRef(prefix.bucket, o.object_name),
                size=int(o.size or 0),
                last_modified=o.last_modified,
                etag=o.etag,
                content_type=o.content_type,
            )

    def delete(self, ref: ObjectRef) -> None:
        try:
            self._call("delete", ref.uri, lambda: self._client.remove_object(ref.bucket, ref.key))
        except ObjectNotFoundError:
            return

    def presigned_get_url(self, ref: ObjectRef, expires: timedelta) -> str:
        return self._call(
            "presign", ref.uri, lambda: self._presigner.presigned_get_object(ref.bucket, ref.key, expires)
        )

    def bucket_exists(self, bucket: str) -> bool:
        return self._call("check bucket", f"s3://{bucket}", lambda: self._client.bucket_exists(bucket))

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self._call("create bucket", f"s3://{bucket}", lambda: self._client.make_bucket(bucket))
        except StorageError as e:
            cause = e.__cause__
            if isinstance(cause, S3Error) and cause.code in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                return
            raise


def _short(e: BaseException) -> str:
    """The innermost useful part of a urllib3 error chain (``MaxRetryError`` wraps the real cause)."""
    reason = getattr(e, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else e)
    return text[:300]

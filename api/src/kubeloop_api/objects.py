"""Object storage for the facade: an asynchronous face on the core's one object-store layer
(:class:`kubeloop.storage.ObjectStore`). Its blocking calls run in worker threads; its
:class:`~kubeloop.storage.StorageError` subclasses become the facade's errors here, once. Keys are
relative to the platform bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    S3Config,
    StorageAccessDeniedError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
)
from kubeloop_api.errors import ApiError, ConflictError, NotFoundError, UnavailableError, UpstreamError
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None


def _error(e: StorageError) -> ApiError:
    # The store's own text names its address and whatever its client library said: for the log only.
    # What is not there (a 404) or taken (a 409) is about the caller's object, in the caller's terms.
    if isinstance(e, ObjectNotFoundError):
        return NotFoundError(str(e))
    if isinstance(e, ObjectExistsError):
        return ConflictError(str(e))
    if isinstance(e, StorageUnavailableError):
        return UnavailableError("object storage unreachable", log_detail=str(e))
    if isinstance(e, StorageConfigError):
        return UnavailableError("object storage misconfigured", log_detail=str(e))
    if isinstance(e, StorageAccessDeniedError):
        return UpstreamError("object storage refused the facade's credentials", log_detail=str(e))
    return UpstreamError("object storage failed", log_detail=str(e))


class Objects:
    """The object-store operations the routes need, over one core :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore, bucket: str, metrics: ApiMetrics) -> None:
        self.store = store
        self.bucket = bucket
        self.metrics = metrics

    @classmethod
    def from_settings(cls, settings: ApiSettings, metrics: ApiMetrics) -> Objects:
        from kubeloop.storage.s3 import S3Store

        config = S3Config(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            presign_endpoint=settings.s3_presign_endpoint,
            max_connections=32,
        )
        return cls(S3Store(config), settings.bucket, metrics)

    def ref(self, key: str) -> ObjectRef:
        return ObjectRef(self.bucket, key)

    async def _run(self, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        code = 200
        try:
            return await asyncio.to_thread(fn)
        except StorageError as e:
            err = _error(e)
            code = err.status_code
            raise err from e
        finally:
            self.metrics.observe_upstream("objectstore", code, time.perf_counter() - t0)

    async def ping(self) -> None:
        if not await self._run(lambda: self.store.bucket_exists(self.bucket)):
            raise UnavailableError(f"bucket {self.bucket!r} does not exist")

    async def list(self, prefix: str) -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            try:
                return [
                    ObjectInfo(i.ref.key, i.size, i.last_modified) for i in self.store.list(self.ref(prefix))
                ]
            except ObjectNotFoundError:
                return []

        return await self._run(run)

    async def stat(self, key: str) -> ObjectInfo | None:
        info = await self._run(lambda: self.store.stat(self.ref(key)))
        return None if info is None else ObjectInfo(info.ref.key, info.size, info.last_modified)

    async def get(self, key: str) -> bytes | None:
        try:
            return await self._run(lambda: self.store.get(self.ref(key)))
        except NotFoundError:
            return None

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await self._run(lambda: self.store.put_file(self.ref(key), path, content_type))

    async def create_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file under ``key`` only if nothing is there (the store decides, atomically):
        :class:`ConflictError` otherwise."""
        await self._run(lambda: self.store.put_file_if_absent(self.ref(key), path, content_type))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self.store.delete(self.ref(key)))

    async def presign_get(self, key: str, expires_s: int) -> str:
        return await self._run(
            lambda: self.store.presigned_get_url(self.ref(key), timedelta(seconds=expires_s))
        )

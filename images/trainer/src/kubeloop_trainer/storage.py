"""Object storage: MinIO/S3 through the ``minio`` client, or a local directory for development."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Protocol

from kubeloop.contracts import ObjectRef, split_endpoint
from kubeloop_trainer.errors import DatasetNotFoundError, StorageError
from kubeloop_trainer.settings import TrainerSettings


class ObjectStore(Protocol):
    def get(self, ref: ObjectRef) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def put(self, ref: ObjectRef, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def delete(self, ref: ObjectRef) -> None: ...

    def list(self, prefix: ObjectRef) -> list[ObjectRef]:
        """Objects under ``prefix`` (recursive)."""


class MinioStore:
    """MinIO or S3, path-style."""

    def __init__(
        self, endpoint: str, access_key: str | None, secret_key: str | None, secure: bool, region: str | None
    ) -> None:
        from minio import Minio

        try:
            endpoint, secure = split_endpoint(endpoint, secure)
        except ValueError as e:
            raise StorageError(f"KUBELOOP_TRAINER_S3_ENDPOINT: {e}") from e
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self.endpoint = endpoint

    def get(self, ref: ObjectRef) -> bytes | None:
        from minio.error import S3Error

        try:
            resp = self._client.get_object(ref.bucket, ref.key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return None
            raise StorageError(f"cannot read {ref.uri}: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageError(f"cannot read {ref.uri} from {self.endpoint}: {e}") from e
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def put(self, ref: ObjectRef, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self._client.put_object(
                ref.bucket, ref.key, io.BytesIO(data), length=len(data), content_type=content_type
            )
        except Exception as e:
            raise StorageError(f"cannot write {ref.uri} to {self.endpoint}: {e}") from e

    def delete(self, ref: ObjectRef) -> None:
        try:
            self._client.remove_object(ref.bucket, ref.key)
        except Exception as e:
            raise StorageError(f"cannot delete {ref.uri}: {e}") from e

    def list(self, prefix: ObjectRef) -> list[ObjectRef]:
        try:
            objs = self._client.list_objects(
                prefix.bucket, prefix=prefix.key.rstrip("/") + "/", recursive=True
            )
            return [ObjectRef(prefix.bucket, o.object_name) for o in objs if o.object_name]
        except Exception as e:
            raise StorageError(f"cannot list {prefix.uri}: {e}") from e


class LocalStore:
    """A directory standing in for the object store: ``<root>/<bucket>/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref: ObjectRef) -> Path:
        return self.root / ref.bucket / ref.key

    def get(self, ref: ObjectRef) -> bytes | None:
        p = self._path(ref)
        return p.read_bytes() if p.is_file() else None

    def put(self, ref: ObjectRef, data: bytes, content_type: str = "application/octet-stream") -> None:
        p = self._path(ref)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        except OSError as e:
            raise StorageError(f"cannot write {ref.uri} under {self.root}: {e}") from e

    def delete(self, ref: ObjectRef) -> None:
        p = self._path(ref)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def list(self, prefix: ObjectRef) -> list[ObjectRef]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [
            ObjectRef(prefix.bucket, f"{prefix.key.rstrip('/')}/{p.relative_to(base).as_posix()}")
            for p in sorted(base.rglob("*"))
            if p.is_file()
        ]


def make_store(settings: TrainerSettings) -> ObjectStore | None:
    """The configured object store, or None when neither S3 nor a local store is configured."""
    if settings.s3_endpoint:
        return MinioStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_secure,
            settings.s3_region,
        )
    if settings.local_store is not None:
        return LocalStore(settings.local_store)
    return None


def read_uri(uri: str, store: ObjectStore | None) -> bytes:
    """Bytes of a dataset: ``s3://bucket/key`` through the store, or a local path."""
    if uri.startswith("s3://"):
        try:
            ref = ObjectRef.parse(uri)
        except ValueError as e:
            raise DatasetNotFoundError(f"dataset.uri: {e}") from e
        if store is None:
            raise StorageError(
                f"dataset {uri} is in object storage but no S3 endpoint is configured "
                "(KUBELOOP_TRAINER_S3_ENDPOINT)"
            )
        data = store.get(ref)
        if data is None:
            raise DatasetNotFoundError(f"dataset {uri} does not exist")
        return data
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset {uri} does not exist")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DatasetNotFoundError(f"dataset {uri} cannot be read: {e.strerror}") from e

"""The trainer's object store, built from its settings on the core's one storage layer
(:mod:`kubeloop.storage`): MinIO/S3, or a local directory for development and tests."""

from __future__ import annotations

from pathlib import Path

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    ObjectNotFoundError,
    ObjectStore,
    S3Config,
    StorageConfigError,
    StorageError,
    read_uri,
)
from kubeloop.storage.local import LocalStore
from kubeloop.storage.s3 import S3Store
from kubeloop_trainer.data import is_prefix, is_table_key
from kubeloop_trainer.errors import ConfigError, DatasetNotFoundError
from kubeloop_trainer.settings import TrainerSettings


def make_store(settings: TrainerSettings) -> ObjectStore | None:
    """The configured object store, or None when neither S3 nor a local store is configured."""
    try:
        if settings.s3_endpoint:
            return S3Store(
                S3Config(
                    endpoint=settings.s3_endpoint,
                    access_key=settings.s3_access_key or "",
                    secret_key=settings.s3_secret_key or "",
                    secure=settings.s3_secure,
                    region=settings.s3_region or "",
                )
            )
    except StorageConfigError as e:
        raise ConfigError(f"KUBELOOP_TRAINER_S3_ENDPOINT: {e}") from e
    if settings.local_store is not None:
        store = LocalStore(settings.local_store)
        # The directory is a development stand-in: create the bucket the way an operator would.
        store.ensure_bucket(settings.bucket)
        return store
    return None


MAX_PREFIX_OBJECTS = 10_000


def read_dataset_parts(uri: str, store: ObjectStore | None) -> list[tuple[str, bytes]]:
    """The objects ``dataset.uri`` names, as (URI, bytes): the object itself, or for a prefix (a URI
    ending in ``/``) every CSV/Parquet object under it in key order, read as they are when the job runs."""
    if not is_prefix(uri):
        return [(uri, read_dataset(uri, store))]
    if uri.startswith("s3://"):
        if store is None:
            raise ConfigError(
                f"dataset {uri} is in object storage but no S3 endpoint is configured (KUBELOOP_TRAINER_S3_ENDPOINT)"
            )
        try:
            prefix = ObjectRef.parse(uri)
        except ValueError as e:
            raise DatasetNotFoundError(f"dataset.uri: {e}") from e
        try:
            keys = [o.ref.uri for o in store.list(prefix) if is_table_key(o.ref.key)]
        except ObjectNotFoundError as e:
            raise DatasetNotFoundError(f"dataset prefix {uri} does not exist ({e})") from e
    else:
        base = Path(uri)
        if not base.is_dir():
            raise DatasetNotFoundError(f"dataset prefix {uri} is not a directory")
        keys = sorted(str(p) for p in base.rglob("*") if p.is_file() and is_table_key(p.name))
    if len(keys) > MAX_PREFIX_OBJECTS:
        raise ConfigError(
            f"dataset prefix {uri} holds {len(keys)} objects; at most {MAX_PREFIX_OBJECTS} are read"
        )
    return [(k, read_dataset(k, store)) for k in keys]


def read_dataset(uri: str, store: ObjectStore | None) -> bytes:
    """Bytes of ``dataset.uri`` (``s3://bucket/key`` through the store, or a path in the pod); storage
    failures other than "not there" stay :class:`kubeloop.storage.StorageError` (exit code 30)."""
    try:
        return read_uri(uri, store)
    except ObjectNotFoundError as e:
        raise DatasetNotFoundError(f"dataset {uri} does not exist") from e
    except StorageConfigError as e:
        if store is None and uri.startswith("s3://"):
            raise ConfigError(
                f"dataset {uri} is in object storage but no S3 endpoint is configured "
                "(KUBELOOP_TRAINER_S3_ENDPOINT)"
            ) from e
        raise DatasetNotFoundError(f"dataset.uri: {e}") from e
    except StorageError as e:
        if not uri.startswith("s3://"):  # a path in the pod that exists but cannot be read
            raise DatasetNotFoundError(f"dataset {e}") from e
        raise

"""The server's object store (on the core's one storage layer, :mod:`kubeloop.storage`) and
model-file fetching."""

from __future__ import annotations

from kubeloop.storage import ObjectStore, StorageError, read_uri
from kubeloop.storage.s3 import S3Store
from kubeloop_server.errors import ModelLoadError
from kubeloop_server.settings import ServerSettings


def make_store(settings: ServerSettings) -> ObjectStore | None:
    """MinIO/S3 when ``s3_endpoint`` is set (:meth:`ServerSettings.s3_config`), else None."""
    config = settings.s3_config()
    return None if config is None else S3Store(config)


def fetch_model_bytes(uri: str, store: ObjectStore | None) -> bytes:
    """Read the ONNX file from ``s3://bucket/key``, ``file:///path`` or a plain path."""
    if uri.startswith("s3://") and store is None:
        raise ModelLoadError(f"model_uri {uri!r} is on object storage but no s3_endpoint is configured")
    try:
        return read_uri(uri, store)
    except StorageError as e:
        raise ModelLoadError(f"cannot load model_uri {uri!r}: {e}") from e

"""The server's object store (on the core's one storage layer, :mod:`kubeloop.storage`) and
model-file fetching."""

from __future__ import annotations

from kubeloop.storage import ObjectStore, S3Config, StorageError, read_uri
from kubeloop.storage.s3 import S3Store
from kubeloop_server.errors import ModelLoadError
from kubeloop_server.settings import ServerSettings


def make_store(settings: ServerSettings) -> ObjectStore | None:
    """MinIO/S3 when ``s3_endpoint`` is set, else None. The store's timeouts and retries are bounded
    (3 s connect, 30 s read, 2 retries), so a down store costs the prediction-log writer seconds."""
    if not settings.s3_endpoint:
        return None
    return S3Store(
        S3Config(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            max_connections=4,
        )
    )


def fetch_model_bytes(uri: str, store: ObjectStore | None) -> bytes:
    """Read the ONNX file from ``s3://bucket/key``, ``file:///path`` or a plain path."""
    if uri.startswith("s3://") and store is None:
        raise ModelLoadError(f"model_uri {uri!r} is on object storage but no s3_endpoint is configured")
    try:
        return read_uri(uri, store)
    except StorageError as e:
        raise ModelLoadError(f"cannot load model_uri {uri!r}: {e}") from e

"""Object storage (MinIO/S3) access and model-file fetching."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlparse

import urllib3
from minio import Minio

from kubeloop.contracts import ObjectRef, split_endpoint
from kubeloop_server.errors import ModelLoadError


class ObjectStore:
    """The few object-store operations the server needs, on one MinIO client."""

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, secure: bool = False, region: str = ""
    ) -> None:
        host, secure = split_endpoint(endpoint, secure)
        self.endpoint = host
        # Bounded timeouts and retries: a down store must cost the prediction-log writer seconds, not
        # the minutes of the client's defaults (5 retries, 5-minute timeouts).
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=30.0),
            maxsize=4,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region or None,
            http_client=http,
        )

    def get_bytes(self, ref: ObjectRef) -> bytes:
        resp = self._client.get_object(ref.bucket, ref.key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def put_bytes(self, ref: ObjectRef, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._client.put_object(ref.bucket, ref.key, io.BytesIO(data), len(data), content_type=content_type)


def fetch_model_bytes(uri: str, store: ObjectStore | None) -> bytes:
    """Read the ONNX file from ``s3://bucket/key``, ``file:///path`` or a plain path."""
    if uri.startswith("s3://"):
        try:
            ref = ObjectRef.parse(uri)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        if store is None:
            raise ModelLoadError(f"model_uri {uri!r} is on object storage but no s3_endpoint is configured")
        try:
            return store.get_bytes(ref)
        except Exception as e:
            raise ModelLoadError(f"cannot fetch {uri} from {store.endpoint}: {e}") from e
    path = Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {str(path)!r}: {e.strerror or e}") from e

"""Datasets in object storage: streamed upload with validation, list, stat, presigned download, delete.

Objects live at ``datasets/<namespace>/<name>`` in the platform bucket, so a TrainingJob names one as
``s3://<bucket>/datasets/<namespace>/<name>``. An upload is streamed to a local spool file (refused with
413 as soon as it passes the size limit), validated there (:mod:`kubeloop_api.datasets`), and only then
written to storage in one put: a refused or failed upload leaves nothing behind. Authorised by
SubjectAccessReview on trainingjobs in the namespace (:data:`kubeloop_api.auth.ACCESS`).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request

from kubeloop_api.bodies import body_chunks
from kubeloop_api.datasets import NAME_PATTERN, Limits, format_of, validate_file
from kubeloop_api.deps import Caller, Namespace, Services, Svc
from kubeloop_api.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from kubeloop_api.objects import Objects

router = APIRouter(prefix="/api/v1/namespaces/{namespace}/datasets", tags=["datasets"])

DatasetName = Annotated[
    str,
    Path(pattern=NAME_PATTERN, max_length=210, description="File name ending in .csv or .parquet."),
]
_CONTENT_TYPES: Final = {
    "",
    "application/octet-stream",
    "text/csv",
    "text/plain",
    "application/csv",
    "application/vnd.apache.parquet",
    "application/x-parquet",
    "application/parquet",
}
_MIME: Final = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def _objects(svc: Services) -> Objects:
    if svc.objects is None:
        raise UnavailableError("object storage is not configured (KUBELOOP_API_S3_ENDPOINT)")
    return svc.objects


def _key(namespace: str, name: str) -> str:
    return f"datasets/{namespace}/{name}"


def _view(svc: Services, namespace: str, name: str, size: int, modified: datetime | None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uri": f"s3://{svc.settings.bucket}/{_key(namespace, name)}",
        "format": format_of(name),
        "sizeBytes": size,
        "lastModified": modified.isoformat() if modified else None,
    }


async def _spool(request: Request, svc: Services) -> FsPath:
    """The body, streamed to a temporary file; 413 as soon as it passes the limit."""
    limit = svc.settings.dataset_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"larger than the limit of {limit} bytes", field="file")
    fd, name = tempfile.mkstemp(prefix="kubeloop-upload-", dir=svc.settings.dataset_spool_dir)
    path = FsPath(name)
    total = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in body_chunks(request):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLargeError(f"larger than the limit of {limit} bytes", field="file")
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@router.put(
    "/{dataset}",
    status_code=201,
    summary="Upload a CSV or Parquet table (streamed, validated before anything is stored)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The file's bytes as the request body (e.g. curl -T data.csv).",
            "content": {
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses={413: {"description": "Over the size limit"}, 422: {"description": "Refused by validation"}},
)
async def upload(
    request: Request,
    svc: Svc,
    caller: Caller,
    namespace: Namespace,
    dataset: DatasetName,
    target: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Column that must be present.")
    ] = None,
    overwrite: Annotated[
        bool, Query(description="Replace an existing dataset of that name (needs update on trainingjobs).")
    ] = False,
) -> dict[str, Any]:
    objects = _objects(svc)
    await svc.authz.require(caller, "datasets.upload", namespace)
    if overwrite:
        await svc.authz.require(caller, "datasets.overwrite", namespace)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _CONTENT_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type: {ctype!r}; send the file itself as the body (text/csv or application/octet-stream)"
        )
    key = _key(namespace, dataset)

    def exists() -> ConflictError:
        return ConflictError(
            f'dataset "{dataset}" exists; pass overwrite=true to replace it', field="dataset"
        )

    # Refused before the body is read when the name is taken already: no point streaming the file.
    if not overwrite and await objects.stat(key) is not None:
        raise exists()
    path = await _spool(request, svc)
    try:
        s = svc.settings
        limits = Limits(s.dataset_min_rows, s.dataset_max_empty_ratio, s.dataset_max_columns)
        try:
            report = await asyncio.to_thread(validate_file, path, dataset, target, limits)
        except InvalidError:
            svc.metrics.dataset_refusals.inc()
            raise
        if overwrite:
            await objects.put_file(key, path, _MIME[report.format])
        else:
            # Another upload of the name may have landed since the check above (while this one
            # streamed, or between any check and the write): a create-only write lets the store decide.
            try:
                await objects.create_file(key, path, _MIME[report.format])
            except ConflictError:
                raise exists() from None
    finally:
        path.unlink(missing_ok=True)
    svc.metrics.dataset_bytes.inc(report.size_bytes)
    return {
        **_view(svc, namespace, dataset, report.size_bytes, datetime.now(UTC)),
        "report": report.as_dict(),
    }


@router.get("", summary="List the datasets of a namespace")
async def list_datasets(svc: Svc, caller: Caller, namespace: Namespace) -> dict[str, Any]:
    objects = _objects(svc)
    await svc.authz.require(caller, "datasets.list", namespace)
    prefix = _key(namespace, "")
    items = [
        _view(svc, namespace, info.key[len(prefix):], info.size, info.modified)
        for info in await objects.list(prefix)
        if "/" not in info.key[len(prefix):]
    ]  # fmt: skip
    return {"items": sorted(items, key=lambda d: str(d["name"]))}


@router.get("/{dataset}", summary="A dataset's size, format, URI and modification time")
async def get_dataset(svc: Svc, caller: Caller, namespace: Namespace, dataset: DatasetName) -> dict[str, Any]:
    objects = _objects(svc)
    await svc.authz.require(caller, "datasets.get", namespace)
    info = await objects.stat(_key(namespace, dataset))
    if info is None:
        raise NotFoundError(f'dataset "{dataset}" not found in namespace "{namespace}"')
    return _view(svc, namespace, dataset, info.size, info.modified)


@router.get("/{dataset}/url", summary="A presigned download URL (expires)")
async def download_url(
    svc: Svc,
    caller: Caller,
    namespace: Namespace,
    dataset: DatasetName,
    expires_in_seconds: Annotated[
        int | None, Query(alias="expiresInSeconds", ge=1, le=7 * 86400, description="Lifetime of the URL.")
    ] = None,
) -> dict[str, Any]:
    objects = _objects(svc)
    await svc.authz.require(caller, "datasets.get", namespace)
    key = _key(namespace, dataset)
    if await objects.stat(key) is None:
        raise NotFoundError(f'dataset "{dataset}" not found in namespace "{namespace}"')
    ttl = min(expires_in_seconds or svc.settings.presign_expiry_s, svc.settings.presign_expiry_s)
    url = await objects.presign_get(key, ttl)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=ttl)
    return {"name": dataset, "url": url, "expiresAt": expires.isoformat()}


@router.delete("/{dataset}", summary="Delete a dataset")
async def delete_dataset(
    svc: Svc, caller: Caller, namespace: Namespace, dataset: DatasetName
) -> dict[str, Any]:
    objects = _objects(svc)
    await svc.authz.require(caller, "datasets.delete", namespace)
    key = _key(namespace, dataset)
    if await objects.stat(key) is None:
        raise NotFoundError(f'dataset "{dataset}" not found in namespace "{namespace}"')
    await objects.delete(key)
    return {"name": dataset, "namespace": namespace, "deleted": True}

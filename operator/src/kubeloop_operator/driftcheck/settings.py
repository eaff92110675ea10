"""The drift check's configuration: environment variables ``KUBELOOP_DRIFTCHECK_<FIELD>`` (DESIGN §6).

The operator sets them on the check pod (:class:`kubeloop.contracts.DriftCheckEnv`); thresholds and
the window come from the DriftMonitor itself when the check runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeloop.contracts import DEFAULT_BUCKET
from kubeloop_operator.driftcheck.logs import DEFAULT_BATCH_ROWS, DEFAULT_MAX_MEMORY_PART_BYTES


class DriftCheckSettings(BaseSettings):
    """Everything the check can be told; one field per environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_DRIFTCHECK_", case_sensitive=False, extra="ignore", populate_by_name=True
    )

    namespace: str = Field(default="", description="Namespace of the DriftMonitor to check.")
    monitor: str = Field(default="", description="Name of the DriftMonitor to check.")
    kubeconfig: str | None = Field(
        default=None,
        description="Kubeconfig file; default: the pod's ServiceAccount in a cluster, else $KUBECONFIG.",
    )
    kube_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Timeout of one API request.")
    conflict_retries: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Attempts at writing the status when the operator wrote it in between (409).",
    )
    bucket: str = Field(default=DEFAULT_BUCKET, description="Bucket of models, prediction logs and reports.")
    s3_endpoint: str = Field(default="", description="MinIO/S3 endpoint, host:port or http(s)://host:port.")
    s3_access_key: SecretStr = Field(default=SecretStr(""), description="Object-store access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="Object-store secret key.")
    s3_secure: bool = Field(default=False, description="TLS for a host:port endpoint.")
    s3_region: str = Field(default="", description="Region of the bucket; MinIO ignores it.")
    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS, ge=1, le=10_000_000, description="Rows per batch read from a part."
    )
    max_memory_part_bytes: int = Field(
        default=DEFAULT_MAX_MEMORY_PART_BYTES,
        ge=0,
        description="Parts up to this size are read in memory; larger ones are spooled to a file first.",
    )
    spool_dir: Path | None = Field(
        default=None, description="Where large parts are spooled; default: $TMPDIR."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

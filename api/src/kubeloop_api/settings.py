"""The REST facade's configuration: environment variables with the prefix ``KUBELOOP_API_`` (DESIGN §6).

Every field below is read from ``KUBELOOP_API_<FIELD>`` (case-insensitive), so ``mlflow_tracking_uri``
is ``KUBELOOP_API_MLFLOW_TRACKING_URI``. Secrets are :class:`~pydantic.SecretStr` so that they never
show up in a repr, a log line or an error message.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeloop.contracts import DEFAULT_BUCKET


class ApiSettings(BaseSettings):
    """Everything the REST facade can be told; one field per environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_API_",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
    )

    # --- listening -------------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address uvicorn listens on (0.0.0.0 in a pod).")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port of the facade.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the facade and of uvicorn."
    )
    access_log: bool = Field(
        default=True, description="Log one line per request (method, path, status; never headers)."
    )
    docs_enabled: bool = Field(default=True, description="Serve the OpenAPI document and /docs.")

    # --- Kubernetes ------------------------------------------------------------------------------------
    kubeconfig: str | None = Field(
        default=None,
        description="Kubeconfig file of the facade's own identity; default: in-cluster ServiceAccount when "
        "running in a pod, else $KUBECONFIG or ~/.kube/config.",
    )
    kube_context: str | None = Field(default=None, description="Kubeconfig context to use; default: current.")
    kube_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Timeout of one Kubernetes API request (not of watches)."
    )
    kube_max_connections: int = Field(
        default=1024,
        ge=8,
        le=65536,
        description="Connection pool size of the short calls to the API server. Long-lived streams (the "
        "watch behind each SSE client, followed logs) have a connection each besides, bounded by "
        "sse_max_clients and logs_max_follows.",
    )
    kube_throttle_retries: int = Field(
        default=8,
        ge=0,
        le=50,
        description="Times a request the API server shed with 429 (priority and fairness) is sent again, "
        "after its Retry-After (at most 5 s each), before the 429 is passed on.",
    )
    namespace: str = Field(
        default="kubeloop-system",
        description="Namespace of the facade itself; its API-token Secrets live here.",
    )

    # --- authentication and authorisation -------------------------------------------------------------
    auth_cache_ttl_s: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="How long a successful TokenReview or API-token check is reused (revocation through "
        "this facade takes effect at once; elsewhere within this time).",
    )
    auth_failure_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long a token the cluster's TokenReview rejected is refused without asking again, so "
        "a client retrying a bad token does not cost the API server a review per request; 0 asks every time.",
    )
    sar_cache_ttl_s: float = Field(
        default=5.0, ge=0, le=300, description="How long a SubjectAccessReview answer is reused."
    )
    token_audiences: list[str] = Field(
        default_factory=list,
        description="Audiences passed to TokenReview; empty means the API server's own audiences.",
    )
    api_token_default_ttl_s: int = Field(
        default=30 * 86400,
        ge=60,
        description="Lifetime of an API token created without expiresInSeconds (cut to the expiry of the "
        "credential it is made with, where that is known: a JWT's exp, an API token's expiresAt).",
    )
    api_token_max_ttl_s: int = Field(
        default=365 * 86400, ge=60, description="Longest lifetime an API token may be given."
    )
    api_token_max_active_per_owner: int = Field(
        default=50,
        ge=1,
        description="Most usable (not revoked, not expired) API tokens one owner may have; creating another is a "
        "409. Any caller the cluster authenticates may create tokens, so this bounds the Secrets one caller "
        "can make.",
    )
    api_token_max_records_per_owner: int = Field(
        default=200,
        ge=1,
        description="Most token records (usable or ended) kept per owner: creating a token first deletes the "
        "owner's oldest ended records beyond it. At least api_token_max_active_per_owner.",
    )
    api_token_record_retention_s: int = Field(
        default=90 * 86400,
        ge=0,
        description="How long the record of a revoked or expired API token is kept for the audit trail, from "
        "its revocation or expiry; older ones are deleted when a token is created.",
    )
    api_token_user_prefix: str = Field(
        default="",
        description="Prefix added to the user name an API token authenticates as (e.g. 'kubeloop:'), so "
        "RBAC can tell API-token users from cluster users. Empty: the name as given.",
    )

    # --- requests --------------------------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest JSON body of a resource request (etcd keeps ~1.5 MiB).",
    )
    list_default_limit: int = Field(
        default=100, ge=1, le=5000, description="Page size of a list without limit."
    )
    list_max_limit: int = Field(
        default=1000, ge=1, le=5000, description="Largest page size a list may ask for."
    )

    # --- status streaming (SSE) ------------------------------------------------------------------------
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, le=300, description="Seconds between SSE heartbeat comments on an idle stream."
    )
    sse_buffer_events: int = Field(
        default=256,
        ge=1,
        le=100000,
        description="Events buffered per SSE client; a client further behind is disconnected and resumes "
        "with Last-Event-ID.",
    )
    sse_max_clients: int = Field(
        default=2000, ge=1, description="Concurrent SSE streams; more are refused with 503 and Retry-After."
    )
    sse_watch_timeout_s: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="Lifetime of one Kubernetes watch behind a stream; renewed from the last "
        "resourceVersion without the client noticing.",
    )

    # --- logs ------------------------------------------------------------------------------------------
    logs_max_follows: int = Field(
        default=500,
        ge=1,
        description="Concurrent followed training logs (follow=true; each holds an API server log stream); "
        "more are refused with 503 and Retry-After.",
    )
    logs_max_tail_lines: int = Field(
        default=100000, ge=1, description="Largest tailLines a training-log request may ask for."
    )

    # --- predictions -----------------------------------------------------------------------------------
    predict_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Time a proxied prediction may take in all: reaching the model server, sending the "
        "request and reading its whole answer (504 past it).",
    )
    predict_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest prediction request body forwarded."
    )
    predict_max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest answer of a model server passed back (502 past it); answers are read whole "
        "before they are passed on.",
    )

    # --- object storage --------------------------------------------------------------------------------
    s3_endpoint: str = Field(
        default="",
        description="MinIO/S3 endpoint, host:port or http(s)://host:port; empty disables datasets.",
    )
    s3_access_key: SecretStr = Field(default=SecretStr(""), description="Object-store access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="Object-store secret key.")
    s3_secure: bool = Field(
        default=False, description="TLS to the object store when the endpoint is host:port."
    )
    s3_region: str = Field(default="us-east-1", description="Object-store region (used for signing).")
    s3_presign_endpoint: str = Field(
        default="",
        description="Endpoint written into presigned download URLs when clients reach the store under "
        "another address than the facade; default: s3_endpoint.",
    )
    bucket: str = Field(default=DEFAULT_BUCKET, description="Bucket of datasets, models and kept logs.")
    presign_expiry_s: int = Field(
        default=900, ge=1, le=7 * 86400, description="Lifetime of a presigned dataset download URL."
    )

    # --- datasets --------------------------------------------------------------------------------------
    dataset_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="Largest dataset file accepted, in bytes."
    )
    dataset_min_rows: int = Field(default=2, ge=1, description="Fewest data rows (besides the header).")
    dataset_max_empty_ratio: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Largest share of empty cells a dataset may have."
    )
    dataset_max_columns: int = Field(default=4096, ge=1, description="Most columns a dataset may have.")
    dataset_spool_dir: str | None = Field(
        default=None, description="Directory uploads are spooled to while validated; default: the temp dir."
    )

    # --- model registry --------------------------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        default="", description="MLflow tracking server (http(s)://host:port); empty disables the registry."
    )
    mlflow_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Timeout of one MLflow request.")
    mlflow_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for an MLflow server that requires one."
    )

    @model_validator(mode="after")
    def _token_records_hold_the_active_ones(self) -> Self:
        if self.api_token_max_records_per_owner < self.api_token_max_active_per_owner:
            raise ValueError(
                f"api_token_max_records_per_owner ({self.api_token_max_records_per_owner}) is below "
                f"api_token_max_active_per_owner ({self.api_token_max_active_per_owner}): the records "
                "kept must hold the usable tokens"
            )
        return self

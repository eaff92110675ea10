"""Server configuration: environment variables with the prefix ``KUBELOOP_SERVER_`` (DESIGN §6).

The operator sets the variables named in :class:`kubeloop.contracts.ServerEnv`; every field below is
read from ``KUBELOOP_SERVER_<FIELD>`` (case-insensitive), so ``model_uri`` is
``KUBELOOP_SERVER_MODEL_URI``.
"""

from __future__ import annotations

import threading
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeloop.contracts import DEFAULT_BUCKET
from kubeloop.storage import S3Config, StorageConfigError

# The longest wait a thread can make (the prediction-log writer's flush interval, the final flush's join):
# past it, threading raises OverflowError and the writer thread dies.
_THREAD_WAIT_MAX = threading.TIMEOUT_MAX


class ServerSettings(BaseSettings):
    """Everything the inference server can be told; one field per environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_SERVER_",
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        # An infinite duration crashed the start-up (or, in a thread, the prediction-log writer).
        allow_inf_nan=False,
    )

    # --- the model ---------------------------------------------------------------------------------
    model_uri: str = Field(
        description="Where the ONNX model is: s3://bucket/key, file:///path or a plain filesystem path."
    )
    model_name: str = Field(
        default="",
        description="Name the model is served under (OIP /v2/models/{name}); default: the name in the "
        "ONNX metadata, else 'model'.",
    )
    model_version: str = Field(
        default="",
        description="Version reported to clients and written to prediction logs; default: the version in "
        "the ONNX metadata, else '1'.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Execution provider: 'cuda' requires CUDAExecutionProvider, 'cpu' never uses it, 'auto' "
        "uses CUDA when a GPU is present and the provider loads, else CPU.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime intra-op threads; 0 derives it from the container CPU limit (cgroup cpu.max), "
        "else the CPUs this process may run on.",
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let ONNX Runtime's thread pool busy-wait between ops. Off by default: on a shared CPU "
        "the spinning threads steal time from the HTTP event loop.",
    )
    run_in_thread: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Whether session.run calls (merged batches too) leave the event loop for a worker thread. "
        "'auto' measures the model at start-up and offloads only when a single-row run is slower than "
        "inline_run_max_ms.",
    )
    inline_run_max_ms: float = Field(
        default=0.3,
        ge=0,
        description="With run_in_thread=auto: single-row runs at most this long stay on the event loop.",
    )

    # --- identity (for logs and metrics) ------------------------------------------------------------
    namespace: str = Field(
        default="default", description="Namespace of the ModelDeployment (prediction logs)."
    )
    deployment: str = Field(default="local", description="Name of the ModelDeployment (prediction logs).")
    pod_name: str = Field(
        default="",
        description="Pod name, used to keep prediction-log part names unique across replicas; default: the "
        "host name.",
    )

    # --- HTTP -------------------------------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(
        default=8080, ge=0, le=65535, description="HTTP port (OIP v2 REST, /forward, /metrics)."
    )
    grpc_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="gRPC port (OIP v2 inference.GRPCInferenceService, on the same address as HTTP); 0 "
        "switches gRPC off. Requests bigger than max_body_bytes are refused, as over HTTP.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    max_request_rows: int = Field(
        default=10_000, ge=1, description="Most rows one request may carry; more gets 413."
    )
    allow_missing: bool = Field(
        default=True,
        description='JSON null is a missing value: NaN for a numeric feature, "" for a categorical one (the '
        "trainer's graph imputes both). False answers 400 naming the feature. Infinite or out-of-range numbers "
        "are always refused.",
    )
    access_log: bool = Field(default=False, description="Log every request (costly on the hot path).")
    fast_lane: bool = Field(
        default=True,
        description="Answer OIP infer for the served model in the HTTP parser's callback, without ASGI (same "
        "answers, errors, metrics and logging; about half the cost per request). Used only when the access log "
        "is off and runs are inline: a model fast enough to run on the event loop, with batching off or merging "
        "only what is already waiting (max_latency_ms 0); everything else always goes through ASGI.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    # --- adaptive batching ----------------------------------------------------------------------------
    batching_enabled: bool = Field(
        default=False,
        description="Merge concurrent requests into one session.run (only if every model output is batched "
        "along its first axis).",
    )
    max_batch_size: int = Field(default=32, ge=1, description="Most rows in one merged session.run.")
    max_latency_ms: float = Field(
        default=0.0,
        ge=0,
        description="Longest a request waits, from its arrival, for others to join its batch. 0 (the default, "
        "as a ModelDeployment's spec.batching.maxLatencyMs) merges only requests already waiting (those that "
        "arrived together), adding no wait; with a model fast enough to run on the event loop, requests that "
        "come one at a time then run at once, without queueing.",
    )

    # --- prediction logging -----------------------------------------------------------------------------
    prediction_logging_enabled: bool = Field(
        default=False, description="Write sampled inputs and predictions to object storage as Parquet."
    )
    prediction_logging_sample_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Fraction of rows logged (each row decided independently)."
    )
    prediction_log_flush_rows: int = Field(
        default=5_000, ge=1, description="Write a Parquet part as soon as this many rows are buffered."
    )
    prediction_log_flush_interval_s: float = Field(
        default=30.0, gt=0, le=_THREAD_WAIT_MAX, description="Write buffered rows at least this often."
    )
    prediction_log_max_buffer_rows: int = Field(
        default=100_000,
        ge=1,
        description="Bound on buffered rows (memory); rows beyond it are dropped and counted, never blocking "
        "requests.",
    )

    # --- object storage ----------------------------------------------------------------------------------
    bucket: str = Field(default=DEFAULT_BUCKET, description="Bucket for prediction logs.")
    s3_endpoint: str = Field(
        default="", description="MinIO/S3 endpoint, host:port or http(s)://host:port; needed for s3:// URIs."
    )
    s3_access_key: str = Field(default="", description="Access key (from a Secret).")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="Secret key (from a Secret).")
    s3_secure: bool = Field(
        default=False, description="Use TLS for the object store when no scheme is given."
    )
    s3_region: str = Field(default="", description="Region; MinIO ignores it, so empty is fine there.")

    termination_log: str = Field(
        default="/dev/termination-log",
        description="File that gets a one-line reason when the server cannot start (Kubernetes termination "
        "message): 'ModelLoadFailed: <why>' when the model cannot be fetched, parsed or run, "
        "'InvalidSettings: <why>' for bad settings. Skipped when the file cannot be written.",
    )

    # --- shutdown ------------------------------------------------------------------------------------------
    drain_seconds: float = Field(
        default=3.0,
        ge=0,
        description="After SIGTERM: readiness turns 503 at once and requests are still served for this long "
        "(so endpoints can drop the pod), then the listener closes and in-flight requests finish.",
    )
    graceful_timeout_s: float = Field(
        default=15.0, gt=0, description="Longest wait for in-flight requests once the listener is closed."
    )
    flush_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=_THREAD_WAIT_MAX,
        description="Longest wait for the final prediction-log flush at shutdown. drain_seconds + "
        "graceful_timeout_s + flush_timeout_s (28 s by default) must stay below the pod's "
        "terminationGracePeriodSeconds (30 s by default).",
    )

    def s3_config(self) -> S3Config | None:
        """The object store's config (None without ``s3_endpoint``). Its timeouts and retries are bounded
        (3 s connect, 30 s read, 2 retries), so a down store costs the prediction-log writer seconds."""
        if not self.s3_endpoint:
            return None
        return S3Config(
            endpoint=self.s3_endpoint,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key.get_secret_value(),
            secure=self.s3_secure,
            region=self.s3_region,
            max_connections=4,
        )

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.model_uri.startswith("s3://") and not self.s3_endpoint:
            raise ValueError("model_uri is s3:// but s3_endpoint (KUBELOOP_SERVER_S3_ENDPOINT) is empty")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"grpc_port and port are both {self.port}; give gRPC a port of its own (or 0: off)"
            )
        # The store is built after the model is loaded; a config it refuses is a bad setting, said now.
        try:
            self.s3_config()
        except StorageConfigError as e:
            raise ValueError(f"object store settings (s3_*): {e}") from None
        if self.prediction_logging_enabled and not self.s3_endpoint:
            raise ValueError(
                "prediction_logging_enabled needs an object store: set s3_endpoint (KUBELOOP_SERVER_S3_ENDPOINT)"
            )
        return self

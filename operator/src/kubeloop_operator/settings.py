"""The operator's configuration: environment variables with the prefix ``KUBELOOP_OPERATOR_`` (DESIGN §6).

Every field below is read from ``KUBELOOP_OPERATOR_<FIELD>`` (case-insensitive), so ``trainer_image``
is ``KUBELOOP_OPERATOR_TRAINER_IMAGE``. Two kinds of addresses exist for the object store and MLflow:
the operator's own (where *it* reaches them) and the pods' (what it writes into pod environments).
They differ when the operator runs outside the cluster, e.g. as a test's process on the host, and
default to each other otherwise.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeloop.contracts import DEFAULT_BUCKET, DEFAULT_CREDENTIALS_SECRET
from kubeloop.resources import Quantity, parse_quantity
from kubeloop_operator.builders.driftmonitor import CHECK_MEMORY_REQUEST


class OperatorSettings(BaseSettings):
    """Everything the operator can be told; one field per environment variable."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_OPERATOR_", case_sensitive=False, extra="ignore", populate_by_name=True
    )

    # --- scope and identity --------------------------------------------------------------------------
    namespaces: str = Field(
        default="",
        description="Namespaces to reconcile: kopf namespace patterns, comma-separated globs with '!' "
        "exclusions (e.g. 'team-*,!team-sandbox'). Empty: every namespace, cluster-wide.",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="Kubeconfig file; default: the pod's ServiceAccount in a cluster, else $KUBECONFIG or "
        "~/.kube/config.",
    )
    kube_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Timeout of one Kubernetes API request made by the reconcilers.",
    )
    peering_name: str = Field(
        default="kubeloop-operator",
        description="Name of the cluster-wide KopfPeering object that replicas use to elect the active one.",
    )
    peering_priority: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="This replica's peering priority; the highest runs, the others pause. Replicas need "
        "distinct priorities (equal ones pause each other); default: derived from the pod name.",
    )
    peering_lifetime_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="How long a replica's peering record stays valid without a keep-alive; a paused replica "
        "takes over this long after the active one died without saying goodbye (SIGKILL).",
    )
    standalone: bool = Field(
        default=False,
        description="Run without peering (a single replica, e.g. a test's operator). Peering is mandatory "
        "otherwise: the KopfPeering CRD must be installed.",
    )
    max_workers: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Threads that run the (synchronous) reconcilers; mostly waiting on the API server. Too "
        "few for a burst of changes and events queue up with their bodies: at 16, 500 TrainingJobs created "
        "at once left the operator 1.33x bigger than with 10; at 32, 1.17x.",
    )

    # --- images ------------------------------------------------------------------------------------------
    trainer_image: str = Field(
        default="kubeloop/trainer:0.1.0",
        description="Image of training pods (unless a TrainingJob brings its own).",
    )
    server_image: str = Field(default="kubeloop/server:0.1.0", description="Image of model server pods.")
    drift_check_image: str = Field(
        default="kubeloop/drift-check:0.1.0", description="Image of the DriftMonitor's check job."
    )
    drift_check_deadline_seconds: int = Field(
        default=1800,
        ge=30,
        le=86400,
        description="activeDeadlineSeconds of one drift check Job: a check running longer is stopped.",
    )
    drift_check_memory_limit: Quantity = Field(
        default="768Mi",
        description="Memory limit of a drift check pod, a Kubernetes quantity of at least the pod's "
        f"request {CHECK_MEMORY_REQUEST} (the check reads its window part by part; bench-drift-check "
        "measures its peak).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of every container the operator creates."
    )

    # --- object store and MLflow --------------------------------------------------------------------
    bucket: str = Field(default=DEFAULT_BUCKET, description="Bucket for models, logs, reports (DESIGN §3).")
    s3_endpoint: str = Field(
        default="",
        description="Where the operator reaches MinIO/S3 (host:port or http(s)://host:port), to keep logs "
        "of failed pods; empty: logs are kept only as a tail in status.",
    )
    s3_access_key: SecretStr = Field(default=SecretStr(""), description="The operator's own access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="The operator's own secret key.")
    s3_secure: bool = Field(default=False, description="TLS for a host:port endpoint.")
    s3_region: str = Field(default="", description="Region of the bucket; MinIO ignores it.")
    pod_s3_endpoint: str = Field(
        default="", description="The object-store endpoint written into pods; default: s3_endpoint."
    )
    credentials_secret: str = Field(
        default=DEFAULT_CREDENTIALS_SECRET,
        description="Secret with keys accessKey and secretKey that pods read their object-store credentials "
        "from. It must exist in every namespace where Kubeloop runs pods.",
    )
    mlflow_tracking_uri: str = Field(
        default="", description="Where the operator reaches MLflow (alias resolution)."
    )
    mlflow_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Timeout of one request to MLflow (alias and version lookups).",
    )
    pod_mlflow_tracking_uri: str = Field(
        default="", description="The MLflow tracking URI written into pods; default: mlflow_tracking_uri."
    )

    # --- periods -----------------------------------------------------------------------------------------
    resync_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Period of the level-based resync of every resource (children, status, TTL). Writes "
        "happen only when something changed.",
    )
    progress_seconds: float = Field(
        default=2.0,
        gt=0,
        le=10,
        description="How often a running TrainingJob's progress is read from its rank-0 pod's log.",
    )
    alias_poll_seconds: float = Field(
        default=10.0,
        gt=0,
        le=30,
        description="How often a ModelDeployment's registry alias (or model URI) is resolved again; a "
        "TrainingJob that moves an alias also triggers it at once. One small MLflow GET per ModelDeployment.",
    )
    rollout_max_surge: str = Field(
        default="25%",
        pattern=r"^([0-9]+|[0-9]{1,3}%)$",
        description="maxSurge of the server Deployments' rolling updates (a count or a percent of the "
        "replicas, rounded up, at least 1): extra pods started for a new version before old ones go "
        "(maxUnavailable is always 0). 100% rolls all replicas at once, with room for twice the pods.",
    )

    # --- logs of failed pods ------------------------------------------------------------------------
    log_tail_lines: int = Field(
        default=40, ge=1, le=1000, description="Lines of a failed pod's log kept in status."
    )
    log_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Most bytes of a failed pod's log copied to object storage (the end is kept).",
    )

    # --- probes and metrics ---------------------------------------------------------------------------
    listen_host: str = Field(default="0.0.0.0", description="Address of the liveness and metrics endpoints.")
    liveness_port: int = Field(default=8080, ge=0, le=65535, description="Port of /healthz; 0 turns it off.")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 turns it off."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Log level of the operator (kopf's per-object logs stay at WARNING and above).",
    )

    @field_validator("drift_check_memory_limit")
    @classmethod
    def _memory_limit_fits_the_request(cls, value: int | str) -> int | str:
        # Checked here, at start: the API server would refuse every DriftMonitor's CronJob instead.
        if parse_quantity(value) < parse_quantity(CHECK_MEMORY_REQUEST):
            raise ValueError(
                f"must be at least the drift check pod's memory request {CHECK_MEMORY_REQUEST}, got {value}"
            )
        return value

    @model_validator(mode="after")
    def _credentials_pair(self) -> OperatorSettings:
        if self.s3_endpoint and not (
            self.s3_access_key.get_secret_value() and self.s3_secret_key.get_secret_value()
        ):
            raise ValueError("s3_endpoint is set but s3_access_key or s3_secret_key is empty")
        return self

    @property
    def pods_s3_endpoint(self) -> str:
        return self.pod_s3_endpoint or self.s3_endpoint

    @property
    def pods_mlflow_tracking_uri(self) -> str:
        return self.pod_mlflow_tracking_uri or self.mlflow_tracking_uri

    def effective_priority(self) -> int:
        """The configured priority, or a stable one derived from the pod's name (its hostname)."""
        if self.peering_priority is not None:
            return self.peering_priority
        me = os.environ.get("POD_NAME") or socket.gethostname()
        return int.from_bytes(hashlib.sha256(me.encode()).digest()[:4], "big") & 0x7FFFFFFF

"""Contracts shared by the trainer, the server, the operator and the drift checker (DESIGN §3).

Everything two components must agree on lives here, once: the object-storage layout, the ONNX
``metadata_props`` keys, the environment variables the operator sets on trainer and server pods and
the format of the trainer's final summary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BUCKET: Final = "kubeloop"

# --- object storage layout ------------------------------------------------------------------------

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>.+)$")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object in the platform's object store (MinIO or S3)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, uri: str) -> ObjectRef:
        """Parse ``s3://bucket/key``; raises ValueError naming the problem."""
        m = _S3_URI.match(uri)
        if m is None:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return cls(bucket=m["bucket"], key=m["key"])

    def child(self, name: str) -> ObjectRef:
        return ObjectRef(self.bucket, f"{self.key.rstrip('/')}/{name}")


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """An ``*_S3_ENDPOINT`` value as the minio client wants it: ``host:port`` stays as given (TLS
    per ``secure``); ``http(s)://host:port`` decides TLS from the scheme."""
    if "://" in endpoint:
        u = urlparse(endpoint)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(
                f"object store endpoint must be host:port or http(s)://host:port, got {endpoint!r}"
            )
        return u.netloc, u.scheme == "https"
    return endpoint, secure


def model_prefix(model_name: str, version: int, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    """``models/<name>/<version>/`` — where a registered model version's files live."""
    return ObjectRef(bucket, f"models/{model_name}/{version}")


def model_onnx(model_name: str, version: int, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    return model_prefix(model_name, version, bucket).child("model.onnx")


def model_baseline(model_name: str, version: int, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    return model_prefix(model_name, version, bucket).child("baseline.json")


def predictions_prefix(
    namespace: str, deployment: str, model_version: str, bucket: str = DEFAULT_BUCKET
) -> ObjectRef:
    """``predictions/<namespace>/<deployment>/<modelVersion>/`` — parent of the per-day folders."""
    return ObjectRef(bucket, f"predictions/{namespace}/{deployment}/{model_version}")


def predictions_part(
    namespace: str,
    deployment: str,
    model_version: str,
    day: date,
    part: str,
    bucket: str = DEFAULT_BUCKET,
) -> ObjectRef:
    """One Parquet file of logged predictions: ``…/<YYYY-MM-DD>/<part>.parquet``."""
    prefix = predictions_prefix(namespace, deployment, model_version, bucket)
    return prefix.child(f"{day.isoformat()}/{part}.parquet")


def drift_report(namespace: str, monitor: str, at: datetime, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    return ObjectRef(bucket, f"drift/{namespace}/{monitor}/{stamp}.json")


def checkpoint_prefix(namespace: str, trainingjob: str, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    return ObjectRef(bucket, f"checkpoints/{namespace}/{trainingjob}")


def training_logs_prefix(namespace: str, trainingjob: str, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    """``logs/<namespace>/<trainingjob>/`` — parent of the kept pod logs of one TrainingJob."""
    return ObjectRef(bucket, f"logs/{namespace}/{trainingjob}")


def training_log(namespace: str, trainingjob: str, pod: str, bucket: str = DEFAULT_BUCKET) -> ObjectRef:
    """``logs/<namespace>/<trainingjob>/<pod>.log`` — the whole log of a failed training pod, kept by
    the operator before any cleanup (the REST facade serves kept logs from here)."""
    return training_logs_prefix(namespace, trainingjob, bucket).child(f"{pod}.log")


# --- drift check defaults ---------------------------------------------------------------------------
# The DriftMonitor spec's defaults and the drift engine's: a feature drifts at PSI >= 0.2 or
# Jensen-Shannon distance >= 0.1, the dataset when half of its features do, and fewer than 500 logged
# predictions are "insufficient data".

DRIFT_PSI_THRESHOLD: Final = 0.2
DRIFT_JS_THRESHOLD: Final = 0.1
DRIFT_SHARE: Final = 0.5
DRIFT_MIN_SAMPLES: Final = 500

# Columns of a prediction-log Parquet file besides one column per input feature.
PREDICTION_LOG_TIMESTAMP: Final = "_timestamp"
PREDICTION_LOG_MODEL_VERSION: Final = "_model_version"
PREDICTION_LOG_PREDICTION: Final = "_prediction"

# --- ONNX metadata_props ----------------------------------------------------------------------------


class OnnxMetadataKey:
    """Keys of the ONNX model's ``metadata_props``; values are strings (JSON where structured)."""

    FEATURES: Final = "kubeloop.features"  # JSON list of {"name", "type": "numeric"|"categorical"}
    TASK: Final = "kubeloop.task"  # "classification" | "regression"
    CLASSES: Final = "kubeloop.classes"  # JSON list of class labels (classification only)
    MODEL_NAME: Final = "kubeloop.model_name"
    MODEL_VERSION: Final = "kubeloop.model_version"
    MLFLOW_RUN_ID: Final = "kubeloop.mlflow_run_id"
    TRAINED_AT: Final = "kubeloop.trained_at"  # RFC 3339 UTC
    TARGET: Final = "kubeloop.target"
    SCHEMA_VERSION: Final = "kubeloop.schema_version"


ONNX_METADATA_SCHEMA_VERSION: Final = "1"


class FeatureSpec(BaseModel):
    """One model input as the ONNX graph expects it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Feature (column) name.")
    type: Literal["numeric", "categorical"] = Field(description="How the graph consumes the feature.")


class ModelMetadata(BaseModel):
    """What the trainer writes into ``metadata_props`` and the server reads back."""

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureSpec] = Field(description="Inputs in graph order.")
    task: Literal["classification", "regression"] = Field(description="Learning task.")
    classes: list[str] = Field(default_factory=list, description="Class labels (classification).")
    model_name: str = Field(default="", description="Registered model name.")
    model_version: str = Field(default="", description="Registered model version.")
    mlflow_run_id: str = Field(default="", description="MLflow run that produced the model.")
    trained_at: str = Field(default="", description="Training timestamp, RFC 3339 UTC.")
    target: str = Field(default="", description="Target column the model predicts.")

    def to_props(self) -> dict[str, str]:
        k = OnnxMetadataKey
        return {
            k.SCHEMA_VERSION: ONNX_METADATA_SCHEMA_VERSION,
            k.FEATURES: json.dumps([f.model_dump() for f in self.features]),
            k.TASK: self.task,
            k.CLASSES: json.dumps(self.classes),
            k.MODEL_NAME: self.model_name,
            k.MODEL_VERSION: self.model_version,
            k.MLFLOW_RUN_ID: self.mlflow_run_id,
            k.TRAINED_AT: self.trained_at,
            k.TARGET: self.target,
        }

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse ``metadata_props``; raises ValueError naming the missing or bad key."""
        k = OnnxMetadataKey
        for required in (k.FEATURES, k.TASK):
            if required not in props:
                raise ValueError(f"ONNX metadata_props lacks {required!r}; not a Kubeloop model")
        try:
            features = json.loads(props[k.FEATURES])
            classes = json.loads(props.get(k.CLASSES, "[]"))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"ONNX metadata_props: malformed JSON in {k.FEATURES} or {k.CLASSES}: {e}"
            ) from e
        data: dict[str, Any] = {
            "features": features,
            "task": props[k.TASK],
            "classes": classes,
            "model_name": props.get(k.MODEL_NAME, ""),
            "model_version": props.get(k.MODEL_VERSION, ""),
            "mlflow_run_id": props.get(k.MLFLOW_RUN_ID, ""),
            "trained_at": props.get(k.TRAINED_AT, ""),
            "target": props.get(k.TARGET, ""),
        }
        return cls.model_validate(data)


# --- environment the operator sets on pods --------------------------------------------------------


class TrainerEnv:
    """Environment variables of a trainer pod (prefix KUBELOOP_TRAINER_, DESIGN §6).

    :mod:`kubeloop.podenv` builds them; nothing else should spell them out."""

    SPEC: Final = "KUBELOOP_TRAINER_SPEC"  # the TrainingJob spec as JSON (defaults applied)
    NAMESPACE: Final = "KUBELOOP_TRAINER_NAMESPACE"
    NAME: Final = "KUBELOOP_TRAINER_NAME"
    UID: Final = "KUBELOOP_TRAINER_UID"
    BUCKET: Final = "KUBELOOP_TRAINER_BUCKET"
    S3_ENDPOINT: Final = "KUBELOOP_TRAINER_S3_ENDPOINT"  # host:port or URL of MinIO/S3
    S3_ACCESS_KEY: Final = "KUBELOOP_TRAINER_S3_ACCESS_KEY"
    S3_SECRET_KEY: Final = "KUBELOOP_TRAINER_S3_SECRET_KEY"
    S3_SECURE: Final = "KUBELOOP_TRAINER_S3_SECURE"
    S3_REGION: Final = "KUBELOOP_TRAINER_S3_REGION"
    TERMINATION_LOG: Final = "KUBELOOP_TRAINER_TERMINATION_LOG"  # default /dev/termination-log
    MLFLOW_TRACKING_URI: Final = "MLFLOW_TRACKING_URI"  # MLflow's own variable, read by its client


class ServerEnv:
    """Environment variables of a server pod (prefix KUBELOOP_SERVER_)."""

    MODEL_URI: Final = "KUBELOOP_SERVER_MODEL_URI"
    MODEL_NAME: Final = "KUBELOOP_SERVER_MODEL_NAME"
    MODEL_VERSION: Final = "KUBELOOP_SERVER_MODEL_VERSION"
    # sha256:<hex> of the file at MODEL_URI as the operator pinned it (for audit; the server ignores it).
    MODEL_DIGEST: Final = "KUBELOOP_SERVER_MODEL_DIGEST"
    NAMESPACE: Final = "KUBELOOP_SERVER_NAMESPACE"
    DEPLOYMENT: Final = "KUBELOOP_SERVER_DEPLOYMENT"
    PORT: Final = "KUBELOOP_SERVER_PORT"
    GRPC_PORT: Final = "KUBELOOP_SERVER_GRPC_PORT"  # OIP v2 gRPC; default 8081, 0 = off
    BATCHING_ENABLED: Final = "KUBELOOP_SERVER_BATCHING_ENABLED"
    MAX_BATCH_SIZE: Final = "KUBELOOP_SERVER_MAX_BATCH_SIZE"
    MAX_LATENCY_MS: Final = "KUBELOOP_SERVER_MAX_LATENCY_MS"
    PREDICTION_LOGGING_ENABLED: Final = "KUBELOOP_SERVER_PREDICTION_LOGGING_ENABLED"
    PREDICTION_LOGGING_SAMPLE_RATE: Final = "KUBELOOP_SERVER_PREDICTION_LOGGING_SAMPLE_RATE"
    BUCKET: Final = "KUBELOOP_SERVER_BUCKET"
    S3_ENDPOINT: Final = "KUBELOOP_SERVER_S3_ENDPOINT"
    S3_ACCESS_KEY: Final = "KUBELOOP_SERVER_S3_ACCESS_KEY"
    S3_SECRET_KEY: Final = "KUBELOOP_SERVER_S3_SECRET_KEY"
    S3_SECURE: Final = "KUBELOOP_SERVER_S3_SECURE"
    S3_REGION: Final = "KUBELOOP_SERVER_S3_REGION"
    POD_NAME: Final = "KUBELOOP_SERVER_POD_NAME"
    # Where a server that cannot start writes "ModelLoadFailed: <why>" (default /dev/termination-log).
    TERMINATION_LOG: Final = "KUBELOOP_SERVER_TERMINATION_LOG"


class DriftCheckEnv:
    """Environment variables of a DriftMonitor's check pod (prefix KUBELOOP_DRIFTCHECK_): which monitor
    to check and the object store. Thresholds and the window are read from the DriftMonitor itself."""

    NAMESPACE: Final = "KUBELOOP_DRIFTCHECK_NAMESPACE"
    MONITOR: Final = "KUBELOOP_DRIFTCHECK_MONITOR"
    BUCKET: Final = "KUBELOOP_DRIFTCHECK_BUCKET"
    S3_ENDPOINT: Final = "KUBELOOP_DRIFTCHECK_S3_ENDPOINT"
    S3_ACCESS_KEY: Final = "KUBELOOP_DRIFTCHECK_S3_ACCESS_KEY"
    S3_SECRET_KEY: Final = "KUBELOOP_DRIFTCHECK_S3_SECRET_KEY"
    S3_SECURE: Final = "KUBELOOP_DRIFTCHECK_S3_SECURE"
    S3_REGION: Final = "KUBELOOP_DRIFTCHECK_S3_REGION"


# --- trainer results --------------------------------------------------------------------------------


class TrainingSummary(BaseModel):
    """The trainer's final summary, written as JSON to the termination message on success."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    metrics: dict[str, float] = Field(description="Final validation metrics.")
    mlflow_run_id: str = Field(alias="mlflowRunId", description="MLflow run id.")
    model_version: int | None = Field(default=None, alias="modelVersion", description="Registered version.")
    model_uri: str = Field(alias="modelUri", description="s3:// URI of model.onnx.")
    baseline_uri: str = Field(alias="baselineUri", description="s3:// URI of baseline.json.")
    promoted: bool = Field(default=False, description="Whether the promotion alias was moved.")


class TrainingFailure(BaseModel):
    """The trainer's failure summary (termination message on a non-zero exit)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="CamelCase reason, e.g. MissingTargetColumn.")
    message: str = Field(description="One line naming the problem.")
    exit_code: int = Field(alias="exitCode", description="Process exit code.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Progress lines the trainer prints (one JSON object per line on stdout) look like:
# {"event": "epoch", "epoch": 3, "epochs": 20, "train_loss": 0.31, "val_loss": 0.29, "seconds": 1.2}
PROGRESS_EVENT_EPOCH: Final = "epoch"


# Trainer exit codes that a retry cannot fix (kubeloop_trainer.errors, ``retryable = False``): invalid
# configuration (2), the dataset's problems (10-29), a model that does not export to ONNX (32: the same
# model fails to export again) and a run whose loss diverged (34: the same seed and settings diverge
# again). The operator fails the Job at once on them instead of retrying.
TRAINER_NO_RETRY_EXIT_CODES: Final = frozenset({2, *range(10, 30), 32, 34})

# --- credentials, labels and names on the cluster ---------------------------------------------------


class CredentialsSecretKey:
    """Keys of the Secret that holds the object-store credentials (one per namespace that runs pods)."""

    ACCESS_KEY: Final = "accessKey"
    SECRET_KEY: Final = "secretKey"


DEFAULT_CREDENTIALS_SECRET: Final = "kubeloop-s3"


class Labels:
    """Labels the operator puts on every child (and on the pods its Jobs and Deployments make)."""

    NAME: Final = "app.kubernetes.io/name"
    COMPONENT: Final = "app.kubernetes.io/component"
    PART_OF: Final = "app.kubernetes.io/part-of"
    MANAGED_BY: Final = "app.kubernetes.io/managed-by"
    OWNER_KIND: Final = "kubeloop.io/owner-kind"
    OWNER_NAME: Final = "kubeloop.io/owner-name"
    # The owner's UID: children of a deleted and re-created resource of the same name never mix.
    OWNER_UID: Final = "kubeloop.io/owner-uid"
    TRAININGJOB: Final = "kubeloop.io/trainingjob"
    KUEUE_QUEUE_NAME: Final = "kueue.x-k8s.io/queue-name"


class MlflowTags:
    """Tags the trainer puts on its MLflow run and on the model version it registers; the operator
    (ONNX and baseline URIs of a version) and the REST facade (which namespace owns a model) read them."""

    NAMESPACE: Final = "kubeloop.io/namespace"
    TRAININGJOB: Final = "kubeloop.io/trainingjob"
    UID: Final = "kubeloop.io/uid"
    MODEL_URI: Final = "kubeloop.io/model-uri"
    BASELINE_URI: Final = "kubeloop.io/baseline-uri"
    # Which training registered a version (a hash of the TrainingJob's identity and spec): a retried pod
    # of that training reuses the version instead of registering one more.
    TRAINING_KEY: Final = "kubeloop.io/training-key"


MANAGED_BY_OPERATOR: Final = "kubeloop-operator"
PART_OF_KUBELOOP: Final = "kubeloop"


class TorchrunEnv:
    """torchrun's own environment (``PET_<ARGUMENT>``), read by ``python -m torch.distributed.run``."""

    NNODES: Final = "PET_NNODES"
    NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
    NODE_RANK: Final = "PET_NODE_RANK"
    MASTER_ADDR: Final = "PET_MASTER_ADDR"
    MASTER_PORT: Final = "PET_MASTER_PORT"


RENDEZVOUS_PORT: Final = 29500
# Set by the Job controller on every pod of an Indexed Job.
JOB_COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"
JOB_COMPLETION_INDEX_LABEL: Final = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL: Final = "batch.kubernetes.io/job-name"

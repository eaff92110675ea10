"""TrainingJob: spec, status and the kind."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubeloop.resources._base import (
    _CONDITIONS_EXTRA,
    DATASET_URI_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    GPU_RESOURCE,
    Alias,
    Condition,
    DnsLabel,
    KubeloopModel,
    LabelKey,
    LabelValue,
    ModelName,
    ResourceRequirements,
    Toleration,
    _cel,
    _fail,
    parse_quantity,
)
from kubeloop.resources.manifest import _AGE, PrinterColumn, Resource, _cols

CLASSIFICATION_METRICS: Final = ("accuracy", "precision", "recall", "f1", "roc_auc")
# Bound of status.failure.logTail: status stays small; the whole log goes to object storage.
LOG_TAIL_MAX_BYTES: Final = 4096
REGRESSION_METRICS: Final = ("r2", "mse", "mae")
# Metrics where lower is better; promotion compares the other way round for these.
LOWER_IS_BETTER: Final = frozenset({"mse", "mae"})


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class DatasetSpec(KubeloopModel):
    """Where the training table is and which column to predict."""

    uri: str = Field(
        pattern=DATASET_URI_PATTERN,
        max_length=2048,
        description="Table location: s3://bucket/key (MinIO or S3) or an absolute path inside the pod. A "
        "URI ending in '/' names a prefix: every CSV and Parquet object under it, read when the job runs "
        "and concatenated (same columns), so new labelled data can be added without editing the spec.",
    )
    format: Literal["auto", "csv", "parquet"] = Field(
        default="auto", description="File format; auto decides by the file extension (.csv, .parquet)."
    )
    target: str = Field(min_length=1, max_length=256, description="Column to predict.")
    features: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Columns to use as inputs; default: every column except the target.",
    )
    categorical_features: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=2048,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Columns to treat as categorical even if numeric; non-numeric columns always are.",
    )
    validation_split: float = Field(
        default=0.2,
        gt=0.0,
        le=0.5,
        description="Fraction of rows held out for validation and early stopping.",
    )

    cel_rules = (
        _cel(
            "!has(self.features) || !(self.target in self.features)",
            "the target column must not be listed among the features",
            ".features",
        ),
    )

    @model_validator(mode="after")
    def _check_columns(self) -> Self:
        if self.features is not None:
            if len(set(self.features)) != len(self.features):
                raise _fail("features", "must not contain duplicates")
            if self.target in self.features:
                raise _fail("features", "the target column must not be listed among the features")
        if self.categorical_features is not None and len(set(self.categorical_features)) != len(
            self.categorical_features
        ):
            raise _fail("categoricalFeatures", "must not contain duplicates")
        return self


class ModelSpec(KubeloopModel):
    """The model to train: the built-in MLP, or your own image honouring the trainer's output contract."""

    type: Literal["mlp"] = Field(default="mlp", description="Built-in architecture (mlp).")
    hidden_layers: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=lambda: [64, 32],
        min_length=0,
        max_length=16,
        description="Width of each hidden layer of the MLP.",
    )
    dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Dropout probability after each hidden layer."
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Bring-your-own trainer image; it must write the same outputs (ONNX, baseline, summary).",
    )
    command: list[str] | None = Field(
        default=None, min_length=1, max_length=64, description="Entrypoint of the bring-your-own image."
    )
    args: list[str] | None = Field(
        default=None, max_length=256, description="Arguments of the bring-your-own image."
    )

    cel_rules = (
        _cel("has(self.image) == has(self.command)", "image and command must be given together", ".command"),
        _cel(
            "!has(self.args) || has(self.image)", "args are only allowed with a bring-your-own image", ".args"
        ),
    )

    @model_validator(mode="after")
    def _byo(self) -> Self:
        if (self.image is None) != (self.command is None):
            raise _fail("command", "image and command must be given together")
        if self.args is not None and self.image is None:
            raise _fail("args", "args are only allowed with a bring-your-own image")
        return self


class EarlyStoppingSpec(KubeloopModel):
    """Stop when the validation loss stops improving."""

    enabled: bool = Field(default=True, description="Whether to stop early.")
    patience: int = Field(default=5, ge=1, le=1000, description="Epochs without improvement before stopping.")
    min_delta: float = Field(
        default=0.0, ge=0.0, description="Smallest decrease of the validation loss that counts."
    )


class TrainingSpec(KubeloopModel):
    """Optimisation settings."""

    epochs: int = Field(default=20, ge=1, le=100000, description="Maximum number of epochs.")
    batch_size: int = Field(
        default=64,
        ge=1,
        le=1048576,
        description="Rows per optimisation step over all processes (the global batch).",
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0, description="Adam learning rate.")
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on the validation split."
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Random seed; same seed, same model.")


class Backend(StrEnum):
    DDP = "ddp"
    DEEPSPEED = "deepspeed"


class DeepSpeedSpec(KubeloopModel):
    """DeepSpeed settings (backend deepspeed)."""

    zero_stage: int = Field(default=1, ge=0, le=3, description="ZeRO optimisation stage (0-3).")
    precision: Literal["fp32", "fp16", "bf16"] = Field(default="bf16", description="Training precision.")


class DistributedSpec(KubeloopModel):
    """How many pods and GPUs, and which data-parallel backend."""

    nodes: int = Field(default=1, ge=1, le=256, description="Number of pods (torchrun nodes).")
    gpus_per_node: int = Field(default=0, ge=0, le=16, description="GPUs per pod; 0 trains on CPU.")
    backend: Backend = Field(
        default=Backend.DDP, description="ddp (torch DistributedDataParallel) or deepspeed."
    )
    allow_cpu: bool = Field(
        default=False, description="Explicitly allow backend deepspeed without GPUs (CPU accelerator)."
    )
    deepspeed: DeepSpeedSpec | None = Field(
        default=None, description="DeepSpeed settings; only with backend deepspeed."
    )

    cel_rules = (
        _cel(
            # has() guards: the API server also checks rules against the schema default ({}).
            "!has(self.backend) || self.backend != 'deepspeed' || "
            "(has(self.gpusPerNode) && self.gpusPerNode >= 1) || (has(self.allowCpu) && self.allowCpu)",
            "backend deepspeed needs gpusPerNode >= 1 or allowCpu: true",
            ".gpusPerNode",
        ),
        _cel(
            "!has(self.deepspeed) || (has(self.backend) && self.backend == 'deepspeed')",
            "deepspeed settings are only allowed with backend deepspeed",
            ".deepspeed",
        ),
    )

    @model_validator(mode="after")
    def _backend_rules(self) -> Self:
        if self.backend == Backend.DEEPSPEED and self.gpus_per_node < 1 and not self.allow_cpu:
            raise _fail("gpusPerNode", "backend deepspeed needs gpusPerNode >= 1 or allowCpu: true")
        if self.deepspeed is not None and self.backend != Backend.DEEPSPEED:
            raise _fail("deepspeed", "deepspeed settings are only allowed with backend deepspeed")
        return self


class MlflowSpec(KubeloopModel):
    """MLflow tracking."""

    experiment: str | None = Field(
        default=None, min_length=1, max_length=256, description="Experiment name; default: the namespace."
    )


class RegistrySpec(KubeloopModel):
    """Model registry (MLflow) entry the trained model is registered under."""

    model_name: ModelName = Field(description="Registered model name.")


class PromotionSpec(KubeloopModel):
    """Move an alias to the new version when it is good enough."""

    metric: str = Field(
        min_length=1,
        max_length=32,
        description="Validation metric to judge by: accuracy, precision, recall, f1, roc_auc (classification) "
        "or r2, mse, mae (regression).",
    )
    threshold: float | None = Field(
        default=None,
        description="The metric must reach this value (at most this value for mse and mae).",
    )
    alias: Alias = Field(default="champion", description="MLflow alias to move, e.g. champion.")
    require_improvement: bool = Field(
        default=True, description="Only promote when the new version beats the current alias holder."
    )


class RunPolicy(KubeloopModel):
    """Run policy, named as in Kubeflow."""

    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Retries before the job is marked failed."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the whole run, in seconds."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the finished Job (not the TrainingJob) after this many seconds.",
    )
    suspend: bool = Field(default=False, description="Suspend the run (no pods run while true).")


class TrainingJobSpec(KubeloopModel):
    """Desired state of a TrainingJob."""

    dataset: DatasetSpec = Field(description="Training data.")
    task: Task = Field(description="classification or regression.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Model architecture.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Pods, GPUs and backend."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources of each training pod."
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Node labels the training pods must run on."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations of the training pods."
    )
    priority_class_name: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="PriorityClass of the pods."
    )
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow tracking.")
    registry: RegistrySpec | None = Field(
        default=None, description="Register the model under this name; default: the TrainingJob's name."
    )
    promotion: PromotionSpec | None = Field(default=None, description="Alias promotion after training.")
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retries, deadline, TTL and suspension."
    )
    queue_name: DnsLabel | None = Field(
        default=None, description="Kueue LocalQueue (sets the kueue.x-k8s.io/queue-name label)."
    )

    cel_rules = (
        _cel(
            "!has(self.promotion) || (self.task == 'classification' ? "
            "self.promotion.metric in ['accuracy', 'precision', 'recall', 'f1', 'roc_auc'] : "
            "self.promotion.metric in ['r2', 'mse', 'mae'])",
            "promotion.metric must be a metric of the task: accuracy, precision, recall, f1, roc_auc "
            "(classification) or r2, mse, mae (regression)",
            ".promotion.metric",
        ),
        _cel(
            "!has(self.promotion) || !has(self.promotion.threshold) || "
            "!(self.promotion.metric in ['accuracy', 'precision', 'recall', 'f1', 'roc_auc']) || "
            "(self.promotion.threshold >= 0.0 && self.promotion.threshold <= 1.0)",
            "promotion.threshold must be within 0..1 for a classification metric",
            ".promotion.threshold",
        ),
        *(
            _cel(
                f"!has(self.distributed) || !has(self.distributed.gpusPerNode) || self.distributed.gpusPerNode == 0"
                f" || !has(self.resources) || !has(self.resources.{part})"
                f" || !('{GPU_RESOURCE}' in self.resources.{part})"
                # Numbers, not strings: 2000m is 2 (a malformed quantity is left to its own rule).
                f" || !isQuantity(string(self.resources.{part}['{GPU_RESOURCE}']))"
                f" || quantity(string(self.resources.{part}['{GPU_RESOURCE}']))"
                ".compareTo(quantity('0').add(self.distributed.gpusPerNode)) == 0",
                f"{GPU_RESOURCE} must equal distributed.gpusPerNode, which sets it (or be left out)",
                f".resources.{part}",
            )
            for part in ("requests", "limits")
        ),
    )

    @model_validator(mode="after")
    def _task_rules(self) -> Self:
        gpus = self.distributed.gpus_per_node
        for part in ("requests", "limits"):
            given = getattr(self.resources, part).get(GPU_RESOURCE)
            # torchrun starts gpusPerNode processes, one per GPU: a pod given another count contradicts it.
            if gpus and given is not None and parse_quantity(given) != gpus:
                raise _fail(
                    f"resources.{part}",
                    f"{GPU_RESOURCE} {given} contradicts distributed.gpusPerNode {gpus}, which sets it; "
                    "leave it out or make them equal",
                )
        if self.promotion is not None:
            allowed = CLASSIFICATION_METRICS if self.task == Task.CLASSIFICATION else REGRESSION_METRICS
            if self.promotion.metric not in allowed:
                raise _fail(
                    "promotion.metric",
                    f"{self.promotion.metric!r} is not a {self.task} metric; use one of {', '.join(allowed)}",
                )
            t = self.promotion.threshold
            if t is not None and self.promotion.metric in CLASSIFICATION_METRICS and not 0.0 <= t <= 1.0:
                raise _fail("promotion.threshold", "must be within 0..1 for a classification metric")
        return self


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Progress(KubeloopModel):
    """Training progress as reported by the trainer."""

    epoch: int = Field(default=0, ge=0, description="Last finished epoch.")
    epochs: int = Field(default=0, ge=0, description="Planned epochs.")
    percent: int = Field(default=0, ge=0, le=100, description="Finished share of the planned epochs.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds to completion.")
    updated_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the operator last saw the progress change (RFC 3339).",
    )


class Failure(KubeloopModel):
    """Why a run failed."""

    reason: str = Field(
        description="Cause, e.g. ImagePullBackOff, Unschedulable, OOMKilled, DeadlineExceeded, "
        "BackoffLimitExceeded, or the trainer's own reason (MissingTargetColumn, …)."
    )
    message: str = Field(default="", description="Details.")
    exit_code: int | None = Field(default=None, description="Exit code of the failed container.")
    pod: str | None = Field(default=None, description="The pod the cause was seen on.")
    container: str | None = Field(default=None, description="The container the cause was seen on.")
    log_tail: str | None = Field(
        default=None,
        max_length=LOG_TAIL_MAX_BYTES,
        description="Last lines of the failed pod's log, kept before any cleanup.",
    )
    log_uri: str | None = Field(
        default=None,
        description="s3:// URI of the failed pod's whole log (logs/<namespace>/<name>/<pod>.log).",
    )
    time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When the cause was first seen."
    )


class TrainingJobStatus(KubeloopModel):
    """Observed state of a TrainingJob (written by the operator only)."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=_CONDITIONS_EXTRA,
        description="Created, Running, Succeeded, …",
    )
    start_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Start."
    )
    completion_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Completion."
    )
    progress: Progress | None = Field(default=None, description="Epoch progress and ETA.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final validation metrics.")
    primary_metric: str | None = Field(
        default=None, description="Headline metric for kubectl, e.g. accuracy=0.97."
    )
    mlflow_run_id: str | None = Field(default=None, description="MLflow run id.")
    model_version: int | None = Field(default=None, description="Registered model version.")
    model_uri: str | None = Field(default=None, description="s3:// URI of the exported ONNX model.")
    baseline_uri: str | None = Field(default=None, description="s3:// URI of the drift baseline.")
    promoted: bool | None = Field(
        default=None, description="Whether the promotion alias was moved to the new version."
    )
    job_name: str | None = Field(default=None, description="Name of the batch/v1 Job that runs the pods.")
    failed_pods: int | None = Field(
        default=None, ge=0, description="Training pods that failed so far (each counts against backoffLimit)."
    )
    failure: Failure | None = Field(
        default=None,
        description="Why the run failed, or what keeps it from running (e.g. Unschedulable while Pending).",
    )


class TrainingJob(Resource):
    """Trains a model (PyTorch, optionally DeepSpeed), tracks it in MLflow and exports ONNX + baseline."""

    kind: ClassVar[str] = "TrainingJob"
    plural: ClassVar[str] = "trainingjobs"
    singular: ClassVar[str] = "trainingjob"
    short_names: ClassVar[tuple[str, ...]] = ("tj",)
    description: ClassVar[str] = (
        "A TrainingJob trains a tabular model with PyTorch (DDP or DeepSpeed), tracks it in MLflow, "
        "exports it to ONNX with a drift baseline and registers a model version."
    )
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = _cols(
        ("Phase", "string", ".status.phase", "Pending, Running, Succeeded, Failed or Suspended."),
        ("Progress", "integer", ".status.progress.percent", "Percent of planned epochs finished."),
        ("Metric", "string", ".status.primaryMetric", "Headline validation metric."),
        ("Version", "integer", ".status.modelVersion", "Registered model version."),
        _AGE,
    )

    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

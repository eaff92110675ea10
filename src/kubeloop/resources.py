"""Kubeloop's three resource types as pydantic v2 models: the single source of the CRDs.

The models serve two purposes. They are the typed Python SDK (``TrainingJob.from_manifest`` /
``to_manifest``), and :mod:`kubeloop.crdgen` turns them into the CRD schemas, including the
cross-field rules as CEL (``x-kubernetes-validations``). Every cross-field rule exists twice, once
as a pydantic validator and once as CEL next to it (see :func:`_cel`), so an invalid object is
refused with the same field path by the SDK and by the API server.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from kubeloop import cron

GROUP: Final = "kubeloop.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "kubeloop"

# --- shared building blocks -------------------------------------------------------------------------

DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Registered model names end up in object keys, labels and MLflow: keep them boring.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
# MLflow aliases; "latest" and "v<N>" are reserved by MLflow and refused below.
ALIAS_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$"
DATASET_URI_PATTERN: Final = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|/.+)$"
MODEL_URI_PATTERN: Final = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\.onnx|/.+\.onnx)$"
# Go time.Duration syntax, as Kubernetes users write it (e.g. 90s, 6h, 1h30m).
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
# Kubernetes resource quantities, the regex of k8s.io/apimachinery/pkg/api/resource.
QUANTITY_PATTERN: Final = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
RESOURCE_NAME_PATTERN: Final = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

CLASSIFICATION_METRICS: Final = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS: Final = ("r2", "mse", "mae")
# Metrics where lower is better; promotion compares the other way round for these.
LOWER_IS_BETTER: Final = frozenset({"mse", "mae"})

_DURATION_UNITS_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """Parse a Go-style duration (``1h30m``) into seconds."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use Go duration syntax such as 90s, 30m, 6h or 1h30m")
    total_ns = sum(float(n) * _DURATION_UNITS_NS[u] for n, u in _DURATION_PART.findall(value))
    return total_ns / 1e9


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_cron(value: str) -> str:
    cron.validate(value)
    return value


def _check_alias(value: str) -> str:
    if value == "latest" or re.fullmatch(r"v[0-9]+", value):
        raise ValueError(f"alias {value!r} is reserved by MLflow ('latest' and 'v<number>')")
    return value


DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=64), AfterValidator(_check_duration)]


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a Kubernetes quantity such as 500m, 2 or 1Gi, got {value!r}")
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    return value


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "description": "A Kubernetes quantity such as 500m, 2 or 1Gi.",
            # Bounds the CEL cost estimate of isQuantity() below the API server's budget.
            "maxLength": 64,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a Kubernetes quantity such as 500m, 2 or 1Gi",
                }
            ],
        }
    ),
]
Alias = Annotated[
    str,
    Field(
        pattern=ALIAS_PATTERN,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self != 'latest' && !self.matches('^v[0-9]+$')",
                    "message": "alias is reserved by MLflow ('latest' and 'v<number>')",
                }
            ]
        },
    ),
    AfterValidator(_check_alias),
]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, max_length=63)]


def _cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One CEL rule as it appears in ``x-kubernetes-validations``."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


class KubeloopModel(BaseModel):
    """Base for every spec/status object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
    )

    # CEL rules attached to this object's schema; each mirrors a model validator.
    cel_rules: ClassVar[tuple[dict[str, str], ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [dict(r) for r in cls.cel_rules]
        # Defaults made by factories are invisible to JSON Schema; spell them out so the API server
        # fills them in too (an empty object default lets the nested defaults apply).
        for name, info in cls.model_fields.items():
            prop = target.get("properties", {}).get(info.alias or name)
            if prop is None or info.default_factory is None or "default" in prop:
                continue
            value = info.default_factory()  # type: ignore[call-arg]
            prop["default"] = {} if isinstance(value, BaseModel) else value
        return schema


def _fail(field: str, message: str) -> ValueError:
    """A cross-field error that names the field it is about (the message starts with the path)."""
    return ValueError(f"{field}: {message}")


class ResourceRequirements(KubeloopModel):
    """Compute resources, as in a container's ``resources`` (cpu, memory, nvidia.com/gpu, …)."""

    requests: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN)], Quantity] = Field(
        default_factory=dict, max_length=32, description="Minimum resources the pod needs to be scheduled."
    )
    limits: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN)], Quantity] = Field(
        default_factory=dict, max_length=32, description="Maximum resources the pod may use."
    )


class Toleration(KubeloopModel):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value matched with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )

    cel_rules = (
        _cel(
            "self.operator != 'Exists' || !has(self.value)",
            "value must be empty when operator is Exists",
            ".value",
        ),
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Self:
        if self.operator == "Exists" and self.value is not None:
            raise _fail("value", "must be empty when operator is Exists")
        return self


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeloopModel):
    """A standard metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=CONDITION_REASON_PATTERN,
        max_length=1024,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


_CONDITIONS_EXTRA: Final[dict[str, Any]] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


# --- TrainingJob ----------------------------------------------------------------------------------


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class DatasetSpec(KubeloopModel):
    """Where the training table is and which column to predict."""

    uri: str = Field(
        pattern=DATASET_URI_PATTERN,
        max_length=2048,
        description="Table location: s3://bucket/key (MinIO or S3) or an absolute path inside the pod.",
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
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Node labels the training pods must run on."
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
    )

    @model_validator(mode="after")
    def _task_rules(self) -> Self:
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


class Failure(KubeloopModel):
    """Why a run failed."""

    reason: str = Field(
        description="Cause, e.g. ImagePullBackOff, Unschedulable, OOMKilled, DeadlineExceeded, "
        "BackoffLimitExceeded, or the trainer's own reason (MissingTargetColumn, …)."
    )
    message: str = Field(default="", description="Details.")
    exit_code: int | None = Field(default=None, description="Exit code of the failed container.")


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
    failure: Failure | None = Field(default=None, description="Why the run failed.")


# --- ModelDeployment ------------------------------------------------------------------------------


class ModelRef(KubeloopModel):
    """Which model to serve: {name + version}, {name + alias} or {uri}, exactly one."""

    name: ModelName | None = Field(default=None, description="Registered model name.")
    version: int | None = Field(default=None, ge=1, description="Registered version (pinned).")
    alias: Alias | None = Field(
        default=None,
        description="Registry alias (e.g. champion); resolved and pinned, re-rolled when it moves.",
    )
    uri: str | None = Field(
        default=None,
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
        description="s3:// URI or path of an ONNX file.",
    )

    cel_rules = (
        _cel(
            "has(self.uri) ? !has(self.name) && !has(self.version) && !has(self.alias) : "
            "has(self.name) && (has(self.version) != has(self.alias))",
            "exactly one model reference: name + version, name + alias, or uri",
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if self.uri is not None:
            ok = self.name is None and self.version is None and self.alias is None
        else:
            ok = self.name is not None and ((self.version is None) != (self.alias is None))
        if not ok:
            raise ValueError("exactly one model reference: name + version, name + alias, or uri")
        return self


class AutoscalingSpec(KubeloopModel):
    """Horizontal pod autoscaling (an HPA that drives the scale subresource)."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Lower bound of replicas.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Upper bound of replicas.")
    target_cpu_utilization: int = Field(
        default=70, ge=1, le=100, description="Target average CPU utilisation, percent of requests."
    )

    cel_rules = (
        _cel(
            "self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", ".minReplicas"
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise _fail("minReplicas", "must not exceed maxReplicas")
        return self


class BatchingSpec(KubeloopModel):
    """Adaptive batching in the server."""

    enabled: bool = Field(default=True, description="Merge concurrent requests into one model call.")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Most rows in one model call.")
    max_latency_ms: float = Field(default=2.0, gt=0.0, le=1000.0, description="Longest wait to fill a batch.")


class CanarySpec(KubeloopModel):
    """A second model that receives a share of the traffic."""

    model: ModelRef = Field(description="The canary model.")
    traffic_percent: int = Field(ge=0, le=100, description="Share of requests sent to the canary, 0..100.")


class PredictionLoggingSpec(KubeloopModel):
    """Sampled prediction logs for drift detection."""

    enabled: bool = Field(default=True, description="Write sampled inputs and outputs to object storage.")
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="Fraction of requests logged.")


class ModelDeploymentSpec(KubeloopModel):
    """Desired state of a ModelDeployment."""

    model: ModelRef = Field(description="Model to serve.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Server replicas (scale subresource).")
    autoscaling: AutoscalingSpec | None = Field(default=None, description="HPA settings; replaces replicas.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources per replica (nvidia.com/gpu for GPUs)."
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Adaptive batching.")
    canary: CanarySpec | None = Field(default=None, description="Canary model and its traffic share.")
    prediction_logging: PredictionLoggingSpec = Field(
        default_factory=PredictionLoggingSpec, description="Prediction logging for drift monitoring."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Node labels the server pods must run on."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Tolerations.")
    suspend: bool = Field(default=False, description="Scale to zero and stop reconciling rollouts.")


class CanaryStatus(KubeloopModel):
    """Observed canary state."""

    model_version: str | None = Field(default=None, description="Resolved canary version.")
    model_uri: str | None = Field(default=None, description="Resolved canary ONNX URI.")
    traffic_percent: int | None = Field(default=None, description="Share currently routed to the canary.")
    ready_replicas: int | None = Field(default=None, description="Ready canary replicas.")


class LastFailure(KubeloopModel):
    """The most recent failure seen on the deployment's pods."""

    reason: str = Field(description="e.g. ModelLoadFailed, CrashLoopBackOff, ModelNotFound.")
    message: str = Field(default="", description="Details.")
    time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, description="When.")


class ModelDeploymentStatus(KubeloopModel):
    """Observed state of a ModelDeployment."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    phase: Literal["Pending", "Progressing", "Ready", "Failed", "Suspended"] | None = Field(
        default=None, description="Pending, Progressing, Ready, Failed or Suspended."
    )
    replicas: int | None = Field(default=None, description="Current replicas (scale subresource).")
    ready_replicas: int | None = Field(default=None, description="Ready replicas.")
    selector: str | None = Field(default=None, description="Label selector of the pods (for the HPA).")
    url: str | None = Field(default=None, description="In-cluster URL of the model's Service.")
    model_version: str | None = Field(default=None, description="Resolved (pinned) model version.")
    model_uri: str | None = Field(default=None, description="Resolved ONNX URI.")
    canary: CanaryStatus | None = Field(default=None, description="Canary state.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=_CONDITIONS_EXTRA,
        description="ModelResolved, Available, Progressing, Ready.",
    )
    last_failure: LastFailure | None = Field(default=None, description="Most recent failure.")


# --- DriftMonitor ---------------------------------------------------------------------------------


class WindowSpec(KubeloopModel):
    """Which logged predictions a check looks at."""

    lookback: Duration = Field(
        default="24h", description="How far back to read prediction logs (Go duration)."
    )
    min_samples: int = Field(
        default=500, ge=1, le=100_000_000, description="Fewer samples give 'insufficient data'."
    )


class MetricThreshold(KubeloopModel):
    """A drift metric and the value from which a feature counts as drifted."""

    enabled: bool = Field(default=True, description="Whether the metric is computed and used.")
    threshold: float = Field(description="A feature drifts when the metric reaches this value.")


class PsiThreshold(MetricThreshold):
    """Population Stability Index."""

    threshold: float = Field(default=0.2, gt=0.0, le=100.0, description="PSI threshold (> 0).")


class JensenShannonThreshold(MetricThreshold):
    """Jensen-Shannon distance (base 2, in [0, 1])."""

    threshold: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Jensen-Shannon distance threshold (0, 1]."
    )


class DriftMetricsSpec(KubeloopModel):
    """Drift metrics and thresholds."""

    psi: PsiThreshold = Field(default_factory=PsiThreshold, description="PSI.")
    jensen_shannon: JensenShannonThreshold = Field(
        default_factory=JensenShannonThreshold, description="Jensen-Shannon distance."
    )

    cel_rules = (
        _cel(
            "!(has(self.psi) && has(self.psi.enabled) && !self.psi.enabled && has(self.jensenShannon) && "
            "has(self.jensenShannon.enabled) && !self.jensenShannon.enabled)",
            "at least one drift metric must be enabled",
        ),
    )

    @model_validator(mode="after")
    def _one_enabled(self) -> Self:
        if not (self.psi.enabled or self.jensen_shannon.enabled):
            raise ValueError("at least one drift metric must be enabled")
        return self


class TrainingJobRef(KubeloopModel):
    """An existing TrainingJob in the same namespace whose spec is reused."""

    name: DnsLabel = Field(description="TrainingJob name.")


class RetrainSpec(KubeloopModel):
    """Guarded retraining when drift is detected."""

    enabled: bool = Field(default=True, description="Create a TrainingJob when the dataset drifts.")
    template: TrainingJobSpec | None = Field(default=None, description="Spec of the TrainingJob to create.")
    training_job_ref: TrainingJobRef | None = Field(
        default=None, description="Copy the spec of this existing TrainingJob instead of a template."
    )
    cooldown: Duration = Field(default="6h", description="Least time between two retrains (Go duration).")
    max_per_day: int = Field(default=2, ge=1, le=100, description="Most retrains in 24 hours.")
    skip_while_running: bool = Field(default=True, description="Do not start a retrain while one is running.")
    consecutive_drifts: int = Field(
        default=1, ge=1, le=100, description="Drifted checks in a row needed before retraining."
    )

    cel_rules = (
        _cel(
            "has(self.template) != has(self.trainingJobRef)",
            "exactly one of template or trainingJobRef",
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.template is None) == (self.training_job_ref is None):
            raise ValueError("exactly one of template or trainingJobRef")
        return self


class DriftMonitorSpec(KubeloopModel):
    """Desired state of a DriftMonitor."""

    deployment: DnsLabel = Field(
        description="ModelDeployment (same namespace) whose predictions are checked."
    )
    schedule: Annotated[str, AfterValidator(_check_cron)] = Field(
        pattern=cron.PATTERN,
        max_length=128,
        description="Cron schedule of the check, e.g. '0 * * * *' or '@hourly'.",
    )
    window: WindowSpec = Field(default_factory=WindowSpec, description="Lookback and minimum sample count.")
    metrics: DriftMetricsSpec = Field(default_factory=DriftMetricsSpec, description="Metrics and thresholds.")
    drift_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Fraction of features that must drift for the dataset to drift.",
    )
    retrain: RetrainSpec | None = Field(default=None, description="Retraining on drift; none: only report.")
    suspend: bool = Field(default=False, description="Suspend the scheduled checks.")


class FeatureDrift(KubeloopModel):
    """One feature's drift scores."""

    name: str = Field(description="Feature name.")
    psi: float | None = Field(default=None, description="Population Stability Index.")
    jensen_shannon: float | None = Field(default=None, description="Jensen-Shannon distance (base 2).")
    drifted: bool = Field(default=False, description="Whether a metric reached its threshold.")


class DriftResult(KubeloopModel):
    """Result of one drift check."""

    drifted: bool = Field(description="Whether the dataset drifted.")
    share: float = Field(default=0.0, description="Fraction of features that drifted.")
    samples: int = Field(default=0, description="Logged predictions scored.")
    insufficient_data: bool = Field(default=False, description="Fewer samples than window.minSamples.")
    model_version: str | None = Field(default=None, description="Model version whose baseline was used.")
    features: list[FeatureDrift] = Field(
        default_factory=list, max_length=4096, description="Per-feature scores."
    )
    report_uri: str | None = Field(default=None, description="s3:// URI of the full report.")


class DriftHistoryEntry(KubeloopModel):
    """A past check, kept short."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="Check time.")
    drifted: bool = Field(description="Whether the dataset drifted.")
    share: float = Field(default=0.0, description="Fraction of features that drifted.")
    samples: int = Field(default=0, description="Samples scored.")


class LastRetrain(KubeloopModel):
    """The last retraining the monitor started."""

    training_job: str = Field(description="Name of the TrainingJob created.")
    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it was created.")


HISTORY_LIMIT: Final = 20


class DriftMonitorStatus(KubeloopModel):
    """Observed state of a DriftMonitor."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    phase: Literal["Pending", "Active", "Drifted", "Suspended", "Failed"] | None = Field(
        default=None, description="Pending, Active, Drifted, Suspended or Failed."
    )
    last_check_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Time of the last check."
    )
    last_result: DriftResult | None = Field(default=None, description="Result of the last check.")
    consecutive_drifts: int = Field(default=0, ge=0, description="Drifted checks in a row.")
    last_retrain: LastRetrain | None = Field(default=None, description="Last retraining started.")
    retrains: list[LastRetrain] = Field(
        default_factory=list, max_length=100, description="Retrains of the last 24 hours (for maxPerDay)."
    )
    history: list[DriftHistoryEntry] = Field(
        default_factory=list, max_length=HISTORY_LIMIT, description="The most recent checks, newest last."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=_CONDITIONS_EXTRA,
        description="Scheduled, Drifted, Retraining.",
    )


# --- the resources --------------------------------------------------------------------------------


class PrinterColumn(BaseModel):
    """An additionalPrinterColumns entry."""

    name: str
    type: Literal["integer", "number", "string", "boolean", "date"]
    json_path: str = Field(alias="jsonPath")
    description: str = ""
    priority: int = 0

    model_config = ConfigDict(populate_by_name=True)


class Resource(BaseModel):
    """A Kubeloop custom resource: metadata, spec and (optional) status."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    scale: ClassVar[bool] = False
    description: ClassVar[str]

    api_version: Literal["kubeloop.io/v1alpha1"] = Field(default="kubeloop.io/v1alpha1", alias="apiVersion")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: KubeloopModel
    status: KubeloopModel | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_envelope(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.kind} manifest must be a mapping")
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise _fail("kind", f"expected {cls.kind}, got {kind!r}")
        meta = data.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _fail("metadata", "must be a mapping")
        name = meta.get("name")
        if name is not None and (
            not isinstance(name, str) or len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name)
        ):
            raise _fail("metadata.name", f"{name!r} is not a valid lowercase DNS-1123 subdomain")
        return data

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Self:
        """Validate a plain manifest (as from YAML or the API server)."""
        return cls.model_validate(manifest)

    def to_manifest(self, *, include_defaults: bool = False) -> dict[str, Any]:
        """The plain manifest. Without ``include_defaults`` only what was set is written, so a
        manifest survives ``from_manifest`` → ``to_manifest`` unchanged."""
        body = self.model_dump(
            mode="json", by_alias=True, exclude_unset=not include_defaults, exclude_none=True
        )
        body["apiVersion"] = API_VERSION
        out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": self.kind}
        out.update({k: v for k, v in body.items() if k != "apiVersion"})
        return out

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = self.metadata.get("namespace")
        return str(ns) if ns is not None else None


def _cols(*cols: tuple[Any, ...]) -> tuple[PrinterColumn, ...]:
    keys = ("name", "type", "jsonPath", "description", "priority")
    return tuple(PrinterColumn.model_validate(dict(zip(keys, c, strict=False))) for c in cols)


_AGE = ("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


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


class ModelDeployment(Resource):
    """Serves a model with the ONNX Runtime server."""

    kind: ClassVar[str] = "ModelDeployment"
    plural: ClassVar[str] = "modeldeployments"
    singular: ClassVar[str] = "modeldeployment"
    short_names: ClassVar[tuple[str, ...]] = ("md",)
    scale: ClassVar[bool] = True
    description: ClassVar[str] = (
        "A ModelDeployment serves a registered model version, an alias or an ONNX file with the Kubeloop "
        "ONNX Runtime server (Open Inference Protocol v2 and /forward), optionally with a canary."
    )
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = _cols(
        ("Phase", "string", ".status.phase", "Pending, Progressing, Ready, Failed or Suspended."),
        ("Model", "string", ".spec.model.name", "Registered model name."),
        ("Version", "string", ".status.modelVersion", "Resolved model version."),
        ("Ready", "integer", ".status.readyReplicas", "Ready replicas."),
        ("Replicas", "integer", ".spec.replicas", "Desired replicas."),
        ("URL", "string", ".status.url", "In-cluster URL.", 1),
        _AGE,
    )

    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


class DriftMonitor(Resource):
    """Checks a deployment's logged predictions for drift on a schedule and retrains when needed."""

    kind: ClassVar[str] = "DriftMonitor"
    plural: ClassVar[str] = "driftmonitors"
    singular: ClassVar[str] = "driftmonitor"
    short_names: ClassVar[tuple[str, ...]] = ("dm",)
    description: ClassVar[str] = (
        "A DriftMonitor compares a ModelDeployment's logged predictions with the model's training "
        "baseline (PSI and Jensen-Shannon) on a schedule and can trigger guarded retraining."
    )
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = _cols(
        ("Deployment", "string", ".spec.deployment", "Monitored ModelDeployment."),
        ("Schedule", "string", ".spec.schedule", "Cron schedule."),
        ("Drifted", "boolean", ".status.lastResult.drifted", "Whether the last check found drift."),
        ("Share", "number", ".status.lastResult.share", "Share of drifted features in the last check."),
        ("Last Check", "date", ".status.lastCheckTime", "Time of the last check."),
        _AGE,
    )

    spec: DriftMonitorSpec
    status: DriftMonitorStatus | None = None


RESOURCES: Final[tuple[type[Resource], ...]] = (TrainingJob, ModelDeployment, DriftMonitor)
_BY_KIND: Final = {r.kind: r for r in RESOURCES}


def load_manifest(manifest: dict[str, Any]) -> Resource:
    """Validate any Kubeloop manifest, dispatching on ``kind``."""
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in _BY_KIND:
        raise ValueError(f"kind: expected one of {', '.join(_BY_KIND)}, got {kind!r}")
    return _BY_KIND[str(kind)].from_manifest(manifest)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with the dotted field path (camelCase, as in YAML)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not _SYNTHETIC_LOC.match(str(p)))
        msg = e["msg"].removeprefix("Value error, ")
        # Cross-field validators name their field first ("promotion.metric: ..."): fold it into the path.
        m = _FIELD_PREFIX.match(msg)
        if m:
            loc = ".".join(p for p in (loc, m["field"]) if p)
            msg = m["rest"]
        path = ".".join(p for p in (prefix, loc) if p)
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


_SYNTHETIC_LOC: Final = re.compile(r"^(function-(after|before|plain|wrap)\[.*\]|int|str|float|bool)$")
_FIELD_PREFIX: Final = re.compile(r"^(?P<field>[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*): (?P<rest>.+)$", re.S)


class ManifestError(ValueError):
    """A manifest failed validation; ``str()`` names every bad field by its path."""

    def __init__(self, err: ValidationError, prefix: str = "") -> None:
        self.errors = err.errors()
        super().__init__(format_validation_error(err, prefix))

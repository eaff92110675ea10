"""ModelDeployment: spec, status and the kind."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubeloop.resources._base import (
    _CONDITIONS_EXTRA,
    MODEL_URI_PATTERN,
    Alias,
    Condition,
    KubeloopModel,
    LabelKey,
    LabelValue,
    ModelName,
    ResourceRequirements,
    Toleration,
    _cel,
    _fail,
)
from kubeloop.resources.manifest import _AGE, PrinterColumn, Resource, _cols


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
    # 0 is Triton's dynamic-batcher default (no queue delay): a lone request runs at once, so batching costs
    # nothing at low traffic, and requests that arrive together under load still share one run.
    max_latency_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="Longest a request waits for others to join its batch. 0 merges only requests already "
        "waiting (those that arrive together) and adds no wait.",
    )


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
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Node labels the server pods must run on."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Tolerations.")
    suspend: bool = Field(default=False, description="Scale to zero and stop reconciling rollouts.")


class TrackStatus(KubeloopModel):
    """One track (the stable Deployment, or the canary's) as observed."""

    deployment: str | None = Field(default=None, description="Name of the track's Deployment.")
    model_version: str | None = Field(default=None, description="Version this track serves (pinned).")
    model_uri: str | None = Field(default=None, description="ONNX URI this track serves (pinned).")
    model_digest: str | None = Field(
        default=None,
        description="sha256:<hex> of the ONNX file this track serves, when the operator could read it.",
    )
    replicas: int | None = Field(default=None, description="Desired replicas of the track.")
    updated_replicas: int | None = Field(
        default=None, description="Replicas running the track's current pod template (its pinned version)."
    )
    ready_replicas: int | None = Field(default=None, description="Ready replicas of the track.")
    weight: int | None = Field(
        default=None,
        description="Percent of the Service's ready endpoints that belong to this track: the share of new "
        "connections it receives now.",
    )


class CanaryStatus(TrackStatus):
    """Observed canary state."""

    traffic_percent: int | None = Field(
        default=None,
        description="Share the replica split gives the canary once every replica is ready (the requested "
        "trafficPercent rounded to what the replica count allows).",
    )


class LastFailure(KubeloopModel):
    """The most recent failure seen on the deployment's pods or while resolving its model."""

    reason: str = Field(
        description="e.g. ModelLoadFailed, CrashLoopBackOff, ImagePullBackOff, ModelNotFound, AliasNotFound."
    )
    message: str = Field(
        default="", description="Details (the server's termination message, when it left one)."
    )
    time: str | None = Field(default=None, json_schema_extra={"format": "date-time"}, description="When.")
    track: Literal["stable", "canary"] | None = Field(default=None, description="Track of the failure.")
    pod: str | None = Field(default=None, description="Pod the failure was seen on.")


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
    url: str | None = Field(
        default=None, description="In-cluster URL of the model's Service for HTTP (OIP v2 REST, /forward)."
    )
    grpc_url: str | None = Field(
        default=None, description="In-cluster address of the model's Service for OIP v2 gRPC (host:port)."
    )
    model_name: str | None = Field(
        default=None, description="Name the model is served under (OIP /v2/models/{name})."
    )
    model_version: str | None = Field(default=None, description="Resolved (pinned) model version.")
    model_uri: str | None = Field(default=None, description="Resolved ONNX URI.")
    model_digest: str | None = Field(default=None, description="sha256:<hex> of the resolved ONNX file.")
    baseline_uri: str | None = Field(
        default=None,
        description="Drift baseline of the resolved version (registered models trained by Kubeloop).",
    )
    stable: TrackStatus | None = Field(default=None, description="Stable track state.")
    canary: CanaryStatus | None = Field(default=None, description="Canary state.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=_CONDITIONS_EXTRA,
        description="ModelResolved, Available, Progressing, Ready.",
    )
    last_failure: LastFailure | None = Field(default=None, description="Most recent failure.")


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

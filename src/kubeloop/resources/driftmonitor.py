"""DriftMonitor: spec, status and the kind."""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from kubeloop import cron
from kubeloop.contracts import DRIFT_JS_THRESHOLD, DRIFT_MIN_SAMPLES, DRIFT_PSI_THRESHOLD, DRIFT_SHARE
from kubeloop.resources._base import (
    _CONDITIONS_EXTRA,
    Condition,
    DnsLabel,
    Duration,
    KubeloopModel,
    _cel,
    _check_cron,
)
from kubeloop.resources.manifest import _AGE, PrinterColumn, Resource, _cols
from kubeloop.resources.trainingjob import TrainingJobSpec


class WindowSpec(KubeloopModel):
    """Which logged predictions a check looks at."""

    lookback: Duration = Field(
        default="24h", description="How far back to read prediction logs (Go duration)."
    )
    min_samples: int = Field(
        default=DRIFT_MIN_SAMPLES, ge=1, le=100_000_000, description="Fewer samples give 'insufficient data'."
    )


class MetricThreshold(KubeloopModel):
    """A drift metric and the value from which a feature counts as drifted."""

    enabled: bool = Field(default=True, description="Whether the metric is computed and used.")
    threshold: float = Field(description="A feature drifts when the metric reaches this value.")


class PsiThreshold(MetricThreshold):
    """Population Stability Index."""

    threshold: float = Field(
        default=DRIFT_PSI_THRESHOLD, gt=0.0, le=100.0, description="PSI threshold (> 0)."
    )


class JensenShannonThreshold(MetricThreshold):
    """Jensen-Shannon distance (base 2, in [0, 1])."""

    threshold: float = Field(
        default=DRIFT_JS_THRESHOLD, gt=0.0, le=1.0, description="Jensen-Shannon distance threshold (0, 1]."
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
        default=1,
        ge=1,
        le=100,
        description="Drifted checks in a row, of one model version and baseline, needed before retraining.",
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
        default=DRIFT_SHARE,
        gt=0.0,
        le=1.0,
        description="Fraction of features that must drift for the dataset to drift.",
    )
    retrain: RetrainSpec | None = Field(default=None, description="Retraining on drift; none: only report.")
    suspend: bool = Field(default=False, description="Suspend the scheduled checks.")


# The status keeps a summary of each check (bounded, for etcd); the drift engine's full result
# (kubeloop.drift.DriftResult: bucket counts, thresholds used) goes to the report at reportUri, and
# kubeloop.drift.DriftResult.summary() turns one into the other.


SUMMARY_FEATURE_LIMIT: Final = 4096


class FeatureDriftSummary(KubeloopModel):
    """One feature's drift scores."""

    name: str = Field(description="Feature name.")
    psi: float | None = Field(default=None, description="Population Stability Index.")
    jensen_shannon: float | None = Field(default=None, description="Jensen-Shannon distance (base 2).")
    drifted: bool = Field(default=False, description="Whether a metric reached its threshold.")


class DriftSummary(KubeloopModel):
    """Result of one drift check."""

    drifted: bool = Field(description="Whether the dataset drifted.")
    share: float = Field(default=0.0, description="Fraction of features that drifted.")
    samples: int = Field(default=0, description="Logged predictions scored.")
    insufficient_data: bool = Field(default=False, description="Fewer samples than window.minSamples.")
    model_version: str | None = Field(default=None, description="Model version whose baseline was used.")
    features: list[FeatureDriftSummary] = Field(
        default_factory=list, max_length=SUMMARY_FEATURE_LIMIT, description="Per-feature scores."
    )
    report_uri: str | None = Field(default=None, description="s3:// URI of the full report.")
    time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the check ran: the check's identity (a retrain it triggers is named after it).",
    )
    baseline_uri: str | None = Field(default=None, description="s3:// URI of the baseline scored against.")
    parts: int = Field(default=0, ge=0, description="Prediction-log parts scored.")
    skipped_parts: int = Field(
        default=0,
        ge=0,
        description="Prediction-log parts skipped as unreadable (corrupt Parquet, a feature missing or of "
        "the wrong type); the InputsValid condition names them.",
    )


class DriftHistoryEntry(KubeloopModel):
    """A past check, kept short."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="Check time.")
    drifted: bool = Field(description="Whether the dataset drifted.")
    share: float = Field(default=0.0, description="Fraction of features that drifted.")
    samples: int = Field(default=0, description="Samples scored.")
    reason: str | None = Field(
        default=None,
        max_length=128,
        description="Why the check gave no result (e.g. BaselineNotFound); empty when it scored.",
    )


class LastRetrain(KubeloopModel):
    """The last retraining the monitor started."""

    training_job: str = Field(description="Name of the TrainingJob created.")
    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it was created.")
    check_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="Time of the drifted check that triggered it.",
    )
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Deleted"] | None = Field(
        default=None,
        description="Pending (decided, TrainingJob not seen yet), Running, Succeeded, Failed or Deleted.",
    )
    model_version: int | None = Field(default=None, description="Version the retrain registered.")
    promoted: bool | None = Field(default=None, description="Whether the retrain moved the promotion alias.")


class RetrainDecision(KubeloopModel):
    """What the operator decided about the last drifted check (once per check, so a replay decides nothing)."""

    check_time: str = Field(json_schema_extra={"format": "date-time"}, description="The check decided on.")
    action: Literal["Retrain", "Skip"] = Field(description="Retrain, or Skip (the reason says why).")
    reason: str = Field(
        max_length=128,
        description="e.g. RetrainCreated, CooldownActive, MaxPerDayReached, RetrainRunning, RetrainDisabled.",
    )
    message: str = Field(default="", max_length=1024, description="Details.")


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
    last_result: DriftSummary | None = Field(default=None, description="Result of the last check.")
    consecutive_drifts: int = Field(
        default=0, ge=0, description="Drifted checks in a row of the model version and baseline last scored."
    )
    last_retrain: LastRetrain | None = Field(default=None, description="Last retraining started.")
    last_decision: RetrainDecision | None = Field(
        default=None, description="The retraining decision about the last drifted check."
    )
    retrains: list[LastRetrain] = Field(
        default_factory=list, max_length=100, description="Retrains of the last 24 hours (for maxPerDay)."
    )
    history: list[DriftHistoryEntry] = Field(
        default_factory=list, max_length=HISTORY_LIMIT, description="The most recent checks, newest last."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=_CONDITIONS_EXTRA,
        description="Scheduled, DeploymentFound, Checked, InputsValid, Drifted, Retraining.",
    )


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
        ("Retrain", "string", ".status.lastRetrain.trainingJob", "Last retraining TrainingJob."),
        _AGE,
    )

    spec: DriftMonitorSpec
    status: DriftMonitorStatus | None = None

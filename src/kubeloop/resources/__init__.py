"""Kubeloop's three resource types as pydantic v2 models: the single source of the CRDs.

The models serve two purposes. They are the typed Python SDK (``TrainingJob.from_manifest`` /
``to_manifest``), and :mod:`kubeloop.crdgen` turns them into the CRD schemas, including the
cross-field rules as CEL (``x-kubernetes-validations``). Every cross-field rule exists twice, once
as a pydantic validator and once as CEL next to it, so an invalid object is refused with the same
field path by the SDK and by the API server.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.

Layout: :mod:`._base` (group, patterns, scalar types, base model, conditions),
:mod:`.manifest` (the envelope and error formatting) and one module per kind. Import from this
package; the submodules are an implementation detail.
"""

from __future__ import annotations

from typing import Any, Final

from kubeloop.resources._base import (
    ALIAS_PATTERN,
    API_VERSION,
    CATEGORY,
    CONDITION_REASON_PATTERN,
    DATASET_URI_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    DURATION_PATTERN,
    GPU_RESOURCE,
    GROUP,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    MODEL_NAME_PATTERN,
    MODEL_URI_PATTERN,
    QUANTITY_PATTERN,
    RESOURCE_NAME_PATTERN,
    VERSION,
    Alias,
    Condition,
    ConditionStatus,
    DnsLabel,
    Duration,
    KubeloopModel,
    ModelName,
    Quantity,
    ResourceRequirements,
    Toleration,
    overcommit_allowed,
    parse_duration,
    parse_quantity,
)
from kubeloop.resources.driftmonitor import (
    HISTORY_LIMIT,
    SUMMARY_FEATURE_LIMIT,
    DriftHistoryEntry,
    DriftMetricsSpec,
    DriftMonitor,
    DriftMonitorSpec,
    DriftMonitorStatus,
    DriftSummary,
    FeatureDriftSummary,
    JensenShannonThreshold,
    LastRetrain,
    MetricThreshold,
    PsiThreshold,
    RetrainDecision,
    RetrainSpec,
    TrainingJobRef,
    WindowSpec,
)
from kubeloop.resources.manifest import (
    ManifestError,
    PrinterColumn,
    Resource,
    format_validation_error,
)
from kubeloop.resources.modeldeployment import (
    AutoscalingSpec,
    BatchingSpec,
    CanarySpec,
    CanaryStatus,
    LastFailure,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelRef,
    PredictionLoggingSpec,
)
from kubeloop.resources.trainingjob import (
    CLASSIFICATION_METRICS,
    LOG_TAIL_MAX_BYTES,
    LOWER_IS_BETTER,
    REGRESSION_METRICS,
    Backend,
    DatasetSpec,
    DeepSpeedSpec,
    DistributedSpec,
    EarlyStoppingSpec,
    Failure,
    MlflowSpec,
    ModelSpec,
    Phase,
    Progress,
    PromotionSpec,
    RegistrySpec,
    RunPolicy,
    Task,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
    TrainingSpec,
)

RESOURCES: Final[tuple[type[Resource], ...]] = (TrainingJob, ModelDeployment, DriftMonitor)
_BY_KIND: Final = {r.kind: r for r in RESOURCES}


def load_manifest(manifest: dict[str, Any]) -> Resource:
    """Validate any Kubeloop manifest, dispatching on ``kind``."""
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in _BY_KIND:
        raise ValueError(f"kind: expected one of {', '.join(_BY_KIND)}, got {kind!r}")
    return _BY_KIND[str(kind)].from_manifest(manifest)


__all__ = [
    "ALIAS_PATTERN",
    "API_VERSION",
    "CATEGORY",
    "CLASSIFICATION_METRICS",
    "CONDITION_REASON_PATTERN",
    "DATASET_URI_PATTERN",
    "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN",
    "DURATION_PATTERN",
    "GPU_RESOURCE",
    "GROUP",
    "HISTORY_LIMIT",
    "LABEL_KEY_PATTERN",
    "LABEL_VALUE_PATTERN",
    "LOG_TAIL_MAX_BYTES",
    "LOWER_IS_BETTER",
    "MODEL_NAME_PATTERN",
    "MODEL_URI_PATTERN",
    "QUANTITY_PATTERN",
    "REGRESSION_METRICS",
    "RESOURCES",
    "RESOURCE_NAME_PATTERN",
    "SUMMARY_FEATURE_LIMIT",
    "VERSION",
    "Alias",
    "AutoscalingSpec",
    "Backend",
    "BatchingSpec",
    "CanarySpec",
    "CanaryStatus",
    "Condition",
    "ConditionStatus",
    "DatasetSpec",
    "DeepSpeedSpec",
    "DistributedSpec",
    "DnsLabel",
    "DriftHistoryEntry",
    "DriftMetricsSpec",
    "DriftMonitor",
    "DriftMonitorSpec",
    "DriftMonitorStatus",
    "DriftSummary",
    "Duration",
    "EarlyStoppingSpec",
    "Failure",
    "FeatureDriftSummary",
    "JensenShannonThreshold",
    "KubeloopModel",
    "LastFailure",
    "LastRetrain",
    "ManifestError",
    "MetricThreshold",
    "MlflowSpec",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelName",
    "ModelRef",
    "ModelSpec",
    "Phase",
    "PredictionLoggingSpec",
    "PrinterColumn",
    "Progress",
    "PromotionSpec",
    "PsiThreshold",
    "Quantity",
    "RegistrySpec",
    "Resource",
    "ResourceRequirements",
    "RetrainDecision",
    "RetrainSpec",
    "RunPolicy",
    "Task",
    "Toleration",
    "TrainingJob",
    "TrainingJobRef",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "TrainingSpec",
    "WindowSpec",
    "format_validation_error",
    "load_manifest",
    "overcommit_allowed",
    "parse_duration",
    "parse_quantity",
]

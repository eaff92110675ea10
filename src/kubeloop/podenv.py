"""Pod environments of trainer and server pods: pure functions, spec + context -> environment.

The variable names are the contract in :mod:`kubeloop.contracts` (``TrainerEnv``, ``ServerEnv``,
``TorchrunEnv``); this module is the one place that fills them in. The operator turns the result
into a container's ``env`` (:func:`to_k8s_env`, credentials as ``secretKeyRef``); local tools such
as ``make demo`` run the same environment as a process (:func:`to_process_env`, literal values).

Order matters: Kubernetes expands ``$(VAR)`` only from variables defined earlier (and from Service
links), so the builders return insertion-ordered mappings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from kubeloop.contracts import (
    DEFAULT_BUCKET,
    JOB_COMPLETION_INDEX_ANNOTATION,
    RENDEZVOUS_PORT,
    CredentialsSecretKey,
    ServerEnv,
    TorchrunEnv,
    TrainerEnv,
)
from kubeloop.resources import ModelDeploymentSpec, TrainingJobSpec


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A value read from a Secret key in the pod's namespace (``valueFrom.secretKeyRef``)."""

    name: str
    key: str


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A value from the pod's own object (``valueFrom.fieldRef``), e.g. ``metadata.name``."""

    path: str


EnvValue = str | SecretRef | FieldRef
Env = dict[str, EnvValue]

POD_NAME: Final = FieldRef("metadata.name")
COMPLETION_INDEX: Final = FieldRef(f"metadata.annotations['{JOB_COMPLETION_INDEX_ANNOTATION}']")


@dataclass(frozen=True, slots=True)
class ObjectStoreAccess:
    """How a pod reaches the object store: endpoint, bucket and credentials (literal or a Secret)."""

    endpoint: str
    access_key: str | SecretRef
    secret_key: str | SecretRef
    bucket: str = DEFAULT_BUCKET
    secure: bool = False
    region: str = ""

    @classmethod
    def from_secret(
        cls,
        endpoint: str,
        secret: str,
        *,
        bucket: str = DEFAULT_BUCKET,
        secure: bool = False,
        region: str = "",
    ) -> ObjectStoreAccess:
        """Credentials from the Secret ``secret`` (keys in :class:`kubeloop.contracts.CredentialsSecretKey`)."""
        return cls(
            endpoint=endpoint,
            access_key=SecretRef(secret, CredentialsSecretKey.ACCESS_KEY),
            secret_key=SecretRef(secret, CredentialsSecretKey.SECRET_KEY),
            bucket=bucket,
            secure=secure,
            region=region,
        )


def _flag(value: bool) -> str:
    return "true" if value else "false"


# --- trainer ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainerContext:
    """What a trainer pod needs besides the spec: its TrainingJob's identity and the services."""

    namespace: str
    name: str
    uid: str
    store: ObjectStoreAccess
    mlflow_tracking_uri: str


def trainer_env(spec: TrainingJobSpec, ctx: TrainerContext) -> Env:
    """The trainer's environment (``kubeloop.contracts.TrainerEnv``): the spec as JSON with its
    defaults applied, the run identity, the object store and MLflow."""
    s = ctx.store
    env: Env = {
        TrainerEnv.SPEC: spec.model_dump_json(by_alias=True, exclude_none=True),
        TrainerEnv.NAMESPACE: ctx.namespace,
        TrainerEnv.NAME: ctx.name,
        TrainerEnv.UID: ctx.uid,
        TrainerEnv.BUCKET: s.bucket,
        TrainerEnv.S3_ENDPOINT: s.endpoint,
        TrainerEnv.S3_ACCESS_KEY: s.access_key,
        TrainerEnv.S3_SECRET_KEY: s.secret_key,
        TrainerEnv.S3_SECURE: _flag(s.secure),
    }
    if s.region:
        env[TrainerEnv.S3_REGION] = s.region
    if ctx.mlflow_tracking_uri:
        env[TrainerEnv.MLFLOW_TRACKING_URI] = ctx.mlflow_tracking_uri
    return env


@dataclass(frozen=True, slots=True)
class Torchrun:
    """torchrun's rendezvous: how many pods, processes per pod, which rank this pod is, where rank 0 is."""

    nnodes: int
    nproc_per_node: int
    master_addr: str
    node_rank: str | FieldRef = COMPLETION_INDEX
    master_port: int = RENDEZVOUS_PORT


def torchrun_env(t: Torchrun) -> Env:
    """``PET_*`` variables that ``python -m torch.distributed.run`` reads instead of arguments."""
    if t.nnodes < 1 or t.nproc_per_node < 1:
        raise ValueError(
            f"torchrun needs nnodes >= 1 and nproc_per_node >= 1, got {t.nnodes}, {t.nproc_per_node}"
        )
    return {
        TorchrunEnv.NNODES: str(t.nnodes),
        TorchrunEnv.NPROC_PER_NODE: str(t.nproc_per_node),
        TorchrunEnv.NODE_RANK: t.node_rank,
        TorchrunEnv.MASTER_ADDR: t.master_addr,
        TorchrunEnv.MASTER_PORT: str(t.master_port),
    }


# --- server -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedModel:
    """The resolved model a server pod loads (an alias is resolved before it gets here)."""

    uri: str
    name: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What a server pod needs besides the spec: the ModelDeployment's identity and the resolved model."""

    namespace: str
    deployment: str
    model: ServedModel
    store: ObjectStoreAccess | None
    port: int = 8080
    pod_name: str | FieldRef = POD_NAME
    grpc_port: int = 8081  # OIP v2 gRPC; 0 switches it off


def server_env(spec: ModelDeploymentSpec, ctx: ServerContext) -> Env:
    """The server's environment (``kubeloop.contracts.ServerEnv``): model, identity, ports, batching,
    prediction logging and object store. Prediction logging is only switched on with a store."""
    logging_on = bool(spec.prediction_logging.enabled and ctx.store is not None)
    env: Env = {
        ServerEnv.MODEL_URI: ctx.model.uri,
        ServerEnv.MODEL_NAME: ctx.model.name,
        ServerEnv.MODEL_VERSION: ctx.model.version,
        ServerEnv.NAMESPACE: ctx.namespace,
        ServerEnv.DEPLOYMENT: ctx.deployment,
        ServerEnv.POD_NAME: ctx.pod_name,
        ServerEnv.PORT: str(ctx.port),
        ServerEnv.GRPC_PORT: str(ctx.grpc_port),
        ServerEnv.BATCHING_ENABLED: _flag(spec.batching.enabled),
        ServerEnv.MAX_BATCH_SIZE: str(spec.batching.max_batch_size),
        ServerEnv.MAX_LATENCY_MS: repr(float(spec.batching.max_latency_ms)),
        ServerEnv.PREDICTION_LOGGING_ENABLED: _flag(logging_on),
        ServerEnv.PREDICTION_LOGGING_SAMPLE_RATE: repr(float(spec.prediction_logging.sample_rate)),
    }
    if ctx.store is not None:
        s = ctx.store
        env.update(
            {
                ServerEnv.BUCKET: s.bucket,
                ServerEnv.S3_ENDPOINT: s.endpoint,
                ServerEnv.S3_ACCESS_KEY: s.access_key,
                ServerEnv.S3_SECRET_KEY: s.secret_key,
                ServerEnv.S3_SECURE: _flag(s.secure),
            }
        )
        if s.region:
            env[ServerEnv.S3_REGION] = s.region
    return env


# --- rendering ---------------------------------------------------------------------------------------


def to_k8s_env(env: Env) -> list[dict[str, Any]]:
    """A container's ``env`` list (core/v1 EnvVar dicts), in order."""
    out: list[dict[str, Any]] = []
    for name, value in env.items():
        if isinstance(value, SecretRef):
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": value.name, "key": value.key}}})
        elif isinstance(value, FieldRef):
            out.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": value.path}}})
        else:
            out.append({"name": name, "value": value})
    return out


def to_process_env(env: Env) -> dict[str, str]:
    """The environment of a local process; every value must be literal (no Secret or field refs)."""
    out: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(value, str):
            raise ValueError(f"{name}: a local process needs a literal value, not {value!r}")
        out[name] = value
    return out


__all__ = [
    "COMPLETION_INDEX",
    "POD_NAME",
    "Env",
    "EnvValue",
    "FieldRef",
    "ObjectStoreAccess",
    "SecretRef",
    "ServedModel",
    "ServerContext",
    "Torchrun",
    "TrainerContext",
    "server_env",
    "to_k8s_env",
    "to_process_env",
    "torchrun_env",
    "trainer_env",
]

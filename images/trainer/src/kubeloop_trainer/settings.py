"""Trainer configuration: environment variables (prefix ``KUBELOOP_TRAINER_``) and arguments only.

The operator sets these on the trainer pod (names in :class:`kubeloop.contracts.TrainerEnv`);
``MLFLOW_TRACKING_URI`` is MLflow's own variable and is read by its client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeloop.contracts import DEFAULT_BUCKET
from kubeloop.resources import TrainingJobSpec, format_validation_error
from kubeloop_trainer.errors import ConfigError


class TrainerSettings(BaseSettings):
    """Everything the trainer needs to know besides the data itself."""

    model_config = SettingsConfigDict(env_prefix="KUBELOOP_TRAINER_", extra="ignore")

    spec: str = Field(description="The TrainingJob spec as JSON (camelCase, defaults applied or not).")
    namespace: str = Field(default="default", description="Namespace of the TrainingJob.")
    name: str = Field(default="trainingjob", description="Name of the TrainingJob.")
    uid: str = Field(
        default="", description="UID of the TrainingJob; a checkpoint is resumed only by the same UID."
    )
    bucket: str = Field(default=DEFAULT_BUCKET, description="Bucket for models, baselines and checkpoints.")
    s3_endpoint: str | None = Field(
        default=None, description="MinIO/S3 endpoint, host:port or http(s)://host:port."
    )
    s3_access_key: str | None = Field(default=None, description="Access key (from a Secret).")
    s3_secret_key: str | None = Field(default=None, description="Secret key (from a Secret).")
    s3_secure: bool = Field(default=False, description="Use TLS for a host:port endpoint.")
    s3_region: str | None = Field(default=None, description="Region of the bucket (S3); None for MinIO.")
    local_store: Path | None = Field(
        default=None,
        description="Without an S3 endpoint: a directory standing in for the object store "
        "(<dir>/<bucket>/<key>); for development and tests.",
    )
    termination_log: Path = Field(
        default=Path("/dev/termination-log"),
        description="Where the final summary or failure goes (Kubernetes termination message).",
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads per process; default: CPUs / local processes."
    )
    checkpoint: bool = Field(default=True, description="Checkpoint to object storage after every epoch.")
    onnx_tolerance: float = Field(
        default=1e-4, gt=0, description="Largest allowed |onnxruntime - torch| on the validation rows."
    )
    work_dir: Path | None = Field(
        default=None, description="Scratch directory; default: the system temp dir."
    )
    deepspeed_shm: bool = Field(
        default=False,
        description="On the CPU accelerator, let DeepSpeed build its shared-memory collective op "
        "(a long C++ build at first use); gloo is used otherwise.",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="On one CUDA GPU with DeepSpeed ZeRO stage 1, replay each full batch's training step from "
        "one captured CUDA graph (kubeloop_trainer.graphs); false runs every step eagerly.",
    )
    crash_after_epoch: int | None = Field(
        default=None, ge=1, description="Test hook: SIGKILL this process after that epoch's checkpoint."
    )
    max_classes: int = Field(default=1000, ge=2, description="Most classes a classification target may have.")
    max_categories: int = Field(
        default=10000,
        ge=2,
        description="Most distinct values a categorical feature may have (each is a one-hot input: "
        "the model matrix is rows x categories float32).",
    )
    min_rows: int = Field(default=10, ge=2, description="Fewest rows a dataset may have.")

    def training_spec(self) -> TrainingJobSpec:
        """Parse and validate ``spec``; raises ConfigError naming the field."""
        try:
            raw = json.loads(self.spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"KUBELOOP_TRAINER_SPEC is not valid JSON: {e}") from e
        try:
            return TrainingJobSpec.model_validate(raw)
        except ValidationError as e:
            # the core's form: the field's path first, cross-field rules included (promotion.metric: ...)
            first = format_validation_error(e).splitlines()[0]
            raise ConfigError(f"invalid TrainingJob spec: {first}") from e

    def scratch_dir(self) -> Path:
        import tempfile

        base = self.work_dir or Path(tempfile.gettempdir())
        d = base / f"kubeloop-trainer-{self.namespace}-{self.name}-{self.uid or 'nouid'}"
        d.mkdir(parents=True, exist_ok=True)
        return d


def load_settings(overrides: dict[str, str] | None = None) -> TrainerSettings:
    """Settings from the environment, with command-line overrides; raises ConfigError."""
    try:
        if overrides:
            # Strings from the command line, validated and converted like the environment's.
            raw: dict[str, Any] = dict(overrides)
            return TrainerSettings(**raw)
        return TrainerSettings()
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        var = f"KUBELOOP_TRAINER_{loc.upper()}" if loc else "settings"
        if first["type"] == "missing":
            raise ConfigError(f"{var} is required") from e
        raise ConfigError(f"{var}: {first['msg']}") from e

"""The trainer's error hierarchy: each class names a reason and carries the process exit code.

Exit codes are stable (the operator and users match on them); data problems use 10-29, everything
else lives above. A plain ``Exception`` escaping the trainer is a bug and exits with 1.
"""

from __future__ import annotations

from typing import ClassVar

from kubeloop.contracts import TrainingFailure


class TrainerError(Exception):
    """Base class: a failure the trainer understands; ``str(e)`` is one line naming the problem."""

    exit_code: ClassVar[int] = 1
    reason: ClassVar[str] = "TrainerError"
    # Whether running the same spec on the same data again may succeed; the operator never retries the
    # others (kubeloop.contracts.TRAINER_NO_RETRY_EXIT_CODES lists their exit codes).
    retryable: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line

    @property
    def message(self) -> str:
        return str(self.args[0])

    def failure(self) -> TrainingFailure:
        return TrainingFailure(reason=self.reason, message=self.message, exit_code=self.exit_code)


class ConfigError(TrainerError):
    """The spec or the settings are invalid."""

    exit_code = 2
    reason = "InvalidConfiguration"
    retryable = False


# --- data problems (10-29) -------------------------------------------------------------------------


class DataError(TrainerError):
    """The dataset cannot be trained on."""

    retryable = False

    exit_code = 10
    reason = "InvalidDataset"


class DatasetNotFoundError(DataError):
    exit_code = 11
    reason = "DatasetNotFound"


class UnreadableDatasetError(DataError):
    exit_code = 12
    reason = "UnreadableDataset"


class EmptyDatasetError(DataError):
    exit_code = 13
    reason = "EmptyDataset"


class MissingTargetColumnError(DataError):
    exit_code = 14
    reason = "MissingTargetColumn"


class UnknownFeatureError(DataError):
    exit_code = 15
    reason = "UnknownFeature"


class TooFewRowsError(DataError):
    exit_code = 16
    reason = "TooFewRows"


class AllMissingColumnError(DataError):
    exit_code = 17
    reason = "AllMissingColumn"


class NonNumericValuesError(DataError):
    exit_code = 18
    reason = "NonNumericValues"


class NonFiniteValuesError(DataError):
    exit_code = 19
    reason = "NonFiniteValues"


class MissingTargetValuesError(DataError):
    exit_code = 20
    reason = "MissingTargetValues"


class SingleClassError(DataError):
    exit_code = 21
    reason = "SingleClass"


class TooManyClassesError(DataError):
    exit_code = 22
    reason = "TooManyClasses"


class ConstantTargetError(DataError):
    exit_code = 23
    reason = "ConstantTarget"


class DuplicateColumnsError(DataError):
    exit_code = 24
    reason = "DuplicateColumns"


class TemporalColumnError(DataError):
    """A timestamp, date or duration column as a feature or a regression target."""

    exit_code = 25
    reason = "TemporalColumn"


class TooManyCategoriesError(DataError):
    """A categorical feature with more distinct values than a one-hot block may have (an identifier)."""

    exit_code = 26
    reason = "TooManyCategories"


# --- everything else (30+) -------------------------------------------------------------------------


class StorageError(TrainerError):
    """Object storage (MinIO/S3) could not be read or written."""

    exit_code = 30
    reason = "StorageError"


class TrackingError(TrainerError):
    """MLflow tracking or the model registry failed."""

    exit_code = 31
    reason = "TrackingError"


class ExportError(TrainerError):
    """The ONNX export failed or does not reproduce the torch model."""

    exit_code = 32
    reason = "ExportError"
    # Export, check and comparison are computation on the trained model alone (uploads fail as
    # StorageError or TrackingError), and a retry trains the same model from the same spec, seed and
    # data or checkpoint: it fails the same way.
    retryable = False


class DistributedError(TrainerError):
    """The distributed environment (torchrun, DeepSpeed) is unusable."""

    exit_code = 33
    reason = "DistributedError"


class TrainingDivergedError(TrainerError):
    """The loss became NaN or infinite."""

    exit_code = 34
    reason = "TrainingDiverged"
    retryable = False  # the same seed and settings diverge again


class CudaGraphError(TrainerError):
    """The training step raised while being captured as a CUDA graph (kubeloop_trainer.graphs)."""

    exit_code = 35
    reason = "CudaGraphCaptureFailed"


ALL_ERRORS: tuple[type[TrainerError], ...] = (
    TrainerError,
    ConfigError,
    DataError,
    DatasetNotFoundError,
    UnreadableDatasetError,
    EmptyDatasetError,
    MissingTargetColumnError,
    UnknownFeatureError,
    TooFewRowsError,
    AllMissingColumnError,
    NonNumericValuesError,
    NonFiniteValuesError,
    MissingTargetValuesError,
    SingleClassError,
    TooManyClassesError,
    ConstantTargetError,
    DuplicateColumnsError,
    TemporalColumnError,
    TooManyCategoriesError,
    StorageError,
    TrackingError,
    ExportError,
    DistributedError,
    TrainingDivergedError,
    CudaGraphError,
)

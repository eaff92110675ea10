"""Final metrics agree with scikit-learn; metrics that cannot be computed; promotion decisions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubeloop_trainer.app import final_metrics
from kubeloop_trainer.data import prepare
from kubeloop_trainer.metrics import better, classification_metrics, clears, regression_metrics
from kubeloop_trainer.model import InferenceHead, build_model
from kubeloop_trainer.tracking import Tracker
from sklearn import metrics as skm

from kubeloop.contracts import TrainingSummary
from kubeloop.resources import DatasetSpec


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_match_sklearn(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 200)
    logits = rng.normal(size=(200, n_classes)) + np.eye(n_classes)[y] * 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba[:5] = np.round(proba[:5], 1)  # ties
    proba /= proba.sum(axis=1, keepdims=True)
    got = classification_metrics(y, proba)
    pred = proba.argmax(axis=1)
    avg = "binary" if n_classes == 2 else "macro"
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average=avg, zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average=avg))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average=avg))
    want_auc = (
        skm.roc_auc_score(y, proba[:, 1])
        if n_classes == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    assert got["roc_auc"] == pytest.approx(want_auc)


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    p = y + rng.normal(scale=0.3, size=100)
    got = regression_metrics(y, p)
    assert got["r2"] == pytest.approx(skm.r2_score(y, p))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, p))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, p))


def test_direction_of_metrics() -> None:
    assert better("accuracy", 0.9, 0.8)
    assert not better("accuracy", 0.8, 0.9)
    assert better("mse", 1.0, 2.0)
    assert not better("mae", 2.0, 1.0)
    assert clears("f1", 0.9, 0.9)
    assert not clears("r2", 0.5, 0.6)
    assert clears("mse", 10.0, 12.0)
    assert not clears("mse", 13.0, 12.0)


def test_metrics_of_a_one_class_validation_split_fit_the_summary() -> None:
    # a class with one row stays in the training split, so ROC-AUC has no negatives to rank: the
    # summary (JSON, which has no NaN) must still carry the run's result, for the operator and for
    # a restarted pod that re-reports it
    df = pd.DataFrame({"a": np.arange(40.0), "y": ["no"] * 39 + ["yes"]})
    ds = prepare(df, DatasetSpec(uri="/d.csv", target="y"), "classification", 1)
    assert set(ds.y_val.tolist()) == {0}
    head = InferenceHead(build_model(ds, [4], 0.0).eval(), ds.task)
    metrics = final_metrics(head, ds)
    assert "accuracy" in metrics
    summary = TrainingSummary(
        metrics=metrics, mlflow_run_id="r", model_uri="s3://b/m", baseline_uri="s3://b/b"
    )
    assert TrainingSummary.model_validate_json(summary.model_dump_json(by_alias=True)) == summary


class _Run:
    def __init__(self, metrics: dict[str, float]) -> None:
        self.data = SimpleNamespace(metrics=metrics)


class _Registry:
    """The few MlflowClient calls Tracker.promote makes, with one alias holder (or none)."""

    def __init__(self, holder_metrics: dict[str, float] | None) -> None:
        self.holder_metrics = holder_metrics
        self.aliases: dict[str, str] = {}

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        if self.holder_metrics is None:
            raise LookupError(alias)
        return SimpleNamespace(run_id="old-run", version="1")

    def get_run(self, run_id: str) -> _Run:
        return _Run(self.holder_metrics or {})

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


def _tracker(holder_metrics: dict[str, float] | None) -> tuple[Tracker, _Registry]:
    tracker = Tracker.__new__(Tracker)
    registry = _Registry(holder_metrics)
    tracker.client = registry  # type: ignore[assignment]
    tracker.run_id = "new-run"
    return tracker, registry


def test_a_metric_that_could_not_be_computed_does_not_promote() -> None:
    tracker, registry = _tracker(None)
    promoted, why = tracker.promote("m", 2, "champion", "roc_auc", float("nan"), None, True)
    assert not promoted
    assert "roc_auc" in why
    assert registry.aliases == {}


def test_a_holder_without_the_metric_value_is_beaten() -> None:
    # a holder whose roc_auc is NaN (no value) must not keep the alias against every later version
    tracker, registry = _tracker({"roc_auc": float("nan")})
    promoted, _ = tracker.promote("m", 2, "champion", "roc_auc", 0.9, None, True)
    assert promoted
    assert registry.aliases == {"champion": "2"}


def test_a_holder_whose_run_is_gone_is_beaten() -> None:
    # The alias holder's run was deleted from MLflow (`mlflow gc`): reading it failed the job with
    # TrackingError (31, retried) after the new version was registered and uploaded, and every retry
    # registered one more version.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    tracker, registry = _tracker({"accuracy": 0.99})

    def gone(run_id: str) -> _Run:
        raise MlflowException(f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST)

    registry.get_run = gone  # type: ignore[method-assign]
    promoted, why = tracker.promote("m", 2, "champion", "accuracy", 0.9, None, True)
    assert promoted, why
    assert registry.aliases == {"champion": "2"}


def test_a_deleted_experiment_is_a_configuration_error() -> None:
    # Deleted in MLflow's UI, an experiment keeps its name (until `mlflow gc`) and takes no runs: every
    # TrainingJob of the namespace failed with TrackingError (31, retried), "experiment 1 must be in
    # the 'active' state", naming neither the experiment nor the way out.
    from kubeloop_trainer.errors import ConfigError
    from mlflow.exceptions import MlflowException

    class _Client:
        def get_experiment_by_name(self, name: str) -> Any:
            return SimpleNamespace(experiment_id="1", name=name, lifecycle_stage="deleted")

        def create_run(self, *args: Any, **kwargs: Any) -> Any:
            raise MlflowException("The experiment 1 must be in the 'active' state. Current state is deleted.")

    tracker = Tracker.__new__(Tracker)
    tracker.client = _Client()  # type: ignore[assignment]
    tracker.run_id = ""
    with pytest.raises(ConfigError, match="MLflow experiment 'team-a' is deleted") as e:
        tracker.start("team-a", "job", {}, {})
    assert "spec.mlflow.experiment" in e.value.message
    assert e.value.exit_code == 2

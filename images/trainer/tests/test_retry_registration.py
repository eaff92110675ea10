"""A retried trainer pod registers no second model version (MLflow on SQLite, a directory as the store).

The Job's pod is retried after a failure; an attempt that registered version N and then failed (moving
the alias, marking the run finished) must not leave version N+1 behind it: the retry reuses N and
finishes what failed. A half-registered version is not reused. Another TrainingJob (another UID) and
another spec of the same TrainingJob train a genuinely new model and register a new version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kubeloop_trainer.checkpoint import Checkpointer
from kubeloop_trainer.errors import TrackingError
from kubeloop_trainer.tracking import Tracker

from kubeloop.storage import StorageError

MODEL = "retry-model"
ALIAS = "champion"


@pytest.fixture
def setup(
    breast_cancer: pd.DataFrame,
    local_env: dict[str, str],
    tmp_path: Path,
    make_spec: Callable[..., dict[str, Any]],
) -> tuple[dict[str, str], dict[str, Any]]:
    data = tmp_path / "bc.csv"
    breast_cancer.iloc[:200].to_csv(data, index=False)
    spec = make_spec(
        str(data),
        "target",
        "classification",
        training={"epochs": 2, "batchSize": 64, "learningRate": 0.01, "seed": 3},
        registry={"modelName": MODEL},
        promotion={"metric": "accuracy", "alias": ALIAS, "requireImprovement": True},
    )
    return {**local_env, "KUBELOOP_TRAINER_SPEC": json.dumps(spec)}, spec


def _client() -> Any:
    return Tracker().client


def _versions() -> list[str]:
    return sorted(str(mv.version) for mv in _client().search_model_versions(f"name='{MODEL}'"))


def test_retries_reuse_the_version_and_finish_what_failed(
    setup: tuple[dict[str, str], dict[str, Any]],
    run_main: Callable[[dict[str, str]], Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env, spec = setup

    def fail_promotion(*_: Any, **__: Any) -> Any:
        raise TrackingError("MLflow: cannot set the alias: 503 Service Unavailable")

    def fail_finish(*_: Any, **__: Any) -> None:
        raise StorageError("cannot write summary.json: connection reset")

    # attempt 1 registers version 1, then cannot move the alias
    with monkeypatch.context() as m:
        m.setattr(Tracker, "promote", fail_promotion)
        first = run_main(env)
    assert first.rc == 31, first.stderr[-2000:]
    assert _versions() == ["1"]

    # attempt 2 reuses it and moves the alias, then cannot mark the run finished
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "mark_finished", fail_finish)
        second = run_main(env)
    assert second.rc == 30, second.stderr[-2000:]
    assert _versions() == ["1"]
    assert str(_client().get_model_version_by_alias(MODEL, ALIAS).version) == "1"

    # attempt 3 succeeds with the same version; the alias already holds it, which with
    # requireImprovement is still "promoted" (it does not have to beat itself)
    retry = run_main(env)
    assert retry.rc == 0, retry.stderr[-2000:]
    summary = retry.termination
    assert summary["modelVersion"] == 1
    assert summary["promoted"] is True
    assert _versions() == ["1"]
    mv = _client().get_model_version(MODEL, "1")
    assert summary["modelUri"] == mv.tags["kubeloop.io/model-uri"]
    assert summary["baselineUri"] == mv.tags["kubeloop.io/baseline-uri"]
    assert summary["mlflowRunId"] == mv.run_id
    assert summary["metrics"]["accuracy"] == _client().get_run(mv.run_id).data.metrics["accuracy"]

    # a re-created TrainingJob of the same name (new UID) trains and registers anew
    other = run_main({**env, "KUBELOOP_TRAINER_UID": "uid-2"})
    assert other.termination["modelVersion"] == 2

    # the same UID with another spec (a new generation) is a new training too; the finished marker
    # of the first spec is removed, as a re-run of the Job would find none
    changed = {**spec, "training": {**spec["training"], "seed": 4}}
    for p in (tmp_path / "store").rglob("summary.json"):
        p.unlink()
    third = run_main({**env, "KUBELOOP_TRAINER_SPEC": json.dumps(changed)})
    assert third.rc == 0, third.stderr[-2000:]
    assert third.termination["modelVersion"] == 3
    assert _versions() == ["1", "2", "3"]


def test_a_half_registered_version_is_not_reused(
    setup: tuple[dict[str, str], dict[str, Any]],
    run_main: Callable[[dict[str, str]], Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env, _ = setup

    def fail(*_: Any, **__: Any) -> None:
        raise TrackingError("MLflow: cannot tag the model version: 503")

    with monkeypatch.context() as m:
        # killed between registering and tagging: the version exists without its URIs
        m.setattr(Tracker, "tag_version", fail)
        m.setattr(Tracker, "delete_version", lambda *_: None)
        first = run_main(env)
    assert first.rc == 31, first.stderr[-2000:]
    assert _versions() == ["1"]
    assert "kubeloop.io/model-uri" not in _client().get_model_version(MODEL, "1").tags

    retry = run_main(env)
    assert retry.rc == 0, retry.stderr[-2000:]
    assert retry.termination["modelVersion"] == 2
    # the incomplete leftover of the failed attempt is gone; the retry's version is complete
    assert _versions() == ["2"]
    assert "kubeloop.io/model-uri" in _client().get_model_version(MODEL, "2").tags

    # a tagged version whose ONNX is gone from the store is neither reused nor removed (it may hold
    # an alias); a training that finds it registers a complete version of its own
    for p in (tmp_path / "store").rglob("summary.json"):
        p.unlink()
    for p in (tmp_path / "store").rglob("models/retry-model/2/model.onnx"):
        p.unlink()
    third = run_main(env)
    assert third.rc == 0, third.stderr[-2000:]
    assert third.termination["modelVersion"] == 3
    assert _versions() == ["2", "3"]

"""The command line: configuration errors, the termination message, exit codes (no services)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kubeloop_trainer.__main__ import main, write_termination


def test_termination_message_is_skipped_when_unwritable(tmp_path: Path) -> None:
    write_termination("x", str(tmp_path / "no" / "such" / "dir" / "file"))  # no exception
    target = tmp_path / "term"
    write_termination("y" * 10_000, str(target))
    assert len(target.read_text()) == 4096  # the kubelet's limit


def test_missing_spec_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBELOOP_TRAINER_SPEC", raising=False)
    term = tmp_path / "term"
    assert main(["--termination-log", str(term)]) == 2
    assert json.loads(term.read_text()) == {
        "reason": "InvalidConfiguration",
        "message": "KUBELOOP_TRAINER_SPEC is required",
        "exitCode": 2,
    }
    assert (
        "kubeloop-trainer: InvalidConfiguration: KUBELOOP_TRAINER_SPEC is required" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            json.dumps({"dataset": {"uri": "/d.csv", "target": "y"}, "task": "clustering"}),
            "invalid TrainingJob spec: task: ",
        ),
        (
            json.dumps(
                {"dataset": {"uri": "/d.csv", "target": "y"}, "task": "regression", "training": {"epochs": 0}}
            ),
            "invalid TrainingJob spec: training.epochs: ",
        ),
        # a cross-field rule names its field: it read "at spec: Value error, promotion.metric: ..."
        (
            json.dumps(
                {
                    "dataset": {"uri": "/d.csv", "target": "y"},
                    "task": "regression",
                    "promotion": {"metric": "accuracy"},
                }
            ),
            "invalid TrainingJob spec: promotion.metric: 'accuracy' is not a regression metric",
        ),
        (
            json.dumps(
                {"dataset": {"uri": "/d.csv", "target": "y", "features": ["a", "a"]}, "task": "regression"}
            ),
            "invalid TrainingJob spec: dataset.features: must not contain duplicates",
        ),
    ],
)
def test_invalid_spec_names_the_field(
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    term = tmp_path / "term"
    monkeypatch.setenv("KUBELOOP_TRAINER_TERMINATION_LOG", str(term))
    assert main(["--spec", spec]) == 2
    assert message in json.loads(term.read_text())["message"]


def test_a_spec_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_bytes(b'{"task": "\xff"}')
    term = tmp_path / "term"
    assert main(["--spec", f"@{spec}", "--termination-log", str(term)]) == 2
    doc = json.loads(term.read_text())
    assert doc["reason"] == "InvalidConfiguration"
    assert "not UTF-8 text" in doc["message"], doc
    assert "byte 10" in doc["message"], doc


def test_no_object_store_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec: Callable[..., dict[str, Any]]
) -> None:
    for var in ("KUBELOOP_TRAINER_S3_ENDPOINT", "KUBELOOP_TRAINER_LOCAL_STORE"):
        monkeypatch.delenv(var, raising=False)
    term = tmp_path / "term"
    spec = json.dumps(make_spec("/d.csv", "y", "classification"))
    assert main(["--spec", spec, "--termination-log", str(term)]) == 2
    assert "no object store configured" in json.loads(term.read_text())["message"]


def test_local_dataset_that_does_not_exist(
    local_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_spec: Callable[..., dict[str, Any]],
) -> None:
    for k, v in local_env.items():
        monkeypatch.setenv(k, v)
    term = tmp_path / "term"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(str(tmp_path / "missing.csv"), "y", "classification")))
    assert main(["--spec", f"@{spec_file}", "--termination-log", str(term)]) == 11
    assert json.loads(term.read_text())["reason"] == "DatasetNotFound"


def test_a_ragged_csv_exits_as_an_unreadable_dataset(
    local_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_spec: Callable[..., dict[str, Any]],
) -> None:
    # every row one field longer than the header: pandas alone would train on x moved into the index
    for k, v in local_env.items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2},\n" for i in range(40)))
    term = tmp_path / "term"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(str(data), "y", "classification")))
    assert main(["--spec", f"@{spec_file}", "--termination-log", str(term)]) == 12
    failure = json.loads(term.read_text())
    assert failure["reason"] == "UnreadableDataset"
    assert "line 2 (data row 1) has 3 fields but the header has 2" in failure["message"]


@pytest.mark.slow
def test_local_end_to_end_in_process(
    breast_cancer: pd.DataFrame,
    local_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    make_spec: Callable[..., dict[str, Any]],
) -> None:
    """Without MinIO: a directory as the object store and MLflow on SQLite."""
    data = tmp_path / "bc.parquet"
    # a timestamp column, left out of the features picked by default (and reported)
    breast_cancer.assign(
        measured_at=pd.date_range("2024-01-01", periods=len(breast_cancer), freq="min")
    ).to_parquet(data)
    for k, v in local_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KUBELOOP_TRAINER_THREADS", "1")
    term = tmp_path / "term"
    spec = make_spec(
        str(data),
        "target",
        "classification",
        registry={"modelName": "bc-local"},
        promotion={"metric": "accuracy", "threshold": 0.9, "alias": "champion"},
    )
    assert main(["--spec", json.dumps(spec), "--termination-log", str(term)]) == 0, capsys.readouterr().err[
        -2000:
    ]
    summary = json.loads(term.read_text())
    assert summary["modelVersion"] == 1
    assert summary["promoted"] is True
    store = Path(local_env["KUBELOOP_TRAINER_LOCAL_STORE"])
    assert (store / "kubeloop/models/bc-local/1/model.onnx").is_file()
    assert (store / "kubeloop/models/bc-local/1/baseline.json").is_file()
    out = capsys.readouterr().out
    assert '"event":"promotion","promoted":true' in out
    assert '{"event":"ignored_columns","columns":{"measured_at":"timestamps"},"why":"temporal"}' in out

    # the same training again (a new TrainingJob uid): version 2, equal accuracy does not beat the holder
    monkeypatch.setenv("KUBELOOP_TRAINER_UID", "uid-2")
    assert main(["--spec", json.dumps(spec), "--termination-log", str(term)]) == 0
    again = json.loads(term.read_text())
    assert again["modelVersion"] == 2
    assert again["promoted"] is False
    assert "does not beat version 1" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    holder = MlflowClient(local_env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias("bc-local", "champion")
    assert str(holder.version) == "1"


def test_a_temporal_feature_exits_with_temporal_column(
    local_env: dict[str, str],
    tmp_path: Path,
    run_main: Callable[[dict[str, str]], Any],
    make_spec: Callable[..., dict[str, Any]],
) -> None:
    data = tmp_path / "d.parquet"
    n = 40
    pd.DataFrame(
        {"x": range(n), "at": pd.date_range("2024-01-01", periods=n, freq="min"), "y": [0, 1] * (n // 2)}
    ).to_parquet(data)
    spec = make_spec(str(data), "y", "classification")
    spec["dataset"]["features"] = ["x", "at"]
    result = run_main({**local_env, "KUBELOOP_TRAINER_SPEC": json.dumps(spec)})
    assert result.rc == 25, result.stderr[-2000:]
    assert result.termination["reason"] == "TemporalColumn"
    assert "'at'" in result.termination["message"]


@pytest.mark.parametrize("prefix", ["feature_", "特征_"])
def test_a_long_failure_still_fits_the_termination_message(
    local_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_spec: Callable[..., dict[str, Any]],
    prefix: str,
) -> None:
    # A spec listing 300 features, pointed at the wrong table: the UnknownFeature message names them
    # all. The JSON was cut at 4096 characters, so it no longer parsed, and the operator reported
    # PodFailurePolicy with the raw text instead of the reason (and in UTF-8 4096 characters of
    # other scripts are more than the kubelet's 4096 bytes).
    for k, v in local_env.items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "d.csv"
    pd.DataFrame({"a": range(20), "y": [0, 1] * 10}).to_csv(data, index=False)
    features = [f"{prefix}{i:04d}" for i in range(300)]
    spec = make_spec(str(data), "y", "classification", dataset={"features": features})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    term = tmp_path / "term"
    assert main(["--spec", f"@{spec_file}", "--termination-log", str(term)]) == 15
    raw = term.read_bytes()
    assert len(raw) <= 4096
    failure = json.loads(raw)
    assert failure["reason"] == "UnknownFeature"
    assert failure["exitCode"] == 15
    assert failure["message"].startswith(f"feature(s) '{prefix}0000', '{prefix}0001'")
    assert failure["message"].endswith("…")

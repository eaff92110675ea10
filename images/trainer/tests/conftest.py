"""pytest fixtures of the trainer's tests: small datasets, a spec builder and CLI runners.

The test folders are not packages, so pytest (``--import-mode=importlib``) names this module after
its path (``images.trainer.tests.conftest``) and it cannot collide with another component's conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubeloop_trainer.__main__ import main


@pytest.fixture(scope="session")
def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame


@pytest.fixture(scope="session")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True, scaled=False).frame


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """Numeric and categorical features with missing values; a 3-class target."""
    rng = np.random.default_rng(0)
    n = 300
    x1 = rng.normal(10, 3, n)
    x2 = rng.normal(-5, 2, n)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.choice([1, 2, 3], n)  # numeric-looking, declared categorical
    score = x1 + (color == "red") * 4 - (size == 3) * 3 + rng.normal(0, 1, n)
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    df = pd.DataFrame(
        {"x1": x1, "x2": x2, "color": color, "size": size, "y": np.array(["lo", "mid", "hi"])[y]}
    )
    df.loc[::17, "x1"] = np.nan
    df.loc[5::23, "color"] = None
    return df


def _make_spec(uri: str, target: str, task: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"uri": uri, "target": target, "validationSplit": 0.2},
        "task": task,
        "model": {"hiddenLayers": [16], "dropout": 0.0},
        "training": {"epochs": 8, "batchSize": 32, "learningRate": 0.01, "seed": 3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    termination: dict[str, Any] | None

    def events(self, kind: str = "epoch") -> list[dict[str, Any]]:
        out = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc.get("event") == kind:
                    out.append(doc)
        return out


def _run_cli(
    env: dict[str, str],
    tmp_path: Path,
    args: list[str] | None = None,
    launcher: list[str] | None = None,
    timeout: float = 600,
) -> CliResult:
    """Run ``kubeloop-trainer`` as a process (optionally under a launcher such as torchrun)."""
    term = tmp_path / f"termination-{os.urandom(3).hex()}.json"
    full_env = {
        **os.environ,
        "KUBELOOP_TRAINER_TERMINATION_LOG": str(term),
        "KUBELOOP_TRAINER_THREADS": "1",
        "KUBELOOP_TRAINER_WORK_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    cmd = [*(launcher or [sys.executable]), "-m", "kubeloop_trainer", *(args or [])]
    if launcher:
        cmd = [*launcher, "-m", "kubeloop_trainer", *(args or [])]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    termination = json.loads(term.read_text()) if term.exists() and term.read_text() else None
    return CliResult(proc.returncode, proc.stdout, proc.stderr, termination)


@pytest.fixture
def make_spec() -> Callable[..., dict[str, Any]]:
    """``make_spec(uri, target, task, **overrides)``: a small TrainingJob spec (camelCase dict)."""
    return _make_spec


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """``run_cli(env, args=None, launcher=None)``: ``kubeloop-trainer`` as a separate process."""

    def run(
        env: dict[str, str], args: list[str] | None = None, launcher: list[str] | None = None
    ) -> CliResult:
        return _run_cli(env, tmp_path, args, launcher)

    return run


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[[dict[str, str]], CliResult]:
    """``run_main(env)``: ``main()`` in this process (saves the interpreter start-up and imports)."""

    def run(env: dict[str, str]) -> CliResult:
        term = tmp_path / f"term-{os.urandom(3).hex()}.json"
        full = {
            **env,
            "KUBELOOP_TRAINER_TERMINATION_LOG": str(term),
            "KUBELOOP_TRAINER_THREADS": "1",
            "KUBELOOP_TRAINER_WORK_DIR": str(tmp_path),
        }
        for k, v in full.items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        rc = main([])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err, json.loads(term.read_text()) if term.exists() else None)

    return run


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A trainer environment with no network: a directory as object store, MLflow on SQLite."""
    # MLflow's SQLite store puts artifacts in ./mlruns of the working directory: keep that in tmp.
    monkeypatch.chdir(tmp_path)
    return {
        "KUBELOOP_TRAINER_LOCAL_STORE": str(tmp_path / "store"),
        "KUBELOOP_TRAINER_NAMESPACE": "ns",
        "KUBELOOP_TRAINER_NAME": "job",
        "KUBELOOP_TRAINER_UID": "uid-1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }

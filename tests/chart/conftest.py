"""Fixtures for the chart's tests: the pinned helm binary and rendering helpers.

helm comes from the local cluster tooling (hack/localcluster/build.py builds it once, pinned in
versions.py, cached in ~/.cache/kubeloop/bin), like the control-plane binaries.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeloop"
# The kube-apiserver the local cluster runs (hack/localcluster/versions.py); helm template needs one
# to check the chart's kubeVersion without a cluster.
KUBE_VERSION = "1.37.2"

Render = Callable[..., list[dict[str, Any]]]
Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    from localcluster import build

    try:
        return Path(build.ensure(["helm"], quiet=True)["helm"])
    except build.BuildError as exc:
        pytest.fail(f"cannot build helm: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run helm with its own config/cache dirs (no repositories, nothing of the user's)."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        # helm (client-go) caches discovery under $HOME/.kube: without HOME it would use the cwd.
        "HOME": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
    }

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(helm_binary), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


def set_args(values: dict[str, Any] | None) -> list[str]:
    """Values as a values file would give them (types kept), through --set-json per top-level key."""
    import json

    return [a for k, v in (values or {}).items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """``render(values, release=..., namespace=..., extra=[...])`` → the rendered objects."""

    def run(
        values: dict[str, Any] | None = None,
        *,
        release: str = "kubeloop",
        namespace: str = "kubeloop-system",
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        out = helm(
            "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *set_args(values), *extra,
        ).stdout  # fmt: skip
        return [d for d in yaml.safe_load_all(out) if d]

    return run

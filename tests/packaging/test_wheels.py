"""The product wheels carry no test, benchmark or pytest code (issue #10): each of kubeloop,
kubeloop-trainer, kubeloop-server, kubeloop-operator and kubeloop-api is built from this checkout with
``uv build`` and read back; and the same check is shown to fail on a wheel built from a copy of the
server with a testing module put back."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from kubeloop_testing.wheels import forbidden_entries

ROOT = Path(__file__).resolve().parents[2]
UV = os.environ.get("UV") or shutil.which("uv") or str(Path.home() / ".local/bin/uv")
PRODUCTS = {
    "kubeloop": "kubeloop",
    "kubeloop-trainer": "kubeloop_trainer",
    "kubeloop-server": "kubeloop_server",
    "kubeloop-operator": "kubeloop_operator",
    "kubeloop-api": "kubeloop_api",
}

pytestmark = pytest.mark.slow


def _build(args: list[str], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [UV, "build", *args, "--wheel", "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"uv build {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheels")
    return {dist: _build(["--package", dist], base / dist) for dist in PRODUCTS}


@pytest.mark.parametrize("dist", PRODUCTS)
def test_product_wheel_has_no_test_code(wheels: dict[str, Path], dist: str) -> None:
    wheel = wheels[dist]
    names = zipfile.ZipFile(wheel).namelist()
    # The wheel is the real package (a check of an empty archive would pass vacuously).
    assert f"{PRODUCTS[dist]}/__init__.py" in names, names
    assert forbidden_entries(wheel) == []


def test_check_fails_when_a_testing_module_is_put_back(tmp_path: Path) -> None:
    copy = tmp_path / "server"
    copy.mkdir()
    shutil.copy(ROOT / "images/server/pyproject.toml", copy)
    shutil.copytree(ROOT / "images/server/src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "src/kubeloop_server/testing.py").write_text("import pytest\n\n\ndef helper() -> None: ...\n")
    wheel = _build([str(copy), "--no-sources"], tmp_path / "dist")
    problems = forbidden_entries(wheel)
    assert problems == [
        "kubeloop_server/testing.py: a test, test-helper, benchmark or load-generator module",
        "kubeloop_server/testing.py: imports pytest",
    ]

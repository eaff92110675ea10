"""The wheel-content checker (kubeloop_testing.wheels) on synthetic wheels: it passes a clean product
wheel and names every kind of test code it must refuse."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from kubeloop_testing.wheels import forbidden_entries

CLEAN = {
    "kubeloop_x/__init__.py": "",
    "kubeloop_x/storage.py": "import io\n# pytest is not imported here\n",
    "kubeloop_x/attest.py": "def attest() -> None: ...\n",  # contains "test", is not a test
    "kubeloop_x-0.1.0.dist-info/METADATA": (
        "Metadata-Version: 2.4\nName: kubeloop-x\nVersion: 0.1.0\nRequires-Dist: kubeloop[s3]\n"
        "Requires-Dist: pytest>=8; extra == 'dev'\n"
    ),
    "kubeloop_x-0.1.0.dist-info/entry_points.txt": "[console_scripts]\nkubeloop-x = kubeloop_x:main\n",
}


def _wheel(tmp_path: Path, files: dict[str, str]) -> Path:
    path = tmp_path / "kubeloop_x-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_clean_wheel_passes(tmp_path: Path) -> None:
    assert forbidden_entries(_wheel(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("kubeloop_x/testing.py", "", "test-helper"),
        ("kubeloop_x/loadgen.py", "", "load-generator"),
        ("kubeloop_x/conftest.py", "", "test-helper"),
        ("kubeloop_x/test_app.py", "", "test-helper"),
        ("kubeloop_x/tests/helpers.py", "", "inside a 'tests' folder"),
        ("kubeloop_x/bench/run.py", "", "inside a 'bench' folder"),
        ("kubeloop_x/fixtures.py", "import pytest\n", "imports pytest"),
        ("kubeloop_x/fixtures.py", "from hypothesis import given\n", "imports hypothesis"),
        (
            "kubeloop_x/fake.py",
            "    from kubeloop_testing.storage import MemoryStore\n",
            "imports kubeloop_testing",
        ),
        (
            "kubeloop_x-0.1.0.dist-info/entry_points.txt",
            "[pytest11]\nx = kubeloop_x.plugin\n",
            "registers a pytest plugin",
        ),
        (
            "kubeloop_x-0.1.0.dist-info/METADATA",
            "Metadata-Version: 2.4\nName: kubeloop-x\nVersion: 0.1.0\nRequires-Dist: pytest>=8\n",
            "depends on pytest",
        ),
    ],
)
def test_each_kind_of_test_code_is_named(tmp_path: Path, name: str, text: str, why: str) -> None:
    problems = forbidden_entries(_wheel(tmp_path, {**CLEAN, name: text}))
    assert len(problems) >= 1
    assert all(p.startswith(name + ": ") for p in problems), problems
    assert any(why in p for p in problems), problems

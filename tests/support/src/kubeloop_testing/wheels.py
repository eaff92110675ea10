"""What must never be inside a product wheel: tests, benchmarks, pytest plugins, test helpers, load
generators, or code that imports a test framework. :func:`forbidden_entries` reads a built wheel and
names every offending file (or dependency) with the reason."""

from __future__ import annotations

import re
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath
from typing import Final

# Folder names that mark test or benchmark code anywhere in a wheel's path.
_DIRS: Final = frozenset({"tests", "test", "testing", "bench", "benchmarks", "benchmark"})
# Module names that are test code or test helpers whatever folder they are in.
_MODULES: Final = re.compile(r"^(conftest|testing|loadgen|pytest_.*|test_.*|.*_test|bench_.*)\.py$")
# Test frameworks and our test support: a product module importing one is test code.
_IMPORTS: Final = re.compile(
    r"^\s*(?:import|from)\s+(pytest|_pytest|hypothesis|kubeloop_testing)\b", re.MULTILINE
)
_TEST_DISTS: Final = frozenset({"pytest", "hypothesis", "kubeloop-testing"})


def forbidden_entries(wheel: Path) -> list[str]:
    """``"<path>: <why>"`` for each file of ``wheel`` that is test, benchmark or pytest code, and for
    each unconditional dependency on a test framework; empty when the wheel is clean."""
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            path = PurePosixPath(name)
            if path.parts[0].endswith(".dist-info"):
                if path.name == "METADATA":
                    problems += _metadata_problems(name, zf.read(name).decode("utf-8", "replace"))
                elif path.name == "entry_points.txt":
                    text = zf.read(name).decode("utf-8", "replace")
                    if re.search(r"^\[pytest11\]", text, re.MULTILINE):
                        problems.append(f"{name}: registers a pytest plugin (pytest11 entry point)")
                continue
            folders = [p for p in path.parts[:-1] if p in _DIRS]
            if folders:
                problems.append(f"{name}: inside a {folders[0]!r} folder")
            elif _MODULES.match(path.name):
                problems.append(f"{name}: a test, test-helper, benchmark or load-generator module")
            if path.suffix == ".py":
                m = _IMPORTS.search(zf.read(name).decode("utf-8", "replace"))
                if m:
                    problems.append(f"{name}: imports {m[1]}")
    return problems


def _metadata_problems(name: str, text: str) -> list[str]:
    out = []
    for req in Parser().parsestr(text).get_all("Requires-Dist") or []:
        dist = re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")
        if dist in _TEST_DISTS and "extra ==" not in req:
            out.append(f"{name}: depends on {dist}")
    return out


__all__ = ["forbidden_entries"]

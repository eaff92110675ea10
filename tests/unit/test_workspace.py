"""Workspace layout rules from DESIGN §4."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The product packages (each ships as a wheel and an image) ...
MEMBERS = {
    "operator": "kubeloop_operator",
    "api": "kubeloop_api",
    "images/trainer": "kubeloop_trainer",
    "images/server": "kubeloop_server",
}
# ... and test support, installed by the dev dependency group only.
TEST_SUPPORT = {"tests/support": "kubeloop_testing"}


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement (``kubeloop[s3]>=1`` -> ``kubeloop``)."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return m[1].lower().replace("_", "-")


def test_members_are_declared_and_laid_out() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(root["tool"]["uv"]["workspace"]["members"]) == sorted({**MEMBERS, **TEST_SUPPORT})
    for member, package in {**MEMBERS, **TEST_SUPPORT}.items():
        meta = tomllib.loads((ROOT / member / "pyproject.toml").read_text())
        assert "kubeloop" in {_name(d) for d in meta["project"]["dependencies"]}
        assert (ROOT / member / "src" / package / "__init__.py").is_file()
    for member in MEMBERS:
        assert (ROOT / member / "tests").is_dir()


def test_test_support_is_a_dev_dependency_only() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "kubeloop-testing" in {_name(d) for d in root["dependency-groups"]["dev"]}
    products = [root, *(tomllib.loads((ROOT / m / "pyproject.toml").read_text()) for m in MEMBERS)]
    for meta in products:
        deps = list(meta["project"]["dependencies"])
        for extra in meta["project"].get("optional-dependencies", {}).values():
            deps += extra
        names = {_name(d) for d in deps}
        assert not names & {"kubeloop-testing", "pytest", "hypothesis"}, meta["project"]["name"]


def test_no_importable_package_is_named_operator() -> None:
    for init in ROOT.glob("**/src/*/__init__.py"):
        assert init.parent.name != "operator", init


def test_lock_file_is_committed_next_to_the_workspace() -> None:
    assert (ROOT / "uv.lock").is_file()


def test_every_image_copies_the_whole_workspace_metadata() -> None:
    """uv reads every member's pyproject to use the lock (``uv sync --frozen --package X``): an image
    build that leaves one out fails, so each Dockerfile copies them all."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    dockerfiles = sorted(ROOT.glob("*/Dockerfile")) + sorted(ROOT.glob("images/*/Dockerfile"))
    assert dockerfiles
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        if "uv sync" not in text:
            continue
        for member in members:
            assert f"COPY {member}/pyproject.toml {member}/pyproject.toml" in text, (dockerfile, member)

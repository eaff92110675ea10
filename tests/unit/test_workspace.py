"""Workspace layout rules from DESIGN §4."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {
    "operator": "kubeloop_operator",
    "api": "kubeloop_api",
    "images/trainer": "kubeloop_trainer",
    "images/server": "kubeloop_server",
}


def test_members_are_declared_and_laid_out() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(root["tool"]["uv"]["workspace"]["members"]) == sorted(MEMBERS)
    for member, package in MEMBERS.items():
        meta = tomllib.loads((ROOT / member / "pyproject.toml").read_text())
        assert "kubeloop" in meta["project"]["dependencies"]
        assert (ROOT / member / "src" / package / "__init__.py").is_file()
        assert (ROOT / member / "tests").is_dir()


def test_no_importable_package_is_named_operator() -> None:
    for init in ROOT.glob("**/src/*/__init__.py"):
        assert init.parent.name != "operator", init


def test_lock_file_is_committed_next_to_the_workspace() -> None:
    assert (ROOT / "uv.lock").is_file()

"""The CPU-count helper (kubeloop.cpus) on fake cgroup trees: v2 and v1 quotas, unlimited, unreadable,
and the cap by the affinity mask."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeloop import cpus


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: set(range(8)))


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(
    ("cpu_max", "want"),
    [("150000 100000\n", 2), ("200000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", 8)],
)
def test_cgroup_v2_quota_rounds_up(tmp_path: Path, cpu_max: str, want: int) -> None:
    assert cpus.cpu_limit(_v2(tmp_path, cpu_max)) == want


@pytest.mark.usefixtures("eight_cpus")
def test_cgroup_v1_quota(tmp_path: Path) -> None:
    assert cpus.cpu_limit(_v1(tmp_path, 300000, 100000)) == 3
    assert cpus.cgroup_cpu_quota(_v1(tmp_path / "unlimited", -1, 100000)) is None


@pytest.mark.usefixtures("eight_cpus")
def test_no_cgroup_or_garbage_means_the_affinity_mask(tmp_path: Path) -> None:
    assert cpus.cpu_limit(tmp_path / "missing") == 8
    assert cpus.cpu_limit(_v2(tmp_path / "garbage", "lots\n")) == 8
    assert cpus.cpu_limit(_v2(tmp_path / "zero", "0 100000\n")) == 8


def test_affinity_caps_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: {0})
    assert cpus.cpu_limit(_v2(tmp_path, "400000 100000\n")) == 1


def test_this_machine() -> None:
    assert 1 <= cpus.cpu_limit() <= cpus.affinity_cpus()

"""Where things live: the repository, the per-checkout state directory and the binary cache."""

from __future__ import annotations

import os
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = HACK_DIR.parent


def state_dir() -> Path:
    """Runtime state (certificates, data, logs, cluster.json): ``<repo>/.kubeloop`` unless KUBELOOP_STATE_DIR."""
    override = os.environ.get("KUBELOOP_STATE_DIR")
    return Path(override).resolve() if override else REPO_ROOT / ".kubeloop"


def cache_dir() -> Path:
    """Built binaries, shared by every checkout: ``${KUBELOOP_CACHE:-~/.cache/kubeloop}``."""
    override = os.environ.get("KUBELOOP_CACHE")
    return Path(override).expanduser().resolve() if override else Path.home() / ".cache" / "kubeloop"

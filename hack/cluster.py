#!/usr/bin/env python3
"""Local Kubeloop cluster: ``cluster.py up|down|status|env|build|kind-up`` (see ``--help``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster.cli import main

if __name__ == "__main__":
    sys.exit(main())

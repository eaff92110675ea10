"""``python -m nodeagent`` (with hack/ on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

_HACK = str(Path(__file__).resolve().parent.parent)
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)

from nodeagent.cli import main  # noqa: E402

sys.exit(main())

"""A tiny bench-drift-check run (the full one is ``make bench-drift-check``): both sides see every
row of every part, each in its own process, and the last line is the RESULT with every key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from localcluster.pytest_fixtures import MinioServer

BENCH = Path(__file__).resolve().parents[1] / "driftcheck" / "bench_driftcheck.py"


@pytest.mark.component
def test_tiny_bench_drift_check_compares_both_sides_and_ends_with_the_result(
    minio_server: MinioServer,
) -> None:
    m = minio_server
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            *("--rows", "20000", "--features", "5", "--parts", "4", "--reps", "1"),
            *("--endpoint", m.endpoint, "--access-key", m.access_key, "--secret-key", m.secret_key),
            *("--bucket", m.bucket),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert sum("check:" in ln for ln in lines) == 1
    assert sum("read:" in ln for ln in lines) == 1
    last = lines[-1]
    assert last.startswith("RESULT "), last
    values = dict(kv.split("=") for kv in last.removeprefix("RESULT ").split())
    assert set(values) >= {
        "driftcheck_vs_read",
        "driftcheck_rss_mib",
        "driftcheck_s",
        "read_s",
        "rows",
        "parts",
    }
    assert float(values["driftcheck_vs_read"]) > 0
    assert 50 < float(values["driftcheck_rss_mib"]) < 2048
    assert (values["rows"], values["parts"]) == ("20000", "4")
    assert re.search(r"load average", proc.stdout)

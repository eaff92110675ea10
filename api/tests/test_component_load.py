"""A short variant of `make bench-api` inside the suite: SSE status streams held open while a
create/list mix runs, 0 errors, and the list latency through the facade next to the same list straight
to the API server (same caller, page, namespace)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from typing import Any

import pytest
from api_cluster import REPO, ApiEnv, Tenants

pytestmark = pytest.mark.component


def _loadgen() -> Any:
    spec = importlib.util.spec_from_file_location(
        "kubeloop_bench_api_loadgen", REPO / "bench" / "api" / "loadgen.py"
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_short_load_sse_clients_and_create_list_mix(api_env: ApiEnv, tenants: Tenants) -> None:
    import yaml

    loadgen = _loadgen()
    cfg = yaml.safe_load(api_env.kube.kubeconfig.read_text())
    import base64
    import ssl

    cluster = cfg["clusters"][0]["cluster"]
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    target = loadgen.Target(api_env.url, cluster["server"], ctx, tenants.b.token, tenants.b.namespace)
    res = asyncio.run(loadgen.run_load(target, sse_clients=20, seconds=5, workers=2))
    s = res.summary()
    print(f"short load (loadavg {os.getloadavg()[0]:.2f}): {s}")
    assert res.errors == []
    assert s["creates"] > 0
    assert s["api_lists"] > 10
    assert s["kube_lists"] > 10
    # Every create reached every stream. (Its delivery time, counted from the start of the create
    # request, is reported; the 2 s bound on status changes is checked without load in
    # test_component_sse.py, as a busy 2-core machine stretches everything here.)
    assert s["sse_events"] >= s["creates"] * 20
    assert s["sse_deliveries"] == s["creates"] * 20

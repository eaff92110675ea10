"""The console script as a pod runs it: `kubeloop-api` configured only by KUBELOOP_API_* variables, serving
on loopback, logging one line per request (never a credential), stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_cluster import ApiEnv, Tenants

pytestmark = pytest.mark.component


def test_console_script_serves_and_stops_on_sigterm(
    api_env: ApiEnv, tenants: Tenants, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "KUBELOOP_API_KUBECONFIG": str(api_env.kube.kubeconfig),
        "KUBELOOP_API_PORT": str(port),
        "KUBELOOP_API_NAMESPACE": api_env.home,
        "KUBELOOP_API_S3_SECRET_KEY": api_env.minio.secret_key,
    }
    log = tmp_path / "api.log"
    exe = Path(sys.executable).parent / "kubeloop-api"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert httpx.get(f"{url}/readyz", timeout=10).json()["checks"]["kubernetes"] == "ok"
        r = httpx.get(
            f"{url}/api/v1/namespaces/{tenants.a.namespace}/trainingjobs", headers=tenants.a.headers
        )
        assert r.status_code == 200
        r = httpx.get(
            f"{url}/api/v1/namespaces/{tenants.b.namespace}/trainingjobs", headers=tenants.a.headers
        )
        assert r.status_code == 403
        assert "kubeloop_api_requests_total" in httpx.get(f"{url}/metrics").text
        proc.send_signal(signal.SIGTERM)
        # uvicorn finishes in-flight requests, then re-raises the signal (exit by SIGTERM, as pods expect).
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "/api/v1/namespaces/" in text
    assert "403" in text
    for secret in (tenants.a.token, api_env.minio.secret_key):
        assert secret not in text

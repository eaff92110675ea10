"""/readyz logging: a failed check is logged when its state changes and at most once a minute while it
stays failed, so a kubelet probing every few seconds while a backend is down does not flood the log."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.errors import UnavailableError
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.readiness import REPEAT_S, ReadinessLog
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> Iterator[TestClient]:
    s = ApiSettings()
    m = ApiMetrics()
    app = create_app(s, kube=Kube(s, m, transport=FakeKube().transport()), metrics=m)
    app.state.services.readiness = ReadinessLog(clock=clock)
    with TestClient(app) as c:
        yield c


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    # The facade's own lines only: httpx logs each request ("HTTP Request: GET .../readyz") at INFO
    # once an earlier test in the session has set its logger to INFO.
    out = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name.startswith("kubeloop_api") and "readyz" in r.getMessage()
    ]
    caplog.clear()
    return out


def test_a_failing_check_is_logged_once_then_once_a_minute_and_its_recovery_at_info(
    client: TestClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    down = {"now": True}

    async def ping() -> None:
        if down["now"]:
            raise UnavailableError("Kubernetes API unreachable: connection refused")

    client.app.state.services.kube.ping = ping  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="kubeloop_api")
    body = {
        "ready": False,
        "checks": {"kubernetes": "failed", "mlflow": "disabled", "objectStore": "disabled"},
    }
    for _ in range(20):  # a kubelet probing every 2 s for 40 s
        r = client.get("/readyz")
        assert (r.status_code, r.json()) == (503, body)  # the body is as it was: no error text
        clock.now += 2
    logged = _records(caplog)
    assert len(logged) == 1, logged
    assert logged[0][0] == logging.WARNING
    assert "kubernetes" in logged[0][1]
    assert "connection refused" in logged[0][1]

    clock.now += REPEAT_S  # still failing a minute later: logged again, once, saying for how long
    for _ in range(5):
        client.get("/readyz")
        clock.now += 2
    logged = _records(caplog)
    assert len(logged) == 1, logged
    assert logged[0][0] == logging.WARNING
    assert "still failing" in logged[0][1]
    assert "connection refused" in logged[0][1]

    down["now"] = False
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
        clock.now += 2
    logged = _records(caplog)
    assert len(logged) == 1, logged
    assert logged[0][0] == logging.INFO
    assert "kubernetes" in logged[0][1]
    assert "ok again" in logged[0][1]

    down["now"] = True  # a new failure is logged at once, however soon after the last line
    client.get("/readyz")
    client.get("/readyz")
    logged = _records(caplog)
    assert [lvl for lvl, _ in logged] == [logging.WARNING], logged


def test_each_check_has_its_own_state(
    client: TestClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = client.app.state.services.readiness  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="kubeloop_api")
    log.failed("mlflow", "mlflow down")
    log.failed("objectStore", "minio down")
    log.failed("mlflow", "mlflow down")
    log.ok("objectStore")
    log.ok("objectStore")
    log.ok("kubernetes")  # never failed: nothing to say
    assert _records(caplog) == [
        (logging.WARNING, "readyz: check mlflow failed: mlflow down"),
        (logging.WARNING, "readyz: check objectStore failed: minio down"),
        (logging.INFO, "readyz: check objectStore ok again after 0 s"),
    ]

"""API tokens are bounded per owner: any caller the cluster authenticates may create them, with no RBAC
rights needed, so without bounds one caller could fill the facade's namespace (and etcd) with token
Secrets. At most ``api_token_max_active_per_owner`` usable tokens per owner; records of revoked or
expired tokens are kept for the audit trail for ``api_token_record_retention_s`` and, per owner, at most
``api_token_max_records_per_owner`` in all (the oldest ended ones go first)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fakekube import FakeKube
from kubeloop_api import tokens
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


@pytest.fixture
def fake() -> FakeKube:
    fk = FakeKube()
    fk.users["tok-alice"] = {"username": "alice", "groups": ["team-a"]}
    fk.users["tok-bob"] = {"username": "bob", "groups": ["team-b"]}
    return fk


def _client(fake: FakeKube, **settings: Any) -> TestClient:
    s = ApiSettings(**settings)
    m = ApiMetrics()
    return TestClient(create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m))


@pytest.fixture
def client(fake: FakeKube) -> Iterator[TestClient]:
    with _client(fake, api_token_max_active_per_owner=3, api_token_max_records_per_owner=5) as c:
        yield c


def _create(client: TestClient, headers: dict[str, str], name: str = "t") -> Any:
    return client.post("/api/v1/tokens", json={"name": name}, headers=headers)


def _token_secrets(fake: FakeKube) -> int:
    return sum(1 for k in fake.objects if k[1] == "secrets")


def test_an_owner_with_the_most_active_tokens_gets_a_409_naming_the_limit(
    client: TestClient, fake: FakeKube
) -> None:
    ids = [_create(client, ALICE, f"t{i}").json()["id"] for i in range(3)]
    r = _create(client, ALICE, "one-too-many")
    assert r.status_code == 409, r.text
    assert "3 active API tokens" in r.json()["message"], r.text
    assert "api_token_max_active_per_owner" in r.json()["message"], r.text
    assert _token_secrets(fake) == 3
    # another owner is not affected; a revoked token frees a place
    assert _create(client, BOB).status_code == 201
    assert client.delete(f"/api/v1/tokens/{ids[0]}", headers=ALICE).status_code == 200
    assert _create(client, ALICE, "again").status_code == 201


def test_ended_records_beyond_the_owners_cap_go_oldest_first(
    client: TestClient, fake: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Records keep whole seconds: a clock that moves a second per reading gives each its own time.
    ticks = itertools.count()
    start = datetime.now(UTC).replace(microsecond=0)
    monkeypatch.setattr(tokens, "_now", lambda: start + timedelta(seconds=next(ticks)))
    made: list[str] = []
    for i in range(8):  # make, revoke: only ended records pile up
        tid = _create(client, ALICE, f"t{i}").json()["id"]
        made.append(tid)
        assert client.delete(f"/api/v1/tokens/{tid}", headers=ALICE).status_code == 200
    listed = [t["id"] for t in client.get("/api/v1/tokens", headers=ALICE).json()["items"]]
    # each create trims to the cap before adding its own: 5 records at most
    assert len(listed) <= 5, listed
    assert listed == made[-len(listed) :]
    assert _token_secrets(fake) == len(listed)


def test_ended_records_past_the_retention_are_deleted(fake: FakeKube) -> None:
    with _client(fake, api_token_record_retention_s=0) as c:
        old = _create(c, ALICE, "old").json()["id"]
        assert c.delete(f"/api/v1/tokens/{old}", headers=ALICE).status_code == 200
        keep = _create(c, ALICE, "keep").json()["id"]
        listed = [t["id"] for t in c.get("/api/v1/tokens", headers=ALICE).json()["items"]]
        assert listed == [keep]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"api_token_max_active_per_owner": 0}, "api_token_max_active_per_owner"),
        (
            {"api_token_max_active_per_owner": 10, "api_token_max_records_per_owner": 5},
            "api_token_max_records_per_owner",
        ),
        ({"api_token_record_retention_s": -1}, "api_token_record_retention_s"),
    ],
)
def test_bad_quota_settings_are_refused_naming_the_field(settings: dict[str, int], field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        ApiSettings(**settings)

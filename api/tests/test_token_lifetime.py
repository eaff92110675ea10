"""An API token never outlives the credential it was made with, where the facade can know when that
expires: a JWT bearer's ``exp`` (ServiceAccount and OIDC tokens; read, not verified: TokenReview already
accepted the token) or an API token's ``expiresAt``. An explicit longer ``expiresInSeconds`` is refused
naming the field; the default lifetime is cut to the credential's. Expiry unknown: no limit."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

DEFAULT_TTL = 30 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: Any, header: Any = None) -> str:
    """A token shaped like a JWT; its signature is nonsense (the fake TokenReview accepts it by name)."""
    head = _b64(json.dumps(header or {"alg": "RS256", "kid": "k1"}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}.{_b64(b'not-a-signature')}"


def _exp(seconds: float) -> int:
    return int((datetime.now(UTC) + timedelta(seconds=seconds)).timestamp())


@pytest.fixture
def fake() -> FakeKube:
    fk = FakeKube()
    fk.users["tok-alice"] = {"username": "alice", "groups": ["team-a"]}
    return fk


@pytest.fixture
def client(fake: FakeKube) -> Iterator[TestClient]:
    s = ApiSettings()
    m = ApiMetrics()
    with TestClient(create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m)) as c:
        yield c


def _bearer(fake: FakeKube, token: str) -> dict[str, str]:
    fake.users[token] = {"username": "alice", "groups": ["team-a"]}
    return {"Authorization": f"Bearer {token}"}


def _expires_at(rec: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(rec["expiresAt"].replace("Z", "+00:00"))


def _secrets(fake: FakeKube) -> list[Any]:
    return [k for k in fake.objects if k[1] == "secrets"]


def test_a_longer_lifetime_than_the_callers_jwt_is_refused_naming_the_field(
    client: TestClient, fake: FakeKube
) -> None:
    exp = _exp(600)  # a ServiceAccount token that expires in 10 minutes
    hdr = _bearer(
        fake, jwt({"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:a:b", "exp": exp})
    )
    r = client.post("/api/v1/tokens", json={"name": "ci", "expiresInSeconds": 3 * 86400}, headers=hdr)
    assert r.status_code == 422, r.text
    cause = r.json()["details"]["causes"][0]
    assert cause["field"] == "expiresInSeconds"
    assert "expires at" in cause["message"]
    assert _secrets(fake) == []
    # Within the credential's lifetime: as asked.
    r = client.post("/api/v1/tokens", json={"name": "ci", "expiresInSeconds": 300}, headers=hdr)
    assert r.status_code == 201, r.text
    rec = r.json()
    created = datetime.fromisoformat(rec["createdAt"].replace("Z", "+00:00"))
    assert _expires_at(rec) - created == timedelta(seconds=300)


def test_the_default_lifetime_is_cut_to_the_callers_jwt(client: TestClient, fake: FakeKube) -> None:
    exp = _exp(600)
    hdr = _bearer(fake, jwt({"sub": "alice@example.com", "exp": exp}))  # an OIDC id token
    r = client.post("/api/v1/tokens", json={"name": "ci"}, headers=hdr)
    assert r.status_code == 201, r.text
    assert _expires_at(r.json()) == datetime.fromtimestamp(exp, UTC)


def test_a_token_made_with_an_api_token_never_outlives_it(client: TestClient, fake: FakeKube) -> None:
    fake.allow = lambda spec: True  # an API-token caller needs impersonate rights for any token
    first = client.post(
        "/api/v1/tokens",
        json={"name": "parent", "expiresInSeconds": 3600},
        headers={"Authorization": "Bearer tok-alice"},
    ).json()
    hdr = {"Authorization": f"Bearer {first['token']}"}
    r = client.post("/api/v1/tokens", json={"name": "child", "expiresInSeconds": 7200}, headers=hdr)
    assert r.status_code == 422, r.text
    assert r.json()["details"]["causes"][0]["field"] == "expiresInSeconds"
    r = client.post("/api/v1/tokens", json={"name": "child"}, headers=hdr)
    assert r.status_code == 201, r.text
    assert _expires_at(r.json()) == _expires_at(first)


@pytest.mark.parametrize(
    "token",
    [
        "tok-alice",  # opaque (a static token, a legacy ServiceAccount Secret token without exp, …)
        jwt({"sub": "alice"}),  # a JWT without exp
        jwt({"sub": "alice", "exp": "tomorrow"}),
        jwt({"sub": "alice", "exp": True}),
        jwt({"sub": "alice", "exp": 10**30}),  # past what a datetime holds
        jwt(["not", "an", "object"]),
        "eyJhbGciOiJSUzI1NiJ9.!!!not-base64!!!.c2ln",
        "a.b.c.d",
    ],
)
def test_a_credential_whose_expiry_is_unknown_does_not_limit_the_token(
    client: TestClient, fake: FakeKube, token: str
) -> None:
    hdr = _bearer(fake, token)
    r = client.post("/api/v1/tokens", json={"name": "ci"}, headers=hdr)
    assert r.status_code == 201, r.text
    rec = r.json()
    created = datetime.fromisoformat(rec["createdAt"].replace("Z", "+00:00"))
    assert _expires_at(rec) - created == timedelta(seconds=DEFAULT_TTL)


def test_a_jwt_the_cluster_accepts_but_that_expired_by_the_facades_clock_makes_no_token(
    client: TestClient, fake: FakeKube
) -> None:
    # Clocks disagree by a few seconds: the API server accepted it, the facade's clock says it is over.
    hdr = _bearer(fake, jwt({"sub": "alice", "exp": _exp(-5)}))
    r = client.post("/api/v1/tokens", json={"name": "ci"}, headers=hdr)
    assert r.status_code == 401, r.text
    assert "expired" in r.json()["message"]
    assert _secrets(fake) == []

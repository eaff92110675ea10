"""Against the real API server: a ServiceAccount token from TokenRequest (a signed JWT with ``exp``) cannot
mint an API token that outlives it. The rule itself, with every kind of credential, is unit-tested in
test_token_lifetime.py; this shows the facade reads the expiry of the tokens the cluster really issues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from api_cluster import ApiEnv, expect, service_account_token

pytestmark = pytest.mark.component


def test_a_service_account_token_cannot_mint_an_api_token_that_outlives_it(api_env: ApiEnv) -> None:
    with api_env.kube.api_client() as api:
        token = service_account_token(api, api_env.home, "short-lived", seconds=600)  # TokenRequest's least
    api_env.remember(token)
    issued = datetime.now(UTC)
    with api_env.client({"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/api/v1/tokens", json={"name": "too long", "expiresInSeconds": 86400})
        assert r.status_code == 422, r.json().get("expiresAt")  # never the minted token itself
        assert r.json()["details"]["causes"][0]["field"] == "expiresInSeconds"
        made = expect(c.post("/api/v1/tokens", json={"name": "as long as allowed"}), 201)
        api_env.remember(made["token"])
        expires = datetime.fromisoformat(made["expiresAt"].replace("Z", "+00:00"))
        assert issued + timedelta(seconds=500) < expires <= issued + timedelta(seconds=605), made
        expect(c.delete(f"/api/v1/tokens/{made['id']}"), 200)

"""API tokens for people without cluster credentials, kept hashed in Kubernetes Secrets.

A token looks like ``klp_<id>_<secret>``: ``id`` (12 hex digits) names its Secret
(``kubeloop-api-token-<id>`` in the facade's namespace), ``secret`` is 256 random bits. The Secret keeps
the SHA-256 of the whole token, never the token: a leaked Secret does not give the token away (the
token is random, so a fast hash is enough; no salt needed). The token is shown once, in the answer to
its creation.

Each record names the identity the token authenticates as (``user``, ``groups``), its ``owner`` (who
created it), ``expiresAt`` and whether it was revoked. Revoked records are kept for the audit trail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubeloop_api.errors import ApiError, ConflictError, NotFoundError, UnauthorizedError
from kubeloop_api.identity import Principal
from kubeloop_api.kube import Kube, core_path

TOKEN_PREFIX: Final = "klp_"
SECRET_PREFIX: Final = "kubeloop-api-token-"
SECRET_TYPE: Final = "kubeloop.io/api-token"
LABEL: Final = "kubeloop.io/api-token"
_TOKEN_RE: Final = re.compile(r"^klp_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_DATA_KEY: Final = "token.json"


class TokenRecord(BaseModel):
    """What the Secret holds about one token (everything but the token)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    id: str = Field(description="Token id (the Secret is kubeloop-api-token-<id>).")
    name: str = Field(description="Human-readable name given at creation.")
    user: str = Field(description="User name the token authenticates as.")
    groups: list[str] = Field(default_factory=list, description="Groups the token authenticates with.")
    owner: str = Field(description="Who created the token.")
    created_at: datetime = Field(description="Creation time (UTC).")
    expires_at: datetime = Field(description="Expiry time (UTC); the token is refused afterwards.")
    revoked: bool = Field(default=False, description="Whether the token was revoked.")
    revoked_at: datetime | None = Field(default=None, description="When it was revoked.")
    revoked_by: str | None = Field(default=None, description="Who revoked it.")
    sha256: str = Field(default="", exclude=True, description="SHA-256 of the token (hex); never returned.")

    def ended_at(self, now: datetime) -> datetime | None:
        """When the token stopped being usable (revoked or expired); None while it is usable."""
        if self.revoked:
            return self.revoked_at or self.created_at
        return self.expires_at if self.expires_at <= now else None

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude={"sha256"})

    def principal(self, user_prefix: str = "") -> Principal:
        """Who the token authenticates as: its user under ``user_prefix`` (the api_token_user_prefix
        setting), so RBAC can tell API-token users from cluster users."""
        return Principal(
            username=user_prefix + self.user,
            groups=tuple(self.groups),
            source="api-token",
            token_id=self.id,
            expires_at=self.expires_at,
        )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_id(token: str) -> str | None:
    """The id of a well-formed API token, else None."""
    m = _TOKEN_RE.match(token)
    return m["id"] if m else None


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _from_secret(secret: dict[str, Any]) -> TokenRecord:
    raw = (secret.get("data") or {}).get(_DATA_KEY, "")
    doc = json.loads(base64.b64decode(raw))
    rec = TokenRecord.model_validate(doc)
    rec.sha256 = str(doc.get("sha256", ""))
    return rec


class TokenStore:
    """Create, look up, list and revoke API tokens (the facade's own Kubernetes identity)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def _path(self, token_id: str | None = None) -> str:
        return core_path(self.namespace, "secrets", None if token_id is None else SECRET_PREFIX + token_id)

    async def create(
        self,
        *,
        name: str,
        user: str,
        groups: list[str],
        owner: str,
        ttl_s: int,
        not_after: datetime | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token; returns its record and the token itself (to be shown once). It expires after
        ``ttl_s`` seconds, or at ``not_after`` if that comes first (the expiry of the credential it is
        made with)."""
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = _now()
        rec = TokenRecord(
            id=token_id,
            name=name,
            user=user,
            groups=groups,
            owner=owner,
            created_at=now,
            expires_at=min(now + timedelta(seconds=ttl_s), not_after or datetime.max.replace(tzinfo=UTC)),
        )
        rec.sha256 = digest(token)
        await self.kube.request(
            "POST",
            self._path(),
            as_user=None,
            body=self._secret(rec),
            params={"fieldManager": "kubeloop-api"},
            what="create API token Secret",
        )
        return rec, token

    def _secret(self, rec: TokenRecord, resource_version: str | None = None) -> dict[str, Any]:
        doc = {**rec.model_dump(mode="json", by_alias=True), "sha256": rec.sha256}
        meta: dict[str, Any] = {
            "name": SECRET_PREFIX + rec.id,
            "namespace": self.namespace,
            "labels": {LABEL: "true", "app.kubernetes.io/managed-by": "kubeloop-api"},
        }
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": meta,
            "data": {_DATA_KEY: base64.b64encode(json.dumps(doc).encode()).decode()},
        }

    async def _read(self, token_id: str) -> tuple[TokenRecord, str]:
        secret = await self.kube.request("GET", self._path(token_id), as_user=None, what="read API token")
        try:
            return _from_secret(secret), str(secret["metadata"].get("resourceVersion", ""))
        except (ValueError, KeyError, TypeError) as e:
            raise NotFoundError(f"API token {token_id} has an unreadable record") from e

    async def get(self, token_id: str) -> TokenRecord:
        try:
            return (await self._read(token_id))[0]
        except NotFoundError:
            raise NotFoundError(f"API token {token_id!r} not found") from None

    async def verify(self, token: str) -> TokenRecord:
        """The record of a valid token; 401 for unknown, wrong, expired or revoked tokens."""
        token_id = parse_id(token)
        if token_id is None:
            raise UnauthorizedError("malformed API token")
        try:
            rec, _ = await self._read(token_id)
        except NotFoundError:
            raise UnauthorizedError("unknown API token") from None
        if not hmac.compare_digest(rec.sha256, digest(token)):
            raise UnauthorizedError("unknown API token")
        if rec.revoked:
            raise UnauthorizedError("API token revoked", details={"name": rec.id})
        if rec.expires_at <= datetime.now(UTC):
            raise UnauthorizedError("API token expired", details={"name": rec.id})
        return rec

    async def list(self) -> list[TokenRecord]:
        out = await self.kube.request(
            "GET",
            self._path(),
            as_user=None,
            params={"labelSelector": f"{LABEL}=true"},
            what="list API tokens",
        )
        records = []
        for item in out.get("items", []):
            try:
                records.append(_from_secret(item))
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def delete(self, token_id: str) -> None:
        """Delete a token's record (its Secret); one already gone is fine."""
        with contextlib.suppress(NotFoundError):
            await self.kube.request(
                "DELETE", self._path(token_id), as_user=None, what="delete API token record"
            )

    async def revoke(self, token_id: str, by: str) -> TokenRecord:
        for _ in range(5):
            rec, rv = await self._read(token_id)
            if rec.revoked:
                return rec
            rec.revoked = True
            rec.revoked_at = _now()
            rec.revoked_by = by
            try:
                await self.kube.request(
                    "PUT",
                    self._path(token_id),
                    as_user=None,
                    body=self._secret(rec, rv),
                    params={"fieldManager": "kubeloop-api"},
                    what="revoke API token",
                )
                return rec
            except ApiError as e:
                if e.status_code != 409:
                    raise
        raise ConflictError(f"API token {token_id}: the revocation kept conflicting with other writes; retry")

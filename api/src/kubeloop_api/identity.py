"""Who is calling: the authenticated principal every request carries (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as Kubernetes would see it when the facade impersonates it."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    source: Literal["kubernetes", "api-token"] = "kubernetes"
    token_id: str | None = None
    """For API tokens: the token's id (never the token itself)."""
    expires_at: datetime | None = None
    """When the credential this caller authenticated with expires, where the facade can know it (a JWT
    bearer's ``exp``, an API token's ``expiresAt``); None: unknown. What the caller derives from it (an
    API token) must not outlive it."""

    def impersonation_headers(self) -> list[tuple[str, str]]:
        """Headers that make the API server evaluate a request as this principal (RBAC decides).

        ``system:authenticated`` is added by the API server itself; extras and uid are not forwarded
        (RBAC does not use them, and impersonating them needs extra grants)."""
        headers = [("Impersonate-User", self.username)]
        headers += [("Impersonate-Group", g) for g in self.groups if g != "system:authenticated"]
        return headers

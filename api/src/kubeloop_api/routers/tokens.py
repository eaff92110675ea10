"""API tokens: create (the token is in that answer and nowhere else, ever), list, read, revoke.

Who may create a token for whom: a caller authenticated by the cluster may make tokens for itself
(same user, a subset of its groups). Any other token, and any token made by an API-token caller, needs
the right to impersonate its user and each of its groups (SubjectAccessReview, ``impersonate`` on
``users``/``groups``): a token is an identity, so minting one is impersonation. Tokens are listed to,
and revocable by, their owner and their user; others need impersonate on the token's user.

A token never outlives the credential it is made with, where the facade can know that one's expiry (a
JWT bearer's ``exp``: ServiceAccount and OIDC tokens; an API token's ``expiresAt``): a longer
``expiresInSeconds`` is refused naming the field, the default lifetime is cut to it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from kubeloop_api.auth import Access
from kubeloop_api.bodies import StrictJsonRoute
from kubeloop_api.deps import Caller, Services, Svc
from kubeloop_api.errors import ConflictError, InvalidError, NotFoundError, UnauthorizedError
from kubeloop_api.identity import Principal
from kubeloop_api.tokens import TokenRecord

router = APIRouter(prefix="/api/v1/tokens", tags=["API tokens"], route_class=StrictJsonRoute)

_IMPERSONATE_USER: Final = Access("impersonate", "users", group="")
_IMPERSONATE_GROUP: Final = Access("impersonate", "groups", group="")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._-]{0,61}[A-Za-z0-9])?$")


def _identity_name(v: str) -> str:
    # Sent as an impersonation header on every use of the token, where these cannot go.
    if v != v.strip() or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters or surrounding spaces")
    return v


IdentityName = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_identity_name)]

TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="Token id (12 hex digits).")]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)  # "600" is no number

    name: str = Field(min_length=1, max_length=63, description="What the token is for (shown in lists).")
    user: IdentityName | None = Field(default=None, description="User the token acts as; default: you.")
    groups: list[IdentityName] | None = Field(
        default=None, max_length=64, description="Groups the token acts with; default: your groups."
    )
    expires_in_seconds: int | None = Field(
        default=None, alias="expiresInSeconds", ge=60, description="Lifetime; default and maximum are set "
        "by KUBELOOP_API_API_TOKEN_DEFAULT_TTL_S / _MAX_TTL_S, and never past the expiry of the credential "
        "the request is made with (a JWT's exp, an API token's expiresAt): longer is refused, the default "
        "is cut to it."
    )  # fmt: skip

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                "letters, digits, space, '.', '_' and '-' only, starting and ending alphanumeric"
            )
        return v


def _own_groups(caller: Principal) -> list[str]:
    return [g for g in caller.groups if g != "system:authenticated"]


async def _may_impersonate(svc: Services, caller: Principal, user: str, groups: list[str]) -> None:
    await svc.authz.require_access(caller, _IMPERSONATE_USER, None, user)
    for g in groups:
        await svc.authz.require_access(caller, _IMPERSONATE_GROUP, None, g)


def _owns_or_is(svc: Services, caller: Principal, rec: TokenRecord) -> bool:
    """Whether the caller created the token or is who it acts as (as a cluster user, or through an API
    token, whose name then carries the prefix)."""
    acting = rec.principal(svc.settings.api_token_user_prefix).username
    return caller.username in (rec.owner, rec.user, acting)


async def _visible(svc: Services, caller: Principal, token_id: str) -> TokenRecord:
    rec = await svc.tokens.get(token_id)
    if _owns_or_is(svc, caller, rec):
        return rec
    if await svc.authz.allowed(caller, _IMPERSONATE_USER, None, rec.user):
        return rec
    raise NotFoundError(f"API token {token_id!r} not found")


async def _make_room(svc: Services, owner: str) -> None:
    """Bound the token Secrets one owner can make (any authenticated caller may create tokens): ended
    records past ``api_token_record_retention_s`` go (anyone's); an owner with
    ``api_token_max_active_per_owner`` usable tokens gets a 409; the owner's oldest ended records beyond
    ``api_token_max_records_per_owner`` (counting the one about to be made) go."""
    s = svc.settings
    now = datetime.now(UTC)
    retained_since = now - timedelta(seconds=s.api_token_record_retention_s)
    ended: list[tuple[datetime, TokenRecord]] = []
    active = 0
    gone: list[TokenRecord] = []
    for rec in await svc.tokens.list():
        end = rec.ended_at(now)
        if end is not None and end <= retained_since:
            gone.append(rec)
        elif rec.owner == owner:
            if end is None:
                active += 1
            else:
                ended.append((end, rec))
    if active >= s.api_token_max_active_per_owner:
        await _delete(svc, gone)
        raise ConflictError(
            f"{owner} has {active} active API tokens, the most allowed (api_token_max_active_per_owner); "
            "revoke one first"
        )
    excess = active + len(ended) + 1 - s.api_token_max_records_per_owner
    ended.sort(key=lambda e: e[0])
    await _delete(svc, gone + [rec for _, rec in ended[: max(0, excess)]])


async def _delete(svc: Services, records: list[TokenRecord]) -> None:
    for rec in records:
        await svc.tokens.delete(rec.id)
        svc.authn.forget_token(rec.id)


@router.post("", status_code=201, summary="Create an API token (shown once, in this answer)")
async def create_token(svc: Svc, caller: Caller, req: TokenRequest) -> dict[str, Any]:
    s = svc.settings
    user = req.user or caller.username
    groups = sorted(set(req.groups if req.groups is not None else _own_groups(caller)))
    ttl = req.expires_in_seconds or s.api_token_default_ttl_s
    if ttl > s.api_token_max_ttl_s:
        raise InvalidError(f"at most {s.api_token_max_ttl_s} seconds", field="expiresInSeconds")
    if caller.expires_at is not None:
        # A token made with a credential never outlives it: else a 10-minute ServiceAccount token
        # could mint access for a year. Asked for longer: refused (the caller learns why); the
        # default: cut to the credential's lifetime (the store's not_after).
        left = math.floor((caller.expires_at - datetime.now(UTC)).total_seconds())
        if left < 1:
            raise UnauthorizedError("the credential this request was made with has expired")
        if req.expires_in_seconds is not None and req.expires_in_seconds > left:
            raise InvalidError(
                f"at most {left} seconds: the credential this request was made with expires at "
                f"{caller.expires_at.isoformat()}, and a token made with it never outlives it",
                field="expiresInSeconds",
            )
    self_service = (
        caller.source == "kubernetes" and user == caller.username and set(groups) <= set(caller.groups)
    )
    if not self_service:
        await _may_impersonate(svc, caller, user, groups)
    await _make_room(svc, caller.username)
    rec, token = await svc.tokens.create(
        name=req.name,
        user=user,
        groups=groups,
        owner=caller.username,
        ttl_s=ttl,
        not_after=caller.expires_at,
    )
    return {**rec.public(), "token": token}


@router.get("", summary="API tokens you own or that act as you")
async def list_tokens(svc: Svc, caller: Caller) -> dict[str, Any]:
    items = [r.public() for r in await svc.tokens.list() if _owns_or_is(svc, caller, r)]
    return {"items": items}


@router.get("/{token_id}", summary="One API token's record (never the token)")
async def get_token(svc: Svc, caller: Caller, token_id: TokenId) -> dict[str, Any]:
    return (await _visible(svc, caller, token_id)).public()


@router.delete("/{token_id}", summary="Revoke an API token (at once; the record is kept)")
async def revoke_token(svc: Svc, caller: Caller, token_id: TokenId) -> dict[str, Any]:
    await _visible(svc, caller, token_id)
    rec = await svc.tokens.revoke(token_id, caller.username)
    svc.authn.forget_token(token_id)
    return rec.public()

"""Authentication (who is calling) and authorisation of the operations Kubernetes cannot check itself.

Authentication: ``Authorization: Bearer <token>``. Tokens that start with ``klp_`` are API tokens
(:mod:`kubeloop_api.tokens`); anything else is handed to the API server's TokenReview, so every token
the cluster accepts works (ServiceAccount tokens, OIDC, …). Answers are cached for
``auth_cache_ttl_s`` under the token's SHA-256 (never the token); a token the TokenReview rejected is
refused from memory for ``auth_failure_cache_ttl_s`` (the API server's webhook authenticator caches
denials too; an error reaching the API server is not remembered). No credential, or one that is not
accepted: 401. Tokens never reach a log line: this module logs nothing about them but the reason.

Authorisation: everything that is a Kubernetes call is made impersonating the caller, so RBAC decides
(403 from the API server, passed on). Operations on object storage and MLflow are not Kubernetes calls;
they are authorised first by a SubjectAccessReview on the matching Kubeloop resource in the namespace
the data belongs to (:data:`ACCESS` is the whole table, also in the README).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from kubeloop.resources import GROUP
from kubeloop_api.errors import ApiError, ForbiddenError, UnauthorizedError
from kubeloop_api.identity import Principal
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings
from kubeloop_api.tokens import TOKEN_PREFIX, TokenStore, digest

log = logging.getLogger("kubeloop_api.auth")

_CACHE_MAX: Final = 10000


@dataclass(frozen=True, slots=True)
class Access:
    """The Kubernetes permission an operation outside Kubernetes is checked against."""

    verb: str
    resource: str
    group: str = GROUP
    subresource: str = ""


# Operation -> the RBAC permission it needs in the namespace of the data. Datasets feed TrainingJobs
# (whoever may create a TrainingJob may upload its data, and replace it only if it may also update
# one: replacing destroys what was there); registered models come out of TrainingJobs
# (reading them is reading TrainingJob results); an alias decides what ModelDeployments serve, so
# moving one needs the right to change ModelDeployments; a kept training log is a pod log.
ACCESS: Final[dict[str, Access]] = {
    "datasets.upload": Access("create", "trainingjobs"),
    "datasets.overwrite": Access("update", "trainingjobs"),
    "datasets.list": Access("list", "trainingjobs"),
    "datasets.get": Access("get", "trainingjobs"),
    "datasets.delete": Access("delete", "trainingjobs"),
    "models.list": Access("list", "trainingjobs"),
    "models.get": Access("get", "trainingjobs"),
    "models.alias": Access("update", "modeldeployments"),
    "logs.kept": Access("get", "pods", group="", subresource="log"),
}


@dataclass
class _Entry:
    principal: Principal
    until: float


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a token shaped like a JWT (ServiceAccount and OIDC tokens), else None.

    The signature is not checked: this is only called for a token the API server's TokenReview has
    accepted, to know when it ends. Anything unexpected (not three parts, not base64url JSON, no
    numeric ``exp``, out of range) is None: expiry unknown."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            return None
        return datetime.fromtimestamp(exp, UTC)
    except (ValueError, OverflowError, OSError):
        return None


class Authenticator:
    def __init__(self, kube: Kube, tokens: TokenStore, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.kube = kube
        self.tokens = tokens
        self.settings = settings
        self.metrics = metrics
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._rejected: OrderedDict[str, float] = OrderedDict()  # token digest -> refused until (monotonic)

    def _fail(self, reason: str, message: str) -> UnauthorizedError:
        self.metrics.auth_failures.labels(reason).inc()
        return UnauthorizedError(message)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise self._fail("missing", "no credentials: send Authorization: Bearer <token>")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise self._fail("malformed", "Authorization: expected 'Bearer <token>'")
        key = digest(token)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None:
            ends = hit.principal.expires_at
            if hit.until > now and (ends is None or ends > datetime.now(UTC)):
                self._cache.move_to_end(key)
                return hit.principal
            del self._cache[key]
        if token.startswith(TOKEN_PREFIX):
            try:
                rec = await self.tokens.verify(token)
            except UnauthorizedError as e:
                reason = (
                    "expired"
                    if "expired" in e.message
                    else "revoked"
                    if "revoked" in e.message
                    else "rejected"
                )
                self.metrics.auth_failures.labels(reason).inc()
                raise
            principal = rec.principal(self.settings.api_token_user_prefix)
        else:
            refused_until = self._rejected.get(key)
            if refused_until is not None:
                if refused_until > now:
                    raise self._fail("rejected", "token not accepted by the cluster")
                del self._rejected[key]
            status = await self.kube.token_review(token, self.settings.token_audiences)
            user = status.get("user") or {}
            if not status.get("authenticated") or not user.get("username"):
                if self.settings.auth_failure_cache_ttl_s > 0:
                    self._rejected[key] = now + self.settings.auth_failure_cache_ttl_s
                    while len(self._rejected) > _CACHE_MAX:
                        self._rejected.popitem(last=False)
                raise self._fail("rejected", "token not accepted by the cluster")
            principal = Principal(
                username=str(user["username"]),
                groups=tuple(str(g) for g in user.get("groups") or ()),
                uid=str(user.get("uid") or ""),
                # Read only once the cluster accepted the token; a cached answer ends with it too.
                expires_at=jwt_expiry(token),
            )
        if self.settings.auth_cache_ttl_s > 0:
            self._cache[key] = _Entry(principal, now + self.settings.auth_cache_ttl_s)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return principal

    def forget_token(self, token_id: str) -> None:
        """Drop cached answers for an API token (after its revocation)."""
        for key in [k for k, e in self._cache.items() if e.principal.token_id == token_id]:
            del self._cache[key]


class Authorizer:
    """SubjectAccessReviews for operations that are not Kubernetes calls."""

    def __init__(self, kube: Kube, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self._cache: OrderedDict[tuple[object, ...], tuple[bool, float]] = OrderedDict()

    async def allowed(
        self, principal: Principal, access: Access, namespace: str | None, name: str = ""
    ) -> bool:
        attrs = {"verb": access.verb, "group": access.group, "resource": access.resource}
        if namespace is not None:
            attrs["namespace"] = namespace
        if access.subresource:
            attrs["subresource"] = access.subresource
        if name:
            attrs["name"] = name
        key = (principal.username, principal.groups, tuple(sorted(attrs.items())))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        ok, _reason = await self.kube.access_review(principal, attrs)
        if self.settings.sar_cache_ttl_s > 0:
            self._cache[key] = (ok, now + self.settings.sar_cache_ttl_s)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return ok

    async def require(self, principal: Principal, operation: str, namespace: str, name: str = "") -> None:
        """Raise 403 unless the caller holds the permission :data:`ACCESS` maps ``operation`` to."""
        access = ACCESS[operation]
        if not await self.allowed(principal, access, namespace, name):
            self.metrics.authorization_denials.labels(access.resource).inc()
            raise forbidden(principal, access, namespace)

    async def require_access(
        self, principal: Principal, access: Access, namespace: str | None, name: str = ""
    ) -> None:
        if not await self.allowed(principal, access, namespace, name):
            self.metrics.authorization_denials.labels(access.resource).inc()
            raise forbidden(principal, access, namespace, name)


def forbidden(principal: Principal, access: Access, namespace: str | None, name: str = "") -> ApiError:
    """The refusal worded as the API server words it."""
    res = f"{access.resource}.{access.group}" if access.group else access.resource
    sub = f"/{access.subresource}" if access.subresource else ""
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    group = f' in API group "{access.group}"'
    named = f' "{name}"' if name else ""
    return ForbiddenError(
        f'{res}{named} is forbidden: User "{principal.username}" cannot {access.verb} resource '
        f'"{access.resource}{sub}"{group}{where}',
        details={"kind": access.resource, "group": access.group, **({"name": name} if name else {})},
    )

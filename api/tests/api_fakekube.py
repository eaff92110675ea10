"""A small in-memory stand-in for the Kubernetes API behind an httpx transport (unit tests only).

It knows TokenReview (tokens in ``users``), SubjectAccessReview (``allow`` callback), Secrets in any
namespace and the three Kubeloop kinds (create/get/list/patch/delete with resourceVersions), and
records the impersonation headers of every request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
from kubeloop_api.manifests import merge_patch


class FakeKube:
    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 100
        self.requests: list[httpx.Request] = []
        self.allow: Callable[[dict[str, Any]], bool] = lambda spec: True
        self.deny_impersonated: Callable[[str, str, str], bool] = lambda user, verb, ns: False
        self.review_error: int | None = None  # TokenReview answers this status instead of a review

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> httpx.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                "reason": reason, "code": code}  # fmt: skip
        return httpx.Response(code, json=body)

    def handle(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        path = req.url.path
        body = json.loads(req.content) if req.content else None
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            if self.review_error is not None:
                return self._status(self.review_error, "ServiceUnavailable", "the API server is unavailable")
            user = self.users.get(body["spec"]["token"])
            status = {"authenticated": True, "user": user} if user else {"authenticated": False}
            return httpx.Response(201, json={**body, "status": status})
        if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            return httpx.Response(201, json={**body, "status": {"allowed": self.allow(body["spec"])}})
        if path == "/readyz":
            return httpx.Response(200, text="ok")
        m = re.match(
            r"^/(?:apis/kubeloop\.io/v1alpha1|api/v1)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$", path
        )
        if not m:
            return self._status(404, "NotFound", f"no route {path}")
        ns, plural, name = m[1], m[2], m[3]
        user = req.headers.get("impersonate-user", "")
        verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete"}[req.method]  # fmt: skip
        if user and self.deny_impersonated(user, verb, ns):
            return self._status(403, "Forbidden", f'{plural} is forbidden: User "{user}" cannot {verb}')
        key = (ns, plural, name or "")
        if req.method == "POST":
            name = body["metadata"]["name"]
            key = (ns, plural, name)
            if key in self.objects:
                return self._status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj = json.loads(json.dumps(body))
            obj["metadata"].update(
                {"resourceVersion": self._next_rv(), "uid": f"uid-{name}", "generation": 1}
            )
            self.objects[key] = obj
            return httpx.Response(201, json=obj)
        if req.method == "GET" and not name:
            items = [o for (n, p, _), o in sorted(self.objects.items()) if n == ns and p == plural]
            return httpx.Response(200, json={"kind": "List", "items": items,
                                             "metadata": {"resourceVersion": str(self.rv)}})  # fmt: skip
        if key not in self.objects:
            return self._status(404, "NotFound", f'{plural} "{name}" not found')
        obj = self.objects[key]
        if req.method == "GET":
            return httpx.Response(200, json=obj)
        if req.method == "DELETE":
            del self.objects[key]
            return httpx.Response(200, json=obj)
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want and want != obj["metadata"]["resourceVersion"]:
            return self._status(409, "Conflict", "the object has been modified")
        new = merge_patch(obj, body) if req.method == "PATCH" else body
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = new
        return httpx.Response(200, json=new)

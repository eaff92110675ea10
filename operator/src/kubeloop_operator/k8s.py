"""The one module of the reconcilers that talks to the Kubernetes API (kopf's own watching aside).

Every call is idempotent the way a restarted operator needs it: a create that meets 409 adopts the
object that exists when it is ours (same controller owner) and says so when it is not; a delete that
meets 404 is done; Kubeloop resources are only ever patched through their ``status`` subresource
(their ``spec`` belongs to the user and to GitOps tools). Objects travel as plain dicts: the
generated client's model classes are skipped (they cost more CPU than the request itself).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from kubeloop.resources import GROUP
from kubeloop_operator import __version__
from kubeloop_operator.metrics import Metrics

log = logging.getLogger("kubeloop_operator.k8s")

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
FIELD_MANAGER: Final = "kubeloop-operator"
USER_AGENT: Final = f"kubeloop-operator/{__version__}"


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource type the operator reads or writes: enough to build its REST paths."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is needed")
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if sub:
                base += f"/{sub}"
        return base


JOB: Final = Kind("batch/v1", "Job", "jobs")
CRONJOB: Final = Kind("batch/v1", "CronJob", "cronjobs")
POD: Final = Kind("v1", "Pod", "pods")
SERVICE: Final = Kind("v1", "Service", "services")
SECRET: Final = Kind("v1", "Secret", "secrets")
CONFIGMAP: Final = Kind("v1", "ConfigMap", "configmaps")
SERVICE_ACCOUNT: Final = Kind("v1", "ServiceAccount", "serviceaccounts")
EVENT: Final = Kind("v1", "Event", "events")
NAMESPACE: Final = Kind("v1", "Namespace", "namespaces", namespaced=False)
DEPLOYMENT: Final = Kind("apps/v1", "Deployment", "deployments")
HPA: Final = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
ROLE: Final = Kind("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING: Final = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")
TRAININGJOB: Final = Kind(f"{GROUP}/v1alpha1", "TrainingJob", "trainingjobs")
MODELDEPLOYMENT: Final = Kind(f"{GROUP}/v1alpha1", "ModelDeployment", "modeldeployments")
DRIFTMONITOR: Final = Kind(f"{GROUP}/v1alpha1", "DriftMonitor", "driftmonitors")
CLUSTER_PEERING: Final = Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False)

KINDS: Final[dict[tuple[str, str], Kind]] = {
    (k.api_version, k.kind): k
    for k in (
        JOB,
        CRONJOB,
        POD,
        SERVICE,
        SECRET,
        CONFIGMAP,
        SERVICE_ACCOUNT,
        EVENT,
        NAMESPACE,
        DEPLOYMENT,
        HPA,
        ROLE,
        ROLE_BINDING,
        TRAININGJOB,
        MODELDEPLOYMENT,
        DRIFTMONITOR,
    )
}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
    if key not in KINDS:
        raise ValueError(f"the operator does not manage {key[1]} ({key[0]}); add it to k8s.KINDS")
    return KINDS[key]


class KubeError(Exception):
    """The API server refused a request (or could not be reached: ``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str, *, what: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.what = what
        super().__init__(f"{what}: {status} {reason}: {message}" if what else f"{status} {reason}: {message}")

    @property
    def permanent(self) -> bool:
        """Refused for what was asked (invalid, bad request), not for the moment: retrying cannot help."""
        return self.status in (400, 422)


class NameConflictError(KubeError):
    """A child's name is taken by an object that another owner controls."""

    def __init__(self, kind: str, namespace: str, name: str, owner: str) -> None:
        super().__init__(
            409,
            "NameConflict",
            f"{kind} {namespace}/{name} already exists and is controlled by {owner or 'nobody'}, "
            "not by this resource; rename or delete it",
            what=f"create {kind} {namespace}/{name}",
        )


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def controller_desc(obj: Mapping[str, Any]) -> str:
    """The controller an object names, for a message (``""``: none)."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    return ""


def _controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next(
        (r for r in obj.get("metadata", {}).get("ownerReferences") or [] if r.get("controller")), None
    )


def _earlier_owner(manifest: Mapping[str, Any], existing: Mapping[str, Any]) -> str:
    """``existing``'s controller when it is an earlier object of the manifest's controller's kind and
    name (deleted and created again), for a message; ``""`` otherwise."""
    mine, theirs = _controller_ref(manifest), _controller_ref(existing)
    if mine is None or theirs is None or not mine.get("kind") or not mine.get("name"):
        return ""
    same = all(theirs.get(k) == mine.get(k) for k in ("apiVersion", "kind", "name"))
    return f"{theirs.get('kind')} {theirs.get('name')} (uid {theirs.get('uid')})" if same else ""


def check_adoptable(manifest: Mapping[str, Any], existing: Mapping[str, Any]) -> None:
    """Whether ``existing`` (found under the manifest's name) may be taken as the manifest's object:
    raises :class:`KubeError` 409 ``Terminating`` when it is on its way out (being deleted, or left by an
    earlier owner of the same kind and name), :class:`NameConflictError` when someone else controls it."""
    kind = kind_of(manifest)
    meta = manifest.get("metadata") or {}
    ns, name = str(meta.get("namespace")), str(meta.get("name") or "")
    what = f"create {kind.kind} {ns}/{name}"
    if existing.get("metadata", {}).get("deletionTimestamp"):
        raise KubeError(409, "Terminating", "an older object of this name is being deleted", what=what)
    want = controller_uid(manifest)
    if want is None or controller_uid(existing) == want:
        return
    earlier = _earlier_owner(manifest, existing)
    if earlier:
        # No two objects of one kind share a name: that owner is gone, and the garbage collector
        # removes what it controlled. Nothing for anyone to rename or delete.
        raise KubeError(
            409,
            "Terminating",
            f"{kind.kind} {ns}/{name} of an earlier {earlier} of this name is still there; "
            "the garbage collector removes it",
            what=what,
        )
    raise NameConflictError(kind.kind, ns, name, controller_desc(existing))


def _load_client_configuration(kubeconfig: str | None) -> Any:
    """In a pod: its ServiceAccount (token refreshed by the client); elsewhere a kubeconfig file."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class Kube:
    """Synchronous, thread-safe access to the API server for the reconcilers (kopf runs them in threads)."""

    def __init__(self, api_client: Any, *, timeout_s: float = 30.0, metrics: Metrics | None = None) -> None:
        self._api = api_client
        self._timeout = timeout_s
        self._metrics = metrics
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        *,
        timeout_s: float = 30.0,
        pool_size: int = 16,
        metrics: Metrics | None = None,
    ) -> Kube:
        from kubernetes import client

        cfg = _load_client_configuration(kubeconfig)
        cfg.connection_pool_maxsize = pool_size
        api = client.ApiClient(cfg)
        api.user_agent = USER_AGENT
        return cls(api, timeout_s=timeout_s, metrics=metrics)

    def close(self) -> None:
        self._api.close()

    # --- transport ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str | int] | None = None,
        content_type: str = JSON,
        what: str = "",
        raw: bool = False,
    ) -> Any:
        """One request; returns the parsed JSON (``raw``: the text) or raises :class:`KubeError`."""
        # Logs come as text, but the API server negotiates its error documents: accept anything.
        headers = {"Accept": "*/*" if raw else JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=[(k, str(v)) for k, v in (query or {}).items()],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        t0 = time.perf_counter()
        status = 0
        try:
            resp = self._api.call_api(*params, _request_timeout=self._timeout)
            status = int(resp.status)
            data: bytes = resp.read() or b""
        except Exception as e:  # urllib3 / TLS / timeout: the API server was not reached
            raise KubeError(
                0, "Unreachable", f"{type(e).__name__}: {e}", what=what or f"{method} {path}"
            ) from e
        finally:
            if self._metrics is not None:
                self._metrics.observe_api(method, path, status, time.perf_counter() - t0)
        if not 200 <= status < 300:
            reason, message = str(status), data.decode(errors="replace")[:2000]
            try:
                doc = json.loads(data)
                reason, message = str(doc.get("reason") or reason), str(doc.get("message") or message)
            except (ValueError, AttributeError):
                pass
            raise KubeError(status, reason, message, what=what or f"{method} {path}")
        if raw:
            return data.decode(errors="replace")
        return json.loads(data) if data else None

    # --- objects ----------------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request(
                "GET", kind.path(namespace, name), what=f"get {kind.kind} {name}"
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return obj

    def list(
        self, kind: Kind, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query: dict[str, str | int] = {"labelSelector": label_selector} if label_selector else {}
        doc = self.request("GET", kind.path(namespace), query=query, what=f"list {kind.plural}")
        return list(doc.get("items") or [])

    def create(self, manifest: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create; on 409 adopt the existing object if its controller is the manifest's controller.

        Returns the object and whether this call created it; raises :class:`NameConflictError` when the name is
        taken by someone else's object."""
        kind = kind_of(manifest)
        meta = manifest.get("metadata") or {}
        ns, name = meta.get("namespace"), str(meta.get("name") or "")
        if not name:
            raise ValueError(f"{kind.kind} without metadata.name: children get deterministic names")
        what = f"create {kind.kind} {ns}/{name}"
        try:
            obj: dict[str, Any] = self.request(
                "POST", kind.path(ns), body=dict(manifest), query={"fieldManager": FIELD_MANAGER}, what=what
            )
            return obj, True
        except KubeError as e:
            if e.status != 409:
                raise
        existing = self.get(kind, ns, name)
        if existing is None:  # deleted between the two calls; the next reconcile creates it
            raise KubeError(409, "Conflict", "the object existed and is now gone; retry", what=what)
        check_adoptable(manifest, existing)
        return existing, False

    def patch(self, kind: Kind, namespace: str | None, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch of a child. Kubeloop resources are refused: their spec is not ours."""
        if kind.group == GROUP:
            raise ValueError(f"the operator never patches a {kind.kind} itself; use patch_status")
        obj: dict[str, Any] = self.request(
            "PATCH",
            kind.path(namespace, name),
            body=dict(patch),
            content_type=MERGE_PATCH,
            query={"fieldManager": FIELD_MANAGER},
            what=f"patch {kind.kind} {namespace}/{name}",
        )
        return obj

    def patch_status(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """JSON merge patch of ``status`` through the status subresource; None when the object is gone.
        With ``resource_version`` the write only happens if the object is still at that version
        (else :class:`KubeError` 409): for status shared by two writers that must not lose updates."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            obj: dict[str, Any] = self.request(
                "PATCH",
                kind.path(namespace, name, "status"),
                body=body,
                content_type=MERGE_PATCH,
                query={"fieldManager": FIELD_MANAGER},
                what=f"patch {kind.kind} {namespace}/{name} status",
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return obj

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete (404 tolerated: False). ``uid`` makes sure a newer object of that name is spared."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", kind.path(namespace, name), body=body, what=f"delete {kind.kind} {name}")
        except KubeError as e:
            if e.status == 404 or (e.status == 409 and uid):  # gone, or replaced by another object
                return False
            raise
        return True

    def read_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        tail_lines: int | None = None,
        limit_bytes: int | None = None,
    ) -> str | None:
        """A container's log (its current run); None when the pod or its log is gone."""
        query: dict[str, str | int] = {"container": container}
        if tail_lines is not None:
            query["tailLines"] = tail_lines
        if limit_bytes is not None:
            query["limitBytes"] = limit_bytes
        try:
            text: str = self.request(
                "GET", POD.path(namespace, pod, "log"), query=query, raw=True, what=f"read log of {pod}"
            )
        except KubeError as e:
            if e.status in (400, 404):  # gone, or not started yet
                return None
            raise
        return text

    def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        name: str,
        type_: str,
        reason: str,
        message: str,
    ) -> bool:
        """A core/v1 Event about ``involved`` (its metadata and kind). The name is deterministic, so a
        replay after a restart meets 409 and posts nothing twice. Returns whether it was posted."""
        meta = involved.get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"kubeloop.io/{FIELD_MANAGER}",
            "reportingInstance": self._instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.request("POST", EVENT.path(meta.get("namespace")), body=event, what=f"post event {reason}")
        except KubeError as e:
            if e.status == 409:
                return False
            raise
        return True


__all__ = [
    "CRONJOB",
    "DEPLOYMENT",
    "DRIFTMONITOR",
    "EVENT",
    "HPA",
    "JOB",
    "KINDS",
    "MODELDEPLOYMENT",
    "POD",
    "ROLE",
    "ROLE_BINDING",
    "SECRET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "TRAININGJOB",
    "Kind",
    "Kube",
    "KubeError",
    "NameConflictError",
    "check_adoptable",
    "controller_desc",
    "controller_uid",
    "kind_of",
]

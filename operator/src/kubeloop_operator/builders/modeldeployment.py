"""ModelDeployment -> one Deployment per track (stable, and canary when there is one), one Service in
front of both, and a HorizontalPodAutoscaler when ``autoscaling`` is set. Pure: no I/O.

Traffic split. Plain Deployments and a Service, no mesh: the Service selects the *Ready* server pods of
both tracks and the proxy spreads new connections evenly over them, so a track's share of traffic is
its share of ready replicas. :func:`split_replicas` turns ``canary.trafficPercent`` into replica counts:
with N replicas in all (N >= 2) the canary gets ``k = round(N * p / 100)`` replicas, clamped to
``1..N-1`` so that both tracks exist while ``0 < p < 100``, and the achievable shares are the
multiples of 1/N. The error against the request is at most 1/(2N) (12.5 points for N=4, 5 points for
N=10) unless the clamp applies (p < 50/N or p > 100 - 50/N). One replica cannot be split: with N=1
and ``0 < p < 100`` both tracks run one replica (50 %); the canary is never silently dropped.
``status.canary.trafficPercent`` reports the share the split gives, ``weight`` per track the share of
the ready endpoints at the moment. On top of the split, each connection picks an endpoint at random,
so n connections show binomial noise of ``sqrt(s(1-s)/n)`` around the share s.

Rollouts. Every pod template carries the pinned model (URI, name, version, digest) and a hash of the
whole template (``kubeloop.io/config-hash``). A new version is a new template: the Deployment rolls
with ``maxUnavailable: 0``, so an old pod goes only after a new one passes readiness on the server's
model-ready endpoint for the expected name and version. A version that fails to load never becomes
ready, never gets traffic, and the old pods keep serving.

Shutdown. A preStop sleep lets endpoints drop the pod before the server sees SIGTERM; the server
then answers readiness 503 and keeps serving for its drain time, closes its listeners, finishes what
is in flight and flushes its prediction log. ``terminationGracePeriodSeconds`` covers all of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubeloop import podenv
from kubeloop.contracts import Labels, ServerEnv
from kubeloop.naming import model_deployment_service_name
from kubeloop.resources import GROUP, VERSION, ModelDeploymentSpec, ModelRef
from kubeloop_operator.builders.common import (
    Owner,
    child_name,
    container_resources,
    label_value,
    labels,
    merge_diff,
    metadata,
    owned_patch,
    owned_pod_template,
    tolerations,
)

Track = Literal["stable", "canary"]
TRACKS: Final[tuple[Track, ...]] = ("stable", "canary")

CONTAINER: Final = "server"
COMPONENT: Final = "serving"
APP_NAME: Final = "kubeloop-server"
TRACK_LABEL: Final = "kubeloop.io/track"
MODEL_VERSION_LABEL: Final = "kubeloop.io/model-version"
CONFIG_HASH: Final = "kubeloop.io/config-hash"
MODEL_URI_ANNOTATION: Final = "kubeloop.io/model-uri"
MODEL_DIGEST_ANNOTATION: Final = "kubeloop.io/model-digest"
MODEL_DIGEST_ENV: Final = ServerEnv.MODEL_DIGEST

HTTP_PORT: Final = 8080
GRPC_PORT: Final = 8081
LIVE_PATH: Final = "/v2/health/live"
# The server's own shutdown budget (kubeloop_server.settings: drain_seconds 3 + graceful_timeout_s 15 +
# flush_timeout_s 10), the preStop sleep before it, and a margin.
SERVER_SHUTDOWN_S: Final = 28
PRE_STOP_SLEEP_S: Final = 5
TERMINATION_GRACE_S: Final = PRE_STOP_SLEEP_S + SERVER_SHUTDOWN_S + 7
# A model may take a while to fetch and load; the server listens only once it is loaded.
STARTUP_PERIOD_S: Final = 1
STARTUP_FAILURES: Final = 240
# A rollout that has not progressed for this long is reported as stuck (ProgressDeadlineExceeded)
# even when no pod says why; pods that do say why are reported within seconds.
PROGRESS_DEADLINE_S: Final = 300


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model reference resolved to the exact file a track serves (what gets pinned)."""

    ref: str
    """What it was resolved from: ``name@alias``, ``name/version`` or the URI."""
    name: str
    """Name the server serves it under (OIP ``/v2/models/{name}``)."""
    version: str
    """Version the server reports; empty when unknown (a URI the operator cannot read)."""
    uri: str
    digest: str | None = None
    """``sha256:<hex>`` of the ONNX file, when the operator could read it."""
    baseline_uri: str | None = None
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class ServerPodConfig:
    """The operator-wide part of a server pod: image and object store (credentials from a Secret)."""

    image: str
    image_pull_policy: str
    store: podenv.ObjectStoreAccess | None
    max_surge: str = "25%"
    """maxSurge of rolling updates: a count or a percent ("25%"); never 0 (maxUnavailable is 0)."""


def max_surge(value: str) -> int | str:
    """The Deployment's maxSurge from the setting: an int for a count (at least 1), else the percent."""
    if value.endswith("%"):
        return value if value.rstrip("%").lstrip("0") else "1%"
    return max(1, int(value))


def ref_key(ref: ModelRef) -> str:
    """A model reference as one string (what :attr:`ResolvedModel.ref` holds)."""
    if ref.uri is not None:
        return ref.uri
    if ref.alias is not None:
        return f"{ref.name}@{ref.alias}"
    return f"{ref.name}/{ref.version}"


def deployment_name(md_name: str, track: Track) -> str:
    return child_name(md_name, track)


def service_name(md_name: str) -> str:
    return model_deployment_service_name(md_name)


def hpa_name(md_name: str) -> str:
    return child_name(md_name)


def selector_labels(owner: Owner) -> dict[str, str]:
    """What the Service (and the scale subresource's selector) match: the server pods of both tracks."""
    return {Labels.OWNER_UID: owner.uid, Labels.COMPONENT: COMPONENT}


def selector(owner: Owner) -> str:
    """``status.selector``: the label selector the HPA counts pods with."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def urls(owner: Owner) -> tuple[str, str]:
    """In-cluster addresses of the Service: the HTTP base URL and the gRPC host:port."""
    host = f"{service_name(owner.name)}.{owner.namespace}.svc"
    return f"http://{host}:{HTTP_PORT}", f"{host}:{GRPC_PORT}"


def ready_path(model: ResolvedModel) -> str:
    """The server's model-ready endpoint for the exact name and version: 200 only when that model is
    loaded and the server is not draining (404 for another name or version, 503 while draining)."""
    if model.version:
        return f"/v2/models/{model.name}/versions/{model.version}/ready"
    return f"/v2/models/{model.name}/ready"


# --- replicas ---------------------------------------------------------------------------------------


def total_replicas(spec: ModelDeploymentSpec) -> int:
    """Replicas of both tracks together: 0 when suspended; ``replicas`` (set by the user, ``kubectl
    scale`` or the HPA) within the autoscaling bounds when there are some."""
    if spec.suspend:
        return 0
    if spec.autoscaling is not None:
        return min(max(spec.replicas, spec.autoscaling.min_replicas), spec.autoscaling.max_replicas)
    return spec.replicas


def split_replicas(total: int, canary_percent: int | None) -> tuple[int, int]:
    """(stable, canary) replicas for ``total`` and the canary's requested share (None: no canary).
    See the module docstring for the precision this gives."""
    if canary_percent is None or canary_percent <= 0 or total <= 0:
        return max(total, 0), 0
    if canary_percent >= 100:
        return 0, total
    if total == 1:
        return 1, 1
    canary = int(total * canary_percent / 100 + 0.5)
    canary = min(max(canary, 1), total - 1)
    return total - canary, canary


def split_percent(stable: int, canary: int) -> int:
    """The canary's share, in percent, of a (stable, canary) split."""
    total = stable + canary
    return round(100 * canary / total) if total else 0


def desired_replicas(spec: ModelDeploymentSpec) -> dict[Track, int]:
    stable, canary = split_replicas(
        total_replicas(spec), spec.canary.traffic_percent if spec.canary is not None else None
    )
    return {"stable": stable, "canary": canary}


# --- manifests --------------------------------------------------------------------------------------


def config_hash(obj: Any) -> str:
    """A short, stable hash of a manifest fragment (sorted keys): changes exactly when it changes."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def track_labels(owner: Owner, track: Track) -> dict[str, str]:
    return labels(owner, name=APP_NAME, component=COMPONENT, extra={TRACK_LABEL: track})


def server_env(
    owner: Owner, spec: ModelDeploymentSpec, model: ResolvedModel, cfg: ServerPodConfig
) -> list[dict[str, Any]]:
    env = podenv.server_env(
        spec,
        podenv.ServerContext(
            namespace=owner.namespace,
            deployment=owner.name,
            model=podenv.ServedModel(uri=model.uri, name=model.name, version=model.version),
            store=cfg.store,
            port=HTTP_PORT,
            grpc_port=GRPC_PORT,
        ),
    )
    if model.digest:
        env[MODEL_DIGEST_ENV] = model.digest
    return podenv.to_k8s_env(env)


def server_container(
    owner: Owner, spec: ModelDeploymentSpec, model: ResolvedModel, cfg: ServerPodConfig
) -> dict[str, Any]:
    http = {"path": LIVE_PATH, "port": "http", "scheme": "HTTP"}
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "env": server_env(owner, spec, model, cfg),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        # The server listens once the model is loaded; until then only this probe runs.
        "startupProbe": {
            "httpGet": http,
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": 2,
            "failureThreshold": STARTUP_FAILURES,
        },
        # Ready = this exact model and version is loaded and the server is not draining.
        "readinessProbe": {
            "httpGet": {**http, "path": ready_path(model)},
            "periodSeconds": 1,
            "timeoutSeconds": 2,
            "successThreshold": 1,
            "failureThreshold": 2,
        },
        "livenessProbe": {"httpGet": http, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        # Endpoints drop the pod while it sleeps; the server's own drain follows SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_S}}},
        # The server writes "ModelLoadFailed: <why>" there; a crash without one still says something.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = container_resources(spec.resources)
    if resources:
        c["resources"] = resources
    return c


def build_deployment(
    owner: Owner,
    spec: ModelDeploymentSpec,
    track: Track,
    model: ResolvedModel,
    replicas: int,
    cfg: ServerPodConfig,
) -> dict[str, Any]:
    """The track's Deployment. Its selector (owner UID + track) never changes; the template carries the
    pinned model and the config hash, so a new version (or any other change) is a rolling update."""
    lbl = track_labels(owner, track)
    pod_labels = {**lbl, MODEL_VERSION_LABEL: label_value(model.version or "unknown")}
    annotations = {MODEL_URI_ANNOTATION: model.uri}
    if model.digest:
        annotations[MODEL_DIGEST_ANNOTATION] = model.digest
    pod_spec: dict[str, Any] = {
        "containers": [server_container(owner, spec, model, cfg)],
        # The server talks to the object store only: no API credentials, no Service links.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = tolerations(spec.tolerations)
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": {Labels.OWNER_UID: owner.uid, TRACK_LABEL: track}},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": max_surge(cfg.max_surge)},
        },
        "revisionHistoryLimit": 2,
        "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
    }
    digest = config_hash(dep_spec)
    dep_spec["template"]["metadata"]["labels"][CONFIG_HASH] = digest
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, deployment_name(owner.name, track), lbl, {CONFIG_HASH: digest}),
        "spec": {"replicas": replicas, **dep_spec},
    }


def build_service(owner: Owner) -> dict[str, Any]:
    """One Service for both tracks; only Ready pods become its endpoints."""
    svc_spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": selector_labels(owner),
        "ports": [
            {
                "name": "http",
                "port": HTTP_PORT,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
            },
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            },
        ],
    }
    lbl = labels(owner, name=APP_NAME, component=COMPONENT)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, service_name(owner.name), lbl, {CONFIG_HASH: config_hash(svc_spec)}),
        "spec": svc_spec,
    }


def build_hpa(owner: Owner, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """An HPA on the ModelDeployment's scale subresource (it sets ``spec.replicas``; the operator splits
    that over the tracks); None without ``autoscaling``."""
    a = spec.autoscaling
    if a is None:
        return None
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": owner.kind, "name": owner.name},
        "minReplicas": a.min_replicas,
        "maxReplicas": a.max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization},
                },
            }
        ],
    }
    lbl = labels(owner, name=APP_NAME, component=COMPONENT)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, hpa_name(owner.name), lbl, {CONFIG_HASH: config_hash(hpa_spec)}),
        "spec": hpa_spec,
    }


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return str(((manifest.get("metadata") or {}).get("annotations") or {}).get(CONFIG_HASH, ""))


# The fields of a Service's and an HPA's spec (and of each Service port) that build_service and
# build_hpa set, and hash: the same projection of a live object hashes the same unless someone
# edited one of them (what the API server defaults — clusterIP, sessionAffinity, behavior — is left out).
_SPEC_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Service": ("type", "selector", "ports"),
    "HorizontalPodAutoscaler": ("scaleTargetRef", "minReplicas", "maxReplicas", "metrics"),
}
_PORT_FIELDS: Final = ("name", "port", "targetPort", "protocol", "appProtocol")


def live_hash(body: Mapping[str, Any]) -> str:
    """The config hash of a live Service's or HPA's own fields as they are now (``""`` for another
    kind): equal to its config-hash annotation unless the object was edited by hand."""
    fields = _SPEC_FIELDS.get(str(body.get("kind")))
    if fields is None:
        return ""
    spec = body.get("spec") or {}
    live = {k: spec[k] for k in fields if k in spec}
    if isinstance(live.get("ports"), list):
        live["ports"] = [
            {k: p[k] for k in _PORT_FIELDS if k in p} if isinstance(p, Mapping) else p for p in live["ports"]
        ]
    return config_hash(live)


# --- the Deployment's own fields -------------------------------------------------------------------------
#
# ``kubectl edit`` keeps the config-hash annotation, so the annotation cannot tell whether the live
# template is still the one built. :func:`owned_fields` projects a Deployment (built or live) onto the
# fields the operator owns, in a normal form in which what the API server fills in (defaults, canonical
# quantities) and what other tools add (``kubectl rollout restart``'s annotation, a mesh's labels,
# ``paused``, the replica count the scale path decides) disappear: a built and a live Deployment project
# the same unless someone edited one of the operator's fields.

# Fields of the Deployment spec the builder sets ("template" is projected on its own).
_DEPLOYMENT_FIELDS: Final = (
    "selector",
    "strategy",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "minReadySeconds",
)


def owned_fields(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a Deployment's spec the operator owns, in normal form (see above); the replica
    count is not among them. Equal for a built Deployment and the same one as the API server keeps it."""
    spec = deployment.get("spec") or {}
    out: dict[str, Any] = {k: spec[k] for k in _DEPLOYMENT_FIELDS if spec.get(k) is not None}
    out["template"] = owned_pod_template(spec.get("template"))
    return out


def owned_hash(deployment: Mapping[str, Any]) -> str:
    """:func:`config_hash` of :func:`owned_fields`: differs between the built and the live Deployment
    exactly when one of the operator's fields was edited by hand."""
    return config_hash(owned_fields(deployment))


def deployment_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that brings a live Deployment's owned fields (:func:`owned_fields`), replica
    count and our metadata to the built ``desired`` one, and nothing else: defaults, other tools'
    annotations and labels stay. ``{}`` when there is nothing to change."""
    want_spec = desired.get("spec") or {}
    have_spec = live.get("spec") or {}
    spec = owned_patch(owned_fields(live), owned_fields(desired), want_spec)
    if "replicas" in want_spec and have_spec.get("replicas") != want_spec["replicas"]:
        spec["replicas"] = want_spec["replicas"]
    return _with_metadata(spec, live, desired)


# --- patches -----------------------------------------------------------------------------------------


def spec_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The patch that brings a live child's spec and our annotations/labels to the desired manifest,
    leaving fields the API server defaulted alone (they are not in the desired spec, so only the
    fields we set are compared, recursively)."""
    return _with_metadata(_overlay(live.get("spec") or {}, desired.get("spec") or {}), live, desired)


def _with_metadata(
    spec: dict[str, Any], live: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[str, Any]:
    """A patch of ``spec`` (when not empty) and of our labels and annotations (when they differ)."""
    patch: dict[str, Any] = {}
    if spec:
        patch["spec"] = spec
    meta = _metadata_patch(live, desired)
    if meta:
        patch["metadata"] = meta
    return patch


def _metadata_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Our labels and annotations where the live object lacks them or has other values (others' stay)."""
    meta: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        want = (desired.get("metadata") or {}).get(field) or {}
        have = (live.get("metadata") or {}).get(field) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            meta[field] = changed
    return meta


def _overlay(live: Any, desired: Any) -> Any:
    """Like :func:`merge_diff`, but keys only the live side has are kept where the API server may have
    defaulted them: removed only inside maps we own whole (labels, annotations, nodeSelector, selector
    of a Service, resources)."""
    if not isinstance(live, Mapping) or not isinstance(desired, Mapping):
        return desired
    patch: dict[str, Any] = {}
    for k, v in desired.items():
        if k not in live:
            patch[k] = v
        elif live[k] != v:
            if isinstance(v, Mapping) and k in _OWNED_MAPS:
                patch[k] = merge_diff(live[k], v)
            elif isinstance(v, Mapping):
                sub = _overlay(live[k], v)
                if sub:
                    patch[k] = sub
            else:
                patch[k] = v
    return patch


# Maps whose every key the operator decides: a key the desired manifest lacks must go.
_OWNED_MAPS: Final = frozenset({"labels", "annotations", "nodeSelector", "selector", "matchLabels"})

"""A server Deployment edited by hand (``kubectl edit``: image, env, resources, an added container or
volume) is put back to what the builder makes, once; what the operator does not own — fields the API
server defaults, annotations other tools add (``kubectl rollout restart``), ``paused`` — is left alone.

``kubectl edit`` keeps our config-hash annotation, so the annotation alone cannot tell: the live
template's own fields are compared (:func:`owned_hash`) and restored (:func:`deployment_patch`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubeloop_operator.builders import modeldeployment as b
from kubeloop_operator.reconcile import modeldeployment as rec
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.status.modeldeployment import summarize_deployment
from test_builders_modeldeployment import CFG, OWNER, V3, example_spec
from test_reconcile_modeldeployment import (
    SPEC,
    FakeKube,
    FakeResolver,
    _merge,
    body,
    last_status,
    view,
    world,
    writes,
)

from kubeloop.resources import ModelDeploymentSpec

__all__ = ["world"]  # the fixture, imported for its name

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def desired(**changes: Any) -> dict[str, Any]:
    spec = example_spec(
        resources={
            "requests": {"cpu": "0.5", "memory": "256Mi"},
            "limits": {"cpu": "1000m", "memory": "1Gi"},
        },
        nodeSelector={"pool": "cpu"},
        **changes,
    )
    return b.build_deployment(OWNER, spec, "stable", V3, 2, CFG)


def as_stored(dep: dict[str, Any]) -> dict[str, Any]:
    """``dep`` as the API server returns it: defaults filled in, quantities canonical, a status."""
    live = copy.deepcopy(dep)
    live["metadata"].update(uid="d-1", generation=1, resourceVersion="7")
    live["spec"]["template"]["metadata"].setdefault("creationTimestamp", None)
    pod = live["spec"]["template"]["spec"]
    pod.update(
        restartPolicy="Always",
        dnsPolicy="ClusterFirst",
        schedulerName="default-scheduler",
        securityContext={},
    )
    for c in pod["containers"]:
        c["terminationMessagePath"] = "/dev/termination-log"
        for probe in ("startupProbe", "livenessProbe"):
            c[probe].setdefault("successThreshold", 1)
        for e in c["env"]:
            ref = (e.get("valueFrom") or {}).get("fieldRef")
            if ref is not None:
                ref.setdefault("apiVersion", "v1")
        c["resources"] = {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        }
    live["status"] = {"observedGeneration": 1, "replicas": 2}
    return live


def merged(live: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(live)
    _merge(out, patch)
    return out


def test_what_the_api_server_and_other_tools_add_is_no_drift() -> None:
    want = desired()
    live = as_stored(want)
    tpl = live["spec"]["template"]
    tpl["metadata"].setdefault("annotations", {})[RESTARTED_AT] = "2026-11-27T00:00:00Z"
    tpl["metadata"]["labels"]["sidecar.example.com/inject"] = "true"
    live["spec"]["replicas"] = 5  # the replica count is decided elsewhere (scale), not by the template
    live["spec"]["paused"] = True  # `kubectl rollout pause`
    assert b.owned_hash(live) == b.owned_hash(want)
    assert summarize_deployment(live).owned_hash == b.owned_hash(want)
    assert b.deployment_patch(live, {**want, "spec": {**want["spec"], "replicas": 5}}) == {}


def _set_image(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    c["image"] = "evil/server:latest"


def _set_env(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    next(e for e in c["env"] if "value" in e)["value"] = "edited"


def _add_env(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    c["env"].append({"name": "DEBUG", "value": "1"})


def _set_limit(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    c["resources"]["limits"]["memory"] = "8Gi"


def _add_sidecar(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    tpl["spec"]["containers"].append({"name": "debug", "image": "busybox"})


def _add_volume(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    tpl["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    c["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]


def _drop_node_selector(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    tpl["spec"]["nodeSelector"] = {"pool": "gpu", "extra": "x"}


def _drop_grace(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    tpl["spec"]["terminationGracePeriodSeconds"] = 30


def _drop_our_annotation(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    del tpl["metadata"]["annotations"][b.MODEL_DIGEST_ANNOTATION]


def _edit_probe(c: dict[str, Any], tpl: dict[str, Any]) -> None:
    c["readinessProbe"]["httpGet"]["path"] = "/v2/health/ready"


@pytest.mark.parametrize(
    "edit",
    [
        _set_image,
        _set_env,
        _add_env,
        _set_limit,
        _add_sidecar,
        _add_volume,
        _drop_node_selector,
        _drop_grace,
        _drop_our_annotation,
        _edit_probe,
    ],
)
def test_a_hand_edit_of_an_owned_field_is_drift_and_the_patch_undoes_it(edit: Any) -> None:
    want = desired()
    live = as_stored(want)
    tpl = live["spec"]["template"]
    tpl["metadata"]["annotations"][RESTARTED_AT] = "2026-11-27T00:00:00Z"
    edit(tpl["spec"]["containers"][0], tpl)
    assert b.owned_hash(live) != b.owned_hash(want)
    patch = b.deployment_patch(live, want)
    assert set(patch) == {"spec"}
    assert "replicas" not in patch["spec"]
    fixed = merged(live, patch)
    assert b.owned_hash(fixed) == b.owned_hash(want)
    assert b.owned_hash(as_stored(fixed)) == b.owned_hash(want)  # and once the server defaults it again
    assert fixed["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == "2026-11-27T00:00:00Z"
    assert b.deployment_patch(fixed, want) == {}


def test_a_new_template_keeps_annotations_other_tools_added() -> None:
    # A rollout to a new version must not drop `kubectl rollout restart`'s annotation (or another
    # controller's): only the operator's own keys of the template's maps are its to remove.
    live = as_stored(desired())
    live["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] = "t0"
    new = b.build_deployment(OWNER, example_spec(), "stable", V3, 2, CFG)
    fixed = merged(live, b.deployment_patch(live, new))
    annotations = fixed["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTARTED_AT] == "t0"
    assert b.owned_hash(fixed) == b.owned_hash(new)


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    if isinstance(obj, dict) and obj:
        return {p for k, v in obj.items() for p in _leaves(v, (*path, k))}
    if isinstance(obj, list) and obj:
        return {p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))}
    return {path}


def test_the_projection_keeps_every_field_the_builder_sets() -> None:
    # A field the builder sets but owned_fields leaves out could be edited by hand unnoticed.
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "m", "alias": "champion"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"pool": "cpu"},
            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        }
    )
    dep = b.build_deployment(OWNER, spec, "stable", V3, 1, CFG)
    built = _leaves({k: v for k, v in dep["spec"].items() if k != "replicas"})
    missing = built - _leaves(b.owned_fields(dep))
    # successThreshold 1 is the API server's default: its normal form is its absence.
    assert missing == {("template", "spec", "containers", 0, "readinessProbe", "successThreshold")}


# --- the reconciler ---------------------------------------------------------------------------------------


def test_the_reconciler_puts_a_hand_edited_deployment_back_once_and_leaves_a_restart_alone(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    rt, kube, _ = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    dep = kube.objects[("deployments", "md-stable")]
    want = copy.deepcopy(dep["spec"]["template"])
    rt.memory.of("uid-md").children.clear()  # long after the creation: no hint left

    dep["spec"]["template"]["metadata"].setdefault("annotations", {})[RESTARTED_AT] = "t1"
    kube.writes.clear()
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    assert writes(kube, "patch", "create") == []

    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["image"] = "evil/server:latest"
    c["env"].append({"name": "DEBUG", "value": "1"})
    dep["metadata"]["generation"] += 1
    kube.writes.clear()
    for _ in range(3):  # once: no flapping
        rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    assert writes(kube, "patch", "create") == [("patch", "deployments", "md-stable")]
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["annotations"].pop(RESTARTED_AT) == "t1"
    assert tpl == want


def test_an_empty_env_value_the_api_server_drops_is_no_drift() -> None:
    # The API server stores {"name": "X", "value": ""} as {"name": "X"} (omitempty).
    want = desired()
    want["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EMPTY", "value": ""})
    live = as_stored(want)
    live["spec"]["template"]["spec"]["containers"][0]["env"][-1] = {"name": "EMPTY"}
    assert b.owned_hash(live) == b.owned_hash(want)

"""The ModelDeployment reconciler against a fake API and a fake resolver (no cluster): what it creates,
patches and deletes, and that an unchanged world costs no write at all."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from kubeloop_operator import k8s
from kubeloop_operator.builders.modeldeployment import CONFIG_HASH, ResolvedModel, ref_key
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.reconcile import modeldeployment as rec
from kubeloop_operator.registry import ResolveError
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.modeldeployment import (
    summarize_child,
    summarize_deployment,
    summarize_server_pod,
)

from kubeloop.resources import ModelRef


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class FakeKube:
    """Objects by (plural, name); records every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.uids = itertools.count(1)
        self.status: dict[str, Any] = {}

    def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        kind = k8s.kind_of(manifest)
        key = (kind.plural, manifest["metadata"]["name"])
        if key in self.objects:
            return self.objects[key], False
        obj = copy.deepcopy(manifest)
        obj["metadata"].update(uid=f"uid-{next(self.uids)}", generation=1)
        self.objects[key] = obj
        self.writes.append(("create", kind.plural, key[1]))
        return obj, True

    def get(self, kind: k8s.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.plural, name))

    def patch(self, kind: k8s.Kind, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self.objects[(kind.plural, name)]
        before = copy.deepcopy(obj.get("spec"))
        _merge(obj, copy.deepcopy(patch))
        if obj.get("spec") != before:
            obj["metadata"]["generation"] += 1
        self.writes.append(("patch", kind.plural, name))
        return obj

    def delete(self, kind: k8s.Kind, namespace: str, name: str, **_: Any) -> bool:
        self.writes.append(("delete", kind.plural, name))
        return self.objects.pop((kind.plural, name), None) is not None

    def patch_status(
        self, kind: k8s.Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.writes.append(("status", kind.plural, name))
        _merge(self.status, copy.deepcopy(status))
        return {}

    def post_event(self, involved: Any, *, name: str, type_: str, reason: str, message: str) -> bool:
        self.writes.append(("event", reason, name))
        return True

    # --- the controllers' side, as the test tells it ------------------------------------------------

    def deployment(self, track: str) -> dict[str, Any] | None:
        return self.objects.get(("deployments", f"md-{track}"))

    def roll_out(self, track: str, ready: int | None = None) -> None:
        """The Deployment controller caught up: every replica on the current template (``ready`` of them)."""
        d = self.deployment(track)
        assert d is not None
        n = d["spec"]["replicas"]
        r = n if ready is None else ready
        d["status"] = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": r,
            "availableReplicas": r,
        }

    def pods(self, track: str, ready: int | None = None) -> list[dict[str, Any]]:
        d = self.deployment(track)
        if d is None:
            return []
        tpl = d["spec"]["template"]["metadata"]["labels"]
        n = d["spec"]["replicas"]
        r = n if ready is None else ready
        return [
            {
                "metadata": {"name": f"{track}-{tpl[CONFIG_HASH]}-{i}", "uid": f"p{i}", "labels": dict(tpl)},
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True" if i < r else "False"}],
                },
            }
            for i in range(n)
        ]


class FakeResolver:
    def __init__(self) -> None:
        self.versions: dict[str, ResolvedModel | ResolveError] = {}
        self.calls = 0

    def set(self, ref: ModelRef, version: str) -> None:
        self.versions[ref_key(ref)] = ResolvedModel(
            ref=ref_key(ref),
            name=str(ref.name),
            version=version,
            uri=f"s3://kubeloop/models/m/{version}/model.onnx",
            digest=f"sha256:{version}",
        )

    def resolve(self, ref: ModelRef, served_as: str, pinned: ResolvedModel | None = None) -> ResolvedModel:
        self.calls += 1
        got = self.versions[ref_key(ref)]
        if isinstance(got, ResolveError):
            raise got
        return got


STABLE = ModelRef(name="m", alias="champion")
CANARY = ModelRef(name="m", version=9)


@pytest.fixture
def world() -> tuple[Runtime, FakeKube, FakeResolver]:
    kube = FakeKube()
    resolver = FakeResolver()
    resolver.set(STABLE, "1")
    resolver.set(CANARY, "9")
    rt = Runtime(settings=OperatorSettings(pod_s3_endpoint="minio:9000"), kube=kube, metrics=Metrics())  # type: ignore[arg-type]
    rt.resolver = resolver  # type: ignore[assignment]
    return rt, kube, resolver


def body(spec: dict[str, Any], generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "md",
            "namespace": "ns",
            "uid": "uid-md",
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": spec,
        "status": status or {},
    }


def view(kube: FakeKube, ready: dict[str, int] | None = None) -> rec.MdView:
    deps = [summarize_deployment(o) for (p, _), o in kube.objects.items() if p == "deployments"]
    pods = [summarize_server_pod(p) for t in ("stable", "canary") for p in kube.pods(t, (ready or {}).get(t))]
    return rec.MdView(
        deployments=deps,
        pods=pods,
        services=[summarize_child(o) for (p, _), o in kube.objects.items() if p == "services"],
        hpas=[summarize_child(o) for (p, _), o in kube.objects.items() if p == "horizontalpodautoscalers"],
    )


def last_status(rt: Runtime) -> dict[str, Any]:
    """The status as the API server has it after the writes so far."""
    return copy.deepcopy(rt.kube.status)  # type: ignore[attr-defined]


SPEC = {"model": {"name": "m", "alias": "champion"}, "replicas": 2}


def test_first_reconcile_creates_service_and_stable_deployment_then_an_unchanged_world_writes_nothing(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    rt, kube, resolver = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    assert ("create", "services", "md") in kube.writes
    assert ("create", "deployments", "md-stable") in kube.writes
    assert [w for w in kube.writes if w[0] == "status"] == [("status", "modeldeployments", "md")]
    st = last_status(rt)
    assert st["phase"] == "Progressing"
    assert st["modelVersion"] == "1"
    # the watch has not shown the Deployment yet: nothing is created twice
    n = len(kube.writes)
    rec.reconcile(rt, body(SPEC, status=st), rec.MdView())
    assert kube.writes[n:] == []
    # the controller rolls it out: Ready, written once; then nothing again
    kube.roll_out("stable")
    rec.reconcile(rt, body(SPEC, status=st), view(kube))
    st = last_status(rt)
    assert st["phase"] == "Ready"
    n = len(kube.writes)
    for _ in range(3):
        rec.reconcile(rt, body(SPEC, status=st), view(kube))
    assert kube.writes[n:] == []
    assert resolver.calls == 1  # resolved once; only the alias timer asks again


def test_an_alias_that_moved_rolls_the_template_once(world: tuple[Runtime, FakeKube, FakeResolver]) -> None:
    rt, kube, resolver = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    resolver.set(STABLE, "2")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))  # no resolve: still version 1
    assert not [w for w in kube.writes if w[0] == "patch"]
    stale = view(kube)
    n = len(kube.writes)
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), stale, resolve=True)
    assert [w for w in kube.writes if w[0] == "patch"] == [("patch", "deployments", "md-stable")]
    # Ready went False before the Deployment changed: never a moment of Ready over a new template
    assert kube.writes[n] == ("status", "modeldeployments", "md")
    assert kube.writes[n + 1] == ("patch", "deployments", "md-stable")
    dep = kube.deployment("stable")
    assert dep is not None
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBELOOP_SERVER_MODEL_VERSION"] == "2"
    st = last_status(rt)
    assert st["modelVersion"] == "2"
    assert st["conditions"][-1]["status"] == "False"  # Ready False while it rolls
    assert any(w[:2] == ("event", "RolloutStarted") for w in kube.writes)
    # the index still shows the old template: no second patch
    rec.reconcile(rt, body(SPEC, status=st), stale)
    assert len([w for w in kube.writes if w[0] == "patch"]) == 1


def test_an_unreachable_registry_keeps_what_is_pinned(world: tuple[Runtime, FakeKube, FakeResolver]) -> None:
    rt, kube, resolver = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    resolver.versions[ref_key(STABLE)] = ResolveError("RegistryUnavailable", "MLflow unreachable")
    n = len(kube.writes)
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube), resolve=True)
    assert kube.writes[n:] == []
    assert last_status(rt)["phase"] == "Ready"


def test_a_deleted_alias_is_reported_and_the_pods_keep_serving(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    rt, kube, resolver = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    resolver.versions[ref_key(STABLE)] = ResolveError("AliasNotFound", "model 'm' has no alias 'champion'")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube), resolve=True)
    assert not [w for w in kube.writes if w[0] in ("patch", "delete")]
    st = last_status(rt)
    assert (st["phase"], st["lastFailure"]["reason"], st["modelVersion"]) == ("Failed", "AliasNotFound", "1")


def test_scale_and_suspend_patch_only_replicas(world: tuple[Runtime, FakeKube, FakeResolver]) -> None:
    rt, kube, _ = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))
    assert last_status(rt)["phase"] == "Ready"
    before = copy.deepcopy(kube.deployment("stable"))
    n = len(kube.writes)
    rec.reconcile(rt, body({**SPEC, "replicas": 5}, generation=2, status=last_status(rt)), view(kube))
    assert kube.writes[n : n + 2] == [
        ("status", "modeldeployments", "md"),
        ("patch", "deployments", "md-stable"),
    ]
    dep = kube.deployment("stable")
    assert dep is not None
    assert before is not None
    assert dep["spec"]["replicas"] == 5
    assert dep["spec"]["template"] == before["spec"]["template"]
    rec.reconcile(
        rt, body({**SPEC, "replicas": 5, "suspend": True}, generation=3, status=last_status(rt)), view(kube)
    )
    assert dep["spec"]["replicas"] == 0
    kube.roll_out("stable")
    rec.reconcile(
        rt, body({**SPEC, "replicas": 5, "suspend": True}, generation=3, status=last_status(rt)), view(kube)
    )
    assert last_status(rt)["phase"] == "Suspended"


def test_autoscaling_adds_an_hpa_and_removing_it_deletes_it(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    rt, kube, _ = world
    auto = {**SPEC, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    rec.reconcile(rt, body(auto), rec.MdView())
    assert ("horizontalpodautoscalers", "md") in kube.objects
    rec.reconcile(rt, body(SPEC, generation=2, status=last_status(rt)), view(kube))
    assert ("horizontalpodautoscalers", "md") not in kube.objects


def test_a_removed_canary_goes_only_after_the_stable_track_has_rolled(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    rt, kube, _ = world
    with_canary = {
        **SPEC,
        "replicas": 4,
        "canary": {"model": {"name": "m", "version": 9}, "trafficPercent": 25},
    }
    rec.reconcile(rt, body(with_canary), rec.MdView())
    canary = kube.deployment("canary")
    stable = kube.deployment("stable")
    assert canary is not None
    assert stable is not None
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (3, 1)
    kube.roll_out("stable")
    kube.roll_out("canary")
    rec.reconcile(rt, body(with_canary, status=last_status(rt)), view(kube))
    st = last_status(rt)
    assert st["phase"] == "Ready"
    assert (st["stable"]["weight"], st["canary"]["weight"], st["canary"]["trafficPercent"]) == (75, 25, 25)
    # promote: the canary's model becomes the model, the canary is removed
    promoted = {**SPEC, "replicas": 4, "model": {"name": "m", "version": 9}}
    rec.reconcile(rt, body(promoted, generation=2, status=st), view(kube))
    assert kube.deployment("canary") is not None  # still serving while the stable track rolls
    assert not [w for w in kube.writes if w[0] == "delete"]
    kube.roll_out("stable", ready=3)
    rec.reconcile(rt, body(promoted, generation=2, status=last_status(rt)), view(kube, {"stable": 3}))
    assert kube.deployment("canary") is not None
    kube.roll_out("stable")
    rec.reconcile(rt, body(promoted, generation=2, status=last_status(rt)), view(kube))
    assert kube.deployment("canary") is None
    assert ("delete", "deployments", "md-canary") in kube.writes


def test_a_slow_registry_does_not_hold_up_the_other_reconciles(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    import threading
    import time

    rt, kube, resolver = world
    rec.reconcile(rt, body(SPEC), rec.MdView())
    kube.roll_out("stable")
    gate = threading.Event()
    entered = threading.Event()
    real = resolver.resolve

    def slow(ref: ModelRef, served_as: str, pinned: ResolvedModel | None = None) -> ResolvedModel:
        entered.set()
        gate.wait(10)
        return real(ref, served_as, pinned)

    resolver.resolve = slow  # type: ignore[method-assign]
    timer = threading.Thread(
        target=rec.reconcile,
        args=(rt, body(SPEC, status=last_status(rt)), view(kube)),
        kwargs={"resolve": True},
    )
    timer.start()
    assert entered.wait(5)
    t0 = time.monotonic()
    rec.reconcile(rt, body(SPEC, status=last_status(rt)), view(kube))  # a pod event meanwhile
    assert time.monotonic() - t0 < 2
    assert last_status(rt)["phase"] == "Ready"
    gate.set()
    timer.join(10)
    assert not timer.is_alive()


def writes(kube: FakeKube, *verbs: str) -> list[tuple[str, str, str]]:
    return [w for w in kube.writes if w[0] in verbs]


def test_a_service_or_hpa_edited_by_hand_is_put_back_once(
    world: tuple[Runtime, FakeKube, FakeResolver],
) -> None:
    # `kubectl edit` keeps our config-hash annotation: the live spec itself must be compared, or a
    # Service selecting nothing (or an HPA capped by hand) stays so while the status says Ready.
    rt, kube, _ = world
    auto = {**SPEC, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    rec.reconcile(rt, body(auto), rec.MdView())
    kube.roll_out("stable")
    svc, hpa = kube.objects[("services", "md")], kube.objects[("horizontalpodautoscalers", "md")]
    want_svc, want_hpa = copy.deepcopy(svc["spec"]), copy.deepcopy(hpa["spec"])
    # What the API server defaults (clusterIP, sessionAffinity, behavior) is no drift.
    svc["spec"].update(clusterIP="10.0.0.7", sessionAffinity="None")
    hpa["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    rt.memory.of("uid-md").children.clear()  # long after the creation: no hint left
    kube.writes.clear()
    rec.reconcile(rt, body(auto, status=last_status(rt)), view(kube))
    assert writes(kube, "patch", "create") == []
    for obj, plural, edit in (
        (svc, "services", {"selector": {"app": "other"}}),
        (hpa, "horizontalpodautoscalers", {"maxReplicas": 1}),
    ):
        obj["spec"].update(edit)
        kube.writes.clear()
        for _ in range(3):  # put back once: no flapping
            rec.reconcile(rt, body(auto, status=last_status(rt)), view(kube))
        assert writes(kube, "patch", "create") == [("patch", plural, "md")]
    assert svc["spec"]["selector"] == want_svc["selector"]
    assert hpa["spec"]["maxReplicas"] == want_hpa["maxReplicas"] == 4

"""A distributed TrainingJob's rendezvous Service edited by hand (its selector or port: the workers
would reach no rank 0) is put back, once; what the API server defaults (type, clusterIP,
sessionAffinity) is no edit. Until now the Service was only created when missing. The Job itself
needs no such care: its pod template is immutable, and its mutable fields already follow the spec
(``job_drift``)."""

from __future__ import annotations

import copy
from typing import Any

from kubeloop_operator import k8s
from kubeloop_operator.builders.common import Owner, service_owned, service_owned_hash
from kubeloop_operator.builders.trainingjob import build_rendezvous_service, rendezvous_service_name
from kubeloop_operator.handlers.children import summarize_service
from kubeloop_operator.reconcile import ChildView
from kubeloop_operator.reconcile.trainingjob import reconcile
from kubeloop_operator.status.pods import summarize_job
from test_deployment_drift import _leaves
from test_reconcile_driftmonitor import _merge
from test_reconcile_trainingjob import FakeKube, apply_status, runtime, tj

from kubeloop.resources import TrainingJobSpec


class Kube(FakeKube):
    def get(self, kind: k8s.Kind, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.kind, name))

    def patch(self, kind: k8s.Kind, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", kind.kind, patch))
        obj = self.objects[(kind.kind, name)]
        _merge(obj, copy.deepcopy(patch))
        return obj


def distributed() -> dict[str, Any]:
    body = tj()
    body["spec"]["distributed"] = {"nodes": 2}
    return body


def view(kube: FakeKube) -> ChildView:
    return ChildView(
        jobs=tuple(summarize_job(o) for (k, _), o in kube.objects.items() if k == "Job"),
        services=tuple(
            s for (k, _), o in kube.objects.items() if k == "Service" if (s := summarize_service(o))
        ),
    )


def test_a_hand_edited_rendezvous_service_is_put_back_once() -> None:
    rt, _, _ = runtime()
    kube = Kube()
    rt.kube = kube  # type: ignore[assignment]
    body = distributed()
    reconcile(rt, body, ChildView())
    assert [w[1] for w in kube.writes if w[0] == "create"] == ["Service", "Job"]
    body = apply_status(body, kube)
    svc = kube.objects[("Service", rendezvous_service_name("breast-cancer"))]
    want = copy.deepcopy(svc["spec"])
    svc["spec"].update(type="ClusterIP", clusterIP="10.0.0.9", sessionAffinity="None")  # defaults
    assert summarize_service(svc).owned_hash == service_owned_hash(svc)  # type: ignore[union-attr]
    rt.memory.of("tj-uid").children.clear()
    kube.writes.clear()
    reconcile(rt, body, view(kube))
    assert [w for w in kube.writes if w[0] in ("patch", "create")] == []

    svc["spec"]["selector"] = {"app": "other"}
    svc["spec"]["ports"][0]["port"] = 1234
    kube.writes.clear()
    for _ in range(3):
        reconcile(rt, body, view(kube))
    assert [w[:2] for w in kube.writes if w[0] in ("patch", "create")] == [("patch", "Service")]
    assert svc["spec"]["selector"] == want["selector"]
    assert svc["spec"]["ports"] == want["ports"]
    assert svc["spec"]["clusterIP"] == "10.0.0.9"


def test_every_field_the_builder_sets_is_owned() -> None:
    # publishNotReadyAddresses: rendezvous happens before any pod is ready; turned off by hand, the
    # workers would find no rank 0.
    body = distributed()
    svc = build_rendezvous_service(Owner.from_body(body), TrainingJobSpec.model_validate(body["spec"]))
    assert svc is not None
    edited = copy.deepcopy(svc)
    edited["spec"]["publishNotReadyAddresses"] = False
    assert service_owned_hash(edited) != service_owned_hash(svc)
    assert _leaves(svc["spec"]) - _leaves(service_owned(svc)) == set()

"""Against the real kube-apiserver: a server Deployment edited with kubectl (``set image``, ``set env``)
is put back by the next reconcile — what the operator's watch of its Deployments runs on every change
of one — while ``kubectl rollout restart`` and replicas set through the ModelDeployment's scale
subresource stay, and a converged Deployment costs no write; a DriftMonitor's CronJob and a
TrainingJob's rendezvous Service as the API server keeps them are no drift until edited, and their
patch undoes the edit. The reconciler runs with a resolver that pins a fixed file (no registry) and
sees the children as the indexes would (read back live)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubeloop_operator.builders import common
from kubeloop_operator.builders import driftmonitor as dm
from kubeloop_operator.builders import trainingjob as tjb
from kubeloop_operator.builders.modeldeployment import CONTAINER, ResolvedModel, ref_key
from kubeloop_operator.handlers import register_all
from kubeloop_operator.handlers.driftmonitor import summarize_cronjob
from kubeloop_operator.k8s import CRONJOB, DEPLOYMENT, HPA, MODELDEPLOYMENT, SERVICE, Kube
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.reconcile import modeldeployment as rec
from kubeloop_operator.reconcile.driftmonitor import check_pod_config
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.modeldeployment import summarize_child, summarize_deployment
from localcluster.pytest_fixtures import KubeCluster

from kubeloop.contracts import Labels
from kubeloop.resources import DriftMonitorSpec, ModelRef, TrainingJobSpec

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parents[2]
URI = "s3://kubeloop/models/m/1/model.onnx"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class CountingKube(Kube):
    """The operator's API access, counting the writes to Deployments."""

    deployment_writes: list[str]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method != "GET" and "/deployments" in path:
            self.deployment_writes.append(f"{method} {path}")
        return super().request(method, path, **kwargs)


class PinnedResolver:
    def resolve(self, ref: ModelRef, served_as: str, pinned: ResolvedModel | None = None) -> ResolvedModel:
        return ResolvedModel(
            ref=ref_key(ref), name=served_as, version="1", uri=URI, digest="sha256:" + "ab" * 32
        )


@pytest.fixture
def rt(kube_cluster: KubeCluster) -> Iterator[Runtime]:
    if kube_cluster.kubectl("get", "crd", "modeldeployments.kubeloop.io", check=False).returncode != 0:
        kube_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        kube_cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.kubeloop.io")
    kube = CountingKube.connect(str(kube_cluster.kubeconfig))
    assert isinstance(kube, CountingKube)
    kube.deployment_writes = []
    runtime = Runtime(settings=OperatorSettings(pod_s3_endpoint="minio:9000"), kube=kube, metrics=Metrics())
    runtime.resolver = PinnedResolver()  # type: ignore[assignment]
    yield runtime
    kube.close()


def reconcile(rt: Runtime, ns: str) -> list[str]:
    """One reconcile of ``md`` as a watch event would run it; the Deployment writes it made."""
    kube = rt.kube
    assert isinstance(kube, CountingKube)
    kube.deployment_writes.clear()
    body = kube.get(MODELDEPLOYMENT, ns, "md")
    assert body is not None
    sel = f"{Labels.OWNER_UID}={body['metadata']['uid']}"
    view = rec.MdView(
        deployments=tuple(summarize_deployment(d) for d in kube.list(DEPLOYMENT, ns, label_selector=sel)),
        services=tuple(summarize_child(s) for s in kube.list(SERVICE, ns, label_selector=sel)),
        hpas=tuple(summarize_child(h) for h in kube.list(HPA, ns, label_selector=sel)),
    )
    rec.reconcile(rt, body, view)
    return list(kube.deployment_writes)


def container(rt: Runtime, ns: str) -> dict[str, Any]:
    d = rt.kube.get(DEPLOYMENT, ns, "md-stable")
    assert d is not None
    c: dict[str, Any] = next(c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)
    return c


def test_a_hand_edited_deployment_is_put_back_and_a_restart_and_a_scale_stay(
    rt: Runtime, kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace

    def kubectl(*args: str) -> str:
        return str(kube_cluster.kubectl(*args, namespace=ns).stdout)

    md = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "md", "namespace": ns},
        "spec": {
            "model": {"uri": URI},
            "replicas": 1,
            # canonicalised by the API server (0.5 -> 500m, 1000m -> 1): no drift for that
            "resources": {"requests": {"cpu": "0.5"}, "limits": {"cpu": "1000m", "memory": "256Mi"}},
        },
    }
    kube_cluster.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(md))
    assert reconcile(rt, ns) == [f"POST {DEPLOYMENT.path(ns)}"]
    built = container(rt, ns)
    assert reconcile(rt, ns) == []  # the API server's defaults are no drift: an idle resync writes nothing

    kubectl("set", "image", "deployment/md-stable", f"{CONTAINER}=evil/server:latest")
    kubectl("set", "env", "deployment/md-stable", f"--containers={CONTAINER}", "DEBUG=1")
    assert container(rt, ns)["image"] == "evil/server:latest"
    t0 = time.monotonic()
    assert reconcile(rt, ns) == [f"PATCH {DEPLOYMENT.path(ns, 'md-stable')}"]
    assert time.monotonic() - t0 < 10
    now = container(rt, ns)
    assert now["image"] == built["image"]
    assert now["env"] == built["env"]
    assert reconcile(rt, ns) == []  # put back once: no flapping

    kubectl("rollout", "restart", "deployment/md-stable")
    assert reconcile(rt, ns) == []
    kubectl("scale", "modeldeployment/md", "--replicas=3")  # the scale subresource the HPA uses
    assert reconcile(rt, ns) == [f"PATCH {DEPLOYMENT.path(ns, 'md-stable')}"]
    d = rt.kube.get(DEPLOYMENT, ns, "md-stable")
    assert d is not None
    assert d["spec"]["replicas"] == 3
    assert RESTARTED_AT in d["spec"]["template"]["metadata"]["annotations"]
    assert reconcile(rt, ns) == []


def test_a_drift_monitors_cronjob_read_back_is_no_drift_until_its_job_template_is_edited(
    rt: Runtime, kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    owner = common.Owner("kubeloop.io/v1alpha1", "DriftMonitor", ns, "watch", "uid-watch")
    spec = DriftMonitorSpec.model_validate({"deployment": "bc", "schedule": "*/5 * * * *", "suspend": True})
    cron = dm.build_cronjob(owner, spec, check_pod_config(rt.settings))
    del cron["metadata"]["ownerReferences"]  # no such owner: the garbage collector would take it
    obj, _ = rt.kube.create(cron)
    assert summarize_cronjob(obj) is not None
    assert summarize_cronjob(obj).owned_hash == dm.owned_hash(cron)  # type: ignore[union-attr]
    name = cron["metadata"]["name"]
    kube_cluster.kubectl("set", "image", f"cronjob/{name}", f"{dm.CONTAINER}=evil/check:latest", namespace=ns)
    kube_cluster.kubectl("set", "env", f"cronjob/{name}", "DEBUG=1", namespace=ns)
    live = rt.kube.get(CRONJOB, ns, name)
    assert live is not None
    assert dm.owned_hash(live) != dm.owned_hash(cron)
    fixed = rt.kube.patch(CRONJOB, ns, name, dm.cronjob_patch(cron, live))
    assert dm.owned_hash(fixed) == dm.owned_hash(cron)
    assert dm.cronjob_patch(cron, fixed) == {}


def test_a_rendezvous_service_read_back_is_no_drift_until_edited(
    rt: Runtime, kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    owner = common.Owner("kubeloop.io/v1alpha1", "TrainingJob", ns, "tj", "uid-tj")
    manifest = yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())
    spec = TrainingJobSpec.model_validate({**manifest["spec"], "distributed": {"nodes": 2}})
    svc = tjb.build_rendezvous_service(owner, spec)
    assert svc is not None
    del svc["metadata"]["ownerReferences"]  # no such owner: the garbage collector would take it
    obj, _ = rt.kube.create(svc)
    assert common.service_owned_hash(obj) == common.service_owned_hash(svc), obj["spec"]
    name = svc["metadata"]["name"]
    edited = rt.kube.patch(SERVICE, ns, name, {"spec": {"selector": {"app": "other"}}})
    assert common.service_owned_hash(edited) != common.service_owned_hash(svc)
    patch = common.owned_patch(common.service_owned(edited), common.service_owned(svc), svc["spec"])
    fixed = rt.kube.patch(SERVICE, ns, name, {"spec": patch})
    assert common.service_owned_hash(fixed) == common.service_owned_hash(svc)


# --- the operator itself: its watch of the Deployments --------------------------------------------------


@contextmanager
def operator_in_process(rt: Runtime, ns: str) -> Iterator[None]:
    """The operator's handlers (register_all) under kopf, in a thread, for ``ns`` only."""
    registry = kopf.OperatorRegistry()
    register_all(registry, rt)
    stop, ready = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=False,
                namespaces=[ns],
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, name="kopf", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the operator did not start"
        yield
    finally:
        stop.set()
        thread.join(30)


def wait_for(what: str, fn: Callable[[], bool], timeout: float) -> float:
    t0 = time.monotonic()
    while not fn():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_the_operator_puts_a_hand_edit_back_within_seconds_and_leaves_a_restart(
    rt: Runtime, kube_cluster: KubeCluster, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = k8s_namespace
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))  # kopf's login
    rt.settings = rt.settings.model_copy(update={"standalone": True, "namespaces": ns})
    md = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "md", "namespace": ns},
        # suspended: the template is there, no server pod runs
        "spec": {"model": {"uri": URI}, "replicas": 1, "suspend": True},
    }
    kube_cluster.kubectl("apply", "-f", "-", namespace=ns, input=json.dumps(md))
    with operator_in_process(rt, ns):
        wait_for("the Deployment", lambda: rt.kube.get(DEPLOYMENT, ns, "md-stable") is not None, 30)
        image = container(rt, ns)["image"]
        kube_cluster.kubectl(
            "set", "image", "deployment/md-stable", f"{CONTAINER}=evil/server:latest", namespace=ns
        )
        took = wait_for("the image put back", lambda: container(rt, ns)["image"] == image, 10)
        print(f"hand edit put back in {took:.1f} s")
        kube_cluster.kubectl("rollout", "restart", "deployment/md-stable", namespace=ns)
        time.sleep(2)  # the events of the restart have been handled by now
        d = rt.kube.get(DEPLOYMENT, ns, "md-stable")
        assert d is not None
        assert RESTARTED_AT in d["spec"]["template"]["metadata"]["annotations"]
        assert container(rt, ns)["image"] == image
        rt.kube.delete(MODELDEPLOYMENT, ns, "md")
        wait_for("the ModelDeployment gone", lambda: rt.kube.get(MODELDEPLOYMENT, ns, "md") is None, 15)

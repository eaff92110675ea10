"""The controller-manager really works: Deployments, CronJobs, garbage collection, EndpointSlices.

Whether or not the node agent (issue #4) runs the pods, these tests only need the objects the controllers make.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import pytest
from kubeloop_testing.polling import wait as wait_for
from kubernetes import client
from localcluster.pytest_fixtures import KubeCluster

pytestmark = [pytest.mark.component, pytest.mark.harness]

T = TypeVar("T")


def _container(name: str = "main") -> client.V1Container:
    return client.V1Container(name=name, image="busybox:1.36", command=["sh", "-c", "sleep 3600"])


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[_container()])
            ),
        ),
    )


def _owned_by(obj: Any, owner: Any) -> bool:
    return any(ref.uid == owner.metadata.uid for ref in obj.metadata.owner_references or [])


def test_deployment_gets_replicaset_and_pods_and_owner_deletion_collects_them(
    kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    with kube_cluster.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        dep = apps.create_namespaced_deployment(ns, _deployment("web", 2))

        rs = wait_for(
            "a ReplicaSet owned by the Deployment",
            lambda: next((r for r in apps.list_namespaced_replica_set(ns).items if _owned_by(r, dep)), None),
            30,
        )
        pods = wait_for(
            "2 Pods owned by the ReplicaSet",
            lambda: (lambda ps: ps if len(ps) == 2 else None)(
                [p for p in core.list_namespaced_pod(ns).items if _owned_by(p, rs)]
            ),
            30,
        )
        # Pending without a node; with the node agent (issue #4) they may already be Running.
        assert all(p.status.phase in ("Pending", "Running") for p in pods), [p.status.phase for p in pods]
        assert rs.spec.replicas == 2

        # Scaling goes through the same controllers.
        apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
        wait_for(
            "a third Pod",
            lambda: len([p for p in core.list_namespaced_pod(ns).items if _owned_by(p, rs)]) == 3,
            30,
        )

        # Garbage collection: deleting the owner removes its ReplicaSet and, through it, the Pods.
        apps.delete_namespaced_deployment("web", ns, propagation_policy="Background")
        wait_for("the ReplicaSet to be collected", lambda: not apps.list_namespaced_replica_set(ns).items, 60)
        wait_for("the Pods to be collected", lambda: not core.list_namespaced_pod(ns).items, 60)


def test_owner_reference_on_plain_objects_is_garbage_collected(
    kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
        )
        ref = client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
        )
        for i in range(3):
            core.create_namespaced_config_map(
                ns,
                client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"child-{i}", owner_references=[ref])),
            )
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
        )
        core.delete_namespaced_config_map("owner", ns)

        def remaining() -> set[str]:
            return {c.metadata.name for c in core.list_namespaced_config_map(ns).items} - {"kube-root-ca.crt"}

        wait_for("the children to be collected", lambda: remaining() == {"bystander"}, 60)


def test_cronjob_every_minute_creates_a_job_within_70_seconds(
    kube_cluster: KubeCluster, k8s_namespace: str
) -> None:
    ns = k8s_namespace
    with kube_cluster.api_client() as api:
        batch = client.BatchV1Api(api)
        created = time.monotonic()
        cron = batch.create_namespaced_cron_job(
            ns,
            client.V1CronJob(
                metadata=client.V1ObjectMeta(name="tick"),
                spec=client.V1CronJobSpec(
                    schedule="* * * * *",
                    job_template=client.V1JobTemplateSpec(
                        spec=client.V1JobSpec(
                            template=client.V1PodTemplateSpec(
                                spec=client.V1PodSpec(restart_policy="Never", containers=[_container()])
                            )
                        )
                    ),
                ),
            ),
        )
        job = wait_for(
            "a Job created by the CronJob",
            lambda: next((j for j in batch.list_namespaced_job(ns).items if _owned_by(j, cron)), None),
            70,
        )
        assert time.monotonic() - created <= 70
        # The Job controller in turn creates the Job's Pod.
        core = client.CoreV1Api(api)
        wait_for(
            "the Job's Pod",
            lambda: any(_owned_by(p, job) for p in core.list_namespaced_pod(ns).items),
            30,
        )
        batch.delete_namespaced_cron_job("tick", ns, propagation_policy="Background")
        wait_for("the CronJob's Jobs to be collected", lambda: not batch.list_namespaced_job(ns).items, 60)


def test_service_gets_cluster_ip_and_endpoint_slice(kube_cluster: KubeCluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    with kube_cluster.api_client() as api:
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        svc = core.create_namespaced_service(
            ns,
            client.V1Service(
                metadata=client.V1ObjectMeta(name="web"),
                spec=client.V1ServiceSpec(
                    selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
                ),
            ),
        )
        if kube_cluster.local:
            assert svc.spec.cluster_ip.startswith("10.96."), svc.spec.cluster_ip
        wait_for(
            "an EndpointSlice for the Service",
            lambda: (
                discovery.list_namespaced_endpoint_slice(
                    ns, label_selector="kubernetes.io/service-name=web"
                ).items
            ),
            30,
        )


def test_horizontal_pod_autoscaler_is_processed(kube_cluster: KubeCluster, k8s_namespace: str) -> None:
    """The HPA controller runs: it reports on an HPA (no metrics API here, so it cannot scale)."""
    ns = k8s_namespace
    with kube_cluster.api_client() as api:
        apps, autoscaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
        apps.create_namespaced_deployment(ns, _deployment("web", 1))
        autoscaling.create_namespaced_horizontal_pod_autoscaler(
            ns,
            client.V2HorizontalPodAutoscaler(
                metadata=client.V1ObjectMeta(name="web"),
                spec=client.V2HorizontalPodAutoscalerSpec(
                    scale_target_ref=client.V2CrossVersionObjectReference(
                        api_version="apps/v1", kind="Deployment", name="web"
                    ),
                    min_replicas=1,
                    max_replicas=3,
                    metrics=[
                        client.V2MetricSpec(
                            type="Resource",
                            resource=client.V2ResourceMetricSource(
                                name="cpu",
                                target=client.V2MetricTarget(type="Utilization", average_utilization=50),
                            ),
                        )
                    ],
                ),
            ),
        )
        hpa = wait_for(
            "HPA conditions from the controller",
            lambda: (lambda h: h if h.status and h.status.conditions else None)(
                autoscaling.read_namespaced_horizontal_pod_autoscaler("web", ns)
            ),
            60,
        )
        assert {c.type for c in hpa.status.conditions} & {"AbleToScale", "ScalingActive"}


def test_audit_log_records_writes(kube_cluster: KubeCluster, k8s_namespace: str) -> None:
    if kube_cluster.audit_log is None:
        pytest.skip("the audit log is only known for the local control plane")
    import json

    with kube_cluster.api_client() as api:
        client.CoreV1Api(api).create_namespaced_config_map(
            k8s_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="audited"))
        )

    def found() -> bool:
        for line in kube_cluster.audit_log.read_text().splitlines():  # type: ignore[union-attr]
            ev = json.loads(line)
            ref = ev.get("objectRef", {})
            if (
                ev.get("verb") == "create"
                and ref.get("namespace") == k8s_namespace
                and ref.get("name") == "audited"
            ):
                assert ev["level"] == "Metadata"
                assert ev["user"]["username"] == "kubeloop-admin"
                return True
        return False

    wait_for("the create in the audit log", found, 10)

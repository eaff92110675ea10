"""Children as the real kube-apiserver stores them: what it defaults must not look like a hand edit
to the reconciler (or an idle operator would patch them on every resync), and a hand edit must."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubeloop_operator.builders import common
from kubeloop_operator.builders import modeldeployment as b
from kubeloop_operator.k8s import HPA, SERVICE, Kube
from kubeloop_operator.status.modeldeployment import summarize_child
from localcluster.pytest_fixtures import KubeCluster

from kubeloop.resources import ModelDeploymentSpec

pytestmark = pytest.mark.component


@pytest.fixture
def kube(kube_cluster: KubeCluster) -> Iterator[Kube]:
    k = Kube.connect(str(kube_cluster.kubeconfig))
    yield k
    k.close()


def test_a_service_and_hpa_read_back_are_not_drifted_until_edited(kube: Kube, k8s_namespace: str) -> None:
    owner = common.Owner("kubeloop.io/v1alpha1", "ModelDeployment", k8s_namespace, "md", "uid-md")
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"name": "m", "alias": "champion"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
    )
    for kind, manifest in ((SERVICE, b.build_service(owner)), (HPA, b.build_hpa(owner, spec))):
        assert manifest is not None
        del manifest["metadata"]["ownerReferences"]  # no such owner: the garbage collector would take it
        kube.create(manifest)
        live = kube.get(kind, k8s_namespace, "md")
        assert live is not None
        s = summarize_child(live)
        assert s.config_hash == b.manifest_hash(manifest)
        assert not s.drifted, live["spec"]
        edit = {"selector": {"app": "other"}} if kind is SERVICE else {"maxReplicas": 3}
        assert summarize_child(kube.patch(kind, k8s_namespace, "md", {"spec": edit})).drifted

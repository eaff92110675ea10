"""Pure builders: ModelDeployment -> Deployments per track, Service, HPA; replica split; patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeloop_operator.builders import common
from kubeloop_operator.builders import modeldeployment as b

from kubeloop import podenv
from kubeloop.contracts import Labels, ServerEnv
from kubeloop.resources import ModelDeployment, ModelDeploymentSpec, ModelRef

ROOT = Path(__file__).resolve().parents[2]
OWNER = common.Owner("kubeloop.io/v1alpha1", "ModelDeployment", "team-a", "breast-cancer", "uid-md", 3)
CFG = b.ServerPodConfig(
    image="kubeloop/server:0.1.0",
    image_pull_policy="IfNotPresent",
    store=podenv.ObjectStoreAccess.from_secret("minio.kubeloop-system:9000", "kubeloop-s3"),
)
V3 = b.ResolvedModel(
    ref="breast-cancer@champion",
    name="breast-cancer",
    version="3",
    uri="s3://kubeloop/models/breast-cancer/3/model.onnx",
    digest="sha256:" + "ab" * 32,
    baseline_uri="s3://kubeloop/models/breast-cancer/3/baseline.json",
    alias="champion",
)
V4 = b.ResolvedModel(
    ref="breast-cancer@champion",
    name="breast-cancer",
    version="4",
    uri="s3://kubeloop/models/breast-cancer/4/model.onnx",
    digest="sha256:" + "cd" * 32,
)


def example_spec(**changes: Any) -> ModelDeploymentSpec:
    manifest = yaml.safe_load((ROOT / "examples/modeldeployment.yaml").read_text())
    manifest["spec"].update(changes)
    return ModelDeployment.from_manifest(manifest).spec


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def test_the_stable_deployment_runs_the_server_with_the_pinned_model_and_its_contract() -> None:
    spec = example_spec()
    dep = b.build_deployment(OWNER, spec, "stable", V3, 2, CFG)
    assert (dep["apiVersion"], dep["kind"]) == ("apps/v1", "Deployment")
    meta = dep["metadata"]
    assert meta["name"] == "breast-cancer-stable"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"][0]["uid"] == "uid-md"
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"][Labels.OWNER_UID] == "uid-md"
    assert meta["labels"][Labels.COMPONENT] == b.COMPONENT
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == {"matchLabels": {Labels.OWNER_UID: "uid-md", b.TRACK_LABEL: "stable"}}
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["labels"][b.MODEL_VERSION_LABEL] == "3"
    assert tpl["metadata"]["labels"][b.CONFIG_HASH] == meta["annotations"][b.CONFIG_HASH]
    assert tpl["metadata"]["annotations"] == {
        b.MODEL_URI_ANNOTATION: V3.uri,
        b.MODEL_DIGEST_ANNOTATION: V3.digest,
    }
    c = container(dep)
    assert c["image"] == "kubeloop/server:0.1.0"
    env = env_of(dep)
    assert env[ServerEnv.MODEL_URI] == V3.uri
    assert env[ServerEnv.MODEL_NAME] == "breast-cancer"
    assert env[ServerEnv.MODEL_VERSION] == "3"
    assert env[b.MODEL_DIGEST_ENV] == V3.digest
    assert env[ServerEnv.GRPC_PORT] == "8081"
    assert env[ServerEnv.PORT] == "8080"
    assert env[ServerEnv.DEPLOYMENT] == "breast-cancer"
    assert env[ServerEnv.NAMESPACE] == "team-a"
    # batching and prediction logging from the spec
    assert env[ServerEnv.BATCHING_ENABLED] == "true"
    assert env[ServerEnv.MAX_BATCH_SIZE] == "32"
    assert env[ServerEnv.PREDICTION_LOGGING_ENABLED] == "true"
    # credentials come from the Secret, never as literals
    assert env[ServerEnv.S3_ACCESS_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "accessKey"}}
    assert env[ServerEnv.S3_SECRET_KEY] == {"secretKeyRef": {"name": "kubeloop-s3", "key": "secretKey"}}
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "grpc": 8081}


def test_probes_check_the_exact_model_version_and_shutdown_leaves_time_to_drain() -> None:
    dep = b.build_deployment(OWNER, example_spec(), "stable", V3, 2, CFG)
    c = container(dep)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/models/breast-cancer/versions/3/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # a slow model load is not a liveness failure: the startup probe allows minutes
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == b.PRE_STOP_SLEEP_S
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > b.PRE_STOP_SLEEP_S + b.SERVER_SHUTDOWN_S
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def test_a_uri_model_without_a_known_version_is_checked_by_name() -> None:
    m = b.ResolvedModel(ref="/models/x.onnx", name="mine", version="", uri="/models/x.onnx")
    dep = b.build_deployment(OWNER, example_spec(), "stable", m, 1, CFG)
    assert container(dep)["readinessProbe"]["httpGet"]["path"] == "/v2/models/mine/ready"
    assert b.MODEL_DIGEST_ENV not in env_of(dep)
    assert dep["spec"]["template"]["metadata"]["labels"][b.MODEL_VERSION_LABEL] == "unknown"


def test_gpus_node_selector_and_tolerations_reach_the_pods() -> None:
    spec = example_spec(
        resources={"limits": {"nvidia.com/gpu": 1, "memory": "2Gi"}},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    dep = b.build_deployment(OWNER, spec, "stable", V3, 1, CFG)
    c = container(dep)
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "2Gi"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_no_store_means_no_credentials_and_no_prediction_logging() -> None:
    cfg = b.ServerPodConfig(image="s", image_pull_policy="Never", store=None)
    env = env_of(b.build_deployment(OWNER, example_spec(), "stable", V3, 1, cfg))
    assert ServerEnv.S3_ACCESS_KEY not in env
    assert env[ServerEnv.PREDICTION_LOGGING_ENABLED] == "false"


def test_the_config_hash_follows_the_template_not_the_replicas() -> None:
    spec = example_spec()
    h = b.manifest_hash(b.build_deployment(OWNER, spec, "stable", V3, 2, CFG))
    assert h == b.manifest_hash(b.build_deployment(OWNER, spec, "stable", V3, 5, CFG))
    assert h != b.manifest_hash(b.build_deployment(OWNER, spec, "stable", V4, 2, CFG))
    assert h != b.manifest_hash(
        b.build_deployment(OWNER, example_spec(batching={"maxBatchSize": 8}), "stable", V3, 2, CFG)
    )
    canary = b.build_deployment(OWNER, spec, "canary", V3, 1, CFG)
    assert canary["metadata"]["name"] == "breast-cancer-canary"
    assert canary["spec"]["selector"]["matchLabels"][b.TRACK_LABEL] == "canary"


def test_the_service_selects_ready_pods_of_both_tracks() -> None:
    svc = b.build_service(OWNER)
    assert svc["metadata"]["name"] == "breast-cancer"
    assert svc["spec"]["selector"] == {Labels.OWNER_UID: "uid-md", Labels.COMPONENT: b.COMPONENT}
    assert b.TRACK_LABEL not in svc["spec"]["selector"]
    assert "publishNotReadyAddresses" not in svc["spec"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (8080, "http"),
        "grpc": (8081, "grpc"),
    }
    assert b.urls(OWNER) == ("http://breast-cancer.team-a.svc:8080", "breast-cancer.team-a.svc:8081")
    assert b.selector(OWNER) == f"{Labels.COMPONENT}=serving,{Labels.OWNER_UID}=uid-md"


def test_the_hpa_targets_the_modeldeployments_scale_subresource() -> None:
    assert b.build_hpa(OWNER, example_spec()) is None
    hpa = b.build_hpa(
        OWNER, example_spec(autoscaling={"minReplicas": 2, "maxReplicas": 6, "targetCpuUtilization": 60})
    )
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "breast-cancer",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


@pytest.mark.parametrize(
    ("total", "percent", "split"),
    [
        (4, None, (4, 0)),
        (4, 25, (3, 1)),
        (4, 50, (2, 2)),
        (4, 10, (3, 1)),  # clamped up: a canary that was asked for runs
        (4, 95, (1, 3)),  # clamped down: the stable track keeps one
        (4, 0, (4, 0)),
        (4, 100, (0, 4)),
        (10, 25, (7, 3)),  # 2.5 rounds half up
        (10, 33, (7, 3)),
        (1, 10, (1, 1)),  # one replica cannot be split: both tracks run one
        (0, 25, (0, 0)),
    ],
)
def test_replica_split(total: int, percent: int | None, split: tuple[int, int]) -> None:
    assert b.split_replicas(total, percent) == split


def test_the_split_is_within_the_documented_precision() -> None:
    for n in range(2, 41):
        for p in range(1, 100):
            stable, canary = b.split_replicas(n, p)
            assert stable + canary == n
            assert stable >= 1
            assert canary >= 1
            share = canary / n
            clamped = p < 50 / n or p > 100 - 50 / n
            if not clamped:
                assert abs(share - p / 100) <= 1 / (2 * n) + 1e-9, (n, p, stable, canary)


def test_total_replicas_suspend_and_autoscaling_bounds() -> None:
    assert b.total_replicas(example_spec(replicas=3)) == 3
    assert b.total_replicas(example_spec(replicas=3, suspend=True)) == 0
    auto = {"minReplicas": 2, "maxReplicas": 4}
    assert b.total_replicas(example_spec(replicas=1, autoscaling=auto)) == 2
    assert b.total_replicas(example_spec(replicas=9, autoscaling=auto)) == 4
    canary = {"model": {"name": "breast-cancer", "version": 4}, "trafficPercent": 25}
    assert b.desired_replicas(example_spec(replicas=4, canary=canary)) == {"stable": 3, "canary": 1}
    assert b.desired_replicas(example_spec(replicas=4, canary=canary, suspend=True)) == {
        "stable": 0,
        "canary": 0,
    }


def test_ref_keys_and_deterministic_names() -> None:
    assert b.ref_key(ModelRef(name="m", alias="champion")) == "m@champion"
    assert b.ref_key(ModelRef(name="m", version=3)) == "m/3"
    assert b.ref_key(ModelRef(uri="s3://kubeloop/x/model.onnx")) == "s3://kubeloop/x/model.onnx"
    long = "x" * 63
    name = b.deployment_name(long, "canary")
    assert len(name) <= 63
    assert name.endswith("-canary")
    assert name == b.deployment_name(long, "canary")
    assert name != b.deployment_name("y" * 63, "canary")


def test_spec_patch_changes_only_what_differs_and_removes_what_we_dropped() -> None:
    spec = example_spec(nodeSelector={"a": "1", "b": "2"})
    old = b.build_deployment(OWNER, spec, "stable", V3, 2, CFG)
    live = yaml.safe_load(yaml.safe_dump(old))
    # what the API server adds must be left alone
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    new = b.build_deployment(OWNER, example_spec(nodeSelector={"a": "1"}), "stable", V4, 2, CFG)
    patch = b.spec_patch(live, new)
    pod = patch["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"b": None}
    assert "dnsPolicy" not in pod
    assert pod["containers"] == new["spec"]["template"]["spec"]["containers"]
    assert patch["metadata"] == {"annotations": {b.CONFIG_HASH: b.manifest_hash(new)}}
    assert "replicas" not in patch["spec"]
    assert b.spec_patch(old, old) == {}
    assert b.merge_diff({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 2}}) == {
        "b": {"c": 2, "d": None}
    }


def test_max_surge_is_never_zero() -> None:
    assert (b.max_surge("25%"), b.max_surge("100%"), b.max_surge("3")) == ("25%", "100%", 3)
    assert (b.max_surge("0"), b.max_surge("0%")) == (1, "1%")
    cfg = b.ServerPodConfig(image="s", image_pull_policy="Never", store=None, max_surge="100%")
    dep = b.build_deployment(OWNER, example_spec(), "stable", V3, 2, cfg)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "100%"}


@pytest.mark.parametrize("name", ["iris.v2", "1st-model", "a.b", "9" * 253])
def test_the_service_name_is_a_dns_1035_label_for_any_valid_name(name: str) -> None:
    # A ModelDeployment's name is a DNS subdomain; a Service's must be a DNS-1035 label.
    import re

    svc = b.service_name(name)
    assert re.fullmatch(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", svc)
    assert len(svc) <= 63
    assert svc != b.service_name(name.replace(".", "-")) or "." not in name
    owner = common.Owner("kubeloop.io/v1alpha1", "ModelDeployment", "ns", name, "uid-1")
    assert b.build_service(owner)["metadata"]["name"] == svc
    assert b.urls(owner)[0] == f"http://{svc}.ns.svc:{b.HTTP_PORT}"
    assert b.service_name("breast-cancer") == "breast-cancer"


def test_a_gpu_asked_for_in_requests_only_gets_the_limit_kubernetes_requires() -> None:
    # Extended resources cannot be overcommitted: the API server refuses a container that requests
    # nvidia.com/gpu without the same limit. spec.resources.requests alone passes the CRD.
    from kubeloop.resources import ResourceRequirements

    res = common.container_resources(ResourceRequirements(requests={"nvidia.com/gpu": 1, "cpu": "1"}))
    assert res["limits"] == {"nvidia.com/gpu": "1"}
    assert res["requests"] == {"nvidia.com/gpu": "1", "cpu": "1"}


def _kubernetes_refusals(resources: dict[str, Any]) -> list[str]:
    """What the API server's ValidateResourceRequirements says about a container's non-overcommitable
    resources: a request needs a limit, and the same one."""
    from kubeloop.resources import overcommit_allowed, parse_quantity

    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    out = []
    for name, request in requests.items():
        if overcommit_allowed(name):
            continue
        if name not in limits:
            out.append(f"limits.{name}: Limit must be set for non overcommitable resources")
        elif parse_quantity(request) != parse_quantity(limits[name]):
            out.append(f"requests.{name}: must be equal to {name} limit")
    return out


@pytest.mark.parametrize(
    ("requests", "limits", "expected_limits"),
    [
        # Every extended resource and hugepages get the limit Kubernetes requires; native ones do not.
        (
            {"example.com/fpga": 2, "hugepages-2Mi": "128Mi", "cpu": "1", "memory": "1Gi"},
            {"memory": "2Gi"},
            {"memory": "2Gi", "example.com/fpga": "2", "hugepages-2Mi": "128Mi"},
        ),
        ({"kubernetes.io/batteries": "1", "ephemeral-storage": "1Gi"}, {}, {}),
        # A limit already given (equal, written differently) is kept as written.
        ({"example.com/fpga": "2000m"}, {"example.com/fpga": 2}, {"example.com/fpga": "2"}),
    ],
)
def test_every_non_overcommitable_request_gets_the_limit_kubernetes_requires(
    requests: dict[str, Any], limits: dict[str, Any], expected_limits: dict[str, str]
) -> None:
    from kubeloop.resources import ResourceRequirements

    res = common.container_resources(ResourceRequirements(requests=requests, limits=limits))
    assert res.get("limits", {}) == expected_limits
    assert res["requests"] == {k: str(v) for k, v in requests.items()}  # requests are never changed
    assert _kubernetes_refusals(res) == []


def test_a_deployment_asking_for_an_extended_resource_in_requests_only_is_one_kubernetes_accepts() -> None:
    spec = example_spec(
        resources={"requests": {"cpu": "500m", "example.com/fpga": 1, "hugepages-1Gi": "2Gi"}}
    )
    c = container(b.build_deployment(OWNER, spec, "stable", V3, 1, CFG))
    assert c["resources"]["limits"] == {"example.com/fpga": "1", "hugepages-1Gi": "2Gi"}
    assert _kubernetes_refusals(c["resources"]) == []


@pytest.mark.parametrize(
    "changes",
    [{}, {"autoscaling": {"minReplicas": 1, "maxReplicas": 9, "targetCpuUtilization": 55}}, {"replicas": 3}],
)
def test_a_service_or_hpa_as_built_hashes_live_as_its_annotation(changes: dict[str, Any]) -> None:
    # The reconciler repairs a child whose live hash differs from its annotation: any field the
    # projection saw differently as built would mean a patch on every resync.
    spec = example_spec(**{"autoscaling": {"minReplicas": 2, "maxReplicas": 4}, **changes})
    for manifest in (b.build_service(OWNER), b.build_hpa(OWNER, spec)):
        assert manifest is not None
        assert b.live_hash(manifest) == b.manifest_hash(manifest) != ""
        edited = {**manifest, "spec": {**manifest["spec"], "minReplicas": 7, "selector": {"a": "b"}}}
        assert b.live_hash(edited) != b.manifest_hash(manifest)
    assert b.live_hash({"kind": "Deployment", "spec": {}}) == ""

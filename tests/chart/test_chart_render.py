"""The chart without a cluster: lint, what it renders for realistic value sets, and that it stays
equal to the sources it mirrors (the deploy RBAC files, the components' settings, the node agent's
image map, the local cluster's operator Deployment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeloop_api.settings import ApiSettings
from kubeloop_operator.settings import OperatorSettings

from .conftest import CHART, REPO, Helm, Render

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = CHART_META["appVersion"]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered; have {names(objs)}"
    return found[0]


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)


def container(objs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    c: dict[str, Any] = one(objs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """name → value, or the valueFrom object."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def rules_of(docs: list[dict[str, Any]], kinds: tuple[str, ...]) -> list[str]:
    """Every rule of the Roles/ClusterRoles, normalised (lists sorted) and sorted, to compare sets."""
    out = []
    for d in docs:
        if d["kind"] in kinds:
            for r in d["rules"]:
                out.append(json.dumps({k: sorted(v) for k, v in r.items()}, sort_keys=True))
    return sorted(out)


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------------------------- lint, defaults


def test_helm_lint_strict(helm: Helm) -> None:
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_default_values_render_operator_api_rbac_and_check(render: Render) -> None:
    objs = render()
    assert names(objs) == sorted(
        [
            "ServiceAccount/kubeloop-operator",
            "ServiceAccount/kubeloop-api",
            "ClusterRole/kubeloop-operator-framework",
            "ClusterRole/kubeloop-operator",
            "ClusterRoleBinding/kubeloop-operator-framework",
            "ClusterRoleBinding/kubeloop-operator",
            "ClusterKopfPeering/kubeloop-operator",
            "ClusterRole/kubeloop-api",
            "ClusterRoleBinding/kubeloop-api",
            "Role/kubeloop-api-tokens",
            "RoleBinding/kubeloop-api-tokens",
            "ClusterRole/kubeloop-view",
            "ClusterRole/kubeloop-edit",
            "Service/kubeloop-operator",
            "Service/kubeloop-api",
            "Deployment/kubeloop-operator",
            "Deployment/kubeloop-api",
            "Job/kubeloop-check",
        ]
    )
    for o in objs:
        labels = o["metadata"]["labels"]
        assert all(labels.get(k) for k in STANDARD_LABELS), (o["kind"], o["metadata"]["name"], labels)
        assert labels["app.kubernetes.io/instance"] == "kubeloop"
        assert labels["app.kubernetes.io/version"] == APP_VERSION
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "kubeloop"
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"]
        else:
            assert o["metadata"]["namespace"] == "kubeloop-system", o["metadata"]["name"]
    # No object store configured: no Secret, no S3 settings, and nothing bundled.
    assert not find(objs, "Secret")
    op = env_of(container(objs, "kubeloop-operator"))
    assert "KUBELOOP_OPERATOR_S3_ENDPOINT" not in op
    assert "KUBELOOP_OPERATOR_MLFLOW_TRACKING_URI" not in op
    assert op["KUBELOOP_OPERATOR_NAMESPACES"] == ""  # every namespace


def test_pods_select_their_own_component(render: Render) -> None:
    objs = render()
    for name, component in (("kubeloop-operator", "operator"), ("kubeloop-api", "api")):
        dep = one(objs, "Deployment", name)
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector == {
            "app.kubernetes.io/name": "kubeloop",
            "app.kubernetes.io/instance": "kubeloop",
            "app.kubernetes.io/component": component,
        }
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert one(objs, "Service", name)["spec"]["selector"] == selector
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == name


def test_images_default_to_app_version_and_map_to_the_node_agents_entry_points(render: Render) -> None:
    from nodeagent import config as agent_config

    cfg = agent_config.load()
    objs = render()
    op_c, api_c = container(objs, "kubeloop-operator"), container(objs, "kubeloop-api")
    op = env_of(op_c)
    images = {
        "kubeloop-operator": op_c["image"],
        "kubeloop-api": api_c["image"],
        "kubeloop-trainer": op["KUBELOOP_OPERATOR_TRAINER_IMAGE"],
        "kubeloop-server": op["KUBELOOP_OPERATOR_SERVER_IMAGE"],
        "kubeloop-drift-check": op["KUBELOOP_OPERATOR_DRIFT_CHECK_IMAGE"],
    }
    for entry_point, image in images.items():
        assert image.endswith(f":{APP_VERSION}"), image
        resolved = cfg.resolve_image(image, "Always")
        assert resolved is not None, image
        assert not resolved.fake, image
        assert Path(resolved.entrypoint[0]).name == entry_point, (image, resolved)
    pinned = render({"operator": {"image": {"tag": "0.2.0-rc.1"}, "trainerImage": {"tag": "x_1"}}})
    assert container(pinned, "kubeloop-operator")["image"] == "kubeloop/operator:0.2.0-rc.1"
    assert (
        env_of(container(pinned, "kubeloop-operator"))["KUBELOOP_OPERATOR_TRAINER_IMAGE"]
        == "kubeloop/trainer:x_1"
    )


# -------------------------------------------------------------------------- equivalence with sources


def test_rbac_rules_equal_the_deploy_files(render: Render) -> None:
    """The chart's rules are the rules the local cluster and the facade's RBAC test run with."""
    objs = render()
    op_deploy = load(REPO / "operator" / "deploy" / "rbac.yaml")
    api_deploy = load(REPO / "api" / "deploy" / "rbac.yaml")
    op_chart = [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    api_chart = [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
    assert rules_of(op_chart, ("ClusterRole",)) == rules_of(op_deploy, ("ClusterRole",))
    assert not find(op_chart, "Role")
    assert rules_of(api_chart, ("ClusterRole",)) == rules_of(api_deploy, ("ClusterRole",))
    assert rules_of(api_chart, ("Role",)) == rules_of(api_deploy, ("Role",))
    # Released as "kubeloop" in kubeloop-system, identities and bindings carry the deploy files' names.
    for deploy, chart in ((op_deploy, op_chart), (api_deploy, api_chart)):
        for kind in ("ServiceAccount", "ClusterRoleBinding", "RoleBinding"):
            for d in find(deploy, kind):
                c = one(chart, kind, d["metadata"]["name"])
                assert c.get("subjects") == d.get("subjects"), kind
                assert c.get("roleRef") == d.get("roleRef"), kind


def test_rbac_drift_is_detected(render: Render) -> None:
    """The comparison can fail: one verb more in the chart's rules makes them differ."""
    objs = render()
    op_chart = [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    op_deploy = load(REPO / "operator" / "deploy" / "rbac.yaml")
    one(op_chart, "ClusterRole", "kubeloop-operator")["rules"][0]["verbs"].append("update")
    assert rules_of(op_chart, ("ClusterRole",)) != rules_of(op_deploy, ("ClusterRole",))


def test_peering_object_is_the_deploy_files(render: Render) -> None:
    objs = render()
    (deployed,) = [
        d
        for d in load(REPO / "operator" / "deploy" / "kopf-peering.yaml")
        if d["kind"] == "ClusterKopfPeering"
    ]
    chart = one(objs, "ClusterKopfPeering", deployed["metadata"]["name"])
    assert chart["apiVersion"] == deployed["apiVersion"]
    assert (
        env_of(container(objs, "kubeloop-operator"))["KUBELOOP_OPERATOR_PEERING_NAME"]
        == deployed["metadata"]["name"]
    )
    # Another release peers in its own object, so two installs never pause each other.
    other = render(release="team-b")
    assert find(other, "ClusterKopfPeering", "team-b-kubeloop-operator")


def test_every_setting_the_chart_sets_exists(render: Render) -> None:
    """A KUBELOOP_* variable the components do not read would be silently ignored (extra="ignore")."""
    objs = render(
        {
            "objectStore": {
                "endpoint": "s3.example:9000",
                "region": "eu-1",
                "credentials": {"accessKey": "a", "secretKey": "b"},
            },
            "mlflow": {"trackingUri": "http://mlflow.example:5000"},
            "api": {"presignEndpoint": "https://s3.example.com"},
        }
    )
    for deployment, prefix, settings in (
        ("kubeloop-operator", "KUBELOOP_OPERATOR_", OperatorSettings),
        ("kubeloop-api", "KUBELOOP_API_", ApiSettings),
    ):
        env = env_of(container(objs, deployment))
        fields = {f.upper() for f in settings.model_fields}
        ours = {k.removeprefix(prefix) for k in env if k.startswith(prefix)}
        assert ours, deployment
        assert ours <= fields, f"{deployment}: not settings: {sorted(ours - fields)}"


def _settings_from_env(env: dict[str, Any], settings: type[Any], secrets: dict[str, str]) -> Any:
    values = {}
    for k, v in env.items():
        if isinstance(v, dict):
            ref = v.get("secretKeyRef")
            if ref is None:
                continue
            v = secrets[ref["key"]]
        values[k] = v
    old = dict(os.environ)
    try:
        os.environ.update(values)
        return settings()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_rendered_env_is_accepted_by_the_settings_classes(render: Render) -> None:
    """The values the chart writes parse into the settings the components read at start."""
    objs = render(
        {
            "objectStore": {
                "endpoint": "https://s3.example.com",
                "secure": True,
                "credentials": {"accessKey": "a", "secretKey": "b"},
            },
            "mlflow": {"trackingUri": "http://mlflow.example:5000"},
            "operator": {"watchNamespaces": ["team-*", "!team-x"], "resyncSeconds": 5, "logLevel": "debug"},
            "api": {"tokenAudiences": ["https://kubernetes.default.svc"], "accessLog": False},
        }
    )
    secrets = {"accessKey": "a", "secretKey": "b"}
    op = _settings_from_env(env_of(container(objs, "kubeloop-operator")), OperatorSettings, secrets)
    assert op.namespaces == "team-*,!team-x"
    assert op.s3_endpoint == "https://s3.example.com"
    assert op.s3_secure is True
    assert op.s3_access_key.get_secret_value() == "a"
    assert op.resync_seconds == 5
    assert op.log_level == "debug"
    assert op.peering_name == "kubeloop-operator"
    assert op.credentials_secret == "kubeloop-s3"
    api = _settings_from_env(env_of(container(objs, "kubeloop-api")), ApiSettings, secrets)
    assert api.host == "0.0.0.0"
    assert api.namespace == "kubeloop-system"
    assert api.token_audiences == ["https://kubernetes.default.svc"]
    assert api.access_log is False
    assert api.mlflow_tracking_uri == "http://mlflow.example:5000"
    assert api.s3_secret_key.get_secret_value() == "b"


def test_local_cluster_values_render_the_operator_platform_py_runs(render: Render) -> None:
    """hack/localcluster/platform.py runs the operator "the way the chart will": with the local
    cluster's addresses, the chart's operator container is that one (env, probes, ports, strategy)."""
    from localcluster import platform

    reference = platform.operator_deployment()
    objs = render(
        {
            "operator": {"watchNamespaces": platform.OPERATOR_NAMESPACES.split(",")},
            "objectStore": {
                "endpoint": platform.POD_S3_ENDPOINT,
                "credentials": {"accessKey": "a", "secretKey": "b"},
            },
            "mlflow": {"trackingUri": platform.POD_MLFLOW_URI},
        }
    )
    ours = container(objs, "kubeloop-operator")
    theirs = reference["spec"]["template"]["spec"]["containers"][0]
    ours_env, theirs_env = env_of(ours), env_of(theirs)
    for name, value in theirs_env.items():
        assert ours_env.get(name) == value, name
    assert ours["image"] == theirs["image"]
    for key in ("ports", "startupProbe", "livenessProbe", "readinessProbe"):
        assert ours[key] == theirs[key], key
    dep = one(objs, "Deployment", "kubeloop-operator")
    assert dep["spec"]["strategy"] == reference["spec"]["strategy"]
    secret = one(objs, "Secret", platform.CREDENTIALS_SECRET)
    assert set(secret["data"]) == set(
        platform.credentials_secret("x", {"access_key": "a", "secret_key": "b"})["stringData"]
    )


# --------------------------------------------------------------------------------- value variants


def test_watch_namespaces_and_replicas(render: Render) -> None:
    objs = render(
        {
            "operator": {"replicas": 3, "watchNamespaces": ["team-a", "team-*", "!team-x"]},
            "api": {"replicas": 2},
        }
    )
    assert one(objs, "Deployment", "kubeloop-operator")["spec"]["replicas"] == 3
    assert one(objs, "Deployment", "kubeloop-api")["spec"]["replicas"] == 2
    assert (
        env_of(container(objs, "kubeloop-operator"))["KUBELOOP_OPERATOR_NAMESPACES"]
        == "team-a,team-*,!team-x"
    )
    # Replicas get distinct peering priorities from their pod names.
    assert env_of(container(objs, "kubeloop-operator"))["POD_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_external_store_with_credentials_makes_the_secret(render: Render) -> None:
    objs = render(
        {
            "objectStore": {
                "endpoint": "minio.store:9000",
                "bucket": "ml-store",
                "credentials": {"accessKey": "AK", "secretKey": "SK"},
            }
        }
    )
    secret = one(objs, "Secret", "kubeloop-s3")
    assert secret["data"] == {"accessKey": "QUs=", "secretKey": "U0s="}
    for deployment, prefix in (
        ("kubeloop-operator", "KUBELOOP_OPERATOR_"),
        ("kubeloop-api", "KUBELOOP_API_"),
    ):
        env = env_of(container(objs, deployment))
        assert env[f"{prefix}S3_ENDPOINT"] == "minio.store:9000"
        assert env[f"{prefix}BUCKET"] == "ml-store"
        assert env[f"{prefix}S3_ACCESS_KEY"] == secret_ref("kubeloop-s3", "accessKey")
        assert env[f"{prefix}S3_SECRET_KEY"] == secret_ref("kubeloop-s3", "secretKey")


def test_existing_credentials_secret_is_referenced_not_made(render: Render) -> None:
    objs = render(
        {"objectStore": {"endpoint": "s3.example:9000", "credentials": {"existingSecret": "team-s3"}}}
    )
    assert not find(objs, "Secret")
    op = env_of(container(objs, "kubeloop-operator"))
    assert op["KUBELOOP_OPERATOR_CREDENTIALS_SECRET"] == "team-s3"  # what pods read
    assert op["KUBELOOP_OPERATOR_S3_ACCESS_KEY"] == secret_ref("team-s3", "accessKey")
    assert env_of(container(objs, "kubeloop-api"))["KUBELOOP_API_S3_SECRET_KEY"] == secret_ref(
        "team-s3", "secretKey"
    )


def test_endpoint_without_credentials_is_refused_naming_the_values(helm: Helm) -> None:
    proc = helm(
        "template",
        "x",
        str(CHART),
        "--kube-version",
        "1.37.2",
        "--set",
        "objectStore.endpoint=s3:9000",
        check=False,
    )
    assert proc.returncode != 0
    assert "objectStore.credentials.accessKey" in proc.stderr, proc.stderr
    assert "existingSecret" in proc.stderr, proc.stderr


def test_bundled_minio_and_mlflow(render: Render) -> None:
    objs = render(
        {
            "minio": {"enabled": True, "persistence": {"enabled": True, "size": "20Gi"}},
            "mlflowServer": {"enabled": True},
        }
    )
    for kind in ("Deployment", "Service"):
        assert find(objs, kind, "kubeloop-minio")
        assert find(objs, kind, "kubeloop-mlflow")
    assert (
        one(objs, "PersistentVolumeClaim", "kubeloop-minio")["spec"]["resources"]["requests"]["storage"]
        == "20Gi"
    )
    assert not find(objs, "PersistentVolumeClaim", "kubeloop-mlflow")
    # Credentials are generated (no keys given) and MinIO's root user comes from them.
    secret = one(objs, "Secret", "kubeloop-s3")
    assert all(len(v) > 10 for v in secret["data"].values())
    minio_env = env_of(container(objs, "kubeloop-minio"))
    assert minio_env["MINIO_ROOT_USER"] == secret_ref("kubeloop-s3", "accessKey")
    for deployment, prefix in (
        ("kubeloop-operator", "KUBELOOP_OPERATOR_"),
        ("kubeloop-api", "KUBELOOP_API_"),
    ):
        env = env_of(container(objs, deployment))
        assert env[f"{prefix}S3_ENDPOINT"] == "kubeloop-minio.kubeloop-system:9000"
        assert env[f"{prefix}MLFLOW_TRACKING_URI"] == "http://kubeloop-mlflow.kubeloop-system:5000"
    mlflow_args = container(objs, "kubeloop-mlflow")["args"]
    assert "--artifacts-destination=s3://kubeloop/mlflow" in mlflow_args
    assert (
        env_of(container(objs, "kubeloop-mlflow"))["MLFLOW_S3_ENDPOINT_URL"]
        == "http://kubeloop-minio.kubeloop-system:9000"
    )
    bucket_job = one(objs, "Job", "kubeloop-minio-bucket")
    assert bucket_job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert (
        'mc mb --ignore-existing "kubeloop/kubeloop"'
        in bucket_job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    )
    # An external address wins over the bundled one.
    ext = render({"minio": {"enabled": True}, "objectStore": {"endpoint": "s3.example:9000"}})
    assert env_of(container(ext, "kubeloop-operator"))["KUBELOOP_OPERATOR_S3_ENDPOINT"] == "s3.example:9000"


def test_api_disabled_leaves_only_the_operator(render: Render) -> None:
    objs = render({"api": {"enabled": False}})
    assert not [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
    targets = json.loads(
        env_of(one(objs, "Job", "kubeloop-check")["spec"]["template"]["spec"]["containers"][0])[
            "CHECK_TARGETS"
        ]
    )
    assert [t["what"] for t in targets] == ["operator"]


def test_aggregated_roles_give_users_view_and_edit(render: Render) -> None:
    objs = render()
    view, edit = one(objs, "ClusterRole", "kubeloop-view"), one(objs, "ClusterRole", "kubeloop-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    kinds = {"trainingjobs", "modeldeployments", "driftmonitors"}
    for role, must, must_not in (
        (view, {"get", "list", "watch"}, {"create", "patch", "delete", "update"}),
        (edit, {"create", "patch", "delete"}, set()),
    ):
        main = [r for r in role["rules"] if kinds <= set(r["resources"])]
        assert main
        assert must <= set(main[0]["verbs"])
        assert not (must_not & set(main[0]["verbs"]))
        # Status is the operator's alone.
        for r in role["rules"]:
            if any(x.endswith("/status") for x in r["resources"]):
                assert set(r["verbs"]) == {"get"}
    off = render({"rbac": {"aggregateToDefaultRoles": False}})
    assert not any(
        k.startswith("rbac.authorization.k8s.io/aggregate")
        for k in one(off, "ClusterRole", "kubeloop-view")["metadata"]["labels"]
    )


def test_release_name_scopes_cluster_wide_names(render: Render) -> None:
    objs = render(release="team-b", namespace="team-b-system")
    cluster = sorted(o["metadata"]["name"] for o in objs if o["kind"] in CLUSTER_SCOPED)
    assert all(n.startswith("team-b-kubeloop-") for n in cluster), cluster
    binding = one(objs, "ClusterRoleBinding", "team-b-kubeloop-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "team-b-kubeloop-operator", "namespace": "team-b-system"}
    ]


# --------------------------------------------------------------------------------- the check Job


@pytest.fixture
def healthz_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _run_check(objs: list[dict[str, Any]], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    c = one(objs, "Job", "kubeloop-check")["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-c"]
    pod_env = {e["name"]: e["value"] for e in c["env"]}
    return subprocess.run(
        [sys.executable, "-c", c["args"][0]],
        env={"PATH": os.environ["PATH"], **pod_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_job_is_a_post_install_and_test_hook(render: Render) -> None:
    job = one(render(), "Job", "kubeloop-check")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade,test"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["image"] == f"kubeloop/operator:{APP_VERSION}"
    assert not find(render({"check": {"enabled": False}}), "Job")


def test_check_script_passes_when_both_answer(render: Render, healthz_server: int) -> None:
    objs = render()
    port = str(healthz_server)
    proc = _run_check(
        objs,
        {
            "KUBELOOP_OPERATOR_SERVICE_HOST": "127.0.0.1",
            "KUBELOOP_OPERATOR_SERVICE_PORT_HEALTHZ": port,
            "KUBELOOP_API_SERVICE_HOST": "127.0.0.1",
            "KUBELOOP_API_SERVICE_PORT_HTTP": port,
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok: the operator answers" in proc.stdout
    assert "ok: the REST facade answers" in proc.stdout


def test_check_script_fails_naming_the_silent_component(render: Render, healthz_server: int) -> None:
    objs = render({"check": {"timeoutSeconds": 10}})
    proc = _run_check(
        objs,
        {
            "CHECK_TIMEOUT_SECONDS": "1",
            "KUBELOOP_OPERATOR_SERVICE_HOST": "127.0.0.1",
            "KUBELOOP_OPERATOR_SERVICE_PORT_HEALTHZ": str(healthz_server),
            # Nothing listens on port 9 of loopback: the facade never answers.
            "KUBELOOP_API_SERVICE_HOST": "127.0.0.1",
            "KUBELOOP_API_SERVICE_PORT_HTTP": "9",
        },
    )
    assert proc.returncode == 1
    assert "FAILED: the REST facade did not answer http://127.0.0.1:9/healthz" in proc.stderr, proc.stderr

"""values.schema.json: every value typed and described, and bad values refused by helm itself with
a message that names the value (helm template and helm install validate the same way)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .conftest import CHART, KUBE_VERSION, Helm, set_args

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _schema_at(path: list[str]) -> dict[str, Any]:
    node: dict[str, Any] = SCHEMA
    for key in path:
        props = node.get("properties", {})
        assert key in props, f"{'.'.join(path)}: not in values.schema.json"
        node = props[key]
    return node


def _leaves(value: Any, path: list[str]) -> list[list[str]]:
    out = [path] if path else []
    if isinstance(value, dict) and value and (not path or "properties" in _schema_at(path)):
        for k, v in value.items():
            out += _leaves(v, [*path, k])
    return out


def test_every_value_is_typed_and_described() -> None:
    paths = _leaves(VALUES, [])
    assert len(paths) > 80, len(paths)
    for path in paths:
        node = _schema_at(path)
        where = ".".join(path)
        assert node.get("description"), f"{where}: no description"
        assert node.get("type"), f"{where}: no type"
        if node["type"] == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where}: unknown keys would be accepted"
    assert SCHEMA["additionalProperties"] is False


def test_schema_sections_all_have_defaults() -> None:
    """Each section the schema declares is in values.yaml, so `helm show values` documents it."""
    declared = set(SCHEMA["properties"]) - {"global"}
    assert declared == set(VALUES), declared ^ set(VALUES)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"api": {"enabled": "yes"}}, "/api/enabled"),
    ("unknown top-level key", {"operater": {"replicas": 1}}, "'operater'"),
    ("unknown key in operator", {"operator": {"replica": 2}}, "'replica'"),
    ("unknown key in api", {"api": {"port": 80}}, "'port'"),
    ("unknown key in objectStore", {"objectStore": {"accessKey": "a"}}, "'accessKey'"),
    ("unknown key in credentials", {"objectStore": {"credentials": {"password": "a"}}}, "'password'"),
    ("unknown key in minio", {"minio": {"replicas": 2}}, "'replicas'"),
    ("unknown key in mlflowServer", {"mlflowServer": {"port": 1}}, "'port'"),
    ("unknown key in mlflow", {"mlflow": {"uri": "http://m:5000"}}, "'uri'"),
    ("unknown key in rbac", {"rbac": {"create": False}}, "'create'"),
    ("unknown key in check", {"check": {"timeout": 5}}, "'timeout'"),
    ("negative operator replicas", {"operator": {"replicas": -1}}, "/operator/replicas"),
    ("negative api replicas", {"api": {"replicas": -3}}, "/api/replicas"),
    ("fractional replicas", {"operator": {"replicas": 1.5}}, "/operator/replicas"),
    ("malformed image tag", {"operator": {"image": {"tag": "v1:latest"}}}, "/operator/image/tag"),
    ("image tag with a space", {"api": {"image": {"tag": "1.0 beta"}}}, "/api/image/tag"),
    (
        "uppercase image repository",
        {"operator": {"image": {"repository": "Kubeloop/Operator"}}},
        "/operator/image/repository",
    ),
    ("bad pull policy", {"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    (
        "resource quantity not a quantity",
        {"operator": {"resources": {"limits": {"memory": "lots"}}}},
        "/operator/resources/limits/memory",
    ),
    ("resources with an unknown section", {"api": {"resources": {"request": {"cpu": "1"}}}}, "'request'"),
    ("resources as a string", {"operator": {"resources": "1 cpu"}}, "/operator/resources"),
    (
        "negative quantity",
        {"minio": {"resources": {"requests": {"cpu": -1}}}},
        "/minio/resources/requests/cpu",
    ),
    ("watchNamespaces as a string", {"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
    ("bad namespace pattern", {"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    ("bad log level", {"operator": {"logLevel": "verbose"}}, "/operator/logLevel"),
    ("port out of range", {"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
    ("bad service type", {"api": {"service": {"type": "Ingress"}}}, "/api/service/type"),
    ("bucket name too short", {"objectStore": {"bucket": "ml"}}, "/objectStore/bucket"),
    ("endpoint with a path", {"objectStore": {"endpoint": "http://s3:9000/bucket"}}, "/objectStore/endpoint"),
    ("tracking URI without scheme", {"mlflow": {"trackingUri": "mlflow:5000"}}, "/mlflow/trackingUri"),
    ("check timeout too short", {"check": {"timeoutSeconds": 1}}, "/check/timeoutSeconds"),
    ("extraEnv entry without a name", {"operator": {"extraEnv": [{"value": "x"}]}}, "/operator/extraEnv/0"),
    (
        "persistence size not a quantity",
        {"minio": {"persistence": {"size": "ten gigs"}}},
        "/minio/persistence/size",
    ),
    ("resync of zero seconds", {"operator": {"resyncSeconds": 0}}, "/operator/resyncSeconds"),
]


@pytest.mark.parametrize(("what", "values", "named"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_naming_the_value(
    helm: Helm, what: str, values: dict[str, Any], named: str
) -> None:
    proc = helm(
        "template", "kubeloop", str(CHART), "--kube-version", KUBE_VERSION, *set_args(values), check=False
    )
    assert proc.returncode != 0, f"{what}: accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert named in proc.stderr, f"{what}: {named!r} not named in:\n{proc.stderr}"


def test_good_values_of_each_form_are_accepted(helm: Helm) -> None:
    good = {
        "operator": {
            "replicas": 0,
            "image": {
                "repository": "registry.example.com:5000/ml/kubeloop-operator",
                "tag": "0.1.0-rc.1_build.7",
            },
            "resources": {
                "requests": {"cpu": 0.5, "memory": "1.5Gi", "nvidia.com/gpu": 1},
                "limits": {"memory": "2e9"},
            },
            "watchNamespaces": ["team-*", "!team-x", "default"],
        },
        "objectStore": {
            "endpoint": "https://s3.eu-west-1.amazonaws.com",
            "bucket": "my.models-1",
            "credentials": {"existingSecret": "aws"},
        },
        "mlflow": {"trackingUri": "https://mlflow.example.com/tracking"},
    }
    helm("template", "kubeloop", str(CHART), "--kube-version", KUBE_VERSION, *set_args(good))

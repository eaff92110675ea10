"""The resource models: examples round-trip, invalid specs are refused naming the field."""

from __future__ import annotations

import copy
import inspect
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubeloop import resources as r

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "cases" / "invalid").glob("*.yaml"))


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_there_is_one_example_per_kind() -> None:
    kinds = sorted(_load(p)["kind"] for p in EXAMPLES)
    assert kinds == sorted(res.kind for res in r.RESOURCES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips(path: Path) -> None:
    manifest = _load(path)
    obj = r.load_manifest(copy.deepcopy(manifest))
    assert obj.to_manifest() == manifest
    # And again through the typed object: stable, not merely equal once.
    assert type(obj).from_manifest(obj.to_manifest()).to_manifest() == manifest


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_defaults_are_filled_in_on_request(path: Path) -> None:
    obj = r.load_manifest(_load(path))
    full = obj.to_manifest(include_defaults=True)
    assert full["kind"] == obj.kind
    # Defaults appear in the full form and it validates again to the same object.
    assert type(obj).from_manifest(full) == obj


def test_there_are_at_least_15_invalid_cases_covering_every_kind() -> None:
    assert len(INVALID) >= 15
    kinds = {_load(p)["manifest"]["kind"] for p in INVALID}
    assert kinds == {res.kind for res in r.RESOURCES}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_case_is_refused_naming_the_field(path: Path) -> None:
    case = _load(path)
    with pytest.raises(ValidationError) as info:
        r.load_manifest(case["manifest"])
    message = r.format_validation_error(info.value)
    assert case["field"] in message, message
    # ManifestError carries the same text for callers that want an exception, not a list.
    assert str(r.ManifestError(info.value)) == message


def test_model_reference_rules() -> None:
    ok = [
        {"name": "m", "version": 1},
        {"name": "m", "alias": "champion"},
        {"uri": "s3://kubeloop/m/1/model.onnx"},
    ]
    for ref in ok:
        r.ModelRef.model_validate(ref)
    bad = [
        {},
        {"name": "m"},
        {"version": 2},
        {"name": "m", "version": 1, "alias": "a"},
        {"uri": "/m.onnx", "name": "m"},
    ]
    for ref in bad:
        with pytest.raises(ValidationError, match="exactly one model reference"):
            r.ModelRef.model_validate(ref)


def test_deepspeed_cpu_opt_in() -> None:
    r.DistributedSpec.model_validate({"backend": "deepspeed", "allowCpu": True})
    r.DistributedSpec.model_validate(
        {"backend": "deepspeed", "gpusPerNode": 1, "deepspeed": {"zeroStage": 3}}
    )
    with pytest.raises(ValidationError, match="gpusPerNode"):
        r.DistributedSpec.model_validate({"backend": "deepspeed"})


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("6h", 21600), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)]
)
def test_durations(value: str, seconds: float) -> None:
    assert r.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "1 day", "5", "h", "-1h", "1d"])
def test_bad_durations(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        r.parse_duration(value)


@pytest.mark.parametrize("value", [2, "500m", "1Gi", "1.5", "100M", "1e3"])
def test_quantities_accepted(value: Any) -> None:
    r.ResourceRequirements.model_validate({"requests": {"cpu": value}})


@pytest.mark.parametrize("value", ["two", "1 Gi", "", True, 1.5, None])
def test_quantities_refused(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        r.ResourceRequirements.model_validate({"limits": {"memory": value}})
    assert "limits.memory" in r.format_validation_error(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2, Fraction(2)),
        ("2", Fraction(2)),
        ("500m", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("+3", Fraction(3)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1Ki", Fraction(2**10)),
        ("1.5Mi", Fraction(3 * 2**19)),
        ("1Gi", Fraction(2**30)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("100n", Fraction(1, 10**7)),
        ("1u", Fraction(1, 10**6)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("2.5e-3", Fraction(1, 400)),
        ("1e+2", Fraction(100)),
        ("0", Fraction(0)),
        ("-1", Fraction(-1)),
    ],
)
def test_parse_quantity(value: Any, expected: Fraction) -> None:
    assert r.parse_quantity(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "1 Gi", "1gi", "1KI", "Gi", "1e", "1e1.5", "1e3m", "1.2.3", "two", "1" * 65, True, 1.5, None],
)
def test_parse_quantity_refuses_what_kubernetes_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="quantity"):
        r.parse_quantity(value)


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},  # equal
        {"requests": {"cpu": "1000m"}, "limits": {"cpu": 1}},  # equal, written differently
        {"requests": {"memory": "1G"}, "limits": {"memory": "1Gi"}},  # 10^9 < 2^30
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        {"requests": {"cpu": "1e-3"}, "limits": {"cpu": "1m"}},  # equal, exponent against milli
        {"requests": {"cpu": "4", "memory": "8Gi"}},  # only requests
        {"limits": {"cpu": "100m", "memory": "64Mi"}},  # only limits
        {"requests": {"cpu": "4"}, "limits": {"memory": "1Mi"}},  # different keys
        {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}},
        {},
    ],
)
def test_requests_within_limits_accepted(resources: dict[str, Any]) -> None:
    r.ResourceRequirements.model_validate(resources)


@pytest.mark.parametrize(
    ("requests", "limits", "field", "message"),
    [
        ({"cpu": 2}, {"cpu": 1}, "requests.cpu", "2 is more than limits.cpu 1"),
        ({"cpu": "2"}, {"cpu": "500m"}, "requests.cpu", "2 is more than limits.cpu 500m"),
        ({"cpu": "1001m"}, {"cpu": 1}, "requests.cpu", "1001m is more than limits.cpu 1"),
        ({"memory": "2Gi"}, {"memory": "1Gi"}, "requests.memory", "2Gi is more than limits.memory 1Gi"),
        ({"memory": "1Gi"}, {"memory": "1G"}, "requests.memory", "1Gi is more than limits.memory 1G"),
        ({"memory": "2M"}, {"memory": "1.5M"}, "requests.memory", "2M is more than limits.memory 1.5M"),
        ({"memory": "1.1e9"}, {"memory": "1G"}, "requests.memory", "1.1e9 is more than limits.memory 1G"),
        ({"memory": "1Ki"}, {"memory": 1000}, "requests.memory", "1Ki is more than limits.memory 1000"),
        # Exact and instant even where the number has a hundred thousand digits.
        (
            {"memory": "1e100000"},
            {"memory": "9e99999"},
            "requests.memory",
            "1e100000 is more than limits.memory 9e99999",
        ),
        (
            {"ephemeral-storage": "2Ti"},
            {"ephemeral-storage": "1T"},
            "requests.ephemeral-storage",
            "2Ti is more than limits.ephemeral-storage 1T",
        ),
    ],
)
def test_requests_above_limits_refused_naming_the_field(
    requests: dict[str, Any], limits: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        r.ResourceRequirements.model_validate({"requests": requests, "limits": limits})
    assert r.format_validation_error(info.value) == f"{field}: {message}"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("cpu", True),
        ("memory", True),
        ("ephemeral-storage", True),
        ("kubernetes.io/example", True),  # the native domain
        ("storage.kubernetes.io/scratch", True),  # Kubernetes tests for the domain anywhere in the name
        ("hugepages-2Mi", False),
        ("hugepages-1Gi", False),
        ("nvidia.com/gpu", False),
        ("example.com/fpga", False),
        ("amd.com/gpu", False),
    ],
)
def test_overcommit_allowed_as_kubernetes_decides(name: str, allowed: bool) -> None:
    assert r.overcommit_allowed(name) is allowed


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": 1}},  # equal, str against int
        {"requests": {"example.com/fpga": "1000m"}, "limits": {"example.com/fpga": "1"}},  # equal, other form
        {"requests": {"hugepages-2Mi": "128Mi", "memory": "1Gi"}, "limits": {"hugepages-2Mi": "128Mi"}},
        # Only a limit: Kubernetes sets the request to it. Only a request: the operator sets the limit.
        {"limits": {"nvidia.com/gpu": 2}},
        {"requests": {"example.com/fpga": 2}},
        # Native resources may still be overcommitted beside an extended one.
        {"requests": {"cpu": "1", "nvidia.com/gpu": 1}, "limits": {"cpu": "4", "nvidia.com/gpu": 1}},
    ],
)
def test_non_overcommitable_request_equal_to_limit_accepted(resources: dict[str, Any]) -> None:
    r.ResourceRequirements.model_validate(resources)


@pytest.mark.parametrize(
    ("requests", "limits", "field", "message"),
    [
        (
            {"nvidia.com/gpu": 1},
            {"nvidia.com/gpu": 2},
            "requests.nvidia.com/gpu",
            "1 must equal limits.nvidia.com/gpu 2 (extended resources cannot be overcommitted)",
        ),
        (
            {"nvidia.com/gpu": 2},
            {"nvidia.com/gpu": 1},
            "requests.nvidia.com/gpu",
            "2 must equal limits.nvidia.com/gpu 1 (extended resources cannot be overcommitted)",
        ),
        (
            {"cpu": "1", "example.com/fpga": "1"},
            {"cpu": "2", "example.com/fpga": "2"},
            "requests.example.com/fpga",
            "1 must equal limits.example.com/fpga 2 (extended resources cannot be overcommitted)",
        ),
        (
            {"memory": "1Gi", "hugepages-2Mi": "64Mi"},
            {"memory": "1Gi", "hugepages-2Mi": "128Mi"},
            "requests.hugepages-2Mi",
            "64Mi must equal limits.hugepages-2Mi 128Mi (hugepages cannot be overcommitted)",
        ),
    ],
)
def test_non_overcommitable_request_unlike_limit_refused_naming_the_field(
    requests: dict[str, Any], limits: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        r.ResourceRequirements.model_validate({"requests": requests, "limits": limits})
    assert r.format_validation_error(info.value) == f"{field}: {message}"


@pytest.mark.parametrize(
    "resources",
    [
        {"limits": {"nvidia.com/gpu": 2}},
        {"limits": {"nvidia.com/gpu": "2"}},
        # Other spellings of a whole number: Kubernetes accepts them, and so do we.
        {"limits": {"nvidia.com/gpu": "2000m"}},
        {"limits": {"nvidia.com/gpu": "1.0"}},
        {"limits": {"example.com/fpga": "1e3"}},
        {"limits": {"example.com/fpga": "1k"}},
        {"limits": {"example.com/fpga": "0.5Ki"}},  # 512
        {"limits": {"example.com/fpga": "20e-1"}},
        {"limits": {"nvidia.com/gpu": 0}},
        # The API server rounds a quantity up to the next nano unit when it parses it: this is 1.
        {"limits": {"nvidia.com/gpu": "0.9999999999"}},
        # Native resources may be fractional, including those in the kubernetes.io domain.
        {"requests": {"cpu": "500m"}, "limits": {"cpu": "1.5", "kubernetes.io/example": "1.5"}},
    ],
)
def test_whole_extended_resource_quantities_accepted(resources: dict[str, Any]) -> None:
    r.ResourceRequirements.model_validate(resources)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"limits": {"nvidia.com/gpu": "500m"}}, "limits.nvidia.com/gpu: 500m is not a whole number"),
        ({"limits": {"nvidia.com/gpu": "1.5"}}, "limits.nvidia.com/gpu: 1.5 is not a whole number"),
        ({"requests": {"nvidia.com/gpu": "1u"}}, "requests.nvidia.com/gpu: 1u is not a whole number"),
        ({"limits": {"example.com/fpga": "1.1Ki"}}, "limits.example.com/fpga: 1.1Ki is not a whole number"),
        ({"limits": {"example.com/fpga": "25e-1"}}, "limits.example.com/fpga: 25e-1 is not a whole number"),
        # Equal request and limit, both fractional: the limit is named first, as Kubernetes does.
        (
            {"requests": {"example.com/fpga": "1.5"}, "limits": {"example.com/fpga": "1.5"}},
            "limits.example.com/fpga: 1.5 is not a whole number",
        ),
        ({"limits": {"cpu": "1", "a.b/c": "0.25"}}, "limits.a.b/c: 0.25 is not a whole number"),
    ],
)
def test_fractional_extended_resource_refused_naming_the_field(
    resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        r.ResourceRequirements.model_validate(resources)
    assert r.format_validation_error(info.value) == (
        f"{message} (extended resources are counted in whole units)"
    )


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"memory": "1Gi", "hugepages-2Mi": "128Mi"}, "limits": {"hugepages-2Mi": "128Mi"}},
        # cpu or memory as a request or a limit is enough, as for Kubernetes.
        {"limits": {"cpu": "1", "hugepages-1Gi": "2Gi"}},
        {"requests": {"hugepages-2Mi": "4Mi"}, "limits": {"memory": "1Gi", "hugepages-2Mi": "4Mi"}},
        {"limits": {"memory": "1Gi", "hugepages-2Mi": "0"}},
        {"limits": {"memory": "1Gi", "hugepages-2Mi": 4194304}},  # 2 pages, in bytes
        {"limits": {"memory": "1Gi", "hugepages-1Gi": "0.5Ti"}},
        {"limits": {"memory": "1Gi", "hugepages-2048Ki": "4Mi"}},
        {"limits": {"memory": "1Gi", "hugepages-64Ki": "1Mi"}},
    ],
)
def test_hugepages_as_kubernetes_wants_accepted(resources: dict[str, Any]) -> None:
    r.ResourceRequirements.model_validate(resources)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"requests": {"hugepages-2Mi": "128Mi"}, "limits": {"hugepages-2Mi": "128Mi"}},
            "limits: hugepages-2Mi needs a cpu or memory request or limit too (Kubernetes refuses hugepages alone)",
        ),
        (
            {"requests": {"hugepages-2Mi": "128Mi"}, "limits": {"example.com/fpga": 1}},
            "requests: hugepages-2Mi needs a cpu or memory request or limit too (Kubernetes refuses hugepages alone)",
        ),
        (
            {"limits": {"memory": "1Gi", "hugepages-2Mi": "3Mi"}},
            "limits.hugepages-2Mi: 3Mi is not a whole number of 2Mi pages",
        ),
        (
            {"requests": {"memory": "1Gi", "hugepages-1Gi": "1.5Gi"}},
            "requests.hugepages-1Gi: 1.5Gi is not a whole number of 1Gi pages",
        ),
        (
            {"limits": {"memory": "1Gi", "hugepages-2Mi": "2e6"}},
            "limits.hugepages-2Mi: 2e6 is not a whole number of 2Mi pages",
        ),
        (
            {"limits": {"memory": "1Gi", "hugepages-2Mi": "2097152.5"}},
            "limits.hugepages-2Mi: 2097152.5 is not a whole number of 2Mi pages",
        ),
        (
            {"limits": {"memory": "1Gi", "hugepages-2M": "2M"}},
            "limits.hugepages-2M: hugepages-2M names no page size (hugepages-<size> with a size such as 64Ki, 2Mi or 1Gi)",
        ),
        (
            {"requests": {"memory": "1Gi", "hugepages-0Mi": "2Mi"}},
            "requests.hugepages-0Mi: hugepages-0Mi names no page size (hugepages-<size> with a size such as 64Ki, 2Mi or 1Gi)",
        ),
    ],
)
def test_hugepages_kubernetes_refuses_refused_naming_the_field(
    resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        r.ResourceRequirements.model_validate(resources)
    assert r.format_validation_error(info.value) == message


def _training_job(gpus: int, resources: dict[str, Any]) -> dict[str, Any]:
    tj = _load(ROOT / "examples" / "trainingjob.yaml")
    tj["spec"]["distributed"] = {"gpusPerNode": gpus}
    tj["spec"]["resources"] = resources
    return tj  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("gpus", "resources"),
    [
        (2, {"limits": {"nvidia.com/gpu": 2}}),
        (2, {"limits": {"nvidia.com/gpu": "2"}}),
        # The same number written otherwise: Kubernetes takes it as 2, so it agrees with gpusPerNode.
        (2, {"requests": {"nvidia.com/gpu": "2000m"}, "limits": {"nvidia.com/gpu": "2000m"}}),
        (2, {"limits": {"nvidia.com/gpu": "2.0"}}),
        (1, {"limits": {"nvidia.com/gpu": "1e0"}}),
    ],
)
def test_gpu_count_equal_to_gpus_per_node_accepted(gpus: int, resources: dict[str, Any]) -> None:
    r.load_manifest(_training_job(gpus, resources))


@pytest.mark.parametrize(
    ("gpus", "resources", "message"),
    [
        (2, {"limits": {"nvidia.com/gpu": 1}}, "spec.resources.limits: nvidia.com/gpu 1 contradicts"),
        (
            2,
            {"requests": {"nvidia.com/gpu": "3000m"}},
            "spec.resources.requests: nvidia.com/gpu 3000m contradicts",
        ),
    ],
)
def test_gpu_count_unlike_gpus_per_node_refused(gpus: int, resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        r.load_manifest(_training_job(gpus, resources))
    assert r.format_validation_error(info.value).startswith(message)


def test_gpu_request_unlike_limit_named_by_full_path_in_a_manifest() -> None:
    md = _load(ROOT / "examples" / "modeldeployment.yaml")
    md["spec"]["resources"] = {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}
    with pytest.raises(ValidationError) as info:
        r.load_manifest(md)
    assert r.format_validation_error(info.value) == (
        "spec.resources.requests.nvidia.com/gpu: 1 must equal limits.nvidia.com/gpu 2 "
        "(extended resources cannot be overcommitted)"
    )


def test_requests_above_limits_named_by_full_path_in_a_manifest() -> None:
    tj = _load(ROOT / "examples" / "trainingjob.yaml")
    tj["spec"]["resources"] = {
        "requests": {"cpu": "2", "memory": "2Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    with pytest.raises(ValidationError) as info:
        r.load_manifest(tj)
    assert r.format_validation_error(info.value) == "spec.resources.requests.cpu: 2 is more than limits.cpu 1"
    # A DriftMonitor's retraining template is a TrainingJob spec: the same rule, a longer path.
    dm = _load(ROOT / "examples" / "driftmonitor.yaml")
    dm["spec"]["retrain"] = {"template": tj["spec"]}
    with pytest.raises(ValidationError) as info:
        r.load_manifest(dm)
    assert r.format_validation_error(info.value) == (
        "spec.retrain.template.resources.requests.cpu: 2 is more than limits.cpu 1"
    )


def test_wrong_kind_and_bad_envelope() -> None:
    tj = _load(ROOT / "examples" / "trainingjob.yaml")
    with pytest.raises(ValidationError, match="kind"):
        r.ModelDeployment.from_manifest(tj)
    with pytest.raises(ValueError, match="kind"):
        r.load_manifest({"kind": "Pod"})
    with pytest.raises(ValueError, match="kind"):
        r.load_manifest([])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="metadata"):
        r.TrainingJob.from_manifest({**tj, "metadata": "x"})
    with pytest.raises(ValidationError, match="apiVersion"):
        r.TrainingJob.from_manifest({**tj, "apiVersion": "kubeloop.io/v2"})


def test_python_names_work_too() -> None:
    spec = r.TrainingJobSpec(
        dataset=r.DatasetSpec(uri="/data/t.csv", target="y"),
        task=r.Task.REGRESSION,
        training=r.TrainingSpec(epochs=3, learning_rate=0.01),
    )
    tj = r.TrainingJob(metadata={"name": "t"}, spec=spec)
    m = tj.to_manifest()
    assert m["spec"]["training"] == {"epochs": 3, "learningRate": 0.01}
    assert r.TrainingJob.from_manifest(m).spec.training.learning_rate == 0.01


def test_status_is_typed_and_tolerant() -> None:
    st = r.TrainingJobStatus.model_validate(
        {"phase": "Running", "progress": {"epoch": 2, "epochs": 5, "percent": 40}, "futureField": 1}
    )
    assert st.progress is not None
    assert st.progress.percent == 40


def test_every_cross_field_validator_has_a_cel_twin() -> None:
    """A pydantic model validator without CEL would let the API server accept what the SDK refuses."""
    for name, cls in inspect.getmembers(r, inspect.isclass):
        if not issubclass(cls, r.KubeloopModel) or cls is r.KubeloopModel:
            continue
        validators = cls.__pydantic_decorators__.model_validators
        own = [v for v in validators.values() if v.cls_var_name in cls.__dict__]
        if own:
            assert cls.__dict__.get("cel_rules"), f"{name} validates across fields but has no CEL rule"


def test_enum_fields_are_enums_and_serialise_as_their_values() -> None:
    tj = r.TrainingJob.from_manifest(_load(ROOT / "examples" / "trainingjob.yaml"))
    assert tj.spec.task is r.Task(tj.spec.task.value)
    assert isinstance(tj.spec.distributed.backend, r.Backend)
    status = r.TrainingJobStatus.model_validate(
        {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "PodsRunning",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    )
    assert status.phase is r.Phase.RUNNING
    assert status.conditions[0].status is r.ConditionStatus.TRUE
    status.phase = r.Phase.SUCCEEDED  # validate_assignment keeps enums
    assert status.phase is r.Phase.SUCCEEDED
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["phase"] == "Succeeded"
    assert type(dumped["phase"]) is str
    assert type(dumped["conditions"][0]["status"]) is str
    # Manifests carry plain strings, so yaml.safe_dump (which refuses str subclasses) can write them.
    assert type(tj.to_manifest()["spec"]["task"]) is str
    assert yaml.safe_load(yaml.safe_dump(tj.to_manifest())) == tj.to_manifest()

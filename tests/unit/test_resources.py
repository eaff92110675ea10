"""The resource models: examples round-trip, invalid specs are refused naming the field."""

from __future__ import annotations

import copy
import inspect
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

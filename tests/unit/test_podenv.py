"""Pod environments (kubeloop.podenv): what trainer and server pods are told, and how."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop import contracts as c
from kubeloop import podenv
from kubeloop.resources import ModelDeployment, TrainingJob, TrainingJobSpec

ROOT = Path(__file__).resolve().parents[2]


def _tj_spec() -> TrainingJobSpec:
    return TrainingJob.from_manifest(yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())).spec


def _store_from_secret() -> podenv.ObjectStoreAccess:
    return podenv.ObjectStoreAccess.from_secret(
        "minio.kubeloop-system:9000", "creds", bucket="b", region="r1"
    )


def test_trainer_env_carries_spec_identity_store_and_mlflow() -> None:
    spec = _tj_spec()
    ctx = podenv.TrainerContext("ns", "tj", "uid-1", _store_from_secret(), "http://mlflow:5000")
    env = podenv.trainer_env(spec, ctx)
    # The spec travels with its defaults applied and round-trips through the model.
    assert TrainingJobSpec.model_validate(json.loads(str(env[c.TrainerEnv.SPEC]))) == spec
    assert json.loads(str(env[c.TrainerEnv.SPEC]))["training"]["earlyStopping"]["minDelta"] == 0.0
    assert env[c.TrainerEnv.NAMESPACE] == "ns"
    assert env[c.TrainerEnv.NAME] == "tj"
    assert env[c.TrainerEnv.UID] == "uid-1"
    assert env[c.TrainerEnv.BUCKET] == "b"
    assert env[c.TrainerEnv.S3_ENDPOINT] == "minio.kubeloop-system:9000"
    assert env[c.TrainerEnv.S3_SECURE] == "false"
    assert env[c.TrainerEnv.S3_REGION] == "r1"
    assert env[c.TrainerEnv.MLFLOW_TRACKING_URI] == "http://mlflow:5000"
    assert env[c.TrainerEnv.S3_ACCESS_KEY] == podenv.SecretRef("creds", c.CredentialsSecretKey.ACCESS_KEY)
    assert env[c.TrainerEnv.S3_SECRET_KEY] == podenv.SecretRef("creds", c.CredentialsSecretKey.SECRET_KEY)


def test_trainer_env_is_what_the_trainer_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubeloop_trainer.settings import load_settings

    store = podenv.ObjectStoreAccess("127.0.0.1:9000", "ak", "sk", secure=True)
    env = podenv.to_process_env(
        podenv.trainer_env(_tj_spec(), podenv.TrainerContext("ns", "tj", "u", store, "http://m"))
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    assert (settings.namespace, settings.name, settings.uid) == ("ns", "tj", "u")
    assert (settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key) == (
        "127.0.0.1:9000",
        "ak",
        "sk",
    )
    assert settings.s3_secure is True
    assert settings.training_spec() == _tj_spec()


def test_to_k8s_env_renders_secret_and_field_refs_in_order() -> None:
    env: podenv.Env = {"A": "1", "B": podenv.SecretRef("s", "k"), "C": podenv.POD_NAME, "D": "$(A)"}
    assert podenv.to_k8s_env(env) == [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "D", "value": "$(A)"},
    ]


def test_to_process_env_refuses_references_naming_the_variable() -> None:
    env = podenv.trainer_env(_tj_spec(), podenv.TrainerContext("n", "t", "u", _store_from_secret(), ""))
    with pytest.raises(ValueError, match=c.TrainerEnv.S3_ACCESS_KEY):
        podenv.to_process_env(env)
    assert c.TrainerEnv.MLFLOW_TRACKING_URI not in env  # empty URI: not set at all


def test_torchrun_env_takes_the_rank_from_the_completion_index() -> None:
    env = podenv.torchrun_env(podenv.Torchrun(nnodes=2, nproc_per_node=1, master_addr="$(X_SERVICE_HOST)"))
    assert env == {
        c.TorchrunEnv.NNODES: "2",
        c.TorchrunEnv.NPROC_PER_NODE: "1",
        c.TorchrunEnv.NODE_RANK: podenv.FieldRef(
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        ),
        c.TorchrunEnv.MASTER_ADDR: "$(X_SERVICE_HOST)",
        c.TorchrunEnv.MASTER_PORT: str(c.RENDEZVOUS_PORT),
    }
    with pytest.raises(ValueError, match="nnodes"):
        podenv.torchrun_env(podenv.Torchrun(nnodes=0, nproc_per_node=1, master_addr="x"))


_BATCHING = {"enabled": True, "maxBatchSize": 16, "maxLatencyMs": 3}


def _md_spec(logging: bool = True, batching: dict[str, Any] | None = _BATCHING) -> ModelDeployment:
    spec: dict[str, Any] = {
        "model": {"name": "m", "alias": "champion"},
        "predictionLogging": {"enabled": logging, "sampleRate": 0.5},
    }
    if batching is not None:
        spec["batching"] = batching
    return ModelDeployment.from_manifest(
        {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "md"},
            "spec": spec,
        }
    )


def _server_settings(md: ModelDeployment, monkeypatch: pytest.MonkeyPatch) -> Any:
    from kubeloop_server.settings import ServerSettings

    store = podenv.ObjectStoreAccess("127.0.0.1:9000", "ak", "sk", bucket="b")
    ctx = podenv.ServerContext(
        "ns",
        "md",
        podenv.ServedModel("s3://b/models/m/3/model.onnx", "m", "3"),
        store,
        port=8081,
        pod_name="p-1",
        grpc_port=9091,
    )
    env = podenv.to_process_env(podenv.server_env(md.spec, ctx))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return ServerSettings()  # type: ignore[call-arg]


def test_default_batching_merges_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ModelDeployment that says nothing of batching gets the server's merging without a wait: no added
    latency for a lone request."""
    s = _server_settings(_md_spec(batching=None), monkeypatch)
    assert (s.batching_enabled, s.max_batch_size, s.max_latency_ms) == (True, 32, 0.0)


def test_server_env_is_what_the_server_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _server_settings(_md_spec(), monkeypatch)
    assert (s.model_uri, s.model_name, s.model_version) == ("s3://b/models/m/3/model.onnx", "m", "3")
    assert (s.namespace, s.deployment, s.pod_name, s.port, s.grpc_port) == ("ns", "md", "p-1", 8081, 9091)
    assert (s.batching_enabled, s.max_batch_size, s.max_latency_ms) == (True, 16, 3.0)
    assert (s.prediction_logging_enabled, s.prediction_logging_sample_rate) == (True, 0.5)
    assert (s.bucket, s.s3_endpoint, s.s3_access_key, s.s3_secret_key.get_secret_value()) == (
        "b",
        "127.0.0.1:9000",
        "ak",
        "sk",
    )


def test_server_env_without_a_store_turns_prediction_logging_off() -> None:
    ctx = podenv.ServerContext("ns", "md", podenv.ServedModel("/models/m.onnx"), None)
    env = podenv.server_env(_md_spec(logging=True).spec, ctx)
    assert env[c.ServerEnv.PREDICTION_LOGGING_ENABLED] == "false"
    assert c.ServerEnv.S3_ENDPOINT not in env
    assert env[c.ServerEnv.POD_NAME] == podenv.POD_NAME
    assert env[c.ServerEnv.GRPC_PORT] == "8081"


def test_layout_of_kept_training_logs() -> None:
    assert c.training_log("ns", "tj", "tj-0-abcde").uri == "s3://kubeloop/logs/ns/tj/tj-0-abcde.log"
    assert c.training_logs_prefix("ns", "tj", "b").key == "logs/ns/tj"


def test_the_exit_codes_never_retried_are_the_trainers_errors_a_retry_cannot_fix() -> None:
    from kubeloop_trainer import errors

    final = {e.exit_code for e in errors.ALL_ERRORS if not e.retryable}
    transient = {e.exit_code for e in errors.ALL_ERRORS} - final
    assert final <= c.TRAINER_NO_RETRY_EXIT_CODES
    assert not transient & c.TRAINER_NO_RETRY_EXIT_CODES
    # the spec and the data (2, 10-29) and a diverging run, which diverges again with the same seed (34)
    assert {2, 11, 24, errors.TrainingDivergedError.exit_code} <= c.TRAINER_NO_RETRY_EXIT_CODES
    assert errors.StorageError.exit_code in transient

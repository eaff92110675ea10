"""MinIO and MLflow as the platform uses them: objects in the bucket, runs and registered models."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from localcluster.pytest_fixtures import MinioServer, MlflowServer

pytestmark = [pytest.mark.component, pytest.mark.harness]


def test_minio_write_read_list_delete(minio_server: MinioServer, s3_prefix: str) -> None:
    s3 = minio_server.client()
    payload = uuid.uuid4().bytes * 1000
    key = f"{s3_prefix}datasets/blob.bin"
    s3.put_object(Bucket=minio_server.bucket, Key=key, Body=payload)
    assert s3.get_object(Bucket=minio_server.bucket, Key=key)["Body"].read() == payload
    listed = s3.list_objects_v2(Bucket=minio_server.bucket, Prefix=s3_prefix)
    assert [o["Key"] for o in listed["Contents"]] == [key]
    s3.delete_object(Bucket=minio_server.bucket, Key=key)
    assert s3.list_objects_v2(Bucket=minio_server.bucket, Prefix=s3_prefix)["KeyCount"] == 0


def test_minio_refuses_wrong_credentials(minio_server: MinioServer) -> None:
    from botocore.exceptions import ClientError

    bad = MinioServer(minio_server.endpoint, minio_server.access_key, "not-the-secret", minio_server.bucket)
    with pytest.raises(ClientError) as err:
        bad.client().list_objects_v2(Bucket=minio_server.bucket, MaxKeys=1)
    assert err.value.response["Error"]["Code"] in {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    }


def test_mlflow_logs_a_run_with_artifacts_in_minio_and_registers_a_model_version(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    for k, v in mlflow_server.env.items():
        monkeypatch.setenv(k, v)
    # Process-wide MLflow state outlives this test: restore it so later tests see their own URIs.
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    suffix = uuid.uuid4().hex[:8]
    experiment_id = client.create_experiment(f"component-{suffix}")
    (tmp_path / "model.onnx").write_bytes(b"not really onnx " + suffix.encode())

    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("epochs", 3)
        mlflow.log_metric("accuracy", 0.93, step=3)
        mlflow.log_artifact(str(tmp_path / "model.onnx"), artifact_path="model")
    run_id = run.info.run_id

    fetched = client.get_run(run_id)
    assert fetched.data.metrics["accuracy"] == pytest.approx(0.93)
    assert fetched.data.params["epochs"] == "3"
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.onnx"]

    # The artifact went through the tracking server into MinIO, under the configured destination.
    s3 = mlflow_server.minio.client()
    prefix = mlflow_server.artifacts_destination.removeprefix(f"s3://{mlflow_server.minio.bucket}/")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=mlflow_server.minio.bucket, Prefix=prefix
        )
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith(f"{run_id}/artifacts/model/model.onnx") for k in keys), keys

    name = f"component-model-{suffix}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    assert version.version == "1"
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").run_id == run_id
    client.delete_registered_model(name)
    client.delete_experiment(experiment_id)

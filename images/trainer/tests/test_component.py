"""Component tests: the trainer against a real MinIO and a real MLflow tracking server.

Acceptance of issue #5: breast-cancer and diabetes data uploaded as CSV and Parquet train, register
a model version and upload an ONNX model that matches torch within 1e-4; DDP on two CPU processes
matches one process; a killed run resumes; bad data fails cleanly with nothing registered.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from kubeloop_trainer.app import TORCH_ARTIFACT, load_torch_artifact

from kubeloop.contracts import ModelMetadata, TrainerEnv, checkpoint_prefix, model_baseline, model_onnx
from kubeloop.drift import Baseline

pytestmark = pytest.mark.component


class Env:
    """A trainer environment on the shared MinIO + MLflow, with its own namespace and names."""

    def __init__(self, minio: Any, mlflow: Any, tmp_path: Path) -> None:
        self.minio = minio
        self.mlflow = mlflow
        self.tmp_path = tmp_path
        self.namespace = f"t-{uuid.uuid4().hex[:8]}"
        self.s3 = minio.client()
        self.model_names: list[str] = []

    def base(self, name: str, uid: str | None = None) -> dict[str, str]:
        return {
            **self.mlflow.env,
            TrainerEnv.S3_ENDPOINT: self.minio.endpoint,
            TrainerEnv.S3_ACCESS_KEY: self.minio.access_key,
            TrainerEnv.S3_SECRET_KEY: self.minio.secret_key,
            TrainerEnv.BUCKET: self.minio.bucket,
            TrainerEnv.NAMESPACE: self.namespace,
            TrainerEnv.NAME: name,
            TrainerEnv.UID: uid or str(uuid.uuid4()),
        }

    def model_name(self, hint: str) -> str:
        name = f"{hint}-{uuid.uuid4().hex[:6]}"
        self.model_names.append(name)
        return name

    def upload(self, key: str, data: bytes) -> str:
        self.s3.put_object(Bucket=self.minio.bucket, Key=key, Body=data)
        return f"s3://{self.minio.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def keys(self, prefix: str) -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=self.minio.bucket, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow.tracking_uri)

    def cleanup(self) -> None:
        self.minio.delete_prefix(checkpoint_prefix(self.namespace, "x").key.rsplit("/", 1)[0] + "/")
        for name in self.model_names:
            self.minio.delete_prefix(f"models/{name}/")


@pytest.fixture
def env(minio_server: Any, mlflow_server: Any, tmp_path: Path) -> Iterator[Env]:
    e = Env(minio_server, mlflow_server, tmp_path)
    yield e
    e.cleanup()


def to_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


CASES = {
    "breast-cancer-csv": ("breast_cancer", "csv", "classification"),
    "breast-cancer-parquet": ("breast_cancer", "parquet", "classification"),
    "diabetes-csv": ("diabetes", "csv", "regression"),
    "diabetes-parquet": ("diabetes", "parquet", "regression"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_train_register_export(
    case: str,
    env: Env,
    request: pytest.FixtureRequest,
    make_spec: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    run_main: Callable[[dict[str, str]], Any],
) -> None:
    dataset, fmt, task = CASES[case]
    df: pd.DataFrame = request.getfixturevalue(dataset)
    uri = env.upload(f"datasets/{env.namespace}/{dataset}.{fmt}", to_bytes(df, fmt))
    name = env.model_name(dataset.replace("_", "-"))
    spec = make_spec(
        uri,
        "target",
        task,
        model={"hiddenLayers": [32, 16], "dropout": 0.0},
        training={
            "epochs": 30,
            "batchSize": 32,
            "learningRate": 0.003 if task == "classification" else 0.01,
            "seed": 7,
            "earlyStopping": {"enabled": True, "patience": 5},
        },
        registry={"modelName": name},
        mlflow={"experiment": env.namespace},
    )
    r = run_main({**env.base("job-" + case), TrainerEnv.SPEC: json.dumps(spec)})
    assert r.rc == 0, r.stderr[-3000:]
    summary = r.termination
    assert summary is not None
    version = summary["modelVersion"]
    assert summary["modelUri"] == model_onnx(name, version, env.minio.bucket).uri
    assert summary["baselineUri"] == model_baseline(name, version, env.minio.bucket).uri

    # per-epoch progress lines
    epochs = r.events()
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert all(e["epochs"] == 30 and e["seconds"] >= 0 for e in epochs)

    # MLflow: run with identity tags, params, per-epoch and final metrics; the registered version
    client = env.client()
    run = client.get_run(summary["mlflowRunId"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["kubeloop.io/namespace"] == env.namespace
    assert run.data.tags["kubeloop.io/trainingjob"] == "job-" + case
    assert run.data.params["training.seed"] == "7"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [e["epoch"] for e in epochs]
    mv = client.get_model_version(name, str(version))
    assert mv.run_id == run.info.run_id
    assert mv.tags["kubeloop.io/model-uri"] == summary["modelUri"]
    # the version names its namespace itself: the REST facade's ownership check needs no run lookup
    assert mv.tags["kubeloop.io/namespace"] == env.namespace
    assert mv.tags["kubeloop.io/trainingjob"] == "job-" + case
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.onnx", "model/baseline.json", f"model/{TORCH_ARTIFACT}"} <= artifacts
    expected = (
        {"accuracy", "precision", "recall", "f1", "roc_auc"}
        if task == "classification"
        else {"r2", "mse", "mae"}
    )
    assert expected <= set(summary["metrics"])
    assert expected <= set(run.data.metrics)
    print(f"FIGURE {case} metrics={summary['metrics']}")
    if dataset == "breast_cancer":
        assert summary["metrics"]["accuracy"] >= 0.93
    else:
        assert summary["metrics"]["r2"] >= 0.3

    # the ONNX model from MinIO, in onnxruntime, against the torch model from MLflow
    blob = env.get(summary["modelUri"])
    model = onnx.load_from_string(blob)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.model_name == name
    assert meta.model_version == str(version)
    assert meta.mlflow_run_id == run.info.run_id
    assert meta.task == task
    assert meta.target == "target"
    features = [f.name for f in meta.features]
    assert features == [c for c in df.columns if c != "target"]
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    raw = df[features].to_numpy(np.float32).copy()
    got = sess.run(None, {f: raw[:, [i]] for i, f in enumerate(features)})[0]
    local = client.download_artifacts(run.info.run_id, f"model/{TORCH_ARTIFACT}", str(env.tmp_path))
    head = load_torch_artifact(Path(local).read_bytes())
    with torch.no_grad():
        want = head(torch.from_numpy(raw)).numpy()
    print(f"FIGURE {case} onnx-vs-torch max abs diff={float(np.max(np.abs(got - want))):.3g}")
    assert float(np.max(np.abs(got - want))) <= 1e-4
    one = sess.run(None, {f: raw[:1, [i]] for i, f in enumerate(features)})[0]  # dynamic batch
    assert one.shape == (1, want.shape[1])

    baseline = Baseline.from_json(env.get(summary["baselineUri"]))
    assert list(baseline.features) == features
    assert baseline.metadata["model_version"] == str(version)


def _ddp_spec(make_spec: Callable[..., dict[str, Any]], uri: str, name: str) -> dict[str, Any]:
    return make_spec(
        uri,
        "target",
        "classification",
        model={"hiddenLayers": [16], "dropout": 0.0},
        training={
            "epochs": 6,
            "batchSize": 64,
            "learningRate": 0.005,
            "seed": 11,
            "earlyStopping": {"enabled": False},
        },
        registry={"modelName": name},
    )


def test_ddp_two_processes_match_one(
    env: Env,
    breast_cancer: pd.DataFrame,
    make_spec: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    run_main: Callable[[dict[str, str]], Any],
) -> None:
    uri = env.upload(f"datasets/{env.namespace}/bc.csv", to_bytes(breast_cancer, "csv"))
    single_name, ddp_name = env.model_name("bc-single"), env.model_name("bc-ddp")
    ddp = run_cli(
        {**env.base("job-ddp"), TrainerEnv.SPEC: json.dumps(_ddp_spec(make_spec, uri, ddp_name))},
        launcher=[
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
        ],
    )
    assert ddp.rc == 0, ddp.stderr[-3000:]
    single = run_main(
        {**env.base("job-single"), TrainerEnv.SPEC: json.dumps(_ddp_spec(make_spec, uri, single_name))}
    )
    assert single.rc == 0, single.stderr[-3000:]
    assert ddp.termination is not None
    assert single.termination is not None
    assert len(ddp.events()) == 6  # only rank 0 reports progress
    print(f"FIGURE ddp-vs-single single={single.termination['metrics']} ddp={ddp.termination['metrics']}")
    for metric, value in single.termination["metrics"].items():
        other = ddp.termination["metrics"][metric]
        assert abs(other - value) <= 0.01 * max(abs(value), 1e-9), (metric, value, other)
    versions = env.client().search_model_versions(f"name='{ddp_name}'")
    assert len(versions) == 1
    run = env.client().get_run(ddp.termination["mlflowRunId"])
    assert run.data.params["worldSize"] == "2"


def test_killed_run_resumes_at_the_next_epoch(
    env: Env,
    breast_cancer: pd.DataFrame,
    make_spec: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    run_main: Callable[[dict[str, str]], Any],
) -> None:
    uri = env.upload(f"datasets/{env.namespace}/bc.csv", to_bytes(breast_cancer, "csv"))
    name = env.model_name("bc-resume")
    spec = make_spec(
        uri,
        "target",
        "classification",
        training={
            "epochs": 5,
            "batchSize": 64,
            "learningRate": 0.005,
            "seed": 5,
            "earlyStopping": {"enabled": False},
        },
        registry={"modelName": name},
    )
    base = {**env.base("job-resume", uid="uid-resume"), TrainerEnv.SPEC: json.dumps(spec)}
    first = run_cli({**base, "KUBELOOP_TRAINER_CRASH_AFTER_EPOCH": "2"})
    assert first.rc == -9, first.stderr[-2000:]  # SIGKILL, like an evicted pod
    assert [e["epoch"] for e in first.events()] == [1, 2]
    assert env.client().search_model_versions(f"name='{name}'") == []

    second = run_cli(base)
    assert second.rc == 0, second.stderr[-3000:]
    assert second.events("resumed") == [{"event": "resumed", "epoch": 2, "epochs": 5}]
    assert [e["epoch"] for e in second.events()] == [3, 4, 5]
    assert second.termination is not None
    history = env.client().get_metric_history(second.termination["mlflowRunId"], "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # one MLflow run across both attempts
    assert len(env.client().search_model_versions(f"name='{name}'")) == 1

    # a pod restarted after success reports the same summary and registers nothing new
    third = run_cli(base)
    assert third.rc == 0
    assert third.termination == second.termination
    assert third.events() == []
    assert len(env.client().search_model_versions(f"name='{name}'")) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _good(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "target": np.arange(n) % 2})


def _with(df: pd.DataFrame, **changes: Any) -> pd.DataFrame:
    df = df.copy()
    for col, fn in changes.items():
        df = fn(df) if col == "frame" else df.assign(**{col: fn(df)})
    return df


def _text(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _bad_numeric(df: pd.DataFrame) -> bytes:
    d = df.astype({"a": object})
    d.loc[4, "a"] = "n/a?"
    return _text(d)


BAD_DATA: dict[str, tuple[bytes | None, dict[str, Any], str, int, str]] = {
    # case: (csv bytes or None for "no object", dataset overrides, reason, exit code, message part)
    "missing-object": (None, {}, "DatasetNotFound", 11, "does not exist"),
    "empty-file": (b"", {}, "EmptyDataset", 13, "is empty"),
    "missing-target": (
        _text(_good().drop(columns=["target"])),
        {},
        "MissingTargetColumn",
        14,
        "target column 'target'",
    ),
    "unknown-feature": (_text(_good()), {"features": ["a", "zzz"]}, "UnknownFeature", 15, "'zzz'"),
    "too-few-rows": (_text(_good(4)), {}, "TooFewRows", 16, "4 row(s)"),
    "all-missing-column": (_text(_good().assign(b=np.nan)), {}, "AllMissingColumn", 17, "'b'"),
    "non-numeric-value": (_bad_numeric(_good()), {}, "NonNumericValues", 18, "'a' has 1 non-numeric"),
    "infinite-value": (_text(_good().assign(b=[np.inf] + [0.0] * 59)), {}, "NonFiniteValues", 19, "'b'"),
    "missing-target-values": (
        _text(_good().assign(target=[None] * 3 + [1] * 57)),
        {},
        "MissingTargetValues",
        20,
        "3 missing",
    ),
    "single-class": (_text(_good().assign(target=1)), {}, "SingleClass", 21, "single class"),
    "duplicate-columns": (
        b"a,a,target\n" + b"1,2,0\n" * 20,
        {},
        "DuplicateColumns",
        24,
        "duplicate column names: a",
    ),
    "temporal-feature": (
        _text(_good().assign(at=pd.date_range("2024-01-01", periods=60, freq="min"))),
        {"features": ["a", "at"]},
        "TemporalColumn",
        25,
        "feature column 'at' holds timestamps",
    ),
    # a trailing comma on every row: pandas alone would train with column a moved into the index
    "ragged-rows": (
        b"a,b,target\n" + b"".join(b"%d,%d,%d,\n" % (i, i * 2, i % 2) for i in range(60)),
        {},
        "UnreadableDataset",
        12,
        "line 2 (data row 1) has 4 fields but the header has 3",
    ),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_fails_cleanly(
    case: str,
    env: Env,
    make_spec: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    run_main: Callable[[dict[str, str]], Any],
) -> None:
    data, dataset, reason, code, text = BAD_DATA[case]
    key = f"datasets/{env.namespace}/{case}.csv"
    uri = env.upload(key, data) if data is not None else f"s3://{env.minio.bucket}/{key}"
    name = env.model_name("bad")
    spec = make_spec(uri, "target", "classification", registry={"modelName": name})
    spec["dataset"].update(dataset)
    r = run_main({**env.base("job-bad"), TrainerEnv.SPEC: json.dumps(spec)})
    assert r.rc == code
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("kubeloop-trainer:")]
    assert len(lines) == 1
    assert reason in lines[0]
    assert text in lines[0]
    assert r.termination is not None
    assert r.termination["reason"] == reason
    assert r.termination["exitCode"] == code
    assert text in r.termination["message"]
    assert "\n" not in r.termination["message"]
    assert env.client().search_model_versions(f"name='{name}'") == []
    assert env.keys(f"models/{name}/") == []
    assert r.events() == []


def test_bad_data_exit_code_of_the_process(
    env: Env,
    make_spec: Callable[..., dict[str, Any]],
    run_cli: Callable[..., Any],
    run_main: Callable[[dict[str, str]], Any],
) -> None:
    """The same as a real process: the exit status is the error's code."""
    uri = env.upload(f"datasets/{env.namespace}/single.csv", _text(_good().assign(target=0)))
    name = env.model_name("bad-proc")
    spec = make_spec(uri, "target", "classification", registry={"modelName": name})
    r = run_cli({**env.base("job-bad-proc"), TrainerEnv.SPEC: json.dumps(spec)})
    assert r.rc == 21
    assert r.termination == {"reason": "SingleClass", "exitCode": 21, "message": r.termination["message"]}
    assert env.client().search_model_versions(f"name='{name}'") == []

"""Settings (environment contract with the operator) and model loading."""

from __future__ import annotations

import pytest
from kubeloop_server import model as model_mod
from kubeloop_server.errors import ModelLoadError
from kubeloop_server.model import ModelRuntime
from kubeloop_server.settings import ServerSettings
from kubeloop_server.storage import fetch_model_bytes
from kubeloop_testing.onnx_models import mlp_model
from pydantic import ValidationError

from kubeloop.contracts import ServerEnv


def test_every_operator_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        ServerEnv.MODEL_URI: "s3://kubeloop/models/m/1/model.onnx",
        ServerEnv.MODEL_NAME: "m",
        ServerEnv.MODEL_VERSION: "1",
        ServerEnv.NAMESPACE: "ns",
        ServerEnv.DEPLOYMENT: "dep",
        ServerEnv.PORT: "9000",
        ServerEnv.BATCHING_ENABLED: "true",
        ServerEnv.MAX_BATCH_SIZE: "17",
        ServerEnv.MAX_LATENCY_MS: "3.5",
        ServerEnv.PREDICTION_LOGGING_ENABLED: "true",
        ServerEnv.PREDICTION_LOGGING_SAMPLE_RATE: "0.5",
        ServerEnv.BUCKET: "b",
        ServerEnv.S3_ENDPOINT: "minio:9000",
        ServerEnv.S3_ACCESS_KEY: "ak",
        ServerEnv.S3_SECRET_KEY: "sk",
        ServerEnv.S3_SECURE: "true",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    s = ServerSettings()  # type: ignore[call-arg]
    assert (s.model_uri, s.model_name, s.model_version, s.namespace, s.deployment) == (
        "s3://kubeloop/models/m/1/model.onnx", "m", "1", "ns", "dep",
    )  # fmt: skip
    assert (s.port, s.batching_enabled, s.max_batch_size, s.max_latency_ms) == (9000, True, 17, 3.5)
    assert (s.prediction_logging_enabled, s.prediction_logging_sample_rate, s.bucket) == (True, 0.5, "b")
    assert (s.s3_endpoint, s.s3_access_key, s.s3_secret_key.get_secret_value(), s.s3_secure) == (
        "minio:9000",
        "ak",
        "sk",
        True,
    )
    assert "sk" not in repr(s)
    for name, field in ServerSettings.model_fields.items():
        assert field.description, f"setting {name} lacks a description"


def test_settings_validation() -> None:
    with pytest.raises(ValidationError, match="s3_endpoint"):
        ServerSettings(model_uri="s3://kubeloop/models/m/1/model.onnx")
    with pytest.raises(ValidationError, match="s3_endpoint"):
        ServerSettings(model_uri="/m.onnx", prediction_logging_enabled=True)
    with pytest.raises(ValidationError):
        ServerSettings(model_uri="/m.onnx", prediction_logging_sample_rate=1.5)


def test_fetch_model_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot load model_uri .*missing\.onnx.* does not exist"):
        fetch_model_bytes(str(tmp_path / "missing.onnx"), None)
    with pytest.raises(ModelLoadError, match="no s3_endpoint"):
        fetch_model_bytes("s3://kubeloop/models/m/1/model.onnx", None)
    p = tmp_path / "m.onnx"
    p.write_bytes(b"abc")
    assert fetch_model_bytes(f"file://{p}", None) == b"abc"


def test_layouts_and_outputs(packed_clf, mixed_clf, mixed_reg) -> None:
    rt = ModelRuntime(packed_clf)
    assert (rt.layout, rt.task, rt.classes, rt.batchable) == (
        "packed",
        "classification",
        ["setosa", "versicolor", "virginica"],
        True,
    )
    assert rt.provider == "CPUExecutionProvider"
    assert rt.threads >= 1
    assert rt.single_row_s > 0
    rt = ModelRuntime(mixed_reg)
    assert rt.layout == "per_feature"
    assert [f.numeric for f in rt.features] == [True, True, True, False, False]
    assert rt.output_names == ["prediction"]


def test_per_feature_inputs_matched_by_position_when_names_differ() -> None:
    import onnx

    m = onnx.load_from_string(mlp_model(n_numeric=2, categorical=(("c", ("a", "b")),), layout="per_feature"))
    rename = {"f0": "input_0", "f1": "input_1", "c": "input_2"}
    for i in m.graph.input:
        i.name = rename[i.name]
    for node in m.graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    rt = ModelRuntime(m.SerializeToString())
    assert [(f.name, f.input.name) for f in rt.features] == [
        ("f0", "input_0"),
        ("f1", "input_1"),
        ("c", "input_2"),
    ]


def test_without_kubeloop_metadata_it_is_a_foreign_model_with_broken_metadata_it_fails() -> None:
    import onnx

    m = onnx.load_from_string(mlp_model(n_numeric=3))
    del m.metadata_props[:]
    rt = ModelRuntime(m.SerializeToString())
    assert (rt.kind, rt.layout, rt.feature_names, rt.name, rt.version) == (
        "onnx", "packed", ["input_0", "input_1", "input_2"], "model", "1",
    )  # fmt: skip
    assert (rt.task, rt.output_names[rt.prediction_output or 0]) == ("classification", "probabilities")
    m = onnx.load_from_string(mlp_model(n_numeric=3))
    for p in m.metadata_props:
        if p.key == "kubeloop.features":
            m.metadata_props.remove(p)
            break
    with pytest.raises(ModelLoadError, match=r"Kubeloop metadata_props are invalid.*kubeloop\.features"):
        ModelRuntime(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="cannot load"):
        ModelRuntime(b"not an onnx file")


def test_class_count_mismatch() -> None:
    bad = mlp_model(n_numeric=3, classes=("a", "b"))
    import onnx

    m = onnx.load_from_string(bad)
    for p in m.metadata_props:
        if p.key == "kubeloop.classes":
            p.value = '["a", "b", "c"]'
    with pytest.raises(ModelLoadError, match="3 classes but output 'probabilities' has 2 columns"):
        ModelRuntime(m.SerializeToString())


def test_packed_width_mismatch() -> None:
    import onnx

    m = onnx.load_from_string(mlp_model(n_numeric=3))
    for p in m.metadata_props:
        if p.key == "kubeloop.features":
            p.value = '[{"name": "a", "type": "numeric"}, {"name": "b", "type": "numeric"}]'
    with pytest.raises(ModelLoadError, match=r"expected a float \[N, 2\]"):
        ModelRuntime(m.SerializeToString())


def test_device_cuda_without_provider_fails(packed_clf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider is not available"):
        ModelRuntime(packed_clf, device="cuda")


def test_cuda_provider_is_asked_for_full_fp32(packed_clf, monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 would make GPU answers differ from the CPU's by ~1e-3: the CUDA provider is told not to use it."""
    seen: list[object] = []
    real = model_mod.ort.InferenceSession

    def session(model: bytes, sess_options: object = None, providers: list[object] | None = None) -> object:
        seen.append(providers)
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        model_mod.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(model_mod.ort, "InferenceSession", session)
    with pytest.raises(ModelLoadError, match="CUDA execution provider failed to initialise"):
        ModelRuntime(packed_clf, device="cuda")
    assert seen == [[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]]


@pytest.mark.gpu
def test_cuda_provider_on_a_gpu(packed_clf) -> None:
    if not model_mod.gpu_present():
        pytest.skip("no CUDA GPU on this machine")
    rt = ModelRuntime(packed_clf, device="auto")
    assert rt.provider == "CUDAExecutionProvider"
    cpu = ModelRuntime(packed_clf, device="cpu")
    import numpy as np

    x = {"input": np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32)}
    np.testing.assert_allclose(rt.run(x)[0], cpu.run(x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LOG_LEVEL": "verbose"}, "log_level: Input should be"),
        ({"GRACEFUL_TIMEOUT_S": "inf"}, "graceful_timeout_s: Input should be a finite number"),
        # The writer thread's wait cannot take it: it died at its first wait and nothing was ever logged.
        (
            {"PREDICTION_LOG_FLUSH_INTERVAL_S": "1e10"},
            "prediction_log_flush_interval_s: Input should be less",
        ),
        ({"S3_ENDPOINT": "http://"}, "object store endpoint must be host:port"),
        ({"S3_ENDPOINT": "127.0.0.1:9", "S3_ACCESS_KEY": "ak"}, "access key and secret key must be given"),
    ],
    ids=["log_level", "inf_timeout", "huge_flush_interval", "s3_endpoint", "s3_key_alone"],
)
def test_bad_settings_end_in_an_invalid_settings_termination_message(tmp_path, env, needle) -> None:  # type: ignore[no-untyped-def]
    """Each of these crashed with a traceback (exit 1, no termination message) instead."""
    import os
    import subprocess
    import sys

    model = tmp_path / "m.onnx"
    model.write_bytes(mlp_model(n_numeric=3))
    termination = tmp_path / "termination.log"
    full_env = {
        **os.environ,
        "KUBELOOP_SERVER_MODEL_URI": str(model),
        "KUBELOOP_SERVER_TERMINATION_LOG": str(termination),
        "KUBELOOP_SERVER_HOST": "127.0.0.1",
        "KUBELOOP_SERVER_PORT": "0",
        "KUBELOOP_SERVER_GRPC_PORT": "0",
        **{f"KUBELOOP_SERVER_{k}": v for k, v in env.items()},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop_server"], env=full_env, capture_output=True, timeout=30
    )
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    (line,) = termination.read_text().splitlines()
    assert line.startswith("InvalidSettings: "), line
    assert needle in line, line

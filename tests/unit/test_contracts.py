from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from kubeloop import contracts as c


def test_object_ref_round_trip() -> None:
    ref = c.ObjectRef.parse("s3://kubeloop/models/m/3/model.onnx")
    assert (ref.bucket, ref.key) == ("kubeloop", "models/m/3/model.onnx")
    assert ref.uri == "s3://kubeloop/models/m/3/model.onnx"


@pytest.mark.parametrize("uri", ["http://x/y", "s3://", "s3://b", "s3://Bad_Bucket/k", "/local/path"])
def test_object_ref_refuses(uri: str) -> None:
    with pytest.raises(ValueError, match="s3://"):
        c.ObjectRef.parse(uri)


def test_layout() -> None:
    assert c.model_onnx("m", 3).uri == "s3://kubeloop/models/m/3/model.onnx"
    assert c.model_baseline("m", 3).key == "models/m/3/baseline.json"
    assert (
        c.predictions_part("ns", "d", "3", date(2026, 1, 2), "p1").key
        == "predictions/ns/d/3/2026-01-02/p1.parquet"
    )
    assert (
        c.drift_report("ns", "dm", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).key
        == "drift/ns/dm/20260102T030405Z.json"
    )
    assert c.checkpoint_prefix("ns", "tj").key == "checkpoints/ns/tj"


def test_model_metadata_round_trip() -> None:
    md = c.ModelMetadata(
        features=[c.FeatureSpec(name="a", type="numeric"), c.FeatureSpec(name="b", type="categorical")],
        task="classification",
        classes=["no", "yes"],
        model_name="m",
        model_version="3",
    )
    assert c.ModelMetadata.from_props(md.to_props()) == md


def test_model_metadata_refuses_foreign_models() -> None:
    with pytest.raises(ValueError, match=r"kubeloop\.features"):
        c.ModelMetadata.from_props({})
    with pytest.raises(ValueError, match="malformed JSON"):
        c.ModelMetadata.from_props({c.OnnxMetadataKey.FEATURES: "[", c.OnnxMetadataKey.TASK: "regression"})

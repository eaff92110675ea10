"""Model references resolved: MLflow's answers mapped to reasons, digests from the object store.

MLflow is replaced by a fake ``urlopen`` answering as MLflow's REST API does (documents and error
codes recorded from MLflow 3); the object store is the in-memory one."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.parse
from typing import Any

import pytest
from kubeloop_operator import registry as r
from kubeloop_operator.builders.modeldeployment import ResolvedModel
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.settings import OperatorSettings
from kubeloop_testing.storage import MemoryStore

from kubeloop.contracts import MlflowTags, ObjectRef
from kubeloop.resources import ModelRef

ONNX = b"\x08\x07pretend-onnx" * 100


def _version(name: str, version: int, **tags: str) -> dict[str, Any]:
    return {
        "model_version": {
            "name": name,
            "version": str(version),
            "status": "READY",
            "run_id": "r1",
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
    }


class FakeMlflow:
    def __init__(self) -> None:
        self.aliases: dict[tuple[str, str], int] = {}
        self.versions: dict[tuple[str, int], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.down = False

    def urlopen(self, req: Any, timeout: float = 0) -> Any:
        url = urllib.parse.urlparse(req.full_url)
        q = dict(urllib.parse.parse_qsl(url.query))
        self.calls.append(url.path.rsplit("/", 1)[-1])
        if self.down:
            raise urllib.error.URLError("[Errno 111] Connection refused")
        if url.path.endswith("/registered-models/alias"):
            if not any(n == q["name"] for n, _ in self.versions):
                return self._error(
                    404, "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={q['name']} not found"
                )
            v = self.aliases.get((q["name"], q["alias"]))
            if v is None:
                return self._error(
                    400, "INVALID_PARAMETER_VALUE", f"Registered model alias {q['alias']} not found."
                )
            return self._ok(self.versions[(q["name"], v)])
        if url.path.endswith("/model-versions/get"):
            doc = self.versions.get((q["name"], int(q["version"])))
            if doc is None:
                return self._error(404, "RESOURCE_DOES_NOT_EXIST", "Model Version not found")
            return self._ok(doc)
        return self._error(404, "ENDPOINT_NOT_FOUND", "no such endpoint")

    @staticmethod
    def _ok(doc: dict[str, Any]) -> Any:
        return io.BytesIO(json.dumps(doc).encode())

    @staticmethod
    def _error(code: int, error_code: str, message: str) -> Any:
        body = io.BytesIO(json.dumps({"error_code": error_code, "message": message}).encode())
        raise urllib.error.HTTPError("http://mlflow", code, message, {}, body)  # type: ignore[arg-type]


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch) -> FakeMlflow:
    fake = FakeMlflow()
    monkeypatch.setattr(r.urllib.request, "urlopen", fake.urlopen)
    return fake


@pytest.fixture
def store() -> MemoryStore:
    st = MemoryStore()
    st.put(ObjectRef("kubeloop", "models/m/3/model.onnx"), ONNX)
    return st


def resolver(store: MemoryStore | None, metrics: Metrics | None = None) -> r.Resolver:
    return r.Resolver(r.Registry("http://mlflow:5000", metrics=metrics), store, "kubeloop")


DIGEST = "sha256:" + hashlib.sha256(ONNX).hexdigest()


def test_an_alias_resolves_to_its_version_file_digest_and_baseline(
    mlflow: FakeMlflow, store: MemoryStore
) -> None:
    mlflow.versions[("m", 3)] = _version(
        "m",
        3,
        **{
            MlflowTags.MODEL_URI: "s3://kubeloop/models/m/3/model.onnx",
            MlflowTags.BASELINE_URI: "s3://kubeloop/models/m/3/baseline.json",
        },
    )
    mlflow.aliases[("m", "champion")] = 3
    metrics = Metrics()
    got = resolver(store, metrics).resolve(ModelRef(name="m", alias="champion"), "md")
    assert got == ResolvedModel(
        ref="m@champion",
        name="m",
        version="3",
        uri="s3://kubeloop/models/m/3/model.onnx",
        digest=DIGEST,
        baseline_uri="s3://kubeloop/models/m/3/baseline.json",
        alias="champion",
    )
    assert metrics.registry_requests.labels("get_alias", "ok")._value.get() == 1


def test_a_pinned_version_without_tags_uses_the_storage_layout(
    mlflow: FakeMlflow, store: MemoryStore
) -> None:
    mlflow.versions[("m", 3)] = _version("m", 3)
    got = resolver(store).resolve(ModelRef(name="m", version=3), "md")
    assert (got.version, got.uri, got.digest, got.alias) == (
        "3",
        "s3://kubeloop/models/m/3/model.onnx",
        DIGEST,
        None,
    )


def test_a_pinned_digest_is_reused_without_reading_the_file(mlflow: FakeMlflow, store: MemoryStore) -> None:
    mlflow.versions[("m", 3)] = _version("m", 3)
    mlflow.aliases[("m", "champion")] = 3
    pinned = ResolvedModel("m@champion", "m", "3", "s3://kubeloop/models/m/3/model.onnx", "sha256:pinned")
    store.fail = True  # any read would raise
    got = resolver(store).resolve(ModelRef(name="m", alias="champion"), "md", pinned)
    assert got.digest == "sha256:pinned"


@pytest.mark.parametrize(
    ("ref", "reason", "words"),
    [
        (ModelRef(name="nope", alias="champion"), "ModelNotFound", "registered model 'nope' not found"),
        (ModelRef(name="m", alias="staging"), "AliasNotFound", "model 'm' has no alias 'staging'"),
        (ModelRef(name="m", version=9), "ModelNotFound", "model 'm' has no version 9"),
        (
            ModelRef(uri="s3://kubeloop/models/gone.onnx"),
            "ModelNotFound",
            "s3://kubeloop/models/gone.onnx does not exist",
        ),
    ],
)
def test_references_that_do_not_resolve_say_why(
    mlflow: FakeMlflow, store: MemoryStore, ref: ModelRef, reason: str, words: str
) -> None:
    mlflow.versions[("m", 3)] = _version("m", 3)
    mlflow.aliases[("m", "champion")] = 3
    with pytest.raises(r.ResolveError) as e:
        resolver(store).resolve(ref, "md")
    assert e.value.reason == reason
    assert words in e.value.message


def test_a_registered_version_whose_file_is_missing_is_not_found(mlflow: FakeMlflow) -> None:
    mlflow.versions[("m", 4)] = _version("m", 4)
    with pytest.raises(r.ResolveError) as e:
        resolver(MemoryStore()).resolve(ModelRef(name="m", version=4), "md")
    assert (e.value.reason, e.value.message) == (
        "ModelNotFound",
        "s3://kubeloop/models/m/4/model.onnx does not exist",
    )


def test_unreachable_mlflow_and_store_are_transient(mlflow: FakeMlflow, store: MemoryStore) -> None:
    mlflow.down = True
    with pytest.raises(r.ResolveError) as e:
        resolver(store).resolve(ModelRef(name="m", alias="champion"), "md")
    assert e.value.reason == "RegistryUnavailable"
    store.fail = True
    with pytest.raises(r.ResolveError) as e:
        resolver(store).resolve(ModelRef(uri="s3://kubeloop/models/m/3/model.onnx"), "md")
    assert e.value.reason == "StorageUnavailable"


def test_a_uri_is_served_under_the_deployments_name_with_its_digest_as_version(store: MemoryStore) -> None:
    res = resolver(store)
    got = res.resolve(ModelRef(uri="s3://kubeloop/models/m/3/model.onnx"), "my-md")
    assert (got.name, got.version, got.digest) == ("my-md", DIGEST[7:19], DIGEST)
    # replaced in place: a new digest, so a new version
    store.put(ObjectRef("kubeloop", "models/m/3/model.onnx"), ONNX + b"v2")
    again = res.resolve(ModelRef(uri="s3://kubeloop/models/m/3/model.onnx"), "my-md")
    assert again.digest != got.digest
    assert again.version != got.version
    # a path inside the pod: nothing to read, nothing pinned but the path
    local = res.resolve(ModelRef(uri="/models/x.onnx"), "my-md")
    assert (local.version, local.digest) == ("", None)


def test_digests_are_cached_by_etag(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    res = resolver(store)
    reads: list[str] = []
    real = store.get_file
    monkeypatch.setattr(store, "get_file", lambda ref, path: (reads.append(ref.uri), real(ref, path))[1])
    for _ in range(3):
        res.digest("s3://kubeloop/models/m/3/model.onnx")
    assert reads == ["s3://kubeloop/models/m/3/model.onnx"]


def test_without_mlflow_registered_references_say_so(store: MemoryStore) -> None:
    res = r.open_resolver(OperatorSettings(mlflow_tracking_uri=""), store, None)
    with pytest.raises(r.ResolveError) as e:
        res.resolve(ModelRef(name="m", alias="champion"), "md")
    assert e.value.reason == "RegistryNotConfigured"
    assert res.resolve(ModelRef(uri="s3://kubeloop/models/m/3/model.onnx"), "md").digest == DIGEST

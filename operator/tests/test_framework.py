"""The operator's framework without a cluster: settings, the k8s module's idempotence rules against a
fake API, status writes only on change, metrics with bounded labels, error classes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from kubeloop_operator import k8s
from kubeloop_operator.errors import classify, retry_later
from kubeloop_operator.metrics import Metrics, resource_of
from kubeloop_operator.runtime import Memory, Runtime, merge_patch
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.conditions import EventSpec
from prometheus_client import generate_latest


class _Resp:
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self._data = json.dumps(body).encode() if not isinstance(body, bytes) else body

    def read(self) -> bytes:
        return self._data


class FakeApi:
    """Answers requests from a handler function; records every (method, path, body)."""

    def __init__(self, answer: Callable[[str, str, Any], tuple[int, Any]]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, Any]] = []

    def param_serialize(
        self,
        *,
        method: str,
        resource_path: str,
        query_params: Any,
        header_params: Any,
        body: Any,
        auth_settings: Any,
    ) -> tuple[Any, ...]:
        return (method, resource_path, header_params, body, None)

    def call_api(
        self, method: str, url: str, headers: Any, body: Any, post: Any, _request_timeout: Any = None
    ) -> _Resp:
        self.calls.append((method, url, body))
        status, doc = self.answer(method, url, body)
        return _Resp(status, doc)

    def close(self) -> None:
        pass


def _job(uid: str = "owner-1") -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "tj", "namespace": "ns", "ownerReferences": [{"uid": uid, "controller": True}]},
    }


def test_kind_paths() -> None:
    assert k8s.JOB.path("ns", "tj") == "/apis/batch/v1/namespaces/ns/jobs/tj"
    assert k8s.POD.path("ns", "p", "log") == "/api/v1/namespaces/ns/pods/p/log"
    assert (
        k8s.TRAININGJOB.path("ns", "x", "status")
        == "/apis/kubeloop.io/v1alpha1/namespaces/ns/trainingjobs/x/status"
    )
    assert k8s.NAMESPACE.path(None, "n") == "/api/v1/namespaces/n"
    with pytest.raises(ValueError, match="namespaced"):
        k8s.JOB.path(None)
    with pytest.raises(ValueError, match="Widget"):
        k8s.kind_of({"apiVersion": "x/v1", "kind": "Widget"})


def test_create_adopts_our_own_object_on_409() -> None:
    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST":
            return 409, {"reason": "AlreadyExists", "message": 'jobs.batch "tj" already exists'}
        return 200, {**_job(), "metadata": {**_job()["metadata"], "uid": "job-1"}}

    kube = k8s.Kube(FakeApi(answer))
    obj, created = kube.create(_job())
    assert not created
    assert obj["metadata"]["uid"] == "job-1"


def test_create_refuses_someone_elses_object() -> None:
    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        return (409, {"reason": "AlreadyExists"}) if method == "POST" else (200, _job(uid="someone-else"))

    with pytest.raises(k8s.NameConflictError, match="someone-else"):
        k8s.Kube(FakeApi(answer)).create(_job())


def test_delete_tolerates_404_and_status_patch_goes_to_the_subresource() -> None:
    api = FakeApi(lambda m, p, b: (404, {"reason": "NotFound", "message": "gone"}))
    kube = k8s.Kube(api)
    assert kube.delete(k8s.JOB, "ns", "tj") is False
    assert kube.get(k8s.JOB, "ns", "tj") is None
    assert kube.patch_status(k8s.TRAININGJOB, "ns", "tj", {"phase": "Running"}) is None
    assert api.calls[-1][1].endswith("/trainingjobs/tj/status")
    assert api.calls[-1][2] == {"status": {"phase": "Running"}}


def test_the_operator_never_patches_a_kubeloop_resource_itself() -> None:
    kube = k8s.Kube(FakeApi(lambda m, p, b: (200, {})))
    with pytest.raises(ValueError, match="patch_status"):
        kube.patch(k8s.TRAININGJOB, "ns", "tj", {"spec": {"x": 1}})


def test_api_errors_carry_the_servers_reason_and_message() -> None:
    kube = k8s.Kube(FakeApi(lambda m, p, b: (422, {"reason": "Invalid", "message": "spec.x: Invalid value"})))
    with pytest.raises(k8s.KubeError) as info:
        kube.create(_job())
    assert info.value.status == 422
    assert info.value.permanent
    assert "spec.x" in info.value.message
    assert not k8s.KubeError(403, "Forbidden", "quota").permanent


def _runtime(answer: Callable[[str, str, Any], tuple[int, Any]]) -> tuple[Runtime, FakeApi]:
    api = FakeApi(answer)
    metrics = Metrics()
    return Runtime(settings=OperatorSettings(), kube=k8s.Kube(api, metrics=metrics), metrics=metrics), api


def test_status_is_written_only_when_it_changed() -> None:
    rt, api = _runtime(lambda m, p, b: (200, {}))
    body = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "ns", "uid": "u"},
    }
    mem = Memory().of("u")
    same = {"phase": "Running", "observedGeneration": 1}
    assert rt.write_status(k8s.TRAININGJOB, body, same, dict(same), mem) is False
    assert api.calls == []
    new = {"phase": "Succeeded", "observedGeneration": 1, "modelVersion": 3}
    assert rt.write_status(k8s.TRAININGJOB, body, same, new, mem) is True
    assert api.calls[-1][2] == {"status": {"phase": "Succeeded", "modelVersion": 3}}
    # the watch has not shown our write yet: no second request for the same status
    assert rt.write_status(k8s.TRAININGJOB, body, same, dict(new), mem) is False
    assert len(api.calls) == 1
    assert merge_patch({"a": 1, "failure": {"x": 1}}, {"a": 1, "b": 2}) == {"b": 2, "failure": None}


def test_events_are_posted_once_by_name() -> None:
    posted: set[str] = set()

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        name = body["metadata"]["name"]
        if name in posted:
            return 409, {"reason": "AlreadyExists"}
        posted.add(name)
        return 201, body

    rt, _ = _runtime(answer)
    body = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "ns", "uid": "u"},
    }
    ev = EventSpec("Warning", "OOMKilled", "pod p: killed", "failure/p/OOMKilled")
    rt.post_events(body, [ev])
    rt.post_events(body, [ev])  # a restarted operator replays the same change
    assert len(posted) == 1
    text = generate_latest(rt.metrics.registry).decode()
    assert 'kubeloop_operator_events_total{kind="TrainingJob",type="Warning"} 1.0' in text


def test_metrics_labels_are_bounded() -> None:
    m = Metrics()
    with m.handler("TrainingJob", "resync"):
        pass
    with pytest.raises(kopf.TemporaryError), m.handler("TrainingJob", "create"):
        raise retry_later("x")
    m.observe_api("get", "/api/v1/namespaces/some-namespace/pods/some-pod-abcde/log", 200, 0.01)
    m.set_phase("TrainingJob", "u1", "Running")
    m.set_phase("TrainingJob", "u2", "Running")
    text = generate_latest(m.registry).decode()
    assert (
        'kubeloop_operator_reconciles_total{handler="resync",kind="TrainingJob",result="success"} 1.0' in text
    )
    assert (
        'kubeloop_operator_reconcile_errors_total{error="temporary",handler="create",kind="TrainingJob"} 1.0'
        in text
    )
    assert 'resource="pods/log"' in text
    assert "some-pod" not in text
    assert "some-namespace" not in text
    assert 'kubeloop_operator_resources{kind="TrainingJob",phase="Running"} 2.0' in text
    assert (
        resource_of("/apis/kubeloop.io/v1alpha1/namespaces/n/trainingjobs/x/status") == "trainingjobs/status"
    )
    assert resource_of("/apis/batch/v1/namespaces/n/jobs") == "jobs"


def test_error_classes() -> None:
    assert classify(k8s.NameConflictError("Job", "n", "x", "y")) == ("name_conflict", "error")
    assert classify(k8s.KubeError(0, "Unreachable", "x")) == ("api_unreachable", "error")
    assert classify(k8s.KubeError(503, "ServiceUnavailable", "x")) == ("api_server", "error")
    assert classify(RuntimeError("x")) == ("bug", "error")
    assert classify(retry_later("x")) == ("temporary", "retry")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELOOP_OPERATOR_NAMESPACES", "team-*,!team-x")
    monkeypatch.setenv("KUBELOOP_OPERATOR_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("KUBELOOP_OPERATOR_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("KUBELOOP_OPERATOR_S3_SECRET_KEY", "sk")
    s = OperatorSettings()
    assert s.namespaces == "team-*,!team-x"
    assert s.pods_s3_endpoint == "127.0.0.1:9000"  # pods use the operator's endpoint unless told
    monkeypatch.setenv("KUBELOOP_OPERATOR_POD_S3_ENDPOINT", "minio.kubeloop-system:9000")
    assert OperatorSettings().pods_s3_endpoint == "minio.kubeloop-system:9000"
    assert "sk" not in repr(OperatorSettings())
    monkeypatch.setenv("KUBELOOP_OPERATOR_S3_SECRET_KEY", "")
    with pytest.raises(ValueError, match="s3_secret_key"):
        OperatorSettings()


def test_replicas_get_distinct_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = set()
    for pod in ("kubeloop-operator-7d9f-abcde", "kubeloop-operator-7d9f-fghij"):
        monkeypatch.setenv("POD_NAME", pod)
        seen.add(OperatorSettings().effective_priority())
    assert len(seen) == 2
    assert OperatorSettings(peering_priority=5).effective_priority() == 5


def test_every_setting_is_documented() -> None:
    for name, field in OperatorSettings.model_fields.items():
        assert len(field.description or "") > 10, name


def test_the_command_line_refuses_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeloop_operator.__main__ import load

    monkeypatch.setenv("KUBELOOP_OPERATOR_RESYNC_SECONDS", "-1")
    with pytest.raises(SystemExit) as info:
        load([])
    assert info.value.code == 2
    assert "KUBELOOP_OPERATOR_RESYNC_SECONDS" in capsys.readouterr().err
    monkeypatch.delenv("KUBELOOP_OPERATOR_RESYNC_SECONDS")
    assert load(["--namespaces", "a,b", "--standalone"]).namespaces == "a,b"


@pytest.mark.parametrize("value", ["768Mi", "128Mi", "1Gi", "134217728", "0.5Gi"])
def test_drift_check_memory_limit_is_a_quantity_of_at_least_the_request(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KUBELOOP_OPERATOR_DRIFT_CHECK_MEMORY_LIMIT", value)
    assert OperatorSettings().drift_check_memory_limit == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64Mi", "must be at least the drift check pod's memory request 128Mi, got 64Mi"),
        ("127Mi", "must be at least the drift check pod's memory request 128Mi, got 127Mi"),
        ("134217727", "must be at least the drift check pod's memory request 128Mi, got 134217727"),
        ("768mb", "'768mb' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)"),
        ("lots", "'lots' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)"),
        ("-1Gi", "'-1Gi' is negative; resource quantities are 0 or more"),
    ],
)
def test_a_drift_check_memory_limit_kubernetes_would_refuse_stops_the_operator_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    # Else every DriftMonitor's CronJob is refused by the API server (limit below request, or no quantity).
    from kubeloop_operator.__main__ import load

    monkeypatch.setenv("KUBELOOP_OPERATOR_DRIFT_CHECK_MEMORY_LIMIT", value)
    with pytest.raises(ValueError, match="drift_check_memory_limit"):
        OperatorSettings()
    with pytest.raises(SystemExit) as info:
        load([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"KUBELOOP_OPERATOR_DRIFT_CHECK_MEMORY_LIMIT: {message}" in err, err


def _apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _apply_merge_patch(out.get(k), v)
    return out


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a failure with an exit code and pod replaced by one without them (e.g. DeadlineExceeded)
        (
            {"phase": "Pending", "failure": {"reason": "ImagePullBackOff", "pod": "p-0", "container": "t"}},
            {"phase": "Failed", "failure": {"reason": "DeadlineExceeded", "message": "m"}},
        ),
        # a track whose digest is no longer known; a lastFailure without a pod
        (
            {
                "stable": {"modelVersion": "1", "modelDigest": "sha256:a"},
                "lastFailure": {"reason": "X", "pod": "p"},
            },
            {"stable": {"modelVersion": "2"}, "lastFailure": {"reason": "ModelNotFound", "track": "stable"}},
        ),
        ({"progress": {"epoch": 1, "etaSeconds": 9}}, {"progress": {"epoch": 2}}),
        ({"a": {"b": {"c": 1, "d": 2}}, "l": [1, 2]}, {"a": {"b": {"c": 1}}, "l": [1]}),
    ],
)
def test_a_status_patch_turns_the_stored_status_into_the_new_one(old: Any, new: Any) -> None:
    # A merge patch merges nested objects: a key the new status lacks must be sent as null, at any
    # depth, or the stale value stays (and the next reconcile, seeing a difference, writes again).
    assert _apply_merge_patch(old, merge_patch(old, new)) == new


@pytest.mark.parametrize("owner", ["tj", "a" * 199 + "-b" * 20, "a" * 199 + ".b" * 20, "x" * 253])
def test_event_names_are_dns_subdomains_for_any_owner_name(owner: str) -> None:
    # The owner's name is cut to leave room for the digest; a cut that ends in '-' or '.' would make
    # the API server refuse the Event (each dot-separated part must end alphanumeric).
    import re

    name = EventSpec("Warning", "OOMKilled", "m", "k").name(owner, "uid-1")
    assert len(name) <= 253
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name)


def test_create_meeting_a_child_of_an_earlier_owner_of_the_same_name_waits_for_it_to_go() -> None:
    # `kubectl delete tj x && kubectl apply -f x.yaml`: the old Job is still there for a moment, its
    # controller the deleted TrainingJob x. Not a conflict to resolve by hand: the garbage collector
    # removes it (no two objects of one kind share a name), and the create is retried.
    def ref(uid: str) -> dict[str, Any]:
        return {
            "apiVersion": "kubeloop.io/v1alpha1",
            "kind": "TrainingJob",
            "name": "x",
            "uid": uid,
            "controller": True,
        }

    def job(uid: str, **meta: Any) -> dict[str, Any]:
        return {**_job(), "metadata": {**_job()["metadata"], "ownerReferences": [ref(uid)], **meta}}

    other = {**ref("o"), "kind": "ModelDeployment"}
    gone = job("o", deletionTimestamp="2026-01-01T00:00:00Z", ownerReferences=[other])
    for existing in (job("old"), gone):
        api = FakeApi(
            lambda m, p, b, e=existing: (409, {"reason": "AlreadyExists"}) if m == "POST" else (200, e)
        )
        with pytest.raises(k8s.KubeError) as info:
            k8s.Kube(api).create(job("new"))
        assert not isinstance(info.value, k8s.NameConflictError)
        assert (info.value.status, info.value.reason, info.value.permanent) == (409, "Terminating", False)
    api = FakeApi(lambda m, p, b: (409, {}) if m == "POST" else (200, job("old")))
    with pytest.raises(k8s.KubeError, match=r"earlier TrainingJob x \(uid old\) of this name is still there"):
        k8s.Kube(api).create(job("new"))
    # another owner's object, and an object without any, stay conflicts to resolve by hand
    for existing in (job("o", ownerReferences=[other]), job("o", ownerReferences=[])):
        api = FakeApi(lambda m, p, b, e=existing: (409, {}) if m == "POST" else (200, e))
        with pytest.raises(k8s.NameConflictError):
            k8s.Kube(api).create(job("new"))

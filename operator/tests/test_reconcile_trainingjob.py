"""The TrainingJob reconciler's orchestration against a fake API and store (no cluster): what it
creates, patches, keeps and deletes, and that an unchanged world costs no write."""

from __future__ import annotations

import json
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubeloop_operator import k8s
from kubeloop_operator.metrics import Metrics
from kubeloop_operator.reconcile import ChildView
from kubeloop_operator.reconcile.trainingjob import reconcile
from kubeloop_operator.runtime import Runtime
from kubeloop_operator.settings import OperatorSettings
from kubeloop_operator.status.pods import summarize_job, summarize_pod

from kubeloop.contracts import ObjectRef

ROOT = Path(__file__).resolve().parents[2]


class FakeKube:
    """Records writes; answers reads from what it holds."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.logs: dict[str, str] = {}
        self.refuse: k8s.KubeError | None = None

    def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if self.refuse is not None:
            raise self.refuse
        key = (manifest["kind"], manifest["metadata"]["name"])
        self.writes.append(("create", manifest["kind"], manifest["metadata"]["name"]))
        obj = deepcopy(manifest)
        obj["metadata"]["uid"] = f"uid-{key[1]}"
        self.objects[key] = obj
        return obj, True

    def patch(self, kind: k8s.Kind, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", kind.kind, patch))
        obj = self.objects[(kind.kind, name)]
        obj["spec"].update(patch.get("spec", {}))
        return obj

    def patch_status(self, kind: k8s.Kind, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("status", kind.kind, status))
        return {}

    def delete(self, kind: k8s.Kind, ns: str, name: str, **_: Any) -> bool:
        self.writes.append(("delete", kind.kind, name))
        return True

    def read_log(self, ns: str, pod: str, container: str, **_: Any) -> str | None:
        return self.logs.get(pod)

    def post_event(self, involved: Any, *, name: str, type_: str, reason: str, message: str) -> bool:
        self.writes.append(("event", reason, message))
        return True


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, ref: ObjectRef, data: bytes, content_type: str = "") -> None:
        self.objects[ref.uri] = data


def tj(**run_policy: Any) -> dict[str, Any]:
    m = yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())
    m["spec"]["runPolicy"].update(run_policy)
    m["metadata"].update({"uid": "tj-uid", "generation": 1, "resourceVersion": "1"})
    return m


def runtime() -> tuple[Runtime, FakeKube, FakeStore]:
    kube, store = FakeKube(), FakeStore()
    rt = Runtime(settings=OperatorSettings(), kube=kube, metrics=Metrics(), store=store)  # type: ignore[arg-type]
    return rt, kube, store


def apply_status(body: dict[str, Any], kube: FakeKube) -> dict[str, Any]:
    """What the API server does with the status patches: the object's next version."""
    out = deepcopy(body)
    for w in kube.writes:
        if w[0] == "status":
            st = out.setdefault("status", {})
            for k, v in w[2].items():
                if v is None:
                    st.pop(k, None)
                else:
                    st[k] = v
    out["metadata"]["resourceVersion"] = str(int(out["metadata"]["resourceVersion"]) + 1)
    return out


def job_view(kube: FakeKube, *pods: dict[str, Any], **status: Any) -> ChildView:
    job = deepcopy(kube.objects[("Job", "breast-cancer")])
    job["status"] = status
    return ChildView(jobs=(summarize_job(job),), pods=tuple(summarize_pod(p) for p in pods))


def pod(phase: str, state: dict[str, Any], name: str = "breast-cancer-0-abcde") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": "p-" + name,
            "labels": {"kubeloop.io/owner-uid": "tj-uid", "batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def test_first_reconcile_creates_the_job_and_writes_status_then_nothing_more() -> None:
    rt, kube, _ = runtime()
    body = tj()
    reconcile(rt, body, ChildView())
    kinds = [(w[0], w[1]) for w in kube.writes]
    assert kinds == [("create", "Job"), ("status", "TrainingJob")]
    assert kube.writes[1][2]["conditions"][0]["type"] == "Created"
    # the watch shows our write and the index the Job; the resync timer runs again and again
    body = apply_status(body, kube)
    view = job_view(kube)
    kube.writes.clear()
    reconcile(rt, body, view)
    reconcile(rt, body, view)
    assert kube.writes == [], f"writes without a change: {kube.writes}"


def test_a_refused_job_is_in_status_and_retried() -> None:
    rt, kube, _ = runtime()
    kube.refuse = k8s.KubeError(403, "Forbidden", 'jobs.batch "breast-cancer" is forbidden: exceeded quota')
    with pytest.raises(kopf.TemporaryError):
        reconcile(rt, tj(), ChildView())
    status = next(w[2] for w in kube.writes if w[0] == "status")
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", "Forbidden")
    assert "exceeded quota" in created["message"]
    assert any(w[0] == "event" and w[1] == "Forbidden" for w in kube.writes)


def test_resume_patches_the_job_and_a_user_error_stops_it() -> None:
    rt, kube, _ = runtime()
    body = tj(suspend=True)
    reconcile(rt, body, ChildView())
    assert kube.objects[("Job", "breast-cancer")]["spec"]["suspend"] is True
    resumed = tj(suspend=False)
    resumed["metadata"]["generation"] = 2
    reconcile(rt, resumed, job_view(kube))
    assert ("patch", "Job", {"spec": {"suspend": False}}) in kube.writes
    msg = json.dumps({"reason": "DatasetNotFound", "message": "gone", "exitCode": 11})
    failed = pod(
        "Failed", {"terminated": {"exitCode": 1, "message": msg, "finishedAt": "2026-01-01T00:00:00Z"}}
    )
    kube.logs[failed["metadata"]["name"]] = "line\nkubeloop-trainer: DatasetNotFound: gone\n"
    kube.writes.clear()
    reconcile(rt, resumed, job_view(kube, failed, failed=1))
    assert ("patch", "Job", {"spec": {"backoffLimit": 0}}) in kube.writes
    status = next(w[2] for w in kube.writes if w[0] == "status")
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "DatasetNotFound"
    assert status["failure"]["logTail"].endswith("DatasetNotFound: gone")


def test_ttl_deletes_children_only_after_the_failed_pods_log_is_kept() -> None:
    rt, kube, store = runtime()
    body = tj(ttlSecondsAfterFinished=0, backoffLimit=0)
    reconcile(rt, body, ChildView())
    crashed = pod(
        "Failed", {"terminated": {"exitCode": 3, "message": "boom", "finishedAt": "2026-01-01T00:00:00Z"}}
    )
    view = job_view(
        kube,
        crashed,
        failed=1,
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    )
    kube.writes.clear()
    reconcile(rt, body, view)  # the log cannot be read yet: no cleanup
    assert not [w for w in kube.writes if w[0] == "delete"]
    body = apply_status(body, kube)
    kube.logs[crashed["metadata"]["name"]] = "step 1\nboom\n"
    kube.writes.clear()
    reconcile(rt, body, view)
    deletes = [w for w in kube.writes if w[0] == "delete"]
    status = next(w[2] for w in kube.writes if w[0] == "status")
    assert status["failure"]["logTail"] == "step 1\nboom"
    uri = status["failure"]["logUri"]
    assert store.objects[uri] == b"step 1\nboom\n"
    assert deletes == [("delete", "Job", "breast-cancer")]
    assert kube.writes.index(deletes[0]) > kube.writes.index(("status", "TrainingJob", status))


def test_a_resource_being_deleted_is_left_to_garbage_collection() -> None:
    rt, kube, _ = runtime()
    body = tj()
    body["metadata"]["deletionTimestamp"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    reconcile(rt, body, ChildView())
    assert kube.writes == []

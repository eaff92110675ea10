"""TrainingJob status from fabricated Jobs and pods (no cluster): phases, conditions, named failure
causes (OOMKilled included: the local node agent enforces no memory limits), progress, idempotence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from kubeloop_operator.status import trainingjob as st
from kubeloop_operator.status.pods import JobSummary, PodSummary, pod_problem, summarize_job, summarize_pod

from kubeloop.contracts import Labels
from kubeloop.resources import TrainingJob, TrainingJobSpec, TrainingJobStatus

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
UID = "uid-1"


def spec(**run_policy: Any) -> TrainingJobSpec:
    manifest = yaml.safe_load((ROOT / "examples/trainingjob.yaml").read_text())
    manifest["spec"]["runPolicy"].update(run_policy)
    return TrainingJob.from_manifest(manifest).spec


def job(
    *conditions: tuple[str, str, str], suspend: bool = False, failed: int = 0, **status: Any
) -> JobSummary:
    body = {
        "metadata": {"name": "tj", "uid": "job-uid", "ownerReferences": [{"uid": UID, "controller": True}]},
        "spec": {"suspend": suspend, "backoffLimit": 2, "parallelism": 1},
        "status": {
            "failed": failed,
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": r,
                    "message": m,
                    "lastTransitionTime": "2026-03-01T11:59:00Z",
                }
                for t, r, m in conditions
            ],
            **status,
        },
    }
    return summarize_job(body)


def pod(
    name: str = "tj-0-aaaaa",
    phase: str = "Running",
    *,
    index: int = 0,
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    finished: str = "2026-03-01T11:58:00Z",
) -> PodSummary:
    st_ = state if state is not None else {"running": {"startedAt": "2026-03-01T11:50:00Z"}}
    if "terminated" in st_:
        st_["terminated"].setdefault("finishedAt", finished)
    return summarize_pod(
        {
            "metadata": {
                "name": name,
                "uid": f"uid-{name}",
                "creationTimestamp": "2026-03-01T11:49:00Z",
                "labels": {Labels.OWNER_UID: UID, "batch.kubernetes.io/job-completion-index": str(index)},
            },
            "status": {
                "phase": phase,
                "startTime": "2026-03-01T11:50:00Z",
                "conditions": conditions or [],
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": st_,
                        "lastState": {"terminated": last} if last else {},
                        "restartCount": 0,
                    }
                ],
            },
        }
    )


def terminated(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "message": message,
            "startedAt": "2026-03-01T11:50:00Z",
        }
    }


def derive(
    s: TrainingJobSpec | None = None,
    current: TrainingJobStatus | None = None,
    j: JobSummary | None = None,
    pods: tuple[PodSummary, ...] = (),
    **kw: Any,
) -> st.Derived:
    return st.derive(
        st.Observed(
            now=kw.pop("now", NOW),
            generation=kw.pop("generation", 1),
            spec=s or spec(),
            current=current or TrainingJobStatus(),
            job_name="tj",
            job=j,
            pods=pods,
            **kw,
        )
    )


def cond(status: TrainingJobStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return str(c.status), c.reason


def test_first_reconcile_without_a_job_already_has_a_full_status() -> None:
    d = derive()
    s = d.status
    assert s.phase == "Pending"
    assert s.observed_generation == 1
    assert s.job_name == "tj"
    assert [c.type for c in s.conditions] == ["Created", "Running", "Succeeded", "Failed", "Suspended"]
    assert all(c.observed_generation == 1 for c in s.conditions)
    assert cond(s, "Created") == ("False", "Creating")


def test_a_refused_child_is_a_condition_with_the_api_servers_message() -> None:
    err = st.ChildError("Forbidden", 'pods "x" is forbidden: exceeded quota: compute', permanent=False)
    s = derive(create_error=err).status
    assert s.phase == "Pending"
    c = next(c for c in s.conditions if c.type == "Created")
    assert (str(c.status), c.reason) == ("False", "Forbidden")
    assert "exceeded quota" in c.message
    bad = st.ChildError("Invalid", "spec.template.spec.priorityClassName: Invalid value", permanent=True)
    d = derive(create_error=bad)
    assert d.status.phase == "Failed"
    assert d.status.failure is not None
    assert d.status.failure.reason == "Invalid"
    assert any(e.type == "Warning" and e.reason == "Invalid" for e in d.events)
    # the spec is fixed (new generation): a run that never started is tried again
    again = derive(current=d.status, j=job(), pods=(pod(),), generation=2)
    assert again.status.phase == "Running"
    # but not while the spec stays the same
    assert derive(current=d.status, j=job()).status.phase == "Failed"


def test_running_and_progress() -> None:
    d = derive(j=job(), pods=(pod(),), progress=st.ProgressReading(3, 30, 54))
    s = d.status
    assert s.phase == "Running"
    assert cond(s, "Running") == ("True", "PodsRunning")
    assert s.progress is not None
    assert (s.progress.epoch, s.progress.percent, s.progress.eta_seconds) == (
        3,
        10,
        54,
    )
    assert s.progress.updated_time == "2026-03-01T12:00:00Z"
    assert s.start_time is not None
    assert {(e.type, e.reason) for e in d.events} == {("Normal", "Running")}
    # later, the same epoch read again: nothing changes, not even the time
    later = derive(
        current=s,
        j=job(),
        pods=(pod(),),
        progress=st.ProgressReading(3, 30, 40),
        now=NOW + timedelta(seconds=9),
    )
    assert st.dump(later.status) == st.dump(s)
    assert later.events == []


def test_parse_progress_reads_the_last_epoch_line_and_an_eta() -> None:
    lines = [
        "2026-03-01 INFO kubeloop_trainer: dataset …",
        json.dumps({"event": "epoch", "epoch": 1, "epochs": 10, "seconds": 2.0}),
        "not json {",
        json.dumps({"event": "epoch", "epoch": 2, "epochs": 10, "seconds": 4.0}),
        json.dumps({"event": "promotion", "promoted": True}),
    ]
    r = st.parse_progress("\n".join(lines))
    assert r == st.ProgressReading(epoch=2, epochs=10, eta_seconds=24)
    assert st.parse_progress("nothing here\n") is None
    resumed = st.parse_progress(json.dumps({"event": "resumed", "epoch": 5, "epochs": 10}))
    assert resumed == st.ProgressReading(5, 10, None)


def test_success_takes_the_trainers_summary() -> None:
    summary = {
        "metrics": {"accuracy": 0.9737, "f1": 0.97},
        "mlflowRunId": "run-1",
        "modelVersion": 3,
        "modelUri": "s3://kubeloop/models/breast-cancer/3/model.onnx",
        "baselineUri": "s3://kubeloop/models/breast-cancer/3/baseline.json",
        "promoted": True,
    }
    done = pod(phase="Succeeded", state=terminated(0, json.dumps(summary), "Completed"))
    j = job(
        ("Complete", "CompletionsReached", ""),
        completionTime="2026-03-01T11:59:30Z",
        startTime="2026-03-01T11:49:00Z",
    )
    d = derive(j=j, pods=(done,))
    s = d.status
    assert s.phase == "Succeeded"
    assert cond(s, "Succeeded") == ("True", "TrainingSucceeded")
    assert (s.mlflow_run_id, s.model_version, s.model_uri, s.baseline_uri) == (
        "run-1",
        3,
        summary["modelUri"],
        summary["baselineUri"],
    )
    assert s.metrics == {"accuracy": 0.9737, "f1": 0.97}
    assert s.primary_metric == "accuracy=0.9737"
    assert s.promoted is True
    assert s.completion_time == "2026-03-01T11:59:30Z"
    assert s.progress is not None
    assert s.progress.percent == 100
    msg = next(c.message for c in s.conditions if c.type == "Succeeded")
    assert "version 3" in msg
    assert "champion moved" in msg
    assert any(e.reason == "Succeeded" for e in d.events)


def test_trainer_user_error_names_its_reason_and_stops_retries() -> None:
    msg = json.dumps(
        {"reason": "DatasetNotFound", "message": "s3://kubeloop/x.csv does not exist", "exitCode": 11}
    )
    failed = pod(phase="Failed", state=terminated(1, msg))  # torchrun: the pod exits 1, the message says 11
    d = derive(
        j=job(failed=1),
        pods=(failed,),
        kept_logs={failed.name: st.KeptLog("boom", "s3://kubeloop/logs/n/tj/p.log")},
    )
    f = d.status.failure
    assert d.status.phase == "Failed"
    assert f is not None
    assert (f.reason, f.exit_code, f.pod, f.container) == ("DatasetNotFound", 11, failed.name, "trainer")
    assert "does not exist" in f.message
    assert f.log_tail == "boom"
    assert f.log_uri is not None
    assert d.stop_job  # the Job may still retry it: the reconciler stops it
    assert cond(d.status, "Failed") == ("True", "DatasetNotFound")
    ev = next(e for e in d.events if e.reason == "DatasetNotFound")
    assert ev.type == "Warning"
    assert "exit code 11" in ev.message
    # when the pod failure policy already failed the Job there is nothing to stop
    j = job(("Failed", "PodFailurePolicy", "Container trainer exited with 11"), failed=1)
    d2 = derive(j=j, pods=(pod(phase="Failed", state=terminated(11, msg)),))
    assert d2.status.failure is not None
    assert d2.status.failure.reason == "DatasetNotFound"
    assert not d2.stop_job


def test_oomkilled_is_named_as_such() -> None:
    oom = pod(phase="Failed", state=terminated(137, "", reason="OOMKilled"))
    j = job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), failed=3)
    f = derive(j=j, pods=(oom,)).status.failure
    assert f is not None
    assert (f.reason, f.exit_code, f.pod) == ("OOMKilled", 137, oom.name)
    assert "memory limit" in f.message
    # a crash-looping container whose last run was OOMKilled is named OOMKilled too
    looping = pod(
        phase="Running",
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
        last={"exitCode": 137, "reason": "OOMKilled"},
    )
    p = pod_problem(looping)
    assert p is not None
    assert (p.reason, p.exit_code) == ("OOMKilled", 137)


def test_crash_past_backoff_limit_names_exit_code_message_and_keeps_the_log_tail() -> None:
    pods = tuple(
        pod(
            f"tj-0-{i}",
            phase="Failed",
            state=terminated(3, f"boom {i}\n"),
            finished=f"2026-03-01T11:5{i}:00Z",
        )
        for i in range(3)
    )
    j = job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), failed=3)
    kept = {"tj-0-2": st.KeptLog("line 1\nboom 2", "s3://kubeloop/logs/ns/tj/tj-0-2.log")}
    d = derive(j=j, pods=pods, kept_logs=kept)
    f = d.status.failure
    assert f is not None
    assert (f.reason, f.exit_code, f.pod) == ("BackoffLimitExceeded", 3, "tj-0-2")
    assert "3 pod(s) failed" in f.message
    assert "boom 2" in f.message
    assert f.log_tail == "line 1\nboom 2"
    assert f.log_uri == "s3://kubeloop/logs/ns/tj/tj-0-2.log"
    assert d.status.failed_pods == 3
    assert d.status.completion_time is not None


def test_deadline_exceeded() -> None:
    j = job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    f = derive(s=spec(activeDeadlineSeconds=30), j=j).status.failure
    assert f is not None
    assert f.reason == "DeadlineExceeded"
    assert "30 s" in f.message


def test_blocked_pods_name_the_cause_without_ending_the_run() -> None:
    unsched = pod(
        phase="Pending",
        state={"waiting": {"reason": "ContainerCreating"}},
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    d = derive(j=job(), pods=(unsched,))
    s = d.status
    assert s.phase == "Pending"
    assert s.failure is not None
    assert s.failure.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in s.failure.message
    assert s.failure.pod == unsched.name
    assert cond(s, "Running") == ("False", "Unschedulable")
    assert cond(s, "Failed") == ("False", "NoFailure")
    assert any(e.type == "Warning" and e.reason == "Unschedulable" for e in d.events)
    # ErrImagePull and ImagePullBackOff alternate on the kubelet: one reason, no flapping, no new event
    pulls = [
        pod(phase="Pending", state={"waiting": {"reason": r, "message": m}})
        for r, m in (
            ("ErrImagePull", "pull failed"),
            ("ImagePullBackOff", "Back-off pulling image"),
        )
    ]
    first = derive(j=job(), pods=(pulls[0],))
    assert first.status.failure is not None
    assert first.status.failure.reason == "ImagePullBackOff"
    second = derive(current=first.status, j=job(), pods=(pulls[1],), now=NOW + timedelta(seconds=30))
    assert st.dump(second.status) == st.dump(first.status)
    assert second.events == []
    # the cause clears: running, failure gone
    ok = derive(current=second.status, j=job(), pods=(pod(),))
    assert ok.status.phase == "Running"
    assert ok.status.failure is None


def test_suspend_and_resume_show_the_present_state() -> None:
    suspended = derive(s=spec(suspend=True), j=job(suspend=True), generation=2)
    s = suspended.status
    assert s.phase == "Suspended"
    assert cond(s, "Suspended") == ("True", "Suspended")
    assert any(e.reason == "Suspended" for e in suspended.events)
    resumed = derive(s=spec(), current=s, j=job(), pods=(pod(),), generation=3)
    r = resumed.status
    assert r.phase == "Running"
    assert cond(r, "Suspended") == ("False", "Resumed")
    assert any(e.reason == "Resumed" for e in resumed.events)
    # and it keeps saying so while nothing changes
    again = derive(s=spec(), current=r, j=job(), pods=(pod(),), generation=3)
    assert st.dump(again.status) == st.dump(r)


def test_finished_runs_keep_their_result_when_children_are_gone() -> None:
    j = job(("Failed", "BackoffLimitExceeded", "x"), failed=1)
    failed = pod(phase="Failed", state=terminated(3, "boom"))
    done = derive(j=j, pods=(failed,), kept_logs={failed.name: st.KeptLog("tail", None)}).status
    after_ttl = derive(current=done, j=None, pods=(), now=NOW + timedelta(hours=1))
    assert st.dump(after_ttl.status) == st.dump(done)
    assert after_ttl.events == []
    assert st.ttl_expired(spec(ttlSecondsAfterFinished=60), done, NOW + timedelta(hours=1))
    assert not st.ttl_expired(spec(), done, NOW + timedelta(hours=1))
    assert not st.ttl_expired(spec(ttlSecondsAfterFinished=60), TrainingJobStatus(phase="Running"), NOW)


def test_a_restart_replaying_the_same_observation_changes_nothing() -> None:
    """Idempotence: deriving again from an unchanged world yields the same status and no events."""
    worlds = [
        {"j": job(), "pods": (pod(),)},
        {"j": job(suspend=True), "s": spec(suspend=True)},
        {
            "j": job(("Failed", "BackoffLimitExceeded", "x"), failed=1),
            "pods": (pod(phase="Failed", state=terminated(3)),),
        },
    ]
    for w in worlds:
        first = derive(**w)  # type: ignore[arg-type]
        second = derive(current=first.status, now=NOW + timedelta(minutes=5), **w)  # type: ignore[arg-type]
        assert st.dump(second.status) == st.dump(first.status)
        assert second.events == []


def test_tail_is_bounded() -> None:
    text = "\n".join(f"line {i} " + "x" * 200 for i in range(1000))
    t = st.tail(text, 40)
    assert len(t.encode()) <= 4096
    assert t.rstrip().endswith("x")
    assert "line 999" in t
    assert st.tail("a\nb\nc\n", 2) == "b\nc"


def test_a_ttl_the_calendar_cannot_hold_never_expires_and_never_raises() -> None:
    # The CRD bounds ttlSecondsAfterFinished by int64 only; completion + ttl past year 9999 must not
    # crash every reconcile of the finished run.
    done = TrainingJobStatus(phase="Succeeded", completion_time=st.rfc3339(NOW))
    for ttl in (10**12, 2**63 - 1):
        assert not st.ttl_expired(spec(ttlSecondsAfterFinished=ttl), done, NOW + timedelta(days=3650))
    assert st.ttl_expired(spec(ttlSecondsAfterFinished=0), done, NOW)


def test_progress_ignores_epoch_durations_that_are_not_finite_or_negative() -> None:
    # A bring-your-own image prints what it likes; json reads Infinity/NaN, and a clock step can make
    # a duration negative: none may crash the reconcile or yield a negative ETA.
    for bad in ("Infinity", "NaN", "-3"):
        line = f'{{"event": "epoch", "epoch": 1, "epochs": 5, "seconds": {bad}}}'
        assert st.parse_progress(line) == st.ProgressReading(1, 5, None)
    good = json.dumps({"event": "epoch", "epoch": 1, "epochs": 5, "seconds": 2.0})
    assert st.parse_progress(good + '\n{"event": "epoch", "epoch": 2, "epochs": 5, "seconds": NaN}') == (
        st.ProgressReading(2, 5, 6)
    )
    # durations and counts whose product or value no status integer (int64) holds
    huge = json.dumps({"event": "epoch", "epoch": 0, "epochs": 2**40, "seconds": 1e300})
    assert st.parse_progress(huge) == st.ProgressReading(0, 2**40, None)
    assert st.parse_progress(json.dumps({"event": "epoch", "epoch": 1, "epochs": 2**64})) is None


def test_a_user_error_exit_code_without_the_trainers_message_is_not_called_a_backoff_limit() -> None:
    # argparse exits 2 with a usage line, a data error may die before writing its termination
    # message: the pod failure policy fails the Job on the first pod, with no retry at all.
    usage = "usage: kubeloop-trainer [-h]\nkubeloop-trainer: error: unrecognized arguments: --x\n"
    failed = pod(phase="Failed", state=terminated(2, usage))
    rule = "Container trainer for pod ns/tj-0-aaaaa failed with exit code 2 matching FailJob rule at index 0"
    f = derive(j=job(("Failed", "PodFailurePolicy", rule), failed=1), pods=(failed,)).status.failure
    assert f is not None
    assert (f.reason, f.exit_code, f.pod) == ("PodFailurePolicy", 2, failed.name)
    assert "backoffLimit" not in f.message
    assert "exited with code 2, an error a retry cannot fix: no retry" in f.message
    assert "unrecognized arguments: --x" in f.message

"""Pure status derivation of a ModelDeployment: Ready never lies, failures are named after their cause."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeloop_operator.builders import modeldeployment as b
from kubeloop_operator.builders.common import Owner
from kubeloop_operator.status import modeldeployment as s

from kubeloop.contracts import Labels
from kubeloop.resources import ModelDeploymentSpec, ModelDeploymentStatus

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OWNER = Owner("kubeloop.io/v1alpha1", "ModelDeployment", "ns", "md", "uid-md", 2)
V1 = b.ResolvedModel(
    ref="m@champion", name="m", version="1", uri="s3://kubeloop/models/m/1/model.onnx", alias="champion"
)
V2 = b.ResolvedModel(
    ref="m/2", name="m", version="2", uri="s3://kubeloop/models/m/2/model.onnx", digest="sha256:aa"
)
H1, H2, HOLD = "hash-v1", "hash-v2", "hash-old"
LOAD_FAILED = "ModelLoadFailed: cannot load s3://kubeloop/bad.onnx: Protobuf parsing failed"


def spec(**kw: Any) -> ModelDeploymentSpec:
    body: dict[str, Any] = {"model": {"name": "m", "alias": "champion"}, "replicas": 2}
    body.update(kw)
    return ModelDeploymentSpec.model_validate(body)


def dep(
    track: str = "stable",
    *,
    hash_: str = H1,
    want: int = 2,
    replicas: int | None = None,
    updated: int | None = None,
    ready: int | None = None,
    generation: int = 5,
    observed: int | None = None,
    conditions: Sequence[dict[str, Any]] = (),
) -> s.DeploymentSummary:
    return s.summarize_deployment(
        {
            "metadata": {
                "name": f"md-{track}",
                "uid": f"d-{track}",
                "generation": generation,
                "labels": {Labels.OWNER_UID: "uid-md", b.TRACK_LABEL: track},
                "annotations": {b.CONFIG_HASH: hash_},
            },
            "spec": {"replicas": want},
            "status": {
                "observedGeneration": generation if observed is None else observed,
                "replicas": want if replicas is None else replicas,
                "updatedReplicas": want if updated is None else updated,
                "readyReplicas": want if ready is None else ready,
                "availableReplicas": want if ready is None else ready,
                "conditions": list(conditions),
            },
        }
    )


def pod(
    name: str,
    track: str = "stable",
    *,
    hash_: str = H1,
    version: str = "1",
    ready: bool = True,
    deleting: bool = False,
    container: dict[str, Any] | None = None,
    phase: str = "Running",
    unschedulable: str | None = None,
) -> s.ServerPod:
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conds.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    cs = container if container is not None else {"state": {"running": {"startedAt": "2026-11-26T11:00:00Z"}}}
    meta: dict[str, Any] = {
        "name": name,
        "uid": f"u-{name}",
        "creationTimestamp": f"2026-11-26T11:00:0{len(name) % 10}Z",
        "labels": {
            Labels.OWNER_UID: "uid-md",
            b.TRACK_LABEL: track,
            b.CONFIG_HASH: hash_,
            b.MODEL_VERSION_LABEL: version,
        },
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T11:59:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if not unschedulable:
        status["containerStatuses"] = [{"name": "server", "restartCount": 0, **cs}]
    return s.summarize_server_pod({"metadata": meta, "status": status})


def plan(
    track: b.Track = "stable", replicas: int = 2, model: Any = V1, hash_: str | None = H1
) -> s.TrackPlan:
    return s.TrackPlan(track, f"md-{track}", replicas, model, hash_)


def observe(
    plans: dict[b.Track, s.TrackPlan],
    deployments: dict[str, s.DeploymentSummary],
    pods: Sequence[s.ServerPod],
    *,
    sp: ModelDeploymentSpec | None = None,
    current: ModelDeploymentStatus | None = None,
    now: datetime = NOW,
    errors: Sequence[s.ChildError] = (),
) -> s.Derived:
    url, grpc = b.urls(OWNER)
    return s.derive(
        s.Observed(
            now=now,
            generation=2,
            spec=sp or spec(),
            current=current or ModelDeploymentStatus(),
            plans=plans,
            deployments=deployments,
            pods=pods,
            url=url,
            grpc_url=grpc,
            selector=b.selector(OWNER),
            child_errors=errors,
        )
    )


def cond(st: ModelDeploymentStatus, t: str) -> tuple[str, str]:
    c = next(c for c in st.conditions if c.type == t)
    return str(c.status), c.reason


def test_ready_when_every_desired_replica_runs_the_desired_template_and_is_ready() -> None:
    d = observe({"stable": plan()}, {"stable": dep()}, [pod("a"), pod("b")])
    st = d.status
    assert st.phase == "Ready"
    assert cond(st, "Ready") == ("True", "Ready")
    assert cond(st, "Available") == ("True", "ReplicasReady")
    assert cond(st, "Progressing") == ("False", "RolloutComplete")
    assert cond(st, "ModelResolved")[0] == "True"
    assert st.model_version == "1"
    assert st.model_uri == V1.uri
    assert st.model_name == "m"
    assert st.replicas == 2
    assert st.ready_replicas == 2
    assert st.stable is not None
    assert st.stable.weight == 100
    assert st.stable.updated_replicas == 2
    assert st.url == "http://md.ns.svc:8080"
    assert st.grpc_url == "md.ns.svc:8081"
    assert st.selector == b.selector(OWNER)
    assert st.canary is None
    assert all(c.observed_generation == 2 for c in st.conditions)
    assert [e.reason for e in d.events] == ["RolloutComplete"]


@pytest.mark.parametrize(
    ("case", "deployment", "pods"),
    [
        ("controller has not seen the new template", dep(observed=4), [pod("a"), pod("b")]),
        ("template not the desired one", dep(hash_=HOLD), [pod("a"), pod("b")]),
        (
            "an old pod is still there",
            dep(replicas=3, updated=2, ready=3),
            [pod("a"), pod("b"), pod("c", hash_=HOLD, version="0")],
        ),
        ("one replica not updated", dep(updated=1), [pod("a"), pod("b", hash_=HOLD, version="0")]),
        ("one replica not ready (controller)", dep(ready=1), [pod("a"), pod("b")]),
        ("one replica not ready (pod, controller lags)", dep(), [pod("a"), pod("b", ready=False)]),
        ("a pod missing (controller lags)", dep(), [pod("a")]),
        ("an extra pod (controller lags)", dep(), [pod("a"), pod("b"), pod("c")]),
        ("no Deployment", None, []),
    ],
)
def test_ready_never_lies_during_a_rollout(
    case: str, deployment: s.DeploymentSummary | None, pods: list[s.ServerPod]
) -> None:
    deployments = {"stable": deployment} if deployment is not None else {}
    st = observe({"stable": plan()}, deployments, pods).status
    assert cond(st, "Ready")[0] == "False", case
    assert st.phase in ("Progressing", "Pending"), case
    assert cond(st, "Progressing") == ("True", "RollingOut"), case


def test_terminating_pods_are_not_counted() -> None:
    st = observe(
        {"stable": plan()}, {"stable": dep()}, [pod("a"), pod("b"), pod("c", hash_=HOLD, deleting=True)]
    ).status
    assert cond(st, "Ready")[0] == "True"
    assert st.ready_replicas == 2


def test_a_model_that_fails_to_load_is_named_from_the_termination_message() -> None:
    crashed = {
        "state": {
            "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}
        },
        "lastState": {"terminated": {"reason": "Error", "exitCode": 2, "message": LOAD_FAILED}},
        "restartCount": 2,
    }
    pods = [
        pod("a", hash_=HOLD, version="0"),
        pod("b", hash_=HOLD, version="0"),
        pod("c", ready=False, container=crashed),
    ]
    d = observe({"stable": plan()}, {"stable": dep(replicas=3, updated=1, ready=2)}, pods)
    st = d.status
    assert st.phase == "Failed"
    assert cond(st, "Ready") == ("False", "ModelLoadFailed")
    assert cond(st, "Progressing") == ("False", "ModelLoadFailed")
    assert cond(st, "Available") == ("True", "ReplicasReady")  # the old version keeps serving
    assert st.last_failure is not None
    assert st.last_failure.reason == "ModelLoadFailed"
    assert st.last_failure.message == "pod c: cannot load s3://kubeloop/bad.onnx: Protobuf parsing failed"
    assert st.last_failure.track == "stable"
    assert st.last_failure.pod == "c"
    assert st.last_failure.time == "2026-11-26T12:00:00Z"
    assert [e.reason for e in d.events] == ["ModelLoadFailed"]
    # the first exit, before the back-off: the same reason
    first = {"state": {"terminated": {"reason": "Error", "exitCode": 2, "message": LOAD_FAILED}}}
    st2 = observe(
        {"stable": plan()},
        {"stable": dep(replicas=3, updated=1, ready=2)},
        [*pods[:2], pod("c", ready=False, container=first)],
    ).status
    assert st2.last_failure is not None
    assert st2.last_failure.reason == "ModelLoadFailed"


def test_a_failure_is_kept_as_first_reported_while_the_kubelet_message_changes() -> None:
    def crash(backoff: str) -> dict[str, Any]:
        return {
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {backoff} restarting"}},
            "lastState": {"terminated": {"reason": "Completed", "exitCode": 0}},
            "restartCount": 3,
        }

    first = observe(
        {"stable": plan(replicas=1)},
        {"stable": dep(want=1, ready=0)},
        [pod("a", ready=False, container=crash("10s"))],
    )
    st = first.status
    assert st.last_failure is not None
    assert st.last_failure.reason == "CrashLoopBackOff"
    later = observe(
        {"stable": plan(replicas=1)},
        {"stable": dep(want=1, ready=0)},
        [pod("a", ready=False, container=crash("40s"))],
        current=st,
        now=NOW + timedelta(minutes=1),
    )
    assert s.dump(later.status) == s.dump(st)
    assert later.events == []


@pytest.mark.parametrize(
    ("container", "reason"),
    [
        (
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}},
            "ImagePullBackOff",
        ),
        ({"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}, "ImagePullBackOff"),
        (
            {
                "state": {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "kubeloop-s3" not found',
                    }
                }
            },
            "CreateContainerConfigError",
        ),
        (
            {"state": {"terminated": {"reason": "Error", "exitCode": 1, "message": "Traceback ..."}}},
            "CrashLoopBackOff",
        ),
        ({"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}, "OOMKilled"),
    ],
)
def test_pod_failures_are_named_after_their_cause(container: dict[str, Any], reason: str) -> None:
    st = observe(
        {"stable": plan(replicas=1)},
        {"stable": dep(want=1, ready=0)},
        [pod("a", ready=False, container=container)],
    ).status
    assert st.phase == "Failed"
    assert st.last_failure is not None
    assert st.last_failure.reason == reason
    assert cond(st, "Ready") == ("False", reason)


def test_unschedulable_replica_failure_and_progress_deadline_are_failures() -> None:
    st = observe(
        {"stable": plan(replicas=1)},
        {"stable": dep(want=1, ready=0)},
        [
            pod(
                "a",
                ready=False,
                phase="Pending",
                unschedulable="0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            )
        ],
    ).status
    assert st.last_failure is not None
    assert st.last_failure.reason == "Unschedulable"
    assert "nvidia.com/gpu" in st.last_failure.message
    rf = dep(
        want=1,
        ready=0,
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "x" is forbidden: exceeded quota',
            }
        ],
    )
    st = observe({"stable": plan(replicas=1)}, {"stable": rf}, []).status
    assert (st.phase, st.last_failure.reason if st.last_failure else None) == ("Failed", "FailedCreate")
    pd = dep(
        want=1,
        ready=0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet x has timed out progressing.",
            }
        ],
    )
    st = observe({"stable": plan(replicas=1)}, {"stable": pd}, [pod("a", ready=False)]).status
    assert (st.phase, cond(st, "Ready")) == ("Failed", ("False", "ProgressDeadlineExceeded"))


def test_a_reference_that_does_not_resolve_keeps_what_is_pinned_and_says_why() -> None:
    ready = observe({"stable": plan()}, {"stable": dep()}, [pod("a"), pod("b")]).status
    miss = s.ResolveFailure("m@champion", "AliasNotFound", "model 'm' has no alias 'champion'")
    st = observe(
        {"stable": plan(model=miss, hash_=None)}, {"stable": dep()}, [pod("a"), pod("b")], current=ready
    ).status
    assert cond(st, "ModelResolved") == ("False", "AliasNotFound")
    assert cond(st, "Ready") == ("False", "AliasNotFound")
    assert cond(st, "Available")[0] == "True"
    assert st.phase == "Failed"
    assert st.model_version == "1"
    assert st.stable is not None
    assert st.stable.model_version == "1"
    assert st.last_failure is not None
    assert st.last_failure.reason == "AliasNotFound"


def test_child_errors_are_failures() -> None:
    err = s.ChildError(
        "Service md", "NameConflict", "Service ns/md already exists and is controlled by nobody"
    )
    st = observe({"stable": plan()}, {"stable": dep()}, [pod("a"), pod("b")], errors=[err]).status
    assert st.phase == "Failed"
    assert cond(st, "Ready") == ("False", "NameConflict")


def test_canary_split_weights_and_a_failing_canary_gets_no_weight() -> None:
    sp = spec(replicas=4, canary={"model": {"name": "m", "version": 2}, "trafficPercent": 25})
    plans = {"stable": plan(replicas=3), "canary": plan("canary", 1, V2, H2)}
    deps = {"stable": dep(want=3), "canary": dep("canary", hash_=H2, want=1)}
    pods = [pod("a"), pod("b"), pod("c"), pod("z", "canary", hash_=H2, version="2")]
    st = observe(plans, deps, pods, sp=sp).status
    assert st.phase == "Ready"
    assert st.stable is not None
    assert st.canary is not None
    assert (st.stable.replicas, st.stable.weight, st.stable.model_version) == (3, 75, "1")
    assert (st.canary.replicas, st.canary.weight, st.canary.model_version) == (1, 25, "2")
    assert st.canary.traffic_percent == 25
    assert st.canary.model_digest == "sha256:aa"
    crashed = {
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
        "lastState": {"terminated": {"exitCode": 2, "message": LOAD_FAILED}},
    }
    deps["canary"] = dep("canary", hash_=H2, want=1, ready=0)
    pods[-1] = pod("z", "canary", hash_=H2, version="2", ready=False, container=crashed)
    st = observe(plans, deps, pods, sp=sp).status
    assert st.canary is not None
    assert st.stable is not None
    assert (st.canary.weight, st.canary.ready_replicas, st.stable.weight) == (0, 0, 100)
    assert st.last_failure is not None
    assert (st.last_failure.track, st.last_failure.reason) == (
        "canary",
        "ModelLoadFailed",
    )
    assert st.phase == "Failed"
    assert cond(st, "Available")[0] == "True"


def test_a_removed_canary_keeps_ready_false_until_its_pods_are_gone() -> None:
    sp = spec(replicas=4)
    keep = s.TrackPlan("canary", "md-canary", 1, None, None)
    plans = {"stable": plan(replicas=4, model=V2, hash_=H2), "canary": keep}
    deps = {"stable": dep(hash_=H2, want=4), "canary": dep("canary", hash_=H2, want=1)}
    pods = [pod(n, hash_=H2, version="2") for n in "abcd"] + [pod("z", "canary", hash_=H2, version="2")]
    st = observe(plans, deps, pods, sp=sp).status
    assert cond(st, "Ready")[0] == "False"
    assert st.canary is not None
    assert st.canary.traffic_percent == 0
    gone = observe(
        {"stable": plans["stable"]},
        {"stable": deps["stable"]},
        [*pods[:4], pod("z", "canary", hash_=H2, deleting=True)],
        sp=sp,
    ).status
    assert cond(gone, "Ready")[0] == "True"
    assert gone.canary is None


def test_suspended_and_scaled_to_zero() -> None:
    st = observe({"stable": plan(replicas=0)}, {"stable": dep(want=0)}, [], sp=spec(suspend=True)).status
    assert st.phase == "Suspended"
    assert cond(st, "Ready") == ("False", "Suspended")
    assert cond(st, "Available") == ("False", "Suspended")
    assert st.replicas == 0
    still = observe(
        {"stable": plan(replicas=0)},
        {"stable": dep(want=0, replicas=1, ready=1)},
        [pod("a")],
        sp=spec(suspend=True),
    ).status
    assert still.phase == "Suspended"
    assert still.replicas == 1
    zero = observe({"stable": plan(replicas=0)}, {"stable": dep(want=0)}, [], sp=spec(replicas=0)).status
    assert zero.phase == "Ready"
    assert cond(zero, "Available") == ("False", "ScaledToZero")


def test_the_same_world_derives_the_same_status() -> None:
    first = observe({"stable": plan()}, {"stable": dep(ready=1)}, [pod("a"), pod("b", ready=False)]).status
    again = observe(
        {"stable": plan()},
        {"stable": dep(ready=1)},
        [pod("a"), pod("b", ready=False)],
        current=first,
        now=NOW + timedelta(hours=1),
    ).status
    assert s.dump(again) == s.dump(first)


def test_server_reason_parsing() -> None:
    assert s.server_reason(LOAD_FAILED) == (
        "ModelLoadFailed",
        "cannot load s3://kubeloop/bad.onnx: Protobuf parsing failed",
    )
    assert s.server_reason("InvalidSettings: port: bad") == ("InvalidSettings", "port: bad")
    assert s.server_reason("Traceback (most recent call last):") is None
    assert s.server_reason("") is None


def test_invalid_spec_is_a_failure_that_keeps_the_rest() -> None:
    ready = observe({"stable": plan()}, {"stable": dep()}, [pod("a"), pod("b")]).status
    d = s.invalid_spec(ready, 3, "spec.model: exactly one model reference", NOW)
    assert d.status.phase == "Failed"
    assert d.status.model_version == "1"
    assert cond(d.status, "Ready") == ("False", "InvalidSpec")
    assert [e.reason for e in d.events] == ["InvalidSpec"]
    assert s.invalid_spec(d.status, 3, "spec.model: exactly one model reference", NOW).events == []


@pytest.mark.parametrize("message", ["", LOAD_FAILED])
def test_a_crash_loop_does_not_flap_while_the_container_runs_between_crashes(message: str) -> None:
    """waiting (back-off) -> running for a moment -> exited -> waiting: one failure throughout."""
    last = {
        "terminated": {
            "reason": "Completed" if not message else "Error",
            "exitCode": 0 if not message else 2,
            "message": message,
        }
    }
    states = [
        {
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            "lastState": last,
            "restartCount": 2,
        },
        {"state": {"running": {"startedAt": "2026-11-26T11:59:00Z"}}, "lastState": last, "restartCount": 3},
        {"state": last, "restartCount": 3},
        {
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": last,
            "restartCount": 3,
        },
    ]
    current: ModelDeploymentStatus | None = None
    seen = []
    for i, container in enumerate(states):
        d = observe(
            {"stable": plan(replicas=1)},
            {"stable": dep(want=1, ready=0)},
            [pod("a", ready=False, container=container)],
            current=current,
            now=NOW + timedelta(seconds=10 * i),
        )
        current = d.status
        seen.append(s.dump(d.status))
    assert all(x == seen[0] for x in seen), [x.get("lastFailure") for x in seen]
    assert current is not None
    assert current.last_failure is not None
    assert current.last_failure.reason == ("ModelLoadFailed" if message else "CrashLoopBackOff")
    assert current.phase == "Failed"


def test_a_pod_that_recovers_is_no_longer_a_failure() -> None:
    last = {"terminated": {"reason": "Error", "exitCode": 1}}
    running = {"state": {"running": {}}, "lastState": last, "restartCount": 1}
    st = observe(
        {"stable": plan(replicas=1)}, {"stable": dep(want=1)}, [pod("a", ready=True, container=running)]
    ).status
    assert st.phase == "Ready"

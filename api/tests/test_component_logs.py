"""Training logs through the facade: live pods (follow, tail, per rank) run by the node agent, and the
kept log of a failed pod after its cleanup (object storage). The operator is simulated: the pods carry
the labels its Jobs give them (owner UID, completion index) and the test writes the kept log where the
operator keeps it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from api_cluster import ApiEnv, Tenants, expect
from kubernetes import client

from kubeloop.contracts import JOB_COMPLETION_INDEX_LABEL, Labels, training_log

pytestmark = pytest.mark.component

# Ten seconds of lines, so that following it sees lines arrive one by one even if the request starts late.
SCRIPT_RANK0 = 'echo start; i=1; while [ $i -le 20 ]; do echo "epoch $i"; i=$((i+1)); sleep 0.5; done; echo done; sleep 120'


def _pod(name: str, uid: str, rank: int, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {Labels.OWNER_UID: uid, JOB_COMPLETION_INDEX_LABEL: str(rank)}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "trainer", "image": "busybox:1.36", "command": ["sh", "-c", script]}],
        },
    }


def _wait_running(core: client.CoreV1Api, ns: str, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = core.read_namespaced_pod(name, ns).status
        if status.phase in ("Running", "Succeeded", "Failed"):
            return
        time.sleep(0.2)
    why = [f"{c.type}={c.status} {c.reason}: {c.message}" for c in status.conditions or []]
    raise AssertionError(f"pod {name} not running after {timeout} s ({status.phase}; {why})")


def test_live_and_kept_training_logs(api_env: ApiEnv, tenants: Tenants, node_agent: Any) -> None:
    ns, tj = tenants.a.namespace, "logs-tj"
    # Suspended: an operator running in the cluster starts no trainer pods; the test's pods stand in.
    doc = {"metadata": {"name": tj}, "spec": {"dataset": {"uri": "s3://kubeloop/datasets/x.csv", "target": "y"},
                                              "task": "classification", "runPolicy": {"suspend": True}}}  # fmt: skip
    base = f"/api/v1/namespaces/{ns}/trainingjobs/{tj}"
    with api_env.client(tenants.a.headers) as c, api_env.kube.api_client() as api:
        uid = expect(c.post(f"/api/v1/namespaces/{ns}/trainingjobs", json=doc), 201)["metadata"]["uid"]
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(ns, _pod(f"{tj}-0-aaaaa", uid, 0, SCRIPT_RANK0))
        core.create_namespaced_pod(ns, _pod(f"{tj}-1-bbbbb", uid, 1, "echo rank one; sleep 120"))
        _wait_running(core, ns, f"{tj}-0-aaaaa")

        # follow: lines arrive while the pod writes them
        arrivals: dict[str, float] = {}
        with c.stream("GET", f"{base}/logs", params={"rank": 0, "follow": "true"}) as r:
            assert r.status_code == 200
            assert r.headers["x-kubeloop-log-source"] == "live"
            for line in r.iter_lines():
                arrivals.setdefault(line.strip(), time.monotonic())
                if line.strip() == "done":
                    break
        assert [k for k in arrivals if k.startswith("epoch")] == [f"epoch {i}" for i in range(1, 21)]
        assert arrivals["done"] - min(arrivals.values()) > 1.0, "follow delivered everything at once"

        r = c.get(f"{base}/logs", params={"rank": 0, "tailLines": 2})
        assert expect(r, 200) is None
        assert r.text.splitlines() == ["epoch 20", "done"]
        _wait_running(core, ns, f"{tj}-1-bbbbb")
        deadline = time.monotonic() + 60
        while "rank one" not in (text := c.get(f"{base}/logs", params={"rank": 1}).text):
            assert time.monotonic() < deadline, text
            time.sleep(0.3)
        r = c.get(f"{base}/logs", params={"pod": f"{tj}-1-bbbbb", "timestamps": "true"})
        assert r.status_code == 200
        assert r.text.strip().endswith("rank one")  # (the local node agent's kubelet ignores timestamps)

        # a failed pod of rank 2, cleaned up: only its kept log is left
        s3 = api_env.minio.client()
        kept = training_log(ns, tj, f"{tj}-2-ccccc", api_env.minio.bucket)
        s3.put_object(Bucket=kept.bucket, Key=kept.key, Body=b"loading data\nepoch 1\nTraceback: boom\n")
        pods = expect(c.get(f"{base}/pods"), 200)
        assert sorted((p["pod"], p["rank"]) for p in pods["live"]) == [
            (f"{tj}-0-aaaaa", 0),
            (f"{tj}-1-bbbbb", 1),
        ]
        assert [(k["pod"], k["rank"]) for k in pods["kept"]] == [(f"{tj}-2-ccccc", 2)]
        r = c.get(f"{base}/logs", params={"rank": 2})
        assert r.status_code == 200
        assert r.headers["x-kubeloop-log-source"] == "kept"
        assert r.text == "loading data\nepoch 1\nTraceback: boom\n"
        assert c.get(f"{base}/logs", params={"rank": 2, "tailLines": 1}).text == "Traceback: boom\n"
        expect(c.get(f"{base}/logs", params={"rank": 2, "source": "live"}), 404)
        # rank 1 fails and is cleaned up; the kept log takes over from the live one
        kept1 = training_log(ns, tj, f"{tj}-1-bbbbb", api_env.minio.bucket)
        s3.put_object(Bucket=kept1.bucket, Key=kept1.key, Body=b"rank one\nkilled\n")
        assert c.get(f"{base}/logs", params={"rank": 1, "source": "kept"}).text == "rank one\nkilled\n"
        core.delete_namespaced_pod(f"{tj}-1-bbbbb", ns, grace_period_seconds=0)
        deadline = time.monotonic() + 90
        while c.get(f"{base}/logs", params={"rank": 1}).headers.get("x-kubeloop-log-source") != "kept":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        expect(c.get(f"{base}/logs", params={"rank": 7}), 404)
        expect(c.get(f"{base}/logs", params={"rank": 0, "container": "nope"}), 400)
        expect(c.get(f"/api/v1/namespaces/{ns}/trainingjobs/absent/logs"), 404)
        s3.delete_object(Bucket=kept.bucket, Key=kept.key)
        s3.delete_object(Bucket=kept1.bucket, Key=kept1.key)

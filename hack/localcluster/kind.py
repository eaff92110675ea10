"""``make kind-up``: a kind cluster for machines that have Docker (not usable where there is none).

The tests then run against it with ``KUBELOOP_TEST_KUBECONFIG=<state>/kind-kubeconfig``; MinIO and
MLflow still run as local processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from . import build, versions
from .cluster import ClusterError, LocalCluster, log


def kind_up(name: str = "kubeloop") -> int:
    docker = shutil.which("docker") or shutil.which("podman")
    if not docker:
        raise ClusterError(
            "kind needs a container engine (docker or podman) and none is on PATH; "
            "on this kind of machine use `make cluster-up` (local control plane without containers) instead"
        )
    probe = subprocess.run([docker, "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise ClusterError(f"`{docker} info` failed, is the daemon running?\n{probe.stderr.strip()[-500:]}")
    kind = str(build.ensure(["kind"])["kind"])
    cluster = LocalCluster()
    cluster.root.mkdir(parents=True, exist_ok=True)
    kubeconfig = cluster.root / "kind-kubeconfig"
    existing = subprocess.run(
        [kind, "get", "clusters"], capture_output=True, text=True, check=True
    ).stdout.split()
    if name in existing:
        log(f"kind cluster {name!r} exists; refreshing {kubeconfig}")
        subprocess.run(
            [kind, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)], check=True
        )
    else:
        cmd = [kind, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"]
        image = os.environ.get("KUBELOOP_KIND_NODE_IMAGE", versions.KIND_NODE_IMAGE)
        if image:
            cmd += ["--image", image]
        log(f"creating kind cluster {name!r}: {' '.join(cmd)}")
        subprocess.run(cmd, check=True)
    print(f"export KUBECONFIG={kubeconfig}")
    print(f"export KUBELOOP_TEST_KUBECONFIG={kubeconfig}   # the test suite then uses this cluster")
    print(f"delete it with: {kind} delete cluster --name {name}")
    return 0

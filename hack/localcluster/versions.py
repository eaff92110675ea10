"""Pinned versions of every tool the local cluster builds. Cached binaries are keyed by them.

KUBERNETES and ETCD are also pinned in the wrapper modules (hack/go/<module>/go.mod); the build
refuses to run when the two disagree, so bump both (``go get <module>@<version>`` there).
"""

from __future__ import annotations

KUBERNETES = "v1.37.2"
"""k8s.io/kubernetes; the staging modules are pinned to ``v0.<minor>.<patch>`` in hack/go/kubernetes/go.mod."""

ETCD = "v3.7.3"
"""go.etcd.io/etcd/server/v3 (pinned in hack/go/etcd/go.mod)."""

MINIO = "v0.0.0-20260212201848-7aac2a2c5b7c"
"""github.com/minio/minio: upstream tags are RELEASE.* names, so the module proxy serves pseudo-versions."""

HELM = "v3.22.0"
"""helm.sh/helm/v3."""

KIND = "v0.33.0"
"""sigs.k8s.io/kind, only for ``make kind-up`` on machines with Docker."""

KIND_NODE_IMAGE = ""
"""Node image for ``make kind-up`` (empty: kind's default for its version); KUBELOOP_KIND_NODE_IMAGE overrides."""

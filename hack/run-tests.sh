#!/usr/bin/env bash
# The whole test suite: lint, then every pytest level (unit, component, e2e on the local cluster).
# `make test` runs this; .ci/run runs `make test`. Extra arguments go to pytest.
# The control-plane binaries are built (once, cached) before pytest starts, so that no test's
# timeout covers a first-time Go build; the fixtures then start the local cluster on demand (or
# reuse `make cluster-up`'s) and stop what they started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV=${UV:-$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")}

echo "==> lint"
make --no-print-directory lint

if [[ -z "${KUBELOOP_TEST_KUBECONFIG:-}" ]]; then
  echo "==> control-plane binaries"
  "$UV" run --frozen python hack/cluster.py build etcd kube-apiserver kube-controller-manager minio
fi

echo "==> pytest"
set +e
"$UV" run --frozen pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit $rc

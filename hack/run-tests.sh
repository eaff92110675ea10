#!/usr/bin/env bash
# The whole test suite: lint, then every pytest level (unit, component, e2e on the local cluster).
# `make test` runs this; .ci/run runs `make test`. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}

echo "==> lint"
make --no-print-directory lint

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

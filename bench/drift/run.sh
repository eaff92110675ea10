#!/usr/bin/env bash
# `make bench-drift`: prepare (once) an environment in which Evidently 0.7.x works -- pinned in
# bench/drift/requirements-evidently.txt, keyed by that file's hash, so warm runs install nothing --
# then run the benchmark there with the workspace's kubeloop core on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

UV=${UV:-uv}
ENV_DIR=${BENCH_DRIFT_ENV:-bench/.envs/evidently}
REQ=bench/drift/requirements-evidently.txt
PY=${BENCH_DRIFT_PYTHON:-3.11}
key=$( { cat "$REQ"; echo "python=$PY"; } | sha256sum | cut -d' ' -f1)

if [[ -x $ENV_DIR/bin/python && -f $ENV_DIR/.kubeloop-env-key && $(cat "$ENV_DIR/.kubeloop-env-key") == "$key" ]]; then
  echo "bench env: $ENV_DIR (cached, key ${key:0:12})"
else
  echo "bench env: creating $ENV_DIR (key ${key:0:12}) ..."
  "$UV" venv --quiet --clear --python "$PY" "$ENV_DIR"
  "$UV" pip sync --quiet --python "$ENV_DIR/bin/python" "$REQ"
  echo "$key" >"$ENV_DIR/.kubeloop-env-key" # written last: an interrupted install is redone
fi

# no telemetry from Evidently (it would also cost it time waiting on the network)
export DO_NOT_TRACK=1 ITERATIVE_DO_NOT_TRACK=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$ENV_DIR/bin/python" bench/drift/bench_drift.py "$@"

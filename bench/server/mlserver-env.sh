#!/usr/bin/env bash
# Create (or reuse) MLServer's own virtualenv for the benchmark: bench/.envs/mlserver, keyed by the hash of
# the pinned requirements, so warm runs do not reinstall anything.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-uv}
REQS=bench/server/mlserver-requirements.txt
ENV_DIR=bench/.envs/mlserver
key=$(sha256sum "$REQS" | cut -c1-16)
if [[ -x $ENV_DIR/bin/mlserver && -f $ENV_DIR/.kubeloop-key && $(cat "$ENV_DIR/.kubeloop-key") == "$key" ]]; then
  echo "MLServer venv up to date ($ENV_DIR, key $key)"
  exit 0
fi
echo "==> creating MLServer venv $ENV_DIR (key $key)"
rm -rf "$ENV_DIR"
mkdir -p "$(dirname "$ENV_DIR")"
"$UV" venv --quiet --python 3.11 "$ENV_DIR"
"$UV" pip install --quiet --python "$ENV_DIR/bin/python" -r "$REQS"
echo "$key" >"$ENV_DIR/.kubeloop-key"

#!/usr/bin/env bash
# Install wrk from Debian's packages when possible (root with apt-get); otherwise the benchmark falls
# back to its Python load generator. Bounded in time.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
timeout 120 apt-get install -y -qq wrk >/dev/null 2>&1 \
  || { timeout 180 apt-get update -qq >/dev/null 2>&1 && timeout 120 apt-get install -y -qq wrk >/dev/null 2>&1; }
command -v wrk >/dev/null

#!/usr/bin/env bash
# Pending-poll latency at 1 000 and at 1 000 000 pending processes in one redis-server, and
# Redis memory per process at that scale (see bench/README.md).
#
# Usage: bash bench/scale.sh [--small N] [--large N] [--rounds N] [--concurrency C]
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt redis-server redis-server
ensure_apt taskset util-linux
build_release

exec python3 bench/scale.py --proxy target/release/dtr-proxy --poll-bench target/release/examples/poll_bench "$@"

#!/usr/bin/env bash
# Pending polls next to redis-benchmark -t get at the same concurrency (plain, with DPoP
# proofs, with private_key_jwt assertions), store commands per poll, OP calls (must be 0) and
# Redis memory per pending process.
#
# Usage: bash bench/polls.sh [options of bench/polls.py]   (see bench/README.md)
#   e.g. --count 60000 --concurrency 32 --modes basic,dpop,jwt
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt redis-server redis-server
ensure_apt taskset util-linux
build_release

exec python3 bench/polls.py --proxy target/release/dtr-proxy --poll-bench target/release/examples/poll_bench "$@"

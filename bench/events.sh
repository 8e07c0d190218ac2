#!/usr/bin/env bash
# Completion webhooks per second, pings and lifecycle events delivered per second with
# retries in the mix (a receiver answering 503 to a share of the attempts), end-to-end delay
# from completion to ping, duplicates and dead letters; next to the receiver's own ceiling
# and redis-benchmark GET.
#
# Usage: bash bench/events.sh [options of bench/events.py]   (see bench/README.md)
#   e.g. --count 10000 --event-count 5000 --concurrency 32 --fail-share 0.2
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt redis-server redis-server
ensure_apt taskset util-linux
build_release
log "cargo build --release (examples/events_bench; no-op when up to date)"
cargo build --release --quiet --example events_bench || die "release build failed"

exec python3 bench/events.py --proxy target/release/dtr-proxy --poll-bench target/release/examples/poll_bench \
    --events-bench target/release/examples/events_bench "$@"

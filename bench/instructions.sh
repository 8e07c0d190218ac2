#!/usr/bin/env bash
# Instruction-count check of the two hot paths (pass-through and pending poll), counted by
# callgrind in the dtr-proxy process after a warm-up, per request; fails when a path costs more
# than 10 % above bench/instructions.baseline. Part of scripts/test.sh.
#
# Usage:
#   bash bench/instructions.sh            check against the baseline
#   bash bench/instructions.sh --update   measure and write a new baseline (see bench/README.md)
#   bash bench/instructions.sh --versus-nginx   also count the pass-through in nginx proxy_pass,
#                                        side by side (PATHS= for that count alone)
#
# Environment: COUNT (measured requests per path, default 1000), WARMUP (default 200),
# TOLERANCE (default 0.10), PATHS (default passthrough,poll; empty for none).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt valgrind valgrind
ensure_apt nginx nginx-light
ensure_apt redis-server redis-server
if [[ " $* " == *" --versus-nginx "* ]]; then
    ensure_apt wrk wrk
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
build_release

python3 bench/instructions.py \
    --proxy target/release/dtr-proxy \
    --poll-bench target/release/examples/poll_bench \
    --nginx "$NGINX" \
    --baseline bench/instructions.baseline \
    --count "${COUNT:-1000}" --warmup "${WARMUP:-200}" \
    --tolerance "${TOLERANCE:-0.10}" --paths "${PATHS-passthrough,poll}" \
    "$@"

#!/usr/bin/env bash
# Pass-through next to nginx proxy_pass: throughput (wrk, closed loop) on a 2 KiB JSON answer
# and a 256 KiB asset, latency at constant request rates (oha -q, open loop) direct, through
# nginx and through dtr-proxy, the proxy's RSS, and a latency-versus-load plot (SVG). The
# throughput runs also measure examples/hyper_floor.rs, the least a proxy on hyper does.
# Throughput comes in 30 pairs of 1 s runs, nginx and dtr-proxy back to back in each (--slices 0:
# in rounds instead, see vs_nginx.py).
#
# Usage: bash bench/vs-nginx.sh [options of bench/vs_nginx.py]   (see bench/README.md)
#   e.g. --duration 8 --rates 500,1000,2000,4000,6000,8000 --connections 32
# The plot goes to bench/passthrough-latency.svg unless --plot says otherwise.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt wrk wrk
ensure_apt nginx nginx-light
ensure_apt taskset util-linux
ensure_cargo_tool oha oha
OHA=$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
build_release
cargo build --release --quiet --example hyper_floor || die "release build of examples/hyper_floor failed"

exec python3 bench/vs_nginx.py --proxy target/release/dtr-proxy --nginx "$NGINX" --oha "$OHA" --slices 30 \
    --floor target/release/examples/hyper_floor --plot bench/passthrough-latency.svg "$@"

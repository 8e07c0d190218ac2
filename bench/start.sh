#!/usr/bin/env bash
# Process start to ready: dtr-proxy on the embedded store next to nginx.
#
# Usage: bash bench/start.sh [--runs 20]   (see bench/README.md)
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

ensure_apt nginx nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
build_release

exec python3 bench/start.py --proxy target/release/dtr-proxy --nginx "$NGINX" "$@"

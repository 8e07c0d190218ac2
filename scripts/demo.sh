#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs, builds dtr-proxy, starts a local
# OpenID Provider laid out like Keycloak and dtr-proxy (embedded store) in front of it, and
# walks one complete deferred flow, printing each step. With --keycloak: the same in front of
# a real Keycloak (fetched from Maven Central by scripts/keycloak.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-deps.sh
echo "demo: building dtr-proxy (release) and the walkthrough"
cargo build --release --locked --quiet --bin dtr-proxy --example walkthrough
exec target/release/examples/walkthrough target/release/dtr-proxy "$@"

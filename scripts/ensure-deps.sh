#!/usr/bin/env bash
# Installs what the test suite needs, on a fresh Debian machine where we are
# root. Idempotent: a second run does nothing but check.
#   - redis-server (Debian package; also runs Sentinel and Cluster in the tests)
#   - openssl (the Redis TLS test makes its own CA)
#   - the test OpenID Provider's npm dependencies (tests/op, from the lockfile)
#   - Keycloak and a JDK it supports, for the Keycloak suite (scripts/keycloak.sh)
#   - the TypeScript RP kit's npm dependencies (clients/js, from the lockfile)
set -euo pipefail

# Work from the repository root whatever the caller's cwd.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "ensure-deps: $*"; }

# --- redis-server -----------------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
  say "redis-server present"
else
  say "installing redis-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp)"
  if ! { apt-get update -q && apt-get install -y -q redis-server; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    rm -f "$apt_log"
    say "apt-get failed" >&2
    exit 1
  fi
  rm -f "$apt_log"
  say "redis-server installed ($(redis-server --version | cut -d' ' -f3))"
fi

# --- openssl (the Redis TLS test makes its own CA) ----------------------------
if command -v openssl >/dev/null 2>&1; then
  say "openssl present"
else
  say "installing openssl (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q openssl; } >/dev/null 2>&1; then
    say "apt-get failed" >&2
    exit 1
  fi
fi

# --- node / npm for tests/op and clients/js ----------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node and npm are required (Node 20 or later) for tests/op" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  say "Node $(node --version) is too old for tests/op: 20 or later is required" >&2
  exit 1
fi

# npm writes node_modules/.package-lock.json on every install; if it is
# missing or older than the lockfile, the installed tree is stale.
for dir in tests/op clients/js; do
  marker="$dir/node_modules/.package-lock.json"
  if [ ! -f "$marker" ] || [ "$dir/package-lock.json" -nt "$marker" ]; then
    say "npm ci in $dir (node $(node --version))"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  else
    say "$dir/node_modules up to date"
  fi
done

# --- Keycloak ---------------------------------------------------------------
bash scripts/keycloak.sh

say "done"

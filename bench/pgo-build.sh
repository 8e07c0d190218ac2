#!/usr/bin/env bash
# A profile-guided (PGO) build of dtr-proxy. An instrumented build first runs the hot paths the
# benchmarks measure, through the benchmarks themselves: pass-through of a 2 KiB JSON answer
# and a 256 KiB asset (bench/vs_nginx.py, one short round) and pending polls with
# client_secret_basic, DPoP proofs and private_key_jwt assertions (bench/polls.py). LLVM
# then optimises the final build for the branches and calls those runs took. Prints the
# binary's path; the ordinary build in target/ is left as it is.
#
# Usage: bash bench/pgo-build.sh [--profile release|dist]    (see bench/README.md)
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

PROFILE=release
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) PROFILE=${2:?--profile needs release or dist}; shift 2 ;;
        *) die "unknown argument: $1 (usage: bash bench/pgo-build.sh [--profile release|dist])" ;;
    esac
done
[[ $PROFILE == release || $PROFILE == dist ]] || die "--profile: release or dist, not $PROFILE"

ensure_apt redis-server redis-server
ensure_apt nginx nginx-light
ensure_apt wrk wrk
ensure_apt taskset util-linux
ensure_cargo_tool oha oha
OHA=$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# The profile must be merged by the llvm-profdata of rustc's own LLVM.
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    log "rustup component add llvm-tools"
    rustup component add llvm-tools >/dev/null || die "llvm-tools (llvm-profdata) is needed: rustup component add llvm-tools"
fi

OUT=$ROOT/target/pgo
DATA=$OUT/profiles
mkdir -p "$OUT"

log "instrumented build (--profile $PROFILE)"
RUSTFLAGS="-Cprofile-generate=$DATA" cargo build --locked --quiet --profile "$PROFILE" \
    --target-dir "$OUT/instrumented" --bin dtr-proxy || die "instrumented build failed"
# Build scripts ran instrumented too and left profiles of their own: only the proxy's count.
rm -rf "$DATA"
mkdir -p "$DATA"
build_release  # the poll load generator (and the ordinary build), uninstrumented

INSTRUMENTED=$OUT/instrumented/$PROFILE/dtr-proxy
log "training: pass-through (bench/vs_nginx.py, one round)"
python3 bench/vs_nginx.py --proxy "$INSTRUMENTED" --nginx "$NGINX" --oha "$OHA" --files certs,big \
    --rounds 1 --duration 4 --rates 1000 --latency-duration 2 --latency-rounds 1 >/dev/null || die "pass-through training failed"
log "training: pending polls (bench/polls.py, one round of each mode)"
python3 bench/polls.py --proxy "$INSTRUMENTED" --poll-bench target/release/examples/poll_bench \
    --count 5000 --rounds 1 >/dev/null || die "poll training failed"
compgen -G "$DATA/*.profraw" >/dev/null || die "the instrumented proxy wrote no profile"

"$PROFDATA" merge -o "$OUT/dtr-proxy.profdata" "$DATA"/*.profraw
log "optimised build (--profile $PROFILE, with the profile)"
RUSTFLAGS="-Cprofile-use=$OUT/dtr-proxy.profdata" cargo build --locked --quiet --profile "$PROFILE" \
    --target-dir "$OUT/optimised" --bin dtr-proxy || die "optimised build failed"
echo "$OUT/optimised/$PROFILE/dtr-proxy"

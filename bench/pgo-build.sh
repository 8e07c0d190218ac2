#!/usr/bin/env bash
# A profile-guided (PGO) build of dtr-proxy. An instrumented build first runs the hot paths the
# benchmarks measure, through the benchmarks themselves: pass-through of a 2 KiB JSON answer
# and a 256 KiB asset (bench/vs_nginx.py, one short round) and pending polls with
# client_secret_basic, DPoP proofs and private_key_jwt assertions (bench/polls.py). LLVM
# then optimises the final build for the branches and calls those runs took. Prints the
# binary's path; the ordinary build in target/ is left as it is.
#
# The image's build for its builder's own arch runs this (deploy/Dockerfile):
# --profile dist --no-latency --out.
#
# Usage: bash bench/pgo-build.sh [--profile release|dist] [--no-latency] [--out PATH]
#   --no-latency  train pass-through by throughput runs only: no oha (nor its cargo install)
#   --out PATH    also copy the binary to PATH
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh

USAGE="usage: bash bench/pgo-build.sh [--profile release|dist] [--no-latency] [--out PATH]"
PROFILE=release
LATENCY=1
COPY_TO=
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) PROFILE=${2:?--profile needs release or dist}; shift 2 ;;
        --no-latency) LATENCY=0; shift ;;
        --out) COPY_TO=${2:?--out needs a path}; shift 2 ;;
        *) die "unknown argument: $1 ($USAGE)" ;;
    esac
done
[[ $PROFILE == release || $PROFILE == dist ]] || die "--profile: release or dist, not $PROFILE"

ensure_apt python3 python3
ensure_apt redis-server redis-server
ensure_apt nginx nginx-light
ensure_apt wrk wrk
ensure_apt taskset util-linux
LATENCY_TRAINING=(--latency-rounds 0 --rates "")
if [[ $LATENCY == 1 ]]; then
    ensure_cargo_tool oha oha
    OHA=$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")
    LATENCY_TRAINING=(--oha "$OHA" --rates 1000 --latency-duration 2 --latency-rounds 1)
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# The benchmarks pin the servers to one CPU and the load generators to another: the first
# two this process may run on (a container's may not be 0 and 1), or its only one twice.
read -r -a ALLOWED <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
CPUS=(--server-cpus "${ALLOWED[0]}" --client-cpus "${ALLOWED[1]:-${ALLOWED[0]}}")

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
log "cargo build --release --example poll_bench (the poll load generator, uninstrumented)"
cargo build --locked --release --quiet --example poll_bench || die "poll_bench build failed"

INSTRUMENTED=$OUT/instrumented/$PROFILE/dtr-proxy
log "training: pass-through (bench/vs_nginx.py, one round)"
python3 bench/vs_nginx.py --proxy "$INSTRUMENTED" --nginx "$NGINX" --files certs,big \
    --rounds 1 --duration 4 "${LATENCY_TRAINING[@]}" "${CPUS[@]}" >/dev/null || die "pass-through training failed"
log "training: pending polls (bench/polls.py, one round of each mode)"
python3 bench/polls.py --proxy "$INSTRUMENTED" --poll-bench target/release/examples/poll_bench \
    --count 5000 --rounds 1 "${CPUS[@]}" >/dev/null || die "poll training failed"
compgen -G "$DATA/*.profraw" >/dev/null || die "the instrumented proxy wrote no profile"

"$PROFDATA" merge -o "$OUT/dtr-proxy.profdata" "$DATA"/*.profraw
# Named by its content: cargo rebuilds when RUSTFLAGS change, not when a file they name does,
# so a new profile under the old name would leave the last build's code in place.
PROFILE_DATA=$OUT/dtr-proxy-$(sha256sum "$OUT/dtr-proxy.profdata" | cut -c1-16).profdata
rm -f "$OUT"/dtr-proxy-*.profdata
mv "$OUT/dtr-proxy.profdata" "$PROFILE_DATA"
log "optimised build (--profile $PROFILE, with the profile)"
RUSTFLAGS="-Cprofile-use=$PROFILE_DATA" cargo build --locked --quiet --profile "$PROFILE" \
    --target-dir "$OUT/optimised" --bin dtr-proxy || die "optimised build failed"
BINARY=$OUT/optimised/$PROFILE/dtr-proxy
if [[ -n $COPY_TO ]]; then
    install -D -m 0755 "$BINARY" "$COPY_TO"
fi
echo "$BINARY"

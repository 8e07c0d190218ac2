#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (default 60 s each) and prints, per
# target, how many inputs it executed and whether it crashed. Exits non-zero on any crash.
# Not part of scripts/test.sh: the CI time budget has no room for it. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs nightly-only compiler flags (sanitizers, coverage instrumentation). Use a
# nightly toolchain when rustup has one; otherwise unlock them on the stable compiler.
cargo=(cargo)
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

targets=$("${cargo[@]}" fuzz list)
echo "fuzz: building $(echo "$targets" | wc -w) targets"
"${cargo[@]}" fuzz build

summary=()
crashed=0
for target in $targets; do
    # A scratch corpus outside version control, seeded with the committed inputs; it keeps
    # growing from run to run.
    corpus="corpus/$target"
    mkdir -p "$corpus" "artifacts/$target"
    if [ -d "seeds/$target" ]; then
        cp seeds/"$target"/* "$corpus"/
    fi
    log="artifacts/$target/last-run.log"
    echo "fuzz: $target for ${seconds}s"
    status=0
    "${cargo[@]}" fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        result="no crash"
    else
        crashed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="CRASH (exit $status${artifact:+, input saved to $artifact}; log: fuzz/$log)"
        tail -n 40 "$log" >&2
    fi
    summary+=("$(printf '%-16s %12s executions  %s' "$target" "${executions:-?}" "$result")")
done

echo "fuzz: summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$crashed"

#!/usr/bin/env bash
# Every test, on a fresh machine: installs what the suites need (redis-server, the test OP),
# then formatting and lints, the Rust unit and integration tests (real Redis, real OP; with
# tests/api_schema.rs, the schema-driven test of the admin port by scripts/api-schema-test.sh), the
# instruction counts of the pass-through and pending-poll paths against their baseline
# (bench/instructions.sh), the test OP's own self-test, the TypeScript RP kit's end-to-end
# tests (against the binary the cargo tests built) and the deployment checks (Helm chart,
# Dockerfile).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-deps.sh

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "test: module layers"
python3 scripts/check-layers.py
echo "test: cargo test"
# Most integration tests wait on poll intervals, not CPU: run them wide.
cargo test --locked --all-targets -- --test-threads 8
echo "test: instruction counts of the hot paths (callgrind, against bench/instructions.baseline)"
bash bench/instructions.sh
echo "test: test OP self-test"
node tests/op/selftest.mjs
echo "test: TypeScript RP kit (clients/js)"
npm test --prefix clients/js
echo "test: deployment checks"
bash deploy/check.sh

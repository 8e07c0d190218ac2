#!/usr/bin/env bash
# Schema-driven test of the admin port: schemathesis generates requests from
# docs/openapi/admin.json (valid and invalid ones) and checks every answer against the
# document — status codes, content types, headers, response schemas, no 5xx, invalid input
# refused, authentication not ignored. Run by tests/api_schema.rs against a proxy on Redis
# in front of the test OP, with real processes created first; it can also be pointed at any
# running proxy:
#
#   DTR_OPERATOR_TOKEN=… PROCESS_ID=… DENY_PROCESS_ID=… EXTEND_PROCESS_ID=… \
#     CANCEL_PROCESS_ID=… bash scripts/api-schema-test.sh http://127.0.0.1:9090
#
# schemathesis (PyPI, pinned below) is installed once into target/api-venv (git-ignored).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/api-venv"
requirements=(
  "schemathesis==4.32.5"
)
admin="${1:?usage: api-schema-test.sh ADMIN_URL}"

python_bin="${PYTHON:-python3}"
stamp="$venv/.dtr-api-requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"
if [[ ! -x "$venv/bin/schemathesis" || ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "==> installing schemathesis into target/api-venv"
  mkdir -p "$root/target"
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s\n' "$wanted" > "$stamp"
fi

: "${DTR_OPERATOR_TOKEN:?DTR_OPERATOR_TOKEN must be an operator token of the proxy}"
export DTR_OPERATOR_TOKEN PROCESS_ID DENY_PROCESS_ID EXTEND_PROCESS_ID CANCEL_PROCESS_ID
cd "$root/target"
exec "$venv/bin/schemathesis" --config-file "$root/tests/api/schemathesis.toml" \
  run "$root/docs/openapi/admin.json" --url "$admin" \
  --max-examples "${API_TEST_EXAMPLES:-40}" --seed "${API_TEST_SEED:-1}" --no-color \
  --report-dir "$root/target/api-schema-report"

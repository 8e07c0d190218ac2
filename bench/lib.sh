# Shared by the bench/ scripts: messages, idempotent installs, the release build.
# shellcheck shell=bash

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_apt COMMAND PACKAGE...: installs the Debian packages unless COMMAND is present
# (apt-get update only when the install fails without it).
ensure_apt() {
    local command=$1
    shift
    if command -v "$command" >/dev/null 2>&1 || [[ -x /usr/sbin/$command ]]; then
        return 0
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to install: $*"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install these yourself: $*"
    export DEBIAN_FRONTEND=noninteractive
    log "installing: $*"
    if ! "${sudo[@]}" apt-get install -y -q "$@" >/dev/null 2>&1; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q "$@" >/dev/null
    fi
}

# ensure_cargo_tool COMMAND CRATE: `cargo install --locked CRATE` unless COMMAND is present.
ensure_cargo_tool() {
    if command -v "$1" >/dev/null 2>&1 || [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/$1 ]]; then
        return 0
    fi
    log "cargo install --locked $2"
    cargo install --locked --quiet "$2"
}

# The release proxy and the poll benchmark helper (no-ops when up to date).
build_release() {
    log "cargo build --release (dtr-proxy, examples/poll_bench; no-op when up to date)"
    cargo build --release --quiet --bin dtr-proxy --example poll_bench ||
        die "release build failed"
}

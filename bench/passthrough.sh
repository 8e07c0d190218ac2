#!/usr/bin/env bash
# Pass-through benchmark: what does dtr-proxy cost on the non-DTR path?
#
# Serves two Keycloak-like static files from nginx on loopback, puts dtr-proxy
# in front of it, and measures both with wrk: once against nginx directly and
# once through the proxy, under the same CPU pinning. Prints requests/s and
# p50/p99 latency side by side, the proxy/direct throughput ratio, the latency
# the proxy adds, and the proxy's peak RSS.
#
# Usage: bash bench/passthrough.sh        (see bench/README.md)
#
# Environment (all optional):
#   DURATION=10s        length of each measured wrk run (wrk syntax: 10s, 1m)
#   WARMUP=2s           unmeasured wrk run before each measured one (0 = none)
#   CONNECTIONS=64      wrk connections
#   THREADS=2           wrk threads
#   FILES="certs big"  which files to load: certs (the ~2 KB JWKS), big (256 KiB)
#   PIN=1               pin wrk and the servers to separate CPUs (0 = no pinning)
#   SERVER_CPUS=0       CPU list for nginx (and dtr-proxy) when pinning
#   PROXY_CPUS=...      CPU list for dtr-proxy when pinning (default: SERVER_CPUS;
#                       give it CPUs of its own on a machine with more than 2)
#   CLIENT_CPUS=1       CPU list for wrk and curl when pinning
#   UPSTREAM_PORT=18080 nginx (the stand-in OpenID Provider)
#   PROXY_PORT=18081    dtr-proxy public listener
#   ADMIN_PORT=18091    dtr-proxy admin listener (/healthz)
#   DTR_PROXY_BIN=...   use this dtr-proxy binary instead of building one
#   KEEP_TMP=1          keep the temporary directory (configs, logs, raw wrk output)
#   VERBOSE=1           also print the raw wrk output of every measured run

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
FILES=${FILES:-certs big}
PIN=${PIN:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
PROXY_CPUS=${PROXY_CPUS:-$SERVER_CPUS}
CLIENT_CPUS=${CLIENT_CPUS:-1}
UPSTREAM_PORT=${UPSTREAM_PORT:-18080}
PROXY_PORT=${PROXY_PORT:-18081}
ADMIN_PORT=${ADMIN_PORT:-18091}
KEEP_TMP=${KEEP_TMP:-0}
VERBOSE=${VERBOSE:-0}

HOST=127.0.0.1
DIRECT_URL="http://$HOST:$UPSTREAM_PORT"
PROXY_URL="http://$HOST:$PROXY_PORT"
ADMIN_URL="http://$HOST:$ADMIN_PORT"
CERTS_PATH=/realms/bench/protocol/openid-connect/certs
BIG_PATH=/realms/bench/resources/big.js

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- cleanup ----------------------------------------------------------------

TMP=""
PIDS=()          # every background process this script starts, in start order
NGINX_PID=""
PROXY_PID=""

stop_pid() {     # stop_pid PID SIGNAL: signal, wait up to 5 s, then SIGKILL
    local pid=$1 sig=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    # Newest first: a wrk still running, then the proxy, then nginx.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        if [[ ${PIDS[i]} == "$NGINX_PID" ]]; then
            stop_pid "${PIDS[i]}" QUIT     # the master takes its worker with it
        else
            stop_pid "${PIDS[i]}" TERM
        fi
    done
    if [[ -n $TMP && -d $TMP ]]; then
        # Kept on request, and after a failure (not an interrupt) for its logs.
        if [[ $KEEP_TMP == 1 || ($status -ne 0 && $status -ne 130 && $status -ne 143) ]]; then
            log "kept $TMP (logs, configs, raw wrk output)"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
set -o errtrace
trap 'printf "error: command failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ----------------------------------------------------------------

# Seconds in a wrk duration ("10", "10s", "2m", "1h").
duration_secs() {
    local d=$1
    case $d in
        *[!0-9smh]* | "") die "cannot read duration '$d' (use e.g. 10s or 1m)" ;;
        *h) echo $((${d%h} * 3600)) ;;
        *m) echo $((${d%m} * 60)) ;;
        *s) echo "${d%s}" ;;
        *) echo "$d" ;;
    esac
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Command prefixes that run on the server CPUs / the client CPUs (empty when
# not pinning). Arrays, not functions, so that "$!" of a background start is the
# process itself (taskset and env exec, they do not fork).
ON_SERVERS=()
ON_PROXY=()
ON_CLIENT=()

# CPU time (clock ticks, user+system) of a process, 0 if it is gone.
cpu_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) }                      # fields from 3 on (comm may hold spaces)
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))                # utime (14) + stime (15)
}

# CPU ticks of nginx (master + workers) and of the proxy: "nginx proxy".
server_ticks() {
    local n=0 p
    for p in "$NGINX_PID" $(pgrep -P "$NGINX_PID" 2>/dev/null || true); do
        n=$((n + $(cpu_ticks "$p")))
    done
    echo "$n $(cpu_ticks "$PROXY_PID")"
}

# Expand a CPU list ("0", "0-3", "0,2-3") into "cpu0 cpu2 cpu3".
cpu_names() {
    local part a b parts names=()
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        a=${part%-*}
        b=${part#*-}
        for ((; a <= b; a++)); do names+=("cpu$a"); done
    done
    echo "${names[*]}"
}

# "busy total" clock ticks of the given CPUs (names as from cpu_names; "cpu"
# alone is the machine-wide line), from /proc/stat.
core_ticks() {
    awk -v want=" $1 " '
        index(want, " " $1 " ") {
            busy += $2 + $3 + $4 + $7 + $8 + $9
            total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
        }
        END { printf "%d %d\n", busy, total }
    ' /proc/stat
}

# Busy percentage between two core_ticks snapshots.
busy_pct() {
    awk -v b="$1" -v a="$2" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        t = y[2] - x[2]
        printf "%.0f\n", (t > 0 ? 100 * (y[1] - x[1]) / t : 0)
    }'
}

# Connections nginx has accepted so far (stub_status); each call adds one.
nginx_accepts() {
    curl -fsS --max-time 5 "$DIRECT_URL/bench-nginx-status" | awk 'NR == 3 { print $1 }'
}

status_kib() {   # status_kib PID FIELD -> value in KiB from /proc/PID/status
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# --- tools ------------------------------------------------------------------

install_packages() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to install: $*"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install these yourself: $*"
    export DEBIAN_FRONTEND=noninteractive
    log "installing: $*"
    if ! "${sudo[@]}" apt-get install -y -q "$@" >/dev/null; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q "$@" >/dev/null
    fi
}

ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    if [[ $PIN == 1 ]] && ! command -v taskset >/dev/null; then missing+=(util-linux); fi
    ((${#missing[@]} == 0)) || install_packages "${missing[@]}"
    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        install_packages nginx-light 2>/dev/null || install_packages nginx
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $NGINX ]] || die "nginx not found after install"
}

ensure_proxy_bin() {
    if [[ -n ${DTR_PROXY_BIN:-} ]]; then
        [[ -x $DTR_PROXY_BIN ]] || die "DTR_PROXY_BIN=$DTR_PROXY_BIN is not an executable"
        PROXY_BIN=$DTR_PROXY_BIN
        return
    fi
    local cargo
    cargo=$(command -v cargo || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo")
    [[ -x $cargo ]] || die "cargo not found: install Rust, or set DTR_PROXY_BIN"
    # cargo decides whether the binary is stale; a fresh one costs about a second.
    log "cargo build --release --bin dtr-proxy (no-op when up to date)"
    (cd "$ROOT" && "$cargo" build --release --bin dtr-proxy --quiet) ||
        die "build failed; fix it or set DTR_PROXY_BIN to a built binary"
    PROXY_BIN="$ROOT/target/release/dtr-proxy"
}

# --- content ----------------------------------------------------------------

# base64url of N random bytes, no padding.
b64url() { head -c "$1" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '='; }

make_content() {
    local www=$TMP/www
    mkdir -p "$www$(dirname "$CERTS_PATH")" "$www$(dirname "$BIG_PATH")"
    # A JWKS as Keycloak publishes it: an RS256 signing key and an RSA-OAEP
    # encryption key, each with its 2048-bit modulus and a certificate chain.
    {
        printf '{"keys":['
        local use alg sep=""
        for use in sig enc; do
            if [[ $use == sig ]]; then alg=RS256; else alg=RSA-OAEP; fi
            printf '%s{"kid":"%s","kty":"RSA","alg":"%s","use":"%s",' "$sep" "$(b64url 32)" "$alg" "$use"
            printf '"n":"%s","e":"AQAB",' "$(b64url 256)"
            printf '"x5c":["%s"],' "$(head -c 420 /dev/urandom | base64 -w0)"
            printf '"x5t":"%s","x5t#S256":"%s"}' "$(b64url 20)" "$(b64url 32)"
            sep=","
        done
        printf ']}'
    } >"$www$CERTS_PATH"
    # A 256 KiB theme asset.
    {
        printf '/* keycloak theme bundle (benchmark filler) */\n'
        head -c 200000 /dev/urandom | base64 -w 76 | sed 's|^|// |'
    } >"$www$BIG_PATH"
    truncate -s 262144 "$www$BIG_PATH"
    chmod -R a+rX "$www"
    CERTS_BYTES=$(wc -c <"$www$CERTS_PATH")
    BIG_BYTES=$(wc -c <"$www$BIG_PATH")
}

# --- servers ----------------------------------------------------------------

start_nginx() {
    mkdir -p "$TMP/nginx/logs" "$TMP/nginx/temp"
    cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    gzip off;
    client_body_temp_path $TMP/nginx/temp/body;
    proxy_temp_path $TMP/nginx/temp/proxy;
    fastcgi_temp_path $TMP/nginx/temp/fastcgi;
    uwsgi_temp_path $TMP/nginx/temp/uwsgi;
    scgi_temp_path $TMP/nginx/temp/scgi;
    types {
        application/javascript js;
    }
    default_type application/octet-stream;
    server {
        listen $HOST:$UPSTREAM_PORT default_server;
        server_name _;
        root $TMP/www;
        location = $CERTS_PATH {
            default_type application/json;
            add_header Cache-Control "no-cache";
        }
        location = /bench-nginx-status {
            stub_status;
        }
        location / {
            try_files \$uri =404;
        }
    }
}
EOF
    "${ON_SERVERS[@]}" "$NGINX" -e "$TMP/nginx/logs/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
        >"$TMP/nginx/logs/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "$DIRECT_URL$CERTS_PATH" "$NGINX_PID" "nginx" "$TMP/nginx/logs/error.log"
}

start_proxy() {
    # A clean environment: only what this benchmark sets, so a DTR_REDIS_URL or
    # DTR_CONFIG from the caller's shell cannot change what is measured.
    "${ON_PROXY[@]}" env -i PATH="$PATH" \
        DTR_UPSTREAM_URL="$DIRECT_URL" \
        DTR_PUBLIC_URL="$PROXY_URL" \
        DTR_ALLOW_INSECURE_HTTP=true \
        DTR_LISTEN="$HOST:$PROXY_PORT" \
        DTR_ADMIN_LISTEN="$HOST:$ADMIN_PORT" \
        DTR_LOG=warn \
        DTR_SHUTDOWN_DELAY=0 \
        "$PROXY_BIN" >"$TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_http "$ADMIN_URL/healthz" "$PROXY_PID" "dtr-proxy" "$TMP/proxy.log"
}

# wait_http URL PID NAME LOGFILE: until URL answers 2xx (at most 20 s).
wait_http() {
    local url=$1 pid=$2 name=$3 logfile=$4 i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$logfile" >&2 || true
            die "$name exited during startup"
        fi
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cat "$logfile" >&2 || true
    die "$name did not answer $url within 20 s"
}

# --- correctness ------------------------------------------------------------

check_same_bytes() {   # check_same_bytes PATH
    local path=$1 name
    name=$(basename "$path")
    "${ON_CLIENT[@]}" curl -fsS --max-time 10 -D "$TMP/$name.direct.h" -o "$TMP/$name.direct" "$DIRECT_URL$path"
    "${ON_CLIENT[@]}" curl -fsS --max-time 10 -D "$TMP/$name.proxy.h" -o "$TMP/$name.proxy" "$PROXY_URL$path"
    cmp -s "$TMP/$name.direct" "$TMP/$name.proxy" ||
        die "$path: the proxy's body differs from nginx's"
    cmp -s "$TMP/www$path" "$TMP/$name.proxy" ||
        die "$path: the body served differs from the file on disk"
    local ct_direct ct_proxy
    ct_direct=$(awk -F': *' 'tolower($1) == "content-type" { print $2 }' "$TMP/$name.direct.h" | tr -d '\r')
    ct_proxy=$(awk -F': *' 'tolower($1) == "content-type" { print $2 }' "$TMP/$name.proxy.h" | tr -d '\r')
    [[ $ct_direct == "$ct_proxy" ]] ||
        die "$path: Content-Type differs (direct '$ct_direct', proxy '$ct_proxy')"
    log "ok: $path -> $(wc -c <"$TMP/$name.proxy") bytes, identical direct and via proxy ($ct_proxy)"
}

# --- load -------------------------------------------------------------------

# run_wrk URL DURATION OUTFILE: one bounded wrk run on the client CPUs.
run_wrk() {
    local url=$1 dur=$2 out=$3 secs pid rc=0
    secs=$(duration_secs "$dur")
    "${ON_CLIENT[@]}" timeout -k 5 $((secs + 30)) \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --timeout 5s --latency "$url" >"$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    unset 'PIDS[${#PIDS[@]}-1]'
    if ((rc != 0)); then
        cat "$out" >&2 || true
        die "wrk failed (exit $rc) on $url"
    fi
}

# Parse a wrk --latency report: "rps mbps p50_ms p99_ms errors".
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        function mb(v) {
            if (v ~ /GB$/) return substr(v, 1, length(v) - 2) * 1024
            if (v ~ /MB$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /KB$/) return substr(v, 1, length(v) - 2) / 1024
            if (v ~ /B$/)  return substr(v, 1, length(v) - 1) / 1048576
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        /^Transfer\/sec:/ { mbps = mb($2) }
        $1 == "50%" && p50 == "" { p50 = ms($2) }
        $1 == "99%" && p99 == "" { p99 = ms($2) }
        /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { err += $NF }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%s %.2f %.3f %.3f %d\n", rps, mbps, p50, p99, err
        }
    ' "$1"
}

# measure LABEL URL: warm up, then one measured run; sets R_* for the table.
measure() {
    local label=$1 url=$2 out before after secs tck srv_before srv_after cli_before cli_after acc_before
    out="$TMP/wrk.$label.txt"
    if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
        log "$label: warm-up $WARMUP"
        run_wrk "$url" "$WARMUP" "$TMP/wrk.$label.warmup.txt"
    fi
    log "$label: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url"
    acc_before=$(nginx_accepts)
    before=$(server_ticks)
    srv_before=$(core_ticks "$SERVER_CORES")
    cli_before=$(core_ticks "$CLIENT_CORES")
    run_wrk "$url" "$DURATION" "$out"
    cli_after=$(core_ticks "$CLIENT_CORES")
    srv_after=$(core_ticks "$SERVER_CORES")
    after=$(server_ticks)
    R_CONNS=$(($(nginx_accepts) - acc_before - 1))
    R_SRV_BUSY=$(busy_pct "$srv_before" "$srv_after")
    R_CLI_BUSY=$(busy_pct "$cli_before" "$cli_after")
    if [[ $VERBOSE == 1 ]]; then cat "$out" >&2; fi
    read -r R_RPS R_MBPS R_P50 R_P99 R_ERR < <(parse_wrk "$out") ||
        die "cannot read wrk output $out"
    secs=$(duration_secs "$DURATION")
    tck=$(getconf CLK_TCK)
    read -r R_NGX_CPU R_PRX_CPU < <(
        awk -v b="$before" -v a="$after" -v s="$secs" -v t="$tck" 'BEGIN {
            split(b, x, " "); split(a, y, " ")
            printf "%.1f %.1f\n", 100 * (y[1] - x[1]) / t / s, 100 * (y[2] - x[2]) / t / s
        }')
}

# --- main -------------------------------------------------------------------

if [[ $PIN == 1 ]]; then
    if (($(nproc --all 2>/dev/null || nproc) < 2)); then
        log "fewer than 2 CPUs: running without pinning"
        PIN=0
    fi
fi
for file in $FILES; do
    [[ $file == certs || $file == big ]] || die "FILES takes certs and/or big, not '$file'"
done
[[ -n ${FILES// /} ]] || die "FILES is empty"
cpulist_re='^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$'
[[ $SERVER_CPUS =~ $cpulist_re && $PROXY_CPUS =~ $cpulist_re && $CLIENT_CPUS =~ $cpulist_re ]] ||
    die "SERVER_CPUS, PROXY_CPUS and CLIENT_CPUS take CPU lists such as 0, 1 or 0-1,3"
SERVER_CORES=cpu
CLIENT_CORES=cpu
if [[ $PIN == 1 ]]; then
    ON_SERVERS=(taskset -c "$SERVER_CPUS")
    ON_PROXY=(taskset -c "$PROXY_CPUS")
    ON_CLIENT=(taskset -c "$CLIENT_CPUS")
    SERVER_CORES=$(cpu_names "$SERVER_CPUS,$PROXY_CPUS" | tr ' ' '\n' | sort -u | xargs)
    CLIENT_CORES=$(cpu_names "$CLIENT_CPUS")
fi

ensure_tools
ensure_proxy_bin
for port in "$UPSTREAM_PORT" "$PROXY_PORT" "$ADMIN_PORT"; do
    port_in_use "$port" && die "port $HOST:$port is already in use (set UPSTREAM_PORT/PROXY_PORT/ADMIN_PORT)"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dtr-bench.XXXXXX")
chmod 755 "$TMP"   # nginx workers started by root run as nobody and must read www/
make_content
start_nginx
start_proxy
PROXY_RSS_START=$(status_kib "$PROXY_PID" VmRSS)

# Background load: how busy the CPUs are with nothing of ours running.
srv_before=$(core_ticks "$SERVER_CORES")
cli_before=$(core_ticks "$CLIENT_CORES")
sleep 2
IDLE_SRV_BUSY=$(busy_pct "$srv_before" "$(core_ticks "$SERVER_CORES")")
IDLE_CLI_BUSY=$(busy_pct "$cli_before" "$(core_ticks "$CLIENT_CORES")")
log "background load before the runs: server cores $IDLE_SRV_BUSY% busy, client cores $IDLE_CLI_BUSY% busy"

check_same_bytes "$CERTS_PATH"
check_same_bytes "$BIG_PATH"

declare -A RES
for file in $FILES; do
    if [[ $file == certs ]]; then path=$CERTS_PATH; else path=$BIG_PATH; fi
    for target in direct proxy; do
        if [[ $target == direct ]]; then url="$DIRECT_URL$path"; else url="$PROXY_URL$path"; fi
        measure "$file.$target" "$url"
        RES[$file.$target]="$R_RPS $R_MBPS $R_P50 $R_P99 $R_ERR $R_NGX_CPU $R_PRX_CPU $R_SRV_BUSY $R_CLI_BUSY $R_CONNS"
    done
done

PROXY_HWM=$(status_kib "$PROXY_PID" VmHWM)
PROXY_RSS_END=$(status_kib "$PROXY_PID" VmRSS)
kill -0 "$PROXY_PID" 2>/dev/null || die "dtr-proxy died during the runs"

# --- report -----------------------------------------------------------------

kib_to_mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
rule() { printf '%.0s-' {1..123}; echo; }
row() { printf '%-20s %-13s %9s %9s %9s %9s %7s %7s %7s %8s %8s %6s\n' "$@"; }

wrk_version=$({ wrk --version 2>&1 || true; } | awk 'NR == 1 { print $1, $2 }')
nginx_version=$({ "$NGINX" -v 2>&1 || true; } | sed 's|.*/||')
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

echo
echo "dtr-proxy pass-through benchmark"
if [[ -n ${DTR_PROXY_BIN:-} ]]; then
    echo "  proxy:    $PROXY_BIN"
else
    echo "  proxy:    ${PROXY_BIN#"$ROOT"/}, built from $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "an unknown revision")"
fi
echo "  upstream: nginx $nginx_version on $HOST:$UPSTREAM_PORT (1 worker, keep-alive, access log off)"
if [[ $WARMUP == 0 || $WARMUP == 0s ]]; then warm="no warm-up"; else warm="each after a $WARMUP warm-up run"; fi
echo "  load:     $wrk_version -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $warm"
if [[ $PIN == 1 ]]; then
    if [[ $PROXY_CPUS == "$SERVER_CPUS" ]]; then
        echo "  pinning:  taskset: wrk and curl on CPU $CLIENT_CPUS; nginx and dtr-proxy share CPU $SERVER_CPUS (direct runs too)"
    else
        echo "  pinning:  taskset: wrk and curl on CPU $CLIENT_CPUS; nginx on CPU $SERVER_CPUS; dtr-proxy on CPU $PROXY_CPUS (direct runs too)"
    fi
else
    echo "  pinning:  none: wrk, nginx and dtr-proxy share all $(nproc) CPUs"
fi
echo "  machine:  $(nproc) CPUs${cpu_model:+ ($cpu_model)}, $(uname -sr)"
echo "  idle:     server cores $IDLE_SRV_BUSY% busy, client cores $IDLE_CLI_BUSY% busy before the runs (background load)"
echo
row "file" "via" "req/s" "MiB/s" "p50 ms" "p99 ms" "errors" "nginx" "proxy" "server" "client" "nginx"
row "" "" "" "" "" "" "" "CPU%" "CPU%" "cores%" "cores%" "conns"
rule
SUMMARY=()
NOTES=()
if ((IDLE_SRV_BUSY > 10 || IDLE_CLI_BUSY > 10)); then
    NOTES+=("other processes were using the CPUs before the runs (server cores $IDLE_SRV_BUSY%, client cores $IDLE_CLI_BUSY% busy while idle): the figures are disturbed; rerun on a quiet machine")
fi
for file in $FILES; do
    if [[ $file == certs ]]; then
        name="certs ($CERTS_BYTES B JSON)"
    else
        name="big.js ($((BIG_BYTES / 1024)) KiB)"
    fi
    read -r d_rps d_mbps d_p50 d_p99 d_err d_ncpu _ d_srv d_cli d_conns <<<"${RES[$file.direct]}"
    read -r p_rps p_mbps p_p50 p_p99 p_err p_ncpu p_pcpu p_srv p_cli p_conns <<<"${RES[$file.proxy]}"
    row "$name" "direct" "$(printf %.0f "$d_rps")" "$(printf %.1f "$d_mbps")" "$(printf %.2f "$d_p50")" \
        "$(printf %.2f "$d_p99")" "$d_err" "$(printf %.0f "$d_ncpu")%" "-" "$d_srv%" "$d_cli%" "$d_conns"
    row "" "proxy" "$(printf %.0f "$p_rps")" "$(printf %.1f "$p_mbps")" "$(printf %.2f "$p_p50")" \
        "$(printf %.2f "$p_p99")" "$p_err" "$(printf %.0f "$p_ncpu")%" "$(printf %.0f "$p_pcpu")%" "$p_srv%" "$p_cli%" "$p_conns"
    read -r ratio add50 add99 < <(awk -v dr="$d_rps" -v pr="$p_rps" -v d50="$d_p50" -v p50="$p_p50" \
        -v d99="$d_p99" -v p99="$p_p99" 'BEGIN {
            printf "%.1f%% %+.2f %+.2f\n", (dr > 0 ? 100 * pr / dr : 0), p50 - d50, p99 - d99
        }')
    row "" "proxy/direct" "$ratio" "" "$add50" "$add99" "" "" "" "" "" "" | sed 's/ *$//'
    rule
    SUMMARY+=("$(printf '  %-20s throughput via proxy %6s of direct; added latency p50 %s ms, p99 %s ms' \
        "$name" "$ratio" "$add50" "$add99")")
    SUMMARY+=("$(awk -v n="" -v dr="$d_rps" -v dn="$d_ncpu" -v pr="$p_rps" -v pn="$p_ncpu" -v pp="$p_pcpu" 'BEGIN {
        us = 10000   # percent of one core per (request/s) -> microseconds per request
        printf "  %-20s CPU per request: dtr-proxy %.0f us; nginx %.0f us direct, %.0f us behind the proxy", n,
            (pr > 0 ? pp * us / pr : 0), (dr > 0 ? dn * us / dr : 0), (pr > 0 ? pn * us / pr : 0)
    }')")
    if ((d_err + p_err > 0)); then
        NOTES+=("$name: wrk counted socket errors or non-2xx answers; see the raw output (KEEP_TMP=1 VERBOSE=1)")
    fi
    for target in direct proxy; do
        if [[ $target == direct ]]; then
            other=$(awk -v b="$d_srv" -v n="$d_ncpu" 'BEGIN { printf "%.0f", b - n }')
        else
            other=$(awk -v b="$p_srv" -v n="$p_ncpu" -v p="$p_pcpu" 'BEGIN { printf "%.0f", b - n - p }')
        fi
        if [[ $PIN == 1 ]] && ((other > 10)); then
            NOTES+=("$name, $target run: about $other% of the server cores went to other processes; that run is disturbed")
        fi
    done
    if ((d_cli >= 95 && d_srv < 90)); then
        NOTES+=("$name: the direct run looks limited by wrk (client cores $d_cli% busy, server cores $d_srv%), so the ratio understates the proxy's cost")
    fi
done
echo "  req/s, MiB/s, p50, p99, errors: from wrk. proxy/direct row: throughput ratio, and latency added (ms)."
echo "  nginx/proxy CPU%: CPU time of those processes during the run (100% = one core)."
echo "  server/client cores%: how busy the CPUs they were pinned to were (100% = all of them, whoever ran)."
echo "  nginx conns: TCP connections nginx accepted during the run (from wrk direct, from dtr-proxy's pool via proxy)."
echo "  CPU per request: process CPU time divided by requests served (us = microseconds)."
echo
echo "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "  dtr-proxy memory:    peak RSS (VmHWM) $(kib_to_mib "$PROXY_HWM"); RSS $(kib_to_mib "$PROXY_RSS_START") at start, $(kib_to_mib "$PROXY_RSS_END") after the runs"
if ((${#NOTES[@]} > 0)); then
    echo
    printf 'note: %s\n' "${NOTES[@]}"
fi

#!/usr/bin/env python3
"""Instructions per request on the two hot paths, counted by callgrind in the proxy process.

Runs the release dtr-proxy under `valgrind --tool=callgrind` (one worker thread), sends a
fixed number of warm-up requests, zeroes the counters, sends a fixed number of measured
requests over one keep-alive connection, dumps the counters and divides. Callgrind counts
instructions executed, not time, so the figure does not move with the load of the machine.

  passthrough  GET of a 2 KiB JSON file from nginx through the proxy (embedded store)
  poll         a pending poll (client_secret_basic, no DPoP) on Redis: one store round trip

With --versus-nginx, the pass-through is also counted in nginx `proxy_pass` (the proxy
configuration of vs_nginx.py, one process: no master), side by side with dtr-proxy, under two
loads: one keep-alive connection sending the requests one by one (as the check does), and the
throughput benchmark's load, wrk with 32 connections for --load-seconds after a warm-up. A
count of user-space instructions, it leaves out the kernel's share of a request (most of it on
loopback, and smaller for dtr-proxy, which makes fewer system calls); what it shows is who does
more work of its own per request, on a host whose stolen time makes wall-clock ratios move by
a tenth from one round to the next.

Called by bench/instructions.sh, which installs the tools and builds the binaries.
"""

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import vs_nginx

HOST = "127.0.0.1"
CERTS_PATH = "/realms/bench/protocol/openid-connect/certs"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(port, path, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"instructions: {what} exited during startup")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 300:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"instructions: {what} did not answer {path} within {timeout:.0f} s")


class Run:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, argv, env=None, log="out"):
        out = open(os.path.join(self.tmp, log + ".log"), "wb")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for proc in reversed(self.procs):
            self.stop(proc)


def start_nginx(run, nginx, port):
    root = os.path.join(run.tmp, "nginx")
    www = os.path.join(root, "www")
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    os.makedirs(os.path.dirname(www + CERTS_PATH), exist_ok=True)
    # A JWKS-sized JSON document (the content does not matter to the proxy).
    with open(www + CERTS_PATH, "w") as f:
        f.write('{"keys":[' + ",".join('{"kid":"k%d","kty":"RSA","n":"%s","e":"AQAB"}' % (i, "x" * 1000) for i in range(2)) + "]}")
    with open(os.path.join(root, "nginx.conf"), "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 100000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen {HOST}:{port};
        root {www};
        location / {{ try_files $uri =404; }}
    }}
}}
""")
    proc = run.start([nginx, "-p", root, "-c", os.path.join(root, "nginx.conf"), "-e", os.path.join(root, "logs/error.log")], log="nginx")
    wait_http(port, CERTS_PATH, proc, "nginx")
    return proc


def proxy_env(extra):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DTR_ALLOW_INSECURE_HTTP": "true",
        "DTR_LOG": "warn",
        "DTR_SHUTDOWN_DELAY": "0",
        "DTR_SHUTDOWN_GRACE": "1",
        "DTR_WORKER_THREADS": "1",
    }
    env.update(extra)
    return env


def start_measured(run, argv, name, env=None):
    """`argv` under callgrind, pinned to the first CPU (the load generators run on the other)."""
    out = os.path.join(run.tmp, f"callgrind.{name}.out")
    proc = run.start(
        ["taskset", "-c", "0", "valgrind", "--tool=callgrind", "--vgdb=yes", f"--callgrind-out-file={out}"] + argv,
        env=env,
        log=f"measured.{name}",
    )
    return proc, out


def start_measured_proxy(run, proxy, env, admin_port, name):
    proc, out = start_measured(run, [proxy], name, env=env)
    wait_http(admin_port, "/healthz", proc, f"dtr-proxy ({name})", timeout=120)
    return proc, out


def start_measured_nginx_proxy(run, nginx, upstream_port, port):
    """nginx `proxy_pass` as vs_nginx.py configures it, in one process (no master) so that
    callgrind counts the process that does the work."""
    root = os.path.join(run.tmp, "nginx-proxy")
    os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
    body = vs_nginx.PROXY_SERVER.format(host=HOST, upstream=upstream_port, port=port)
    conf = vs_nginx.NGINX_COMMON.format(root=root, body=body)
    if "daemon off;" not in conf:
        raise SystemExit("instructions: vs_nginx.py's nginx configuration no longer says `daemon off;`")
    conf = conf.replace("daemon off;", "daemon off;\nmaster_process off;", 1)
    with open(os.path.join(root, "nginx.conf"), "w") as f:
        f.write(conf)
    proc, out = start_measured(run, [nginx, "-p", root, "-c", os.path.join(root, "nginx.conf"),
                                     "-e", os.path.join(root, "error.log")], "nginx-proxy")
    wait_http(port, CERTS_PATH, proc, "nginx proxy_pass", timeout=120)
    return proc, out


def callgrind(command, pid):
    subprocess.run(["callgrind_control", command, str(pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def last_dump_instructions(out_base):
    """Instructions in the dump callgrind wrote last (`<out>.N`, highest N)."""
    directory, base = os.path.split(out_base)
    dumps = [f for f in os.listdir(directory) if f.startswith(base + ".") and f[len(base) + 1:].isdigit()]
    if not dumps:
        raise SystemExit(f"instructions: callgrind wrote no dump for {base}")
    latest = max(dumps, key=lambda f: int(f[len(base) + 1:]))
    with open(os.path.join(directory, latest)) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"instructions: no totals in {latest}")


def measure(proc, out, send, warmup, count):
    """Warm up, zero, send `count` requests, dump: instructions per request."""
    send(0, warmup)
    callgrind("--zero", proc.pid)
    send(warmup, count)
    callgrind("--dump", proc.pid)
    return last_dump_instructions(out) / count


PASSTHROUGH_HEADERS = {"Accept": "application/json", "User-Agent": "instructions/1", "Accept-Encoding": "gzip"}


def sequential_sender(port):
    """Requests one by one over one keep-alive connection: `send(start, n)`, and `close()`."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def send(_start, n):
        for _ in range(n):
            conn.request("GET", CERTS_PATH, headers=PASSTHROUGH_HEADERS)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or len(body) < 2000:
                raise SystemExit(f"instructions: pass-through answered {response.status}")

    return send, conn.close


def start_upstream_and_proxy(run, args):
    upstream_port, port, admin = free_port(), free_port(), free_port()
    start_nginx(run, args.nginx, upstream_port)
    env = proxy_env({
        "DTR_UPSTREAM_URL": f"http://{HOST}:{upstream_port}",
        "DTR_PUBLIC_URL": f"http://{HOST}:{port}",
        "DTR_LISTEN": f"{HOST}:{port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin}",
    })
    proc, out = start_measured_proxy(run, args.proxy, env, admin, "passthrough")
    return upstream_port, port, proc, out


def passthrough(run, args):
    _, port, proc, out = start_upstream_and_proxy(run, args)
    send, close = sequential_sender(port)
    per_request = measure(proc, out, send, args.warmup, args.count)
    close()
    run.stop(proc)
    return per_request


def wrk_requests(port, seconds, connections):
    """Runs wrk on the second CPU; the requests it completed, all of them answered 2xx."""
    requests, _, errors = vs_nginx.run_wrk(f"http://{HOST}:{port}{CERTS_PATH}", "1", connections, seconds,
                                            answer_timeout=10)
    if errors:
        raise SystemExit(f"instructions: wrk saw {errors} errors through port {port}")
    return requests


def measure_loaded(proc, out, port, args):
    """Warm up with wrk, zero, run wrk for --load-seconds, dump: instructions per completed
    request (the few still in flight when wrk stops are within a tenth of a percent)."""
    wrk_requests(port, 2, args.connections)
    callgrind("--zero", proc.pid)
    requests = wrk_requests(port, args.load_seconds, args.connections)
    callgrind("--dump", proc.pid)
    return last_dump_instructions(out) / requests


def count_both_loads(proc, out, port, args):
    """The pass-through through `port` counted one by one, then under load: {load: figure}."""
    send, close = sequential_sender(port)
    figures = {"sequential": measure(proc, out, send, args.warmup, args.count)}
    close()
    figures["loaded"] = measure_loaded(proc, out, port, args)
    return figures


def versus_nginx(run, args):
    """Pass-through instructions per request: {target: {load: figure}}."""
    upstream_port, port, proc, out = start_upstream_and_proxy(run, args)
    figures = {"dtr-proxy": count_both_loads(proc, out, port, args)}
    run.stop(proc)
    nginx_port = free_port()
    proc, out = start_measured_nginx_proxy(run, args.nginx, upstream_port, nginx_port)
    figures["nginx"] = count_both_loads(proc, out, nginx_port, args)
    run.stop(proc)
    return figures


def print_versus(figures, args):
    print(f"instructions per pass-through request (2 KiB JSON, user space), nginx proxy_pass and dtr-proxy ({args.proxy}):")
    for load, what in (("sequential", f"one connection, {args.count} requests one by one"),
                       ("loaded", f"wrk -c{args.connections} for {args.load_seconds} s")):
        n, d = figures["nginx"][load], figures["dtr-proxy"][load]
        print(f"  {what:<46} nginx {n:8.0f}  dtr-proxy {d:8.0f}  dtr-proxy/nginx {d / n:.2f}")


def poll(run, args):
    redis_port, port, admin = free_port(), free_port(), free_port()
    redis = run.start(["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "no"], log="redis")
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > deadline or redis.poll() is not None:
            raise SystemExit("instructions: redis-server did not start")
        time.sleep(0.1)
    env = proxy_env({
        "DTR_UPSTREAM_URL": f"http://{HOST}:9",
        "DTR_PUBLIC_URL": f"http://{HOST}:{port}",
        "DTR_LISTEN": f"{HOST}:{port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin}",
        "DTR_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        # Fixed test keys: only what is measured here ever sees them.
        "DTR_HASH_KEY": "YmVuY2gtaGFzaC1rZXktYmVuY2gtaGFzaC1rZXktMDA",
        "DTR_TOKEN_KEYS": "b1:YmVuY2gtdG9rZW4ta2V5LWJlbmNoLXRva2VuLWtleTA",
        "DTR_CLIENTS": '[{"client_id":"bench-rp","interval":1}]',
    })
    requests = os.path.join(run.tmp, "polls.txt")
    subprocess.run([args.poll_bench, "seed", "--count", str(args.warmup + args.count), "--auth", "basic", "--out", requests],
                   env=env, check=True, timeout=120)
    proc, out = start_measured_proxy(run, args.proxy, env, admin, "poll")

    def send(start, n):
        subprocess.run([args.poll_bench, "load", "--url", f"http://{HOST}:{port}", "--file", requests,
                        "--concurrency", "1", "--skip", str(start), "--take", str(n)],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)

    per_request = measure(proc, out, send, args.warmup, args.count)
    run.stop(proc)
    return per_request


def read_baseline(path):
    baseline = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, value = line.split()
                baseline[name] = int(value)
    return baseline


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--poll-bench", required=True)
    parser.add_argument("--nginx", required=True)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--paths", default="passthrough,poll")
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--update", action="store_true", help="write the measured figures as the new baseline")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--versus-nginx", action="store_true",
                        help="also count the pass-through in nginx proxy_pass beside dtr-proxy's, one by one and under load")
    parser.add_argument("--load-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    args.proxy = os.path.abspath(args.proxy)
    args.poll_bench = os.path.abspath(args.poll_bench)

    tmp = tempfile.mkdtemp(prefix="dtr-instructions.")
    run = Run(tmp)
    results = {}
    versus = None
    ok = False
    try:
        for name in filter(None, args.paths.split(",")):
            results[name] = {"passthrough": passthrough, "poll": poll}[name](run, args)
        if args.versus_nginx:
            versus = versus_nginx(run, args)
        ok = True
    finally:
        run.stop_all()
        if ok and not os.environ.get("KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"instructions: logs and callgrind dumps kept in {tmp}", file=sys.stderr)

    if versus:
        print_versus(versus, args)
    if args.update:
        with open(args.baseline, "w") as f:
            f.write("# Instructions per request in the dtr-proxy process (callgrind), written by\n")
            f.write("# `bash bench/instructions.sh --update`; see bench/README.md.\n")
            for name, value in results.items():
                f.write(f"{name} {round(value)}\n")
        for name, value in results.items():
            print(f"instructions: {name:<12} {value:10.0f} per request (baseline written)")
        return 0
    baseline = read_baseline(args.baseline)
    failed = False
    for name, value in results.items():
        base = baseline.get(name)
        if base is None:
            print(f"instructions: {name:<12} {value:10.0f} per request (no baseline)")
            continue
        change = value / base - 1
        verdict = "ok"
        if change > args.tolerance:
            verdict = f"REGRESSION: more than {args.tolerance:.0%} above the baseline"
            failed = True
        elif change < -args.tolerance:
            verdict = "ok, well below the baseline: consider updating it (bench/README.md)"
        print(f"instructions: {name:<12} {value:10.0f} per request, baseline {base} ({change:+.1%}) {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Process start to ready, dtr-proxy (embedded store) next to nginx.

Started by bench/start.sh. Each run spawns the process and polls its readiness URL every
millisecond (dtr-proxy: `/readyz` on the admin port; nginx: a static file) until it answers 2xx;
the figure is the time from spawn to that answer. Prints the median and the worst of RUNS runs.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import host

HOST = "127.0.0.1"


def ready(port, path):
    try:
        with socket.create_connection((HOST, port), timeout=0.2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            return s.recv(16).startswith(b"HTTP/1.1 2")
    except OSError:
        return False


def time_start(argv, env, port, path):
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = started + 10
        while not ready(port, path):
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"{argv[0]} did not become ready")
            time.sleep(0.001)
        return (time.perf_counter() - started) * 1000
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--nginx", required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--ports", default="18381,18391,18380")
    args = parser.parse_args()
    port, admin, nginx_port = (int(p) for p in args.ports.split(","))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DTR_UPSTREAM_URL": f"http://{HOST}:9",
        "DTR_PUBLIC_URL": f"http://{HOST}:{port}",
        "DTR_ALLOW_INSECURE_HTTP": "true",
        "DTR_LISTEN": f"{HOST}:{port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin}",
        "DTR_LOG": "warn",
        "DTR_SHUTDOWN_DELAY": "0",
    }
    with tempfile.TemporaryDirectory(prefix="dtr-start.") as tmp:
        os.makedirs(os.path.join(tmp, "www"))
        with open(os.path.join(tmp, "www", "ready"), "w") as f:
            f.write("ok\n")
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen {HOST}:{nginx_port}; root {tmp}/www; }} }}
""")
        figures = {"nginx": [], "dtr-proxy": []}
        steal = host.Steal.start()
        for _ in range(args.runs):
            figures["dtr-proxy"].append(time_start([args.proxy], env, admin, "/readyz"))
            figures["nginx"].append(time_start([args.nginx, "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"], None, nginx_port, "/ready"))
    print()
    print(f"start to ready ({args.runs} runs each; spawn until the readiness URL answers; load average: {open('/proc/loadavg').read().split()[0]})")
    for name, values in figures.items():
        print(f"  {name:<10} median {statistics.median(values):6.1f} ms   worst {max(values):6.1f} ms")
    ratio = statistics.median(figures["dtr-proxy"]) / statistics.median(figures["nginx"])
    print(f"  dtr-proxy / nginx (median): {ratio:.2f}   dtr-proxy target: < 100 ms")
    print(f"  {host.summary(steal.end())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

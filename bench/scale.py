#!/usr/bin/env python3
"""Pending-poll latency with 1 000 and with 1 000 000 pending processes in one redis-server.

Started by bench/scale.sh. Seeds processes through examples/poll_bench.rs (Records::create,
exactly what the deferred code exchange writes), first SMALL of them, polls them in ROUNDS
rounds (one poll per process per round, a round per poll interval), then seeds up to LARGE
and polls ROUNDS x SMALL of the large population (each process once). Prints p50/p99 of both
(the median of the rounds) and Redis memory per process (used_memory over the population).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host  # noqa: E402
from polls import HOST, log, redis_cli, wait_http  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--poll-bench", required=True)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--ports", default="16392,18283,18293")
    args = parser.parse_args()
    redis_port, proxy_port, admin_port = (int(p) for p in args.ports.split(","))
    tmp = tempfile.mkdtemp(prefix="dtr-scale.")
    procs = []
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DTR_UPSTREAM_URL": f"http://{HOST}:9",
        "DTR_PUBLIC_URL": f"http://{HOST}:{proxy_port}",
        "DTR_ALLOW_INSECURE_HTTP": "true",
        "DTR_LISTEN": f"{HOST}:{proxy_port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin_port}",
        "DTR_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "DTR_HASH_KEY": "YmVuY2gtaGFzaC1rZXktYmVuY2gtaGFzaC1rZXktMDA",
        "DTR_TOKEN_KEYS": "b1:YmVuY2gtdG9rZW4ta2V5LWJlbmNoLXRva2VuLWtleTA",
        "DTR_CLIENTS": '[{"client_id": "bench-rp", "interval": 1}]',
        "DTR_LOG": "warn",
        "DTR_SHUTDOWN_DELAY": "0",
        "DTR_WORKER_THREADS": "1",
    }

    def start(argv, name, env=None):
        proc = subprocess.Popen(argv, stdout=open(os.path.join(tmp, name + ".log"), "wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    def used_memory():
        info = redis_cli(redis_port, "INFO", "memory")
        return int(next(l.split(":")[1] for l in info.splitlines() if l.startswith("used_memory:")))

    def seed(count, name):
        path = os.path.join(tmp, name)
        log(f"seeding {count} pending processes")
        subprocess.run(["taskset", "-c", args.client_cpus, args.poll_bench, "seed", "--count", str(count), "--auth", "basic", "--out", path],
                       env=env, check=True, timeout=3600)
        return path

    def poll(path, skip, take):
        out = subprocess.run(["taskset", "-c", args.client_cpus, "timeout", "300", args.poll_bench, "load", "--url", f"http://{HOST}:{proxy_port}",
                              "--file", path, "--concurrency", str(args.concurrency), "--skip", str(skip), "--take", str(take)],
                             capture_output=True, text=True, check=True).stdout
        return {k: float(v) for k, v in (kv.split("=") for kv in out.split())}

    try:
        start(["taskset", "-c", args.server_cpus, "redis-server", "--port", str(redis_port), "--bind", HOST,
               "--save", "", "--appendonly", "no"], "redis")
        for _ in range(200):
            try:
                if redis_cli(redis_port, "PING").strip() == "PONG":
                    break
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        proxy = start(["taskset", "-c", args.server_cpus, args.proxy], "dtr-proxy", env=env)
        wait_http(admin_port, "/readyz", proxy, "dtr-proxy")
        empty = used_memory()

        small = seed(args.small, "small.txt")
        steal = host.Steal.start()
        rounds_small = []
        for _ in range(args.rounds):
            rounds_small.append(poll(small, 0, args.small))
            time.sleep(1.2)  # the interval (1 s) passes: the next round is pending again, not slow_down
        steal.end()
        redis_cli(redis_port, "FLUSHALL")
        empty = used_memory()

        large = seed(args.large, "large.txt")
        per_process = (used_memory() - empty) / args.large
        steal_large = host.Steal.start()
        rounds_large = [poll(large, i * args.small, args.small) for i in range(args.rounds)]
        steal = steal + steal_large.end()

        def median(rounds, key):
            return statistics.median(r[key] for r in rounds)

        p99_small, p99_large = median(rounds_small, "p99_ms"), median(rounds_large, "p99_ms")
        print()
        print(f"pending polls, {args.concurrency} connections, {args.rounds} rounds of {args.small} polls (medians)")
        print(f"  {args.small:>9} processes: {median(rounds_small, 'rps'):8.0f} req/s  p50 {median(rounds_small, 'p50_ms'):.3f} ms  p99 {p99_small:.3f} ms")
        print(f"  {args.large:>9} processes: {median(rounds_large, 'rps'):8.0f} req/s  p50 {median(rounds_large, 'p50_ms'):.3f} ms  p99 {p99_large:.3f} ms")
        print(f"  p99 ratio: {p99_large / p99_small:.2f}  (target within 10 %)")
        print(f"  {host.summary(steal)}")
        print(f"  Redis used_memory per process at {args.large}: {per_process:.0f} B")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in ("small.txt", "large.txt"):
            try:
                os.unlink(os.path.join(tmp, name))
            except FileNotFoundError:
                pass


if __name__ == "__main__":
    main()

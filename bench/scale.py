#!/usr/bin/env python3
"""Pending-poll latency with 1 000 and with 1 000 000 pending processes, side by side.

Started by bench/scale.sh. Two redis-servers, each with a dtr-proxy of its own, all on the
server CPU: one holds SMALL pending processes, the other LARGE, both seeded through
examples/poll_bench.rs (Records::create, exactly what the deferred code exchange writes). Then
ROUNDS pairs of rounds, the two populations back to back in each pair and taking turns at
going first: a round polls SMALL processes once each (the small population's every process,
a poll interval after its last round; a fresh slice of the large one). Prints each
population's median p50 and p99 over the pairs the host left alone (see host.py), the ratio
of the two p99s, every pair's own ratio, and Redis memory per process (used_memory over the
large population).

Why pairs: a round is a few tens of milliseconds, and a burst of steal in one population's
rounds and not the other's moved the ratio of two separate series of rounds from 0.1 to 1.4
on one build.
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
from polls import HOST, log, redis_cli, wait_http, wait_redis  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--poll-bench", required=True)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--ports", default="16392,18283,18293")
    args = parser.parse_args()
    redis_port, proxy_port, admin_port = (int(p) for p in args.ports.split(","))
    tmp = tempfile.mkdtemp(prefix="dtr-scale.")
    procs = []

    def env_of(offset):
        """The environment of the proxy (and the seeder) of one population: the ports given
        for the small one, each one higher for the large one."""
        proxy = proxy_port + offset
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DTR_UPSTREAM_URL": f"http://{HOST}:9",
            "DTR_PUBLIC_URL": f"http://{HOST}:{proxy}",
            "DTR_ALLOW_INSECURE_HTTP": "true",
            "DTR_LISTEN": f"{HOST}:{proxy}",
            "DTR_ADMIN_LISTEN": f"{HOST}:{admin_port + offset}",
            "DTR_REDIS_URL": f"redis://{HOST}:{redis_port + offset}/0",
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

    def used_memory(port):
        info = redis_cli(port, "INFO", "memory")
        return int(next(l.split(":")[1] for l in info.splitlines() if l.startswith("used_memory:")))

    class Population:
        """One redis-server, its dtr-proxy and the pending processes seeded into it."""

        def __init__(self, name, count, offset):
            self.name, self.count, self.offset = name, count, offset
            self.env = env_of(offset)
            self.redis_port = redis_port + offset
            self.rounds = []
            redis = start(["taskset", "-c", args.server_cpus, "redis-server", "--port", str(self.redis_port), "--bind", HOST,
                           "--save", "", "--appendonly", "no"], f"redis-{name}")
            wait_redis(self.redis_port, redis)
            proxy = start(["taskset", "-c", args.server_cpus, args.proxy], f"dtr-proxy-{name}", env=self.env)
            wait_http(admin_port + offset, "/readyz", proxy, f"dtr-proxy ({name})")
            empty = used_memory(self.redis_port)
            self.path = os.path.join(tmp, f"{name}.txt")
            log(f"seeding {count} pending processes")
            subprocess.run(["taskset", "-c", args.client_cpus, args.poll_bench, "seed", "--count", str(count), "--auth", "basic",
                            "--out", self.path], env=self.env, check=True, timeout=3600)
            self.per_process = (used_memory(self.redis_port) - empty) / count

        def poll(self, skip):
            out = subprocess.run(["taskset", "-c", args.client_cpus, "timeout", "300", args.poll_bench, "load",
                                  "--url", f"http://{HOST}:{proxy_port + self.offset}", "--file", self.path,
                                  "--concurrency", str(args.concurrency), "--skip", str(skip), "--take", str(args.small)],
                                 capture_output=True, text=True, check=True).stdout
            self.rounds.append({k: float(v) for k, v in (kv.split("=") for kv in out.split())})
            return self.rounds[-1]

    try:
        small = Population("small", args.small, 0)
        large = Population("large", args.large, 1)
        ratios, steals = [], []
        for i in range(args.rounds):
            steal = host.Steal.start()
            # The small population polls every process each round, the large one a fresh slice.
            polls = [lambda: small.poll(0), lambda: large.poll(i * args.small)]
            if i % 2:
                polls.reverse()
            for poll in polls:
                poll()
            steals.append(steal.end())
            ratios.append(large.rounds[-1]["p99_ms"] / small.rounds[-1]["p99_ms"])
            time.sleep(1.2)  # the interval (1 s) passes: the next round is pending again, not slow_down

        # Both populations' p99 over the same pairs: the calm ones when there are any.
        calm = [i for i, steal in enumerate(steals) if not steal.marked()]
        pool = calm or list(range(args.rounds))
        basis = (f"the {len(calm)} pairs with at most {host.MARKED_SHARE:.0%} stolen" if calm
                 else f"all {args.rounds} pairs, every one with more than {host.MARKED_SHARE:.0%} stolen")
        print()
        print(f"pending polls, {args.concurrency} connections, {args.rounds} pairs of rounds of {args.small} polls, "
              f"the two populations back to back in each (medians over {basis})")
        p99 = {}
        for population in (small, large):
            rounds = [population.rounds[i] for i in pool]
            p99[population.name] = statistics.median(r["p99_ms"] for r in rounds)
            print(f"  {population.count:>9} processes: {statistics.median(r['rps'] for r in rounds):8.0f} req/s  "
                  f"p50 {statistics.median(r['p50_ms'] for r in rounds):.3f} ms  p99 {p99[population.name]:.3f} ms")
        print(f"  p99 ratio: {p99['large'] / p99['small']:.2f}  (target within 10 %)")
        print("    each pair      " + " ".join(f"{r:.2f}{'*' if s.marked() else ''}" for r, s in zip(ratios, steals))
              + f"   (* more than {host.MARKED_SHARE:.0%} stolen)")
        total = host.Steal()
        for steal in steals:
            total = total + steal
        print(f"  {host.summary(total)}")
        print(f"  Redis used_memory per process at {args.large}: {large.per_process:.0f} B")
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

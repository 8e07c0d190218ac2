#!/usr/bin/env python3
"""Pending polls side by side with `redis-benchmark -t get`, and Redis memory per process.

Started by bench/polls.sh (which installs redis and builds the binaries). All on 127.0.0.1,
Redis and dtr-proxy on the server CPU, the load generators on the client CPU:

  redis-benchmark  GET, C connections, the store's own ceiling for single-key reads
  dtr-proxy        N pending processes seeded as the exchange stores them
                   (examples/poll_bench.rs), each polled once by C concurrent RPs
                   (client_secret_basic; then with DPoP proofs; then private_key_jwt)

Both sides share the machine with whatever else runs on it, and redis-benchmark's own figure
moves by a fifth from one run to the next on a busy host; so the run is repeated in rounds
(--rounds, default 3), each measuring the peer and then every mode, and the table shows, for
each mode, the round with the median ratio (all ratios are listed under it). A round during
which the hypervisor stole more than a trace of CPU time (host.py) is left out of the median
when another round was left alone; the steal of each round is printed.

A pending poll must cost one store round trip and no OP call: the OP address is a closed
port, so an OP call would fail the run, and the store commands per poll are counted from
Redis's INFO commandstats.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import host

HOST = "127.0.0.1"


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), *args], capture_output=True, text=True, check=True)
    return out.stdout


def wait_redis(port, proc):
    """Returns once the redis-server just started as `proc` answers PING."""
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis_cli(port, "PING").strip() == "PONG":
                return
        except subprocess.CalledProcessError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)


def commandstats(port):
    calls = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name] = int(fields["calls"])
    return calls


def cpu_split(pid):
    """User and system CPU time of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    return sum(cpu_split(pid))


def wait_http(port, path, proc, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited during startup")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status < 300:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not answer {path} in 30 s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--poll-bench", required=True)
    parser.add_argument("--count", type=int, default=60000, help="pending processes seeded (and polls sent) per run")
    parser.add_argument("--memory-count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--modes", default="basic,dpop,jwt")
    parser.add_argument("--ports", default="16390,18281,18291")
    parser.add_argument("--rounds", type=int, default=3, help="peer-then-modes rounds; the median ratio is shown")
    args = parser.parse_args()
    redis_port, proxy_port, admin_port = (int(p) for p in args.ports.split(","))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "tests/op/keys/client-jwt.public.jwk.json")) as f:
        jwk = json.load(f)

    tmp = tempfile.mkdtemp(prefix="dtr-polls.")
    procs = []
    ok = False

    def start(argv, name, env=None):
        proc = subprocess.Popen(argv, stdout=open(os.path.join(tmp, name + ".log"), "wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # Nothing listens there: a pending poll must not call the OP.
        "DTR_UPSTREAM_URL": f"http://{HOST}:9",
        "DTR_PUBLIC_URL": f"http://{HOST}:{proxy_port}",
        "DTR_ALLOW_INSECURE_HTTP": "true",
        "DTR_LISTEN": f"{HOST}:{proxy_port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin_port}",
        "DTR_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "DTR_HASH_KEY": "YmVuY2gtaGFzaC1rZXktYmVuY2gtaGFzaC1rZXktMDA",
        "DTR_TOKEN_KEYS": "b1:YmVuY2gtdG9rZW4ta2V5LWJlbmNoLXRva2VuLWtleTA",
        "DTR_CLIENTS": json.dumps([{"client_id": "bench-rp", "interval": 1, "jwks": {"keys": [jwk]}}]),
        "DTR_LOG": "warn",
        "DTR_SHUTDOWN_DELAY": "0",
        "DTR_WORKER_THREADS": "1",
    }
    results = {}
    try:
        redis = start(["taskset", "-c", args.server_cpus, "redis-server", "--port", str(redis_port), "--bind", HOST,
                       "--save", "", "--appendonly", "no"], "redis")
        wait_redis(redis_port, redis)

        proxy = start(["taskset", "-c", args.server_cpus, args.proxy], "dtr-proxy", env=env)
        wait_http(admin_port, "/readyz", proxy, "dtr-proxy")

        rounds, steals = [], []
        for number in range(1, args.rounds + 1):
            figures_of_round = {}
            steal = host.Steal.start()
            redis_cli(redis_port, "FLUSHALL")
            log(f"round {number}: redis-benchmark -t get -c {args.concurrency}")
            csv = subprocess.run(["taskset", "-c", args.client_cpus, "timeout", "120", "redis-benchmark", "-h", HOST, "-p", str(redis_port),
                                  "-t", "get", "-c", str(args.concurrency), "-n", "300000", "-r", "100000", "--csv"],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()
            header = [h.strip('"') for h in csv[0].split(",")]
            row = [v.strip('"') for v in csv[-1].split(",")]
            bench = dict(zip(header, row))
            figures_of_round["redis"] = {"rps": float(bench["rps"]), "p50": float(bench["p50_latency_ms"]), "p99": float(bench["p99_latency_ms"])}
            for mode in args.modes.split(","):
                # Fresh processes and requests each round: a DPoP proof or an assertion is
                # accepted once.
                redis_cli(redis_port, "FLUSHALL")
                requests = os.path.join(tmp, f"polls.{mode}.txt")
                seed = ["--auth", "jwt" if mode == "jwt" else "basic"] + (["--dpop"] if mode == "dpop" else [])
                log(f"round {number}, {mode}: seeding {args.count} pending processes")
                subprocess.run(["taskset", "-c", args.client_cpus, args.poll_bench, "seed", "--count", str(args.count), *seed, "--out", requests],
                               env=env, check=True, timeout=300)
                before = commandstats(redis_port)
                cpu_before = (cpu_seconds(redis.pid), cpu_seconds(proxy.pid))
                proxy_before = cpu_split(proxy.pid)
                log(f"round {number}, {mode}: {args.count} polls, {args.concurrency} connections")
                out = subprocess.run(["taskset", "-c", args.client_cpus, "timeout", "300", args.poll_bench, "load", "--url", f"http://{HOST}:{proxy_port}",
                                      "--file", requests, "--concurrency", str(args.concurrency)],
                                     capture_output=True, text=True, check=True).stdout
                time.sleep(0.2)  # the unawaited poll stamps land
                after = commandstats(redis_port)
                cpu_after = (cpu_seconds(redis.pid), cpu_seconds(proxy.pid))
                proxy_after = cpu_split(proxy.pid)
                figures = dict(kv.split("=") for kv in out.split())
                commands = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
                commands.pop("info", None)
                # Housekeeping of the ping and expiry workers runs beside the load; per poll it is nil.
                commands = {k: v for k, v in commands.items() if v >= args.count / 100}
                figures_of_round[mode] = {
                    "rps": float(figures["rps"]),
                    "p50": float(figures["p50_ms"]),
                    "p99": float(figures["p99_ms"]),
                    "commands": {k: v / args.count for k, v in sorted(commands.items())},
                    "cpu_redis_us": (cpu_after[0] - cpu_before[0]) / args.count * 1e6,
                    "cpu_proxy_us": (cpu_after[1] - cpu_before[1]) / args.count * 1e6,
                    "cpu_proxy_user_us": (proxy_after[0] - proxy_before[0]) / args.count * 1e6,
                    "cpu_proxy_system_us": (proxy_after[1] - proxy_before[1]) / args.count * 1e6,
                }
                os.unlink(requests)
            rounds.append(figures_of_round)
            steals.append(steal.end())

        # Memory: every key of every process (record with its poll clock, process_id, sub and sid
        # indexes, its share of the active queue), after one poll each.
        redis_cli(redis_port, "FLUSHALL")
        requests = os.path.join(tmp, "polls.memory.txt")
        subprocess.run([args.poll_bench, "seed", "--count", str(args.memory_count), "--auth", "basic", "--out", requests],
                       env=env, check=True, timeout=300)
        subprocess.run([args.poll_bench, "load", "--url", f"http://{HOST}:{proxy_port}", "--file", requests, "--concurrency", "4"],
                       check=True, timeout=300, stdout=subprocess.DEVNULL)
        time.sleep(0.2)
        keys = redis_cli(redis_port, "--scan").split()
        script = "".join(f"MEMORY USAGE {k} SAMPLES 0\n" for k in keys)
        usage = subprocess.run(["redis-cli", "-h", HOST, "-p", str(redis_port)], input=script, capture_output=True, text=True, check=True).stdout
        sizes = [int(v) for v in usage.split()]
        total = sum(sizes)
        kinds = {}
        for k, size in zip(keys, sizes):
            kind = k.split(":")[-1] if k.startswith("dtr:{p:") else k.split(":")[1]
            kinds[kind] = kinds.get(kind, 0) + size
        results["memory"] = {"bytes": total / args.memory_count, "keys": len(keys) / args.memory_count,
                             "kinds": {k: v / args.memory_count for k, v in kinds.items()}}
        upstream_calls = 0
        conn = http.client.HTTPConnection(HOST, admin_port, timeout=5)
        conn.request("GET", "/metrics")
        for line in conn.getresponse().read().decode().splitlines():
            if line.startswith("dtr_upstream_request_duration_seconds_count"):
                upstream_calls += int(float(line.split()[-1]))
        results["upstream_calls"] = upstream_calls
        ok = True
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)

    modes = args.modes.split(",")
    for mode in modes:
        ratios = [rnd[mode]["rps"] / rnd["redis"]["rps"] for rnd in rounds]
        chosen, basis = host.median_round(ratios, steals)
        results[mode] = dict(rounds[chosen][mode], peer=rounds[chosen]["redis"], ratios=ratios, basis=basis)
    print()
    print(f"pending polls vs redis-benchmark -t get ({args.concurrency} connections each; Redis and dtr-proxy on CPU {args.server_cpus}, "
          f"clients on CPU {args.client_cpus}; load average before: {open('/proc/loadavg').read().split()[0]})")
    print(f"  {'':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs GET':>7} {'CPU us/poll':>17}   store commands per poll")
    labels = {"basic": "pending poll, client_secret_basic", "dpop": "pending poll + DPoP proof", "jwt": "pending poll, private_key_jwt"}
    for mode in modes:
        m = results[mode]
        r = m["peer"]
        commands = ", ".join(f"{k} {v:.2f}" for k, v in m["commands"].items())
        cpu = f"{m['cpu_proxy_us']:.1f} + {m['cpu_redis_us']:.1f}"
        print(f"  {'  redis-benchmark GET, same round':<34} {r['rps']:9.0f} {r['p50']:8.3f} {r['p99']:8.3f}")
        print(f"  {labels[mode]:<34} {m['rps']:9.0f} {m['p50']:8.3f} {m['p99']:8.3f} {m['rps'] / r['rps']:6.0%} {cpu:>17}   {commands}")
        print(f"  {'  ratio in each round':<34} " + "  ".join(f"{x:.0%}" for x in m["ratios"]) + f"   (the median {m['basis']})")
    print(f"  {'stolen in each round':<34} " + "  ".join(str(s) for s in steals))
    base = results.get("basic")
    if base:
        for mode in ("dpop", "jwt"):
            if mode in results:
                cost = 1e6 / results[mode]["rps"] - 1e6 / base["rps"]
                print(f"  cost of {'a DPoP proof' if mode == 'dpop' else 'a private_key_jwt assertion'}: {cost:+.1f} us of server time per poll "
                      f"(1/throughput against the plain pending poll)")
    print("  CPU us/poll: CPU time of dtr-proxy + of redis-server over the polls, divided by their number (clock ticks of /proc/PID/stat)")
    split = ", ".join(f"{mode} {results[mode]['cpu_proxy_user_us']:.1f} + {results[mode]['cpu_proxy_system_us']:.1f}" for mode in modes)
    print(f"  dtr-proxy's share, user + system us/poll: {split}")
    mem = results["memory"]
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(mem["kinds"].items()))
    print(f"  Redis memory per pending process: {mem['bytes']:.0f} B over {mem['keys']:.2f} keys  (target <= 2048 B)")
    print(f"    MEMORY USAGE (SAMPLES 0) of every key, {args.memory_count} processes each polled once; bytes per process by key: {kinds}")
    print(f"  OP calls during all pending polls: {results['upstream_calls']} (must be 0)")
    print(f"  {host.summary(sum(steals, host.Steal()))}")
    if results["upstream_calls"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

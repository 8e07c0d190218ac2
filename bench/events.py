#!/usr/bin/env python3
"""Completion webhooks, pings and lifecycle events per second, with retries in the mix.

Started by bench/events.sh (which installs redis and builds the binaries). All on 127.0.0.1,
Redis and dtr-proxy on the server CPU, the load generator and the receiver on the client CPU:

  receiver        examples/events_bench.rs receive: the RP's notification endpoint (/ping) and
                  the verification service's events endpoint (/events, signatures checked);
                  answers 503 to a share of the attempts (at most --max-failures per ping or
                  event), 200 to the rest; its own ceiling is measured first (blast)
  pings           N pending processes seeded as the exchange stores them (poll_bench seed),
                  each approved by a signed completion webhook (events_bench complete, C
                  connections to the admin port); the proxy pings the receiver from its due
                  queue, retrying the refused attempts
  events          M processes seeded with a short lifetime; the proxy expires them and sends
                  a signed deferred.expired event for each from the events queue, retrying
                  the refused attempts

Every process must get its ping (every expired process its event) at least once, duplicates
are counted, and the proxy's dead letters must be 0.
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
from polls import HOST, commandstats, log, redis_cli, wait_http, wait_redis

WEBHOOK_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDA="
EVENTS_SECRET = "whsec_YmVuY2gtZXZlbnRzLXNlY3JldC0wMDA="


def http_get(port, path):
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode()


def counters(admin_port, name):
    """{label value: count} of a counter family with one label, from /metrics."""
    values = {}
    for line in http_get(admin_port, "/metrics")[1].splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            label = labels.split('"')[1]
            values[label] = values.get(label, 0) + int(float(value))
    return values


def figures(out):
    return {k: float(v) for k, v in (kv.split("=") for kv in out.split())}


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    i = min(len(values), max(1, int(-(-len(values) * p // 1)))) - 1
    return values[i]


def rate(count, times_us):
    if count < 2 or not times_us:
        return float("nan")
    span = (max(times_us) - min(times_us)) / 1e6
    return count / span if span > 0 else float("nan")


def attempts_by_key(entries):
    """key -> [(at_us, status, process)], in time order."""
    by_key = {}
    for kind, key, process, at_us, status in entries:
        by_key.setdefault(key, []).append((at_us, status, process))
    for attempts in by_key.values():
        attempts.sort()
    return by_key


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--poll-bench", required=True)
    parser.add_argument("--events-bench", required=True)
    parser.add_argument("--count", type=int, default=10000, help="processes completed (and pinged)")
    parser.add_argument("--event-count", type=int, default=5000, help="processes expired (and announced); 0 skips the events")
    parser.add_argument("--expires-in", type=int, default=5, help="lifetime of the processes seeded for the events, seconds")
    parser.add_argument("--concurrency", type=int, default=32, help="connections sending completion webhooks")
    parser.add_argument("--fail-share", type=float, default=0.2, help="share of attempts the receiver answers 503")
    parser.add_argument("--max-failures", type=int, default=2, help="at most this many 503s per ping or event")
    parser.add_argument("--ceiling-count", type=int, default=50000)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the last ping or event")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--ports", default="16391,18282,18292,18293")
    args = parser.parse_args()
    redis_port, proxy_port, admin_port, receiver_port = (int(p) for p in args.ports.split(","))
    load_before = open("/proc/loadavg").read().split()[0]

    tmp = tempfile.mkdtemp(prefix="dtr-events.")
    procs = []
    ok = False

    def start(argv, name, env=None):
        proc = subprocess.Popen(argv, stdout=open(os.path.join(tmp, name + ".log"), "wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    def client(*argv):
        return ["taskset", "-c", args.client_cpus, *argv]

    receiver_url = f"http://{HOST}:{receiver_port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # Nothing listens there: completions, pings and expiry do not call the OP.
        "DTR_UPSTREAM_URL": f"http://{HOST}:9",
        "DTR_PUBLIC_URL": f"http://{HOST}:{proxy_port}",
        "DTR_ALLOW_INSECURE_HTTP": "true",
        "DTR_LISTEN": f"{HOST}:{proxy_port}",
        "DTR_ADMIN_LISTEN": f"{HOST}:{admin_port}",
        "DTR_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
        "DTR_HASH_KEY": "YmVuY2gtaGFzaC1rZXktYmVuY2gtaGFzaC1rZXktMDA",
        "DTR_TOKEN_KEYS": "b1:YmVuY2gtdG9rZW4ta2V5LWJlbmNoLXRva2VuLWtleTA",
        "DTR_CLIENTS": json.dumps([{"client_id": "bench-rp", "interval": 1, "notification_endpoint": f"{receiver_url}/ping"}]),
        "DTR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DTR_EVENTS_URL": f"{receiver_url}/events",
        "DTR_EVENTS_SECRET": EVENTS_SECRET,
        "DTR_LOG": "warn",
        "DTR_SHUTDOWN_DELAY": "0",
        "DTR_WORKER_THREADS": "1",
    }
    results = {}
    receiver_log = os.path.join(tmp, "received.tsv")
    steal = host.Steal.start()
    try:
        redis = start(["taskset", "-c", args.server_cpus, "redis-server", "--port", str(redis_port), "--bind", HOST,
                       "--save", "", "--appendonly", "no"], "redis")
        wait_redis(redis_port, redis)

        receiver = start(client(args.events_bench, "receive", "--listen", f"{HOST}:{receiver_port}", "--fail-share", str(args.fail_share),
                                "--max-failures", str(args.max_failures), "--events-secret", EVENTS_SECRET, "--out", receiver_log), "receiver")
        wait_http(receiver_port, "/stats", receiver, "receiver")
        log(f"receiver ceiling: {args.ceiling_count} posts, {args.concurrency} connections")
        out = subprocess.run(client("timeout", "120", args.events_bench, "blast", "--url", receiver_url, "--count", str(args.ceiling_count),
                                    "--concurrency", str(args.concurrency)), capture_output=True, text=True, check=True).stdout
        results["ceiling"] = figures(out)

        log(f"redis-benchmark -t get -c {args.concurrency}")
        csv = subprocess.run(client("timeout", "120", "redis-benchmark", "-h", HOST, "-p", str(redis_port), "-t", "get", "-c",
                                    str(args.concurrency), "-n", "200000", "-r", "100000", "--csv"),
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()
        header = [h.strip('"') for h in csv[0].split(",")]
        row = [v.strip('"') for v in csv[-1].split(",")]
        bench = dict(zip(header, row))
        results["redis"] = {"rps": float(bench["rps"]), "p50": float(bench["p50_latency_ms"]), "p99": float(bench["p99_latency_ms"])}
        redis_cli(redis_port, "FLUSHALL")

        proxy = start(["taskset", "-c", args.server_cpus, args.proxy], "dtr-proxy", env=env)
        wait_http(admin_port, "/readyz", proxy, "dtr-proxy")

        # Pings: seed, approve every process by webhook, wait for every ping.
        ids_file = os.path.join(tmp, "ids.tsv")
        completed_file = os.path.join(tmp, "completed.tsv")
        log(f"pings: seeding {args.count} pending processes")
        subprocess.run(client(args.poll_bench, "seed", "--count", str(args.count), "--auth", "basic", "--out", os.path.join(tmp, "polls.txt"),
                              "--ids", ids_file), env=env, check=True, timeout=600)
        # A ping waits 2 s after the exchange that made its process (here: the seeding).
        time.sleep(2.2)
        before = commandstats(redis_port)
        pings_before = counters(admin_port, "dtr_pings_total")
        log(f"pings: {args.count} completion webhooks, {args.concurrency} connections")
        out = subprocess.run(client("timeout", "300", args.events_bench, "complete", "--url", f"http://{HOST}:{admin_port}", "--ids", ids_file,
                                    "--secret", WEBHOOK_SECRET, "--concurrency", str(args.concurrency), "--out", completed_file),
                             capture_output=True, text=True, check=True).stdout
        results["complete"] = figures(out)
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            stats = json.loads(http_get(receiver_port, "/stats")[1])
            if stats["pings_ok"] >= args.count:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the last deliveries are taken off the queue
        after = commandstats(redis_port)
        pings_after = counters(admin_port, "dtr_pings_total")
        results["ping_metrics"] = {k: pings_after.get(k, 0) - pings_before.get(k, 0) for k in pings_after}
        commands = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        commands.pop("info", None)
        results["ping_commands"] = {k: v / args.count for k, v in sorted(commands.items()) if v >= args.count / 100}
        results["queue_left"] = int(redis_cli(redis_port, "EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', '*:pings')) do "
                                              "n = n + redis.call('ZCARD', k) end return n", "0").strip() or 0)

        # Lifecycle events: processes that expire; each expiry is announced.
        if args.event_count:
            redis_cli(redis_port, "FLUSHALL")
            events_before = counters(admin_port, "dtr_event_deliveries_total")
            seed_env = dict(env, DTR_DEFAULT_EXPIRES_IN=str(args.expires_in))
            log(f"events: seeding {args.event_count} processes living {args.expires_in} s")
            seeded_at = time.time()
            subprocess.run(client(args.poll_bench, "seed", "--count", str(args.event_count), "--auth", "basic",
                                  "--out", os.path.join(tmp, "polls.events.txt")), env=seed_env, check=True, timeout=600)
            results["events_seed_seconds"] = time.time() - seeded_at
            deadline = time.monotonic() + args.expires_in + args.wait
            while time.monotonic() < deadline:
                stats = json.loads(http_get(receiver_port, "/stats")[1])
                if stats["events_ok"] >= args.event_count:
                    break
                time.sleep(0.1)
            time.sleep(0.5)
            events_after = counters(admin_port, "dtr_event_deliveries_total")
            results["event_metrics"] = {k: events_after.get(k, 0) - events_before.get(k, 0) for k in events_after}
            results["events_expire_from_us"] = int((seeded_at + args.expires_in) * 1e6)

        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
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
        if not ok:
            print(f"logs kept in {tmp}", file=sys.stderr)

    entries = []
    with open(receiver_log) as f:
        for line in f:
            kind, key, process, at_us, status = line.rstrip("\n").split("\t")
            entries.append((kind, key, process, int(at_us), int(status)))
    completed = {}
    with open(completed_file) as f:
        for line in f:
            key, at_us = line.split()
            completed[key] = int(at_us)
    with open(ids_file) as f:
        expected = [line.split("\t")[1].strip() for line in f]
    shutil.rmtree(tmp, ignore_errors=True)

    failed = False
    c, r, cl = results["complete"], results["redis"], results["ceiling"]
    print()
    print(f"completion webhooks, pings and lifecycle events (Redis and dtr-proxy on CPU {args.server_cpus}, webhook sender and "
          f"receiver on CPU {args.client_cpus}; load average before: {load_before})")
    print(f"  retry timing: the proxy's own (1 s, 2 s, 4 s ... 10 min; no setting shortens it); the receiver answers 503 "
          f"to {args.fail_share:.0%} of attempts, at most {args.max_failures} per ping or event")
    print(f"  {'':<46} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'redis-benchmark GET, peer':<46} {r['rps']:9.0f} {r['p50']:8.3f} {r['p99']:8.3f}")
    print(f"  {'receiver ceiling (POST /ceiling), peer':<46} {cl['rps']:9.0f} {cl['p50_ms']:8.3f} {cl['p99_ms']:8.3f}")
    print(f"  {f'completions accepted (2xx), {args.concurrency} connections':<46} {c['ok_rps']:9.0f} {c['p50_ms']:8.3f} {c['p99_ms']:8.3f}"
          f"   {c['ok_rps'] / r['rps']:.0%} of GET; {int(c['requests'] - c['unexpected'])} of {args.count} accepted")
    if c["unexpected"]:
        failed = True

    # Pings.
    pings = attempts_by_key([e for e in entries if e[0] == "ping"])
    first_times, retry_times, delivered_times, delays, first_delays = [], [], [], [], []
    duplicates = retries = 0
    for key, attempts in pings.items():
        first_times.append(attempts[0][0])
        retry_times.extend(a[0] for a in attempts[1:])
        retries += len(attempts) - 1
        oks = [a for a in attempts if a[1] < 300]
        duplicates += max(0, len(oks) - 1)
        if oks:
            delivered_times.append(oks[0][0])
            if key in completed:
                delay = (oks[0][0] - completed[key]) / 1000
                delays.append(delay)
                if attempts[0][1] < 300:
                    first_delays.append(delay)
    missing = sum(1 for key in expected if not any(a[1] < 300 for a in pings.get(key, [])))
    first_completion = min(completed.values()) if completed else 0
    span = (max(delivered_times) - first_completion) / 1e6 if delivered_times else float("nan")
    m = results["ping_metrics"]
    print(f"  {'pings delivered, completion to last ping':<46} {len(delivered_times) / span:9.0f}"
          f"   {len(delivered_times)} in {span:.2f} s")
    print(f"  {'  first attempts':<46} {rate(len(first_times), first_times):9.0f}   {len(first_times)} attempts, "
          f"{sum(1 for a in pings.values() if a[0][1] < 300)} delivered")
    print(f"  {'  retries':<46} {rate(retries, retry_times):9.0f}   {retries} attempts")
    print(f"  {'completion to delivered ping, every ping':<46} {'':>9} {pct(delays, 0.5):8.1f} {pct(delays, 0.99):8.1f}")
    print(f"  {'  delivered at the first attempt':<46} {'':>9} {pct(first_delays, 0.5):8.1f} {pct(first_delays, 0.99):8.1f}")
    print(f"  pings: {len(expected) - missing} of {len(expected)} processes pinged, {missing} missing, {duplicates} duplicates; "
          f"proxy counters: delivered {m.get('delivered', 0)}, retry {m.get('retry', 0)}, dead_letter {m.get('dead_letter', 0)}; "
          f"left on the queue {results['queue_left']}")
    commands = ", ".join(f"{k} {v:.2f}" for k, v in results["ping_commands"].items())
    print(f"  store commands per process (completion + ping + retries): {commands}")
    if missing or m.get("dead_letter", 0) or results["queue_left"]:
        failed = True

    # Events.
    if args.event_count:
        events = [e for e in entries if e[0] == "event"]
        by_id = attempts_by_key(events)
        by_process = {}
        for kind, key, process, at_us, status in events:
            if status < 300:
                by_process.setdefault(process, []).append(key)
        first_times = [a[0][0] for a in by_id.values()]
        retry_times = [t for a in by_id.values() for t, _, _ in a[1:]]
        delivered = [next(t for t, s, _ in a if s < 300) for a in by_id.values() if any(s < 300 for _, s, _ in a)]
        duplicate_events = sum(max(0, sum(1 for _, s, _ in a if s < 300) - 1) for a in by_id.values())
        doubled_processes = sum(1 for keys in by_process.values() if len(set(keys)) > 1)
        em = results["event_metrics"]
        span = (max(delivered) - results["events_expire_from_us"]) / 1e6 if delivered else float("nan")
        print(f"  {'expired events delivered, first expiry to last':<46} {len(delivered) / span:9.0f}   {len(delivered)} in {span:.2f} s "
              f"(seeding took {results['events_seed_seconds']:.2f} s)")
        print(f"  {'  first attempts':<46} {rate(len(first_times), first_times):9.0f}   {len(first_times)} attempts")
        print(f"  {'  retries':<46} {rate(len(retry_times), retry_times):9.0f}   {len(retry_times)} attempts")
        print(f"  events: {len(by_process)} of {args.event_count} processes announced, {duplicate_events} duplicate deliveries, "
              f"{doubled_processes} processes announced twice; proxy counters: delivered {em.get('delivered', 0)}, "
              f"retry {em.get('retry', 0)}, dead_letter {em.get('dead_letter', 0)}")
        if len(by_process) < args.event_count or em.get("dead_letter", 0):
            failed = True
    print(f"  {host.summary(steal.end())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

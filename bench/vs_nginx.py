#!/usr/bin/env python3
"""Pass-through, side by side: nginx `proxy_pass` and dtr-proxy in front of the same upstream.

Started by bench/vs-nginx.sh (which installs wrk, oha and nginx and builds the proxy). All on
127.0.0.1:

  upstream   nginx, 1 worker, serving a ~2 KiB JWKS (JSON) and a 256 KiB theme asset
  nginx      nginx `proxy_pass` to the upstream, 1 worker, keep-alive upstream pool
  dtr-proxy  release build, DTR_WORKER_THREADS=1, embedded store
  floor      (--floor) examples/hyper_floor.rs: the least a proxy on hyper does, in the
             throughput rounds only, to tell hyper's share of the gap from dtr-proxy's

The upstream and the proxy under test share the server CPU; the load generator runs on the
client CPU. For each file: closed-loop throughput (wrk) direct, through nginx and through
dtr-proxy; then open-loop latency (oha at a constant request rate, latency corrected for
coordinated omission) at several rates, for the latency-versus-load plot. The added latency the
target names (p99 at --moderate-rate over going direct) is measured in rounds of its own
(--latency-rounds, default 5), direct, nginx and dtr-proxy back to back in each; the round with
the median dtr-proxy figure is shown, and every round's figure for both proxies under it.

The machine is shared: what else runs on it moves a single wrk figure by a tenth and more.
So the throughput runs come in rounds (--rounds, default 3), direct, nginx and dtr-proxy in
each, nginx and dtr-proxy taking turns at going first; per file the round with the median
dtr-proxy/nginx ratio is shown, and the ratio of every round under it. A round during which
the hypervisor stole more than a trace of CPU time (host.py) is left out of the median when
another round was left alone; the steal of each round, and of the latency sweep, is printed.

Rounds of several seconds each are still too far apart for a ratio near 1.0: in one run,
rounds half a minute apart with at most 0.4 % stolen gave 0.79x, 0.90x, 1.03x and 1.11x for
the same build. --slices N
measures throughput in N pairs of short runs instead (--slice-seconds, default 1), nginx and
dtr-proxy back to back in each pair and taking turns at going first, so the two runs of a
pair share the host's state; the median of the pairs' ratios is the figure, with its
quartiles and every pair's ratio under it (pairs under steal are left out of the median when
others were left alone). bench/vs-nginx.sh measures in 30 pairs.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import http.client

import host

HOST = "127.0.0.1"
LATENCY_TARGETS = ["direct", "nginx", "dtr-proxy"]
FILES = {
    "certs": "/realms/bench/protocol/openid-connect/certs",
    "big": "/realms/bench/resources/big.js",
}


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, argv, name, env=None):
        out = open(os.path.join(self.tmp, name + ".log"), "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_http(port, path, proc, what):
    deadline = time.monotonic() + 20
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
    raise SystemExit(f"{what} did not answer {path} in 20 s")


def make_content(www):
    certs = www + FILES["certs"]
    big = www + FILES["big"]
    os.makedirs(os.path.dirname(certs), exist_ok=True)
    os.makedirs(os.path.dirname(big), exist_ok=True)
    import base64
    b64 = lambda n: base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=")
    keys = []
    for use, alg in (("sig", "RS256"), ("enc", "RSA-OAEP")):
        keys.append({"kid": b64(32), "kty": "RSA", "alg": alg, "use": use, "n": b64(256), "e": "AQAB",
                     "x5c": [base64.b64encode(os.urandom(420)).decode()], "x5t": b64(20), "x5t#S256": b64(32)})
    with open(certs, "w") as f:
        json.dump({"keys": keys}, f, separators=(",", ":"))
    with open(big, "wb") as f:
        f.write(b"/* theme bundle (benchmark filler) */\n")
        f.write((base64.b64encode(os.urandom(200000)) + b"\n")[: 256 * 1024 - 38])
    return os.path.getsize(certs), os.path.getsize(big)


NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    types {{ application/json json; application/javascript js; }}
{body}
}}
"""

UPSTREAM_SERVER = """
    sendfile on;
    server {{
        listen {host}:{port} backlog=4096;
        root {www};
        location = /realms/bench/protocol/openid-connect/certs {{ default_type application/json; }}
        location / {{ try_files $uri =404; }}
    }}
"""

# nginx as a reverse proxy the way one would put it in front of Keycloak: HTTP/1.1 with a
# keep-alive pool to the upstream, the forwarding headers dtr-proxy also sets, buffering on
# (nginx's default) with buffers large enough to hold the 256 KiB asset in memory, so nginx
# never spills to a temporary file: its best case.
PROXY_SERVER = """
    upstream keycloak {{
        server {host}:{upstream};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://keycloak;
            proxy_http_version 1.1;
            proxy_buffers 32 16k;
            proxy_set_header Connection "";
            proxy_set_header Host {host}:{port};
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host {host}:{port};
            proxy_set_header X-Forwarded-Proto http;
            proxy_set_header X-Forwarded-Port {port};
        }}
    }}
"""


def start_nginx(procs, nginx, name, body, port, cpus):
    root = os.path.join(procs.tmp, name)
    os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o777)
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(root=root, body=body))
    proc = procs.start(["taskset", "-c", cpus, nginx, "-p", root, "-c", conf, "-e", os.path.join(root, "error.log")], name)
    wait_http(port, FILES["certs"], proc, name)
    return proc


def cpu_ticks(pid):
    """(utime, stime) of a process and its children that are still alive (nginx workers)."""
    user = system = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            user += int(rest[11])
            system += int(rest[12])
        except OSError:
            pass
    return user, system


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_wrk(url, cpus, connections, seconds, threads=1, answer_timeout=5):
    """wrk on `cpus` against `url`: (requests completed, requests per second, errors: socket
    errors and non-2xx answers). Shared with instructions.py."""
    cmd = ["taskset", "-c", cpus, "timeout", "-k", "5", str(seconds + 30),
           "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{answer_timeout}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    requests = rps = None
    errors = 0
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line:
            requests = int(parts[0])
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        if "Socket errors:" in line:
            errors += sum(int(p.strip(",")) for p in parts[3::2])
        if line.strip().startswith("Non-2xx"):
            errors += int(parts[-1])
    if requests is None or rps is None:
        raise SystemExit(f"cannot read wrk output:\n{out}")
    return requests, rps, errors


def wrk(url, args, duration=None):
    _, rps, errors = run_wrk(url, args.client_cpus, args.connections, duration or args.duration, args.threads)
    return rps, errors


def warm_up(url, args):
    """2 s of the measured load, unmeasured: connections open, buffers and caches warm."""
    run_wrk(url, args.client_cpus, args.connections, 2)


def measure_slices(targets, pids, args):
    """Throughput in paired slices: after a warm-up of each proxy, --slices pairs of short wrk
    runs (--slice-seconds), nginx and dtr-proxy back to back in each pair (taking turns at
    going first; the floor, when measured, after them). Each pair gives a ratio; the host's
    state changes over seconds, and two runs a second apart share much more of it than two
    rounds of several seconds each do."""
    proxies = ["nginx", "dtr-proxy"] + (["hyper floor"] if args.floor else [])
    slices = {}
    for name in args.files.split(","):
        for target in proxies:
            url = f"http://{HOST}:{targets[target]}{FILES[name]}"
            log(f"{name} via {target}: warm-up, wrk -c{args.connections} for 2 s")
            warm_up(url, args)
        pairs = []
        log(f"{name}: {args.slices} pairs of {args.slice_seconds} s slices")
        for number in range(args.slices):
            order = proxies[:2] if number % 2 == 0 else proxies[1::-1]
            steal = host.Steal.start()
            measured = {}
            for target in order + proxies[2:]:
                before = cpu_ticks(pids[target])
                rps, errors = wrk(f"http://{HOST}:{targets[target]}{FILES[name]}", args, args.slice_seconds)
                after = cpu_ticks(pids[target])
                measured[target] = (rps, errors, after[0] - before[0], after[1] - before[1])
            pairs.append((measured, steal.end()))
        slices[name] = pairs
    return slices


def quartiles(values):
    """The lower quartile, the median and the upper quartile of sorted `values`."""
    return values[len(values) // 4], values[len(values) // 2], values[(3 * len(values)) // 4]


def print_slices(slices, labels, args, hz):
    """The ratio of each pair, their median over the pairs the host left alone (over all when
    it left none alone), the quartiles, and the CPU per request over every slice."""
    print(f"throughput in paired slices (wrk, closed loop, {args.connections} connections; {args.slices} pairs of "
          f"{args.slice_seconds} s, nginx and dtr-proxy back to back in each, taking turns at going first)")
    medians = {}
    for name, pairs in slices.items():
        calm = [p for p in pairs if not p[1].marked()]
        pool = calm or pairs
        basis = (f"{len(calm)} of {len(pairs)} pairs with at most {host.MARKED_SHARE:.0%} stolen" if calm
                 else f"all {len(pairs)} pairs, every one with more than {host.MARKED_SHARE:.0%} stolen")

        def ratios(target):
            return sorted(m[target][0] / m["nginx"][0] for m, _ in pool)

        low, median, high = quartiles(ratios("dtr-proxy"))
        medians[name] = median
        errors = sum(m[t][1] for m, _ in pairs for t in m)
        mean = {t: sum(m[t][0] for m, _ in pool) / len(pool) for t in pool[0][0]}
        print(f"  {labels[name]:<22} nginx {mean['nginx']:.0f} req/s, dtr-proxy {mean['dtr-proxy']:.0f} req/s (means);"
              f" dtr/nginx median {median:.2f}x, quartiles {low:.2f}x to {high:.2f}x ({basis})"
              + (f"  ({errors} errors!)" if errors else ""))
        for target in ("nginx", "dtr-proxy"):
            requests = sum(m[target][0] * args.slice_seconds for m, _ in pairs)
            user = sum(m[target][2] for m, _ in pairs) / hz / requests * 1e6
            system = sum(m[target][3] for m, _ in pairs) / hz / requests * 1e6
            print(f"  {'  CPU/req ' + target:<22} {user + system:.1f} us ({user:.1f} user + {system:.1f} system)")
        if "hyper floor" in pool[0][0]:
            low, median, high = quartiles(ratios("hyper floor"))
            print(f"  {'  hyper floor':<22} {mean['hyper floor']:.0f} req/s; floor/nginx median {median:.2f}x, quartiles {low:.2f}x to {high:.2f}x")
        print(f"  {'  each pair':<22} " + " ".join(f"{m['dtr-proxy'][0] / m['nginx'][0]:.2f}" + ("*" if s.marked() else "")
                                                    for m, s in pairs) + f"   (* more than {host.MARKED_SHARE:.0%} stolen)")
    return medians


def oha(url, rate, args):
    cmd = ["taskset", "-c", args.client_cpus, "timeout", "-k", "5", str(args.latency_duration + 30),
           args.oha, "--no-tui", "--output-format", "json", "-z", f"{args.latency_duration}s",
           "-q", str(rate), "-c", str(args.connections), "--latency-correction", "--http-version=1.1", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    pct = report["latencyPercentiles"]
    ok = sum(v for k, v in report.get("statusCodeDistribution", {}).items() if k.startswith("2"))
    # Requests still in flight when the run ends are counted by oha as "aborted due to
    # deadline"; they are not failures of the server.
    errors = sum(v for k, v in report.get("errorDistribution", {}).items() if "deadline" not in k)
    if errors:
        log(f"oha errors against {url}: {report.get('errorDistribution')}")
    return {
        "rps": report["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1000,
        "p99": pct["p99"] * 1000,
        "ok": ok,
        "errors": errors,
    }


def measure_latency(targets, rates, args):
    """Open-loop latency of the JSON file: the sweep over the rates (one run per target and
    rate, for the plot), then the moderate rate in rounds side by side."""
    latency = {}
    m = args.moderate_rate
    sweep_steal = host.Steal.start()
    for target in LATENCY_TARGETS:
        url = f"http://{HOST}:{targets[target]}{FILES['certs']}"
        for rate in sorted(set(rates) - {m}):
            log(f"certs via {target}: oha at {rate} requests/s for {args.latency_duration} s")
            latency[(target, rate)] = oha(url, rate, args)
    sweep_steal.end()
    # The target's rate in rounds, each going direct, through nginx and through dtr-proxy back
    # to back (in turns at going first): an added p99 is a difference of two tails, and only
    # runs side by side share the host's state. One run of each, minutes apart, had a
    # proxy's p99 move by more than the target itself.
    moderate, moderate_steals = [], []
    for number in range(args.latency_rounds):
        steal = host.Steal.start()
        turn = number % len(LATENCY_TARGETS)
        measured = {}
        for target in LATENCY_TARGETS[turn:] + LATENCY_TARGETS[:turn]:
            log(f"latency round {number + 1}: certs via {target}: oha at {m} requests/s for {args.latency_duration} s")
            measured[target] = oha(f"http://{HOST}:{targets[target]}{FILES['certs']}", m, args)
        moderate.append(measured)
        moderate_steals.append(steal.end())
    added_each = {proxy: [r[proxy]["p99"] - r["direct"]["p99"] for r in moderate] for proxy in ("nginx", "dtr-proxy")}
    chosen, latency_basis = host.median_round(added_each["dtr-proxy"], moderate_steals)
    for target in LATENCY_TARGETS:
        latency[(target, m)] = moderate[chosen][target]
    # nginx's median by the same rule, for the line beside dtr-proxy's.
    medians = {proxy: added[host.median_round(added, moderate_steals)[0]] for proxy, added in added_each.items()}
    return {
        "by_rate": latency,
        "sweep_steal": sweep_steal,
        "steals": moderate_steals,
        "added_each": added_each,
        "medians": medians,
        "basis": latency_basis,
    }


def print_latency(latency, rates, args):
    by_rate, m = latency["by_rate"], args.moderate_rate
    added_each, medians, sweep_steal = latency["added_each"], latency["medians"], latency["sweep_steal"]
    print()
    print(f"latency of the certs file at a constant rate (oha -q, {args.connections} connections, {args.latency_duration} s each, corrected for coordinated omission)")
    print(f"  {'rate/s':>7}  {'direct p50/p99 ms':>18}  {'nginx p50/p99 ms':>17}  {'dtr-proxy p50/p99 ms':>21}  {'added p99: nginx':>16} {'dtr-proxy':>9}")
    for rate in sorted(set(rates + [args.moderate_rate])):
        d, n, p = (by_rate[(t, rate)] for t in ("direct", "nginx", "dtr-proxy"))
        bad = sum(x["errors"] for x in (d, n, p))
        print(f"  {rate:7d}  {d['p50']:8.3f} / {d['p99']:6.3f}  {n['p50']:7.3f} / {n['p99']:6.3f}  {p['p50']:10.3f} / {p['p99']:7.3f}"
              f"  {n['p99'] - d['p99']:+15.3f} {p['p99'] - d['p99']:+9.3f}" + (f"  ({bad} errors!)" if bad else ""))
    print(f"  stolen during the sweep: {sweep_steal}" + ("; a p99 moved by a burst of steal is the host's, not the code's" if sweep_steal.marked() else ""))
    print(f"  at {m}/s: the round with the median dtr-proxy figure ({latency['basis']}); added p99 in each round:")
    for proxy in ("dtr-proxy", "nginx"):
        print(f"    {proxy:<10} " + "  ".join(f"{a:+.3f}" for a in added_each[proxy])
              + f" ms   (median {medians[proxy]:+.3f} ms)")
    print(f"    {'stolen':<10} " + "  ".join(str(s) for s in latency['steals']))


def svg_plot(path, series, rates, title):
    """A small line chart, no dependencies: p50 and p99 latency (ms, log scale) against the rate."""
    import math
    width, height, left, right, top, bottom = 720, 420, 70, 160, 40, 50
    values = [v for lines in series.values() for points in lines.values() for _, v in points if v > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    xmax = max(rates) * 1.05
    px = lambda r: left + (width - left - right) * r / xmax
    py = lambda v: top + (height - top - bottom) * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
    colors = {"direct": "#2b8a3e", "nginx": "#1c7ed6", "dtr-proxy": "#e8590c"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2 - 60}" y="22" font-size="14" text-anchor="middle">{title}</text>']
    decade = lo
    while decade <= hi * 1.0001:
        for m in (1, 2, 5):
            v = decade * m
            if lo <= v <= hi:
                y = py(v)
                out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
                out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        decade *= 10
    for r in rates:
        x = px(r)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{r}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">offered load (requests/s, constant rate)</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 {(top + height - bottom) / 2})" text-anchor="middle">latency (ms, log scale)</text>')
    for i, (name, lines) in enumerate(series.items()):
        color = colors.get(name, "#000")
        for kind, points in lines.items():
            dash = ' stroke-dasharray="5,4"' if kind == "p50" else ""
            coords = " ".join(f"{px(r):.1f},{py(v):.1f}" for r, v in points if v > 0)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{coords}"/>')
            for r, v in points:
                if v > 0:
                    out.append(f'<circle cx="{px(r):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
        y = top + 20 + 20 * i
        out.append(f'<line x1="{width - right + 15}" y1="{y}" x2="{width - right + 40}" y2="{y}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{width - right + 46}" y="{y + 4}">{name}</text>')
    out.append(f'<text x="{width - right + 15}" y="{top + 100}">solid: p99</text>')
    out.append(f'<text x="{width - right + 15}" y="{top + 118}">dashed: p50</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--nginx", required=True)
    parser.add_argument("--oha", default="", help="oha, for the latency runs (not needed with --latency-rounds 0)")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--latency-duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rates", default="500,1000,2000,4000,6000,8000")
    parser.add_argument("--moderate-rate", type=int, default=1000)
    parser.add_argument("--latency-rounds", type=int, default=5,
                        help="rounds at the moderate rate, direct, nginx and dtr-proxy side by side in each; the median added p99 "
                             "is shown. 0: no latency runs at all (throughput only)")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--files", default="certs,big")
    parser.add_argument("--plot", default="")
    parser.add_argument("--ports", default="18180,18181,18182,18192")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds; the median ratio is shown")
    parser.add_argument("--floor", default="", help="the hyper_floor example: measured beside the two proxies")
    parser.add_argument("--floor-port", type=int, default=18183)
    parser.add_argument("--slices", type=int, default=0,
                        help="measure throughput in this many pairs of short runs instead of in rounds (see measure_slices)")
    parser.add_argument("--slice-seconds", type=int, default=1)
    args = parser.parse_args()
    upstream_port, nginx_port, proxy_port, admin_port = (int(p) for p in args.ports.split(","))
    rates = [int(r) for r in args.rates.split(",") if r]
    if args.latency_rounds > 0 and not args.oha:
        parser.error("--oha is needed for the latency runs (or --latency-rounds 0: throughput only)")

    tmp = tempfile.mkdtemp(prefix="dtr-vs-nginx.")
    os.chmod(tmp, 0o755)  # nginx workers started by root run as nobody and must read www/
    procs = Procs(tmp)
    ok = False
    try:
        www = os.path.join(tmp, "www")
        sizes = make_content(www)
        start_nginx(procs, args.nginx, "upstream",
                    UPSTREAM_SERVER.format(host=HOST, port=upstream_port, www=www), upstream_port, args.server_cpus)
        nginx = start_nginx(procs, args.nginx, "nginx-proxy",
                            PROXY_SERVER.format(host=HOST, port=nginx_port, upstream=upstream_port), nginx_port, args.server_cpus)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DTR_UPSTREAM_URL": f"http://{HOST}:{upstream_port}",
            "DTR_PUBLIC_URL": f"http://{HOST}:{proxy_port}",
            "DTR_ALLOW_INSECURE_HTTP": "true",
            "DTR_LISTEN": f"{HOST}:{proxy_port}",
            "DTR_ADMIN_LISTEN": f"{HOST}:{admin_port}",
            "DTR_LOG": "warn",
            "DTR_SHUTDOWN_DELAY": "0",
            "DTR_WORKER_THREADS": "1",
        }
        proxy = procs.start(["taskset", "-c", args.server_cpus, args.proxy], "dtr-proxy", env=env)
        wait_http(admin_port, "/healthz", proxy, "dtr-proxy")
        targets = {"direct": upstream_port, "nginx": nginx_port, "dtr-proxy": proxy_port}
        pids = {"nginx": nginx.pid, "dtr-proxy": proxy.pid}
        if args.floor:
            floor = procs.start(["taskset", "-c", args.server_cpus, args.floor, f"{HOST}:{args.floor_port}",
                                 f"{HOST}:{upstream_port}"], "hyper-floor")
            wait_http(args.floor_port, FILES["certs"], floor, "hyper_floor")
            targets["hyper floor"] = args.floor_port
            pids["hyper floor"] = floor.pid
        # Same bytes through every proxy measured.
        for name in ("certs", "big"):
            bodies = {}
            for target, port in targets.items():
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                conn.request("GET", FILES[name])
                bodies[target] = conn.getresponse().read()
            if len(set(bodies.values())) != 1:
                raise SystemExit(f"{name}: the bodies differ between {', '.join(bodies)}")
        hz = os.sysconf("SC_CLK_TCK")

        rounds, steals = [], []
        slices = measure_slices(targets, pids, args) if args.slices else None
        for number in range(0 if slices else args.rounds):
            measured = {}
            steal = host.Steal.start()
            order = ["direct", "nginx", "dtr-proxy"] if number % 2 == 0 else ["direct", "dtr-proxy", "nginx"]
            if args.floor:
                order.append("hyper floor")
            for name in args.files.split(","):
                for target in order:
                    url = f"http://{HOST}:{targets[target]}{FILES[name]}"
                    log(f"round {number + 1}: {name} via {target}: wrk -t{args.threads} -c{args.connections}, warm-up 2 s, then {args.duration} s")
                    warm_up(url, args)
                    before = cpu_ticks(pids[target]) if target in pids else (0, 0)
                    rps, errors = wrk(url, args)
                    after = cpu_ticks(pids[target]) if target in pids else (0, 0)
                    user, system = ((a - b) / hz for a, b in zip(after, before))
                    per_request = (lambda seconds: seconds / (rps * args.duration) * 1e6 if rps else 0)
                    measured[(name, target)] = (rps, errors, (user + system) / args.duration * 100,
                                                per_request(user + system), per_request(user), per_request(system))
            rounds.append(measured)
            steals.append(steal.end())
        throughput, ratios, bases = {}, {}, {}
        for name in (args.files.split(",") if rounds else []):
            ratios[name] = [m[(name, "dtr-proxy")][0] / m[(name, "nginx")][0] for m in rounds]
            median, bases[name] = host.median_round(ratios[name], steals)
            for target in targets:
                throughput[(name, target)] = rounds[median][(name, target)]

        latency = measure_latency(targets, rates, args) if args.latency_rounds > 0 else None
        rss_hwm = status_kib(proxy.pid, "VmHWM")
        rss_now = status_kib(proxy.pid, "VmRSS")
        ok = True
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)

    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print()
    print("pass-through: nginx proxy_pass vs dtr-proxy, same upstream (nginx, 1 worker, sendfile)")
    print(f"  machine: {os.cpu_count()} CPUs ({cpu_model}), load average before: {open('/proc/loadavg').read().split()[0]}")
    print(f"  pinning: upstream and the proxy under test on CPU {args.server_cpus}, load generator on CPU {args.client_cpus}")
    print(f"  nginx proxy: 1 worker, keepalive 64 upstream; dtr-proxy: DTR_WORKER_THREADS=1")
    print()
    labels = {"certs": f"certs ({sizes[0]} B JSON)", "big": f"big.js ({sizes[1] // 1024} KiB)"}
    if slices:
        slice_medians = print_slices(slices, labels, args, hz)
    else:
        print_rounds(rounds, throughput, ratios, bases, steals, labels, targets, args)
    if latency:
        print_latency(latency, rates, args)
    print()
    print("summary")
    for name in args.files.split(","):
        if slices:
            ratio = slice_medians[name]
        else:
            n, p = throughput[(name, "nginx")], throughput[(name, "dtr-proxy")]
            ratio = p[0] / n[0]
        print(f"  {labels[name]:<22} throughput dtr-proxy / nginx = {ratio:.2f}  (target >= 1.00)")
    if latency:
        medians = latency["medians"]
        print(f"  added p99 at {args.moderate_rate}/s over direct: dtr-proxy {medians['dtr-proxy']:+.3f} ms "
              f"(the median {latency['basis']}), nginx's median {medians['nginx']:+.3f} ms  (target <= 0.300 ms)")
    print(f"  dtr-proxy RSS: peak {rss_hwm / 1024:.1f} MiB (VmHWM), {rss_now / 1024:.1f} MiB at the end  (target <= 30 MB)")
    steals += [s for pairs in (slices or {}).values() for _, s in pairs]
    measured_steal = sum(steals + latency["steals"], latency["sweep_steal"]) if latency else sum(steals, host.Steal())
    print(f"  {host.summary(measured_steal)}")
    if args.plot and latency:
        series = {t: {q: [(r, latency["by_rate"][(t, r)][q]) for r in rates] for q in ("p99", "p50")}
                  for t in ("direct", "nginx", "dtr-proxy")}
        svg_plot(args.plot, series, rates, "pass-through latency vs load (2 KiB JSON)")
        print(f"  plot: {args.plot}")
    return 0


def print_rounds(rounds, throughput, ratios, bases, steals, labels, targets, args):
    """The round with the median ratio, and every round's ratio under it."""
    print(f"throughput (wrk, closed loop, {args.connections} connections, {args.duration} s; the round with the median ratio)")
    print(f"  {'file':<22} {'direct':>9} {'nginx':>9} {'dtr-proxy':>10} {'dtr/nginx':>10}   {'CPU/req nginx':>13} {'CPU/req dtr':>12}")
    for name in args.files.split(","):
        d, n, p = (throughput[(name, t)] for t in ("direct", "nginx", "dtr-proxy"))
        errors = sum(m[(name, t)][1] for m in rounds for t in targets)
        print(f"  {labels[name]:<22} {d[0]:9.0f} {n[0]:9.0f} {p[0]:10.0f} {p[0] / n[0]:9.2f}x   {n[3]:10.1f} us {p[3]:9.1f} us"
              + (f"  ({errors} errors!)" if errors else ""))
        print(f"  {'  ratio in each round':<22} " + "  ".join(f"{r:.2f}x" for r in ratios[name]) + f"   (the median {bases[name]})")
        print(f"  {'  CPU/req user + system':<22} nginx {n[4]:.1f} + {n[5]:.1f} us, dtr-proxy {p[4]:.1f} + {p[5]:.1f} us")
        if args.floor:
            f = throughput[(name, "hyper floor")]
            floor_ratios = "  ".join(f"{m[(name, 'hyper floor')][0] / m[(name, 'nginx')][0]:.2f}x" for m in rounds)
            print(f"  {'  hyper floor':<22} {f[0]:.0f} req/s, {f[0] / n[0]:.2f}x nginx (each round: {floor_ratios}), "
                  f"CPU/req {f[4]:.1f} + {f[5]:.1f} us")
    print(f"  {'stolen in each round':<22} " + "  ".join(str(s) for s in steals))


if __name__ == "__main__":
    sys.exit(main())

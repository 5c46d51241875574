#!/usr/bin/env python3
"""srvdns vs Knot DNS, side by side on this machine (see bench/README.md).

One command: `python3 bench/dns_vs_knot.py` (needs the Debian packages knot, dnsperf).
It builds srvdns in release mode, registers 1,000 services x 5 instances over HTTP, writes the
same healthy data as a zone file for Knot, pins each server to core 0 and dnsperf to core 1,
and runs alternating rounds. It reports queries/s, server CPU microseconds per answered
query (from /proc/PID/stat), average and p99 latency at half the maximum rate, and lost
queries; then repeats the srvdns run while a second process churns registrations, counting
stale answers. Everything talks to 127.0.0.1 only, and every run is bounded in time.

Standard library only.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAIN = "service.local."
SERVICES = 1000
INSTANCES = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue


# ---- the data set ----

def instances():
    """(service, id, address, port, tags, weight, healthy) for the whole registry."""
    out = []
    for s in range(SERVICES):
        name = f"svc{s:04d}"
        for i in range(INSTANCES):
            if s % 4 == 0 and i == 4:
                address = f"2001:db8:{s:x}::{i + 1}"
            else:
                address = f"10.{s // 250}.{s % 250}.{i + 1}"
            tags = [f"v{i % 2 + 1}"] + (["canary"] if i == 0 else [])
            healthy = not (s % 10 == 0 and i == 3)
            out.append((name, f"{name}-{i}", address, 8000 + i, tags, 1 + i % 3, healthy))
    return out


def addr_label(address):
    if ":" in address:
        import ipaddress
        segments = ipaddress.IPv6Address(address).exploded.split(":")
        groups = [format(int(g, 16), "x") for g in segments]
        best, run = (0, 0), None
        for idx, g in enumerate(groups + ["x"]):
            if g == "0":
                run = idx if run is None else run
            elif run is not None:
                if idx - run > best[1] - best[0]:
                    best = (run, idx)
                run = None
        if best[1] - best[0] >= 2:
            return "-".join(groups[: best[0]]) + "--" + "-".join(groups[best[1]:])
        return "-".join(groups)
    return address.replace(".", "-")


def zone_file(path, data):
    lines = [
        f"$ORIGIN {DOMAIN}",
        "$TTL 5",
        "@ IN SOA ns.addr hostmaster 1 3600 600 86400 5",
        "@ IN NS ns.addr",
        "ns.addr IN A 127.0.0.1",
    ]
    targets = set()
    for name, _id, address, port, tags, weight, healthy in data:
        if not healthy:
            continue
        rtype = "AAAA" if ":" in address else "A"
        target = f"{addr_label(address)}.addr"
        srv = f"SRV 0 {weight} {port} {target}"
        lines.append(f"{name} IN {rtype} {address}")
        lines.append(f"{name} IN {srv}")
        lines.append(f"_{name}._tcp IN {srv}")
        for tag in tags:
            lines.append(f"{tag}.{name} IN {rtype} {address}")
            lines.append(f"{tag}.{name} IN {srv}")
        if target not in targets:
            targets.add(target)
            lines.append(f"{target} IN {rtype} {address}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def query_file(path, count=200_000, seed=7):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            s = f"svc{rng.randrange(SERVICES):04d}"
            kind = rng.randrange(10)
            if kind < 3:
                f.write(f"{s}.{DOMAIN} A\n")
            elif kind == 3:
                f.write(f"{s}.{DOMAIN} AAAA\n")
            elif kind < 6:
                f.write(f"{s}.{DOMAIN} SRV\n")
            elif kind == 6:
                f.write(f"v{rng.randrange(1, 3)}.{s}.{DOMAIN} A\n")
            elif kind == 7:
                f.write(f"_{s}._tcp.{DOMAIN} SRV\n")
            else:
                f.write(f"nope{rng.randrange(100000)}.{DOMAIN} A\n")


# ---- servers ----

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Srvdns:
    name = "srvdns"

    def __init__(self, binary, workdir):
        self.dns_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", binary, "serve",
             "--dns-listen", f"127.0.0.1:{self.dns_port}",
             "--http-listen", f"127.0.0.1:{self.http_port}",
             "--zones", "none", "--data-dir", "none",
             # One UDP worker, as Knot gets (udp-workers: 1).
             "--dns-workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"}, cwd=workdir)
        wait_tcp(self.http_port)

    def register(self, data):
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port)
        for name, iid, address, port, tags, weight, healthy in data:
            body = {"address": address, "port": port, "tags": tags, "weight": weight}
            conn.request("PUT", f"/v1/services/{name}/instances/{iid}", json.dumps(body))
            r = conn.getresponse()
            r.read()
            assert r.status == 200, (r.status, name, iid)
            if not healthy:
                conn.request("PUT", f"/v1/services/{name}/instances/{iid}/maintenance",
                             json.dumps({"enabled": True}))
                r = conn.getresponse()
                r.read()
                assert r.status == 200

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Knot:
    name = "knot"

    def __init__(self, zone_path, workdir):
        self.dns_port = free_port()
        run_dir = os.path.join(workdir, "knot")
        os.makedirs(run_dir, exist_ok=True)
        conf = os.path.join(run_dir, "knot.conf")
        with open(conf, "w") as f:
            f.write(f"""server:
    rundir: "{run_dir}"
    listen: 127.0.0.1@{self.dns_port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{run_dir}"
log:
  - target: stderr
    any: warning
zone:
  - domain: {DOMAIN}
    file: "{zone_path}"
    storage: "{run_dir}"
    journal-content: none
    zonefile-sync: -1
""")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", "knotd", "-c", conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            if dns_answers(self.dns_port, f"svc0001.{DOMAIN}"):
                return
            time.sleep(0.05)
        raise RuntimeError("knotd did not come up")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_tcp(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# ---- a tiny DNS client, for readiness and the stale-answer checks ----

def encode_query(qid, name, qtype=1):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + q + struct.pack(">HH", qtype, 1)


def dns_answers(port, name, qtype=1, timeout=0.5):
    """The A/AAAA addresses in the answer, or None when there is no answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        qid = random.randrange(65536)
        s.sendto(encode_query(qid, name, qtype), ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
    except OSError:
        return None
    finally:
        s.close()
    _, _, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    pos = 12
    for _ in range(qd):
        pos = skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = skip_name(data, pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntop(socket.AF_INET, data[pos:pos + 4]))
        elif rtype == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, data[pos:pos + 16]))
        pos += rdlen
    return out


def skip_name(data, pos):
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1


# ---- measurement ----

def dnsperf(port, queries, seconds, max_qps=None, verbose=False):
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port),
           "-d", queries, "-l", str(seconds), "-c", "8", "-T", "1", "-q", "500"]
    if max_qps:
        cmd += ["-Q", str(int(max_qps))]
    if verbose:
        cmd += ["-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    result = {
        "qps": float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),
        "completed": int(re.search(r"Queries completed:\s+(\d+)", out).group(1)),
        "lost": int(re.search(r"Queries lost:\s+(\d+)", out).group(1)),
        "avg_ms": float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)) * 1000,
    }
    if verbose:
        latencies = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ .* ([\d.]+)$", out, re.M))
        if latencies:
            result["p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
            result["p50_ms"] = latencies[len(latencies) // 2] * 1000
    return result


def measure(server, queries, seconds):
    before = cpu_seconds(server.proc.pid)
    r = dnsperf(server.dns_port, queries, seconds)
    r["cpu_us_per_query"] = (cpu_seconds(server.proc.pid) - before) * 1e6 / max(r["completed"], 1)
    return r


def loadgen(binary, *args, seconds):
    """Runs bench/loadgen.rs (pinned to the load core) and returns its JSON line."""
    out = subprocess.run(["taskset", "-c", "1", binary, *args], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build_loadgen():
    out = subprocess.run(["cargo", "bench", "--bench", "loadgen", "--no-run",
                          "--message-format=json"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "loadgen":
            return msg["executable"]
    raise RuntimeError("loadgen was not built")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    args = parser.parse_args()
    for tool in ("knotd", "dnsperf", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install knot dnsperf util-linux")

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "srvdns"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "srvdns")
    loadgen_binary = build_loadgen()
    work = tempfile.mkdtemp(prefix="srvdns-bench-")
    data = instances()
    zone = os.path.join(work, "service.local.zone")
    zone_file(zone, data)
    queries = os.path.join(work, "queries.txt")
    query_file(queries)

    srv = Srvdns(binary, work)
    srv.register(data)
    knot = Knot(zone, work)
    # The same answers from both (addresses, as sets) for a sample of names.
    for s in range(0, SERVICES, 97):
        name = f"svc{s:04d}.{DOMAIN}"
        a, b = dns_answers(srv.dns_port, name), dns_answers(knot.dns_port, name)
        assert sorted(a or []) == sorted(b or []), (name, a, b)

    results = {"srvdns": [], "knot": []}
    try:
        for _ in range(args.rounds):
            for server in (srv, knot):
                results[server.name].append(measure(server, queries, args.seconds))
                print(server.name, results[server.name][-1], flush=True)
        best = {k: max(v, key=lambda r: r["qps"]) for k, v in results.items()}
        # Latency at half the best rate: dnsperf holds the load, loadgen samples round trips
        # (1,000 queries/s on its own socket) meanwhile.
        latency = {}
        names = os.path.join(work, "latency-names.txt")
        query_file(names, count=5000, seed=11)
        for server in (srv, knot):
            load = threading.Thread(target=dnsperf, args=(server.dns_port, queries, 6),
                                    kwargs={"max_qps": best[server.name]["qps"] / 2})
            load.start()
            time.sleep(0.5)
            latency[server.name] = loadgen(loadgen_binary, "latency", "--dns",
                                           f"127.0.0.1:{server.dns_port}", "--rate", "1000",
                                           "--seconds", "5", "--names", names, seconds=5)
            load.join()
            print(server.name, "half rate latency", latency[server.name], flush=True)
        churn_result = {}
        churn_seconds = args.seconds + 2
        churner = threading.Thread(target=lambda: churn_result.update(loadgen(
            loadgen_binary, "churn", "--http", f"127.0.0.1:{srv.http_port}", "--dns",
            f"127.0.0.1:{srv.dns_port}", "--rate", "500", "--seconds", str(churn_seconds),
            seconds=churn_seconds)))
        churner.start()
        time.sleep(1)
        churn = measure(srv, queries, args.seconds)
        churner.join()
        print("churn", churn, churn_result, flush=True)
    finally:
        srv.stop()
        knot.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(rows, key):
        values = sorted(r[key] for r in rows)
        return values[len(values) // 2]

    table = {}
    for name, rows in results.items():
        table[name] = {
            "qps": median(rows, "qps"),
            "cpu": median(rows, "cpu_us_per_query"),
            "avg": median(rows, "avg_ms"),
            "lost": sum(r["lost"] for r in rows),
        }
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    knot_version = subprocess.run(["knotd", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"## srvdns vs Knot DNS ({datetime.date.today()})",
        "",
        f"Machine: {os.cpu_count()} cores, {cpu_model}, {platform.platform()}; {knot_version}.",
        f"Command: `python3 bench/dns_vs_knot.py --seconds {args.seconds} --rounds {args.rounds}`.",
        f"Data: {SERVICES} services x {INSTANCES} instances (tags, every 4th service with an "
        "AAAA instance, every 10th with one instance in maintenance); Knot serves the same "
        "healthy data from a zone file. Server pinned to core 0, dnsperf (`-c 8 -T 1 -q 500`) "
        "to core 1. Query mix: 30% A, 10% AAAA, 20% SRV, 10% tag A, 10% _svc._tcp SRV, "
        "20% NXDOMAIN. Medians of the rounds.",
        "",
        "| server | queries/s | CPU µs/query | avg latency ms (saturated) | p50 / p99 ms at half rate | lost |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("srvdns", "knot"):
        t, l = table[name], latency[name]
        lines.append(f"| {name} | {t['qps']:.0f} | {t['cpu']:.2f} | {t['avg']:.3f} | "
                     f"{l['p50_ms']:.3f} / {l['p99_ms']:.3f} | {t['lost']} |")
    lines += [
        "",
        f"- srvdns / Knot: queries/s **{table['srvdns']['qps'] / table['knot']['qps']:.2f}x**, "
        f"CPU per query **{table['srvdns']['cpu'] / table['knot']['cpu']:.2f}x**.",
        f"- Under churn ({churn_result['ops']} registrations/deregistrations in {churn_seconds} s, "
        f"~{churn_result['ops'] / churn_seconds:.0f}/s, {churn_result['errors']} errors): "
        f"{churn['qps']:.0f} queries/s = **{churn['qps'] / table['srvdns']['qps']:.2f}x** the "
        f"quiet figure; stale answers: **{churn_result['stale']}** of {churn_result['checked']} "
        "checked right after a deregistration.",
        "- Latency: sampled by `bench/loadgen.rs latency` (1,000 queries/s, its own socket) while "
        "dnsperf holds half the server's best rate.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    existing = open(args.output).read() if os.path.exists(args.output) else "# Benchmark results\n"
    marker = "## srvdns vs Knot DNS"
    if marker in existing:
        head, _, rest = existing.partition(marker)
        tail = rest.split("\n## ", 1)
        existing = head + (("## " + tail[1]) if len(tail) > 1 else "")
    with open(args.output, "w") as f:
        f.write(existing.rstrip() + "\n\n" + report)


if __name__ == "__main__":
    main()

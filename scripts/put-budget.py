#!/usr/bin/env python3
"""Where one durable put's time goes: starts a release `concord` on a fresh data directory,
drives it with one client (concord-bench), records the server's system calls with `perf trace`
(tracepoints: far less overhead than strace), and splits each put at the syscalls that bound its
stages:

    request read (recvfrom)  ->  WAL write starts (pwrite64 on the .wal file)
                             ->  WAL durable (fdatasync returns)
                             ->  answer sent (sendto)

It prints the medians and 90th percentiles of each stage, the syscalls per put by thread, and
the fdatasync times of the WAL and of redb. Run from the project's root after
`cargo build --release -p concord -p concord-bench`; needs perf (apt-get install linux-perf).

    scripts/put-budget.py [--puts 1500]
"""

import argparse
import bisect
import collections
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SYSCALL = re.compile(
    r"^\s*([\d.]+) \(\s*([\d.]*)\s*(?:ms)?\): (\S+)/(\d+) (\w+)\((.*)\)\s+=\s+(-?\d+)"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def parse(path):
    calls = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = SYSCALL.match(line)
        if m:
            start, dur = float(m.group(1)), float(m.group(2) or 0)
            calls.append((start, start + dur, m.group(3), m.group(5), m.group(6), int(m.group(7))))
    return calls


def pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--puts", type=int, default=1500)
    args = parser.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf not found (apt-get install linux-perf)")
    work = tempfile.mkdtemp()
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    server = subprocess.Popen(
        ["target/release/concord", "--data-dir", f"{work}/data", "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench = ["target/release/concord-bench", "--endpoint", url, "--workload", "put", "--clients", "1"]
    try:
        wait_port(client)
        subprocess.run(bench + ["--total", "2000", "--label", "warm-up"], check=True)
        trace = f"{work}/trace"
        tracer = subprocess.Popen(["perf", "trace", "-p", str(server.pid), "-o", trace],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        subprocess.run(bench + ["--total", str(args.puts), "--label", "traced"], check=True)
        tracer.terminate()
        tracer.wait()
        calls = parse(trace)
    finally:
        server.terminate()
        server.wait()

    puts = args.puts
    by_thread = collections.Counter((c[2].split("/")[0], c[3]) for c in calls)
    print(f"\nsyscalls per put (of {puts}), by thread:")
    for (thread, name), n in by_thread.most_common(16):
        print(f"  {thread:16} {name:12} {n / puts:5.2f}")
    for name in ("wal", "redb"):
        syncs = [c[1] - c[0] for c in calls if c[3] == "fdatasync" and name in c[4]]
        if syncs:
            threads = collections.Counter(c[2].split("/")[0] for c in calls
                                          if c[3] == "fdatasync" and name in c[4])
            print(f"fdatasync {name}: {len(syncs)}, median {statistics.median(syncs):.3f} ms, "
                  f"max {max(syncs):.3f} ms, on {dict(threads)}")

    # Stage boundaries: a request is a recvfrom of a whole put (key + 256-byte value).
    requests = [c for c in calls if c[3] == "recvfrom" and c[5] >= 200]
    wal_writes = [c[0] for c in calls if c[3] == "pwrite64" and ".wal" in c[4]]
    if not wal_writes:  # perf prints the fd's path only once it knows it
        wal_writes = [c[0] for c in calls if c[3] == "pwrite64" and c[2].startswith("concord-wal")]
    syncs = sorted((c[0], c[1]) for c in calls if c[3] == "fdatasync" and "wal" in c[4])
    sync_starts = [s[0] for s in syncs]
    answers = [c[0] for c in calls if c[3] == "sendto" and c[5] >= 50]
    stages = collections.defaultdict(list)
    reads = [request[1] for request in requests]
    for n, read in enumerate(reads):
        # perf drops events under load: a put counts only if each boundary found belongs to it
        # (its WAL write comes before the next request, its sync before the next WAL write,
        # its answer before the next request).
        next_read = reads[n + 1] if n + 1 < len(reads) else float("inf")
        i = bisect.bisect(wal_writes, read)
        if i >= len(wal_writes) or wal_writes[i] > next_read:
            continue
        next_write = wal_writes[i + 1] if i + 1 < len(wal_writes) else float("inf")
        j = bisect.bisect(sync_starts, wal_writes[i])
        if j >= len(syncs) or syncs[j][0] > next_write:
            continue
        k = bisect.bisect(answers, syncs[j][1])
        if k >= len(answers) or answers[k] > next_read:
            continue
        stages["read -> WAL write"].append(wal_writes[i] - read)
        stages["WAL write + fdatasync"].append(syncs[j][1] - wal_writes[i])
        stages["durable -> answer sent"].append(answers[k] - syncs[j][1])
        stages["read -> answer sent"].append(answers[k] - read)
    print(f"\nstages of {len(stages['read -> answer sent'])} puts (ms):")
    for stage, values in stages.items():
        print(f"  {stage:24} p50 {statistics.median(values):.3f}  p90 {pct(values, 0.9):.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

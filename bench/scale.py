#!/usr/bin/env python3
"""Portcullis at scale: a generated policy file of N policies (issue 18's shape), served.

For each N in POLICIES (default 100000): writes the file, starts `portcullis serve` with it
as its policy source, and measures
  - ready: from start until /readyz answers 200 with N active policies;
  - RSS and peak RSS (VmRSS, VmHWM from /proc) two seconds after ready;
  - CHANGES (default 20) one-policy edits of the file (a policy appended, then removed):
    from the write until /readyz names the new config version, and RSS 3 s after them.

Usage: bench/scale.py [BINARY]   (default target/release/portcullis)
Environment: POLICIES=10000,100000 CHANGES=20 KEEP=1 (keep the work directory).
The file is the issue's: per-tenant tags (2,000 tenants), one rule each with an exact host,
a path glob and two methods.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def policy(i, tenants=2000):
    t = i % tenants
    return (
        f"  - name: t{t}-p{i}\n"
        f"    match_tags: [tenant:t{t}]\n"
        f"    action: allow\n"
        f"    rules:\n"
        f"      - host: api{i}.t{t}.example.com\n"
        f'        paths: ["/v1/projects/{i}/*"]\n'
        f"        methods: [GET, POST]\n"
    )


def header(work, admin_port):
    return (
        "server:\n"
        f"  grpc_listen: unix:{work}/grpc.sock\n"
        f"  admin_listen: 127.0.0.1:{admin_port}\n"
        "gateway:\n"
        "  tags: [env:bench]\n"
        "default_action: deny\n"
        "policies:\n"
    )


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def readyz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(binary, n, changes, work):
    admin = free_port()
    path = os.path.join(work, f"policies-{n}.yaml")
    head = header(work, admin)
    body = "".join(policy(i) for i in range(n))
    write(path, head + body)
    size = os.path.getsize(path)
    env = dict(os.environ, RUST_LOG="warn")
    start = time.monotonic()
    proc = subprocess.Popen(
        [binary, "serve", "--config", path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"serve-{n}.log"), "w"),
    )
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"serve exited ({proc.returncode}); see {work}/serve-{n}.log")
            r = readyz(admin)
            if r and r.get("ready") and r.get("policies_active") == n:
                break
            time.sleep(0.01)
        ready = time.monotonic() - start
        time.sleep(2)
        at_ready = status(proc.pid)
        took = []
        for c in range(changes):
            before = readyz(admin)["config_version"]
            extra = policy(n + c) if c % 2 == 0 else ""
            t0 = time.monotonic()
            write(path, head + body + extra)
            while True:
                r = readyz(admin)
                if r and r["config_version"] != before:
                    break
                time.sleep(0.005)
            took.append(time.monotonic() - t0)
            expect = n + (1 if c % 2 == 0 else 0)
            if r["policies_active"] != expect:
                sys.exit(f"after change {c}: {r['policies_active']} active, expected {expect}")
            time.sleep(0.2)
        # Steady again: the previous snapshots released, freed memory handed back.
        time.sleep(3)
        after = status(proc.pid)
        return {
            "policies": n,
            "file_mb": size / 1e6,
            "ready_s": ready,
            "rss_mib": at_ready["VmRSS"],
            "hwm_mib": at_ready["VmHWM"],
            "change_p50_s": pct(took, 50) if took else None,
            "change_p99_s": pct(took, 99) if took else None,
            "change_max_s": max(took) if took else None,
            "rss_after_changes_mib": after["VmRSS"],
            "hwm_after_changes_mib": after["VmHWM"],
        }
    finally:
        proc.terminate()
        proc.wait()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/portcullis"
    sizes = [int(s) for s in os.environ.get("POLICIES", "100000").split(",")]
    changes = int(os.environ.get("CHANGES", "20"))
    work = tempfile.mkdtemp(prefix="portcullis-scale-")
    try:
        for n in sizes:
            print(json.dumps(run(binary, n, changes, work)), flush=True)
    finally:
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

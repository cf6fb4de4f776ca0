#!/usr/bin/env python3
"""Portcullis at scale: a generated set of N policies (issue 18's shape), served.

For each N in POLICIES (default 100000): starts `portcullis serve` with the policies in its
config file (SOURCE=file, the default) or in a SQLite store (SOURCE=store, seeded directly
in one transaction), and measures
  - ready: from start until /readyz answers 200 with N active policies;
  - RSS and peak RSS (VmRSS, VmHWM from /proc) two seconds after ready;
  - CHANGES (default 20) one-policy changes: for the file, a policy appended, then removed,
    from the write until /readyz names the new config version; for the store, an update
    of one policy through the admin API (`PUT /v1/policies/NAME`, which answers once the
    change decides this instance's requests), from the request until the answer;
  - RSS 3 s after the changes.

Usage: bench/scale.py [BINARY]   (default target/release/portcullis)
Environment: POLICIES=10000,100000 CHANGES=20 SOURCE=file|store KEEP=1 (keep the work
directory). The policies are the issue's: per-tenant tags (2,000 tenants), one rule each
with an exact host, a path glob and two methods.
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ADMIN_TOKEN = "scale-bench-admin-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def definition(i, tenants=2000, path=None):
    t = i % tenants
    return {
        "name": f"t{t}-p{i}",
        "match_tags": [f"tenant:t{t}"],
        "action": "allow",
        "rules": [
            {
                "host": f"api{i}.t{t}.example.com",
                "paths": [path or f"/v1/projects/{i}/*"],
                "methods": ["GET", "POST"],
            }
        ],
    }


def policy(i):
    """definition(i) as the config file's YAML."""
    d = definition(i)
    rule = d["rules"][0]
    return (
        f"  - name: {d['name']}\n"
        f"    match_tags: [{d['match_tags'][0]}]\n"
        f"    action: allow\n"
        f"    rules:\n"
        f"      - host: {rule['host']}\n"
        f'        paths: ["{rule["paths"][0]}"]\n'
        f"        methods: [GET, POST]\n"
    )


def header(work, admin_port, store=None):
    text = (
        "server:\n"
        f"  grpc_listen: unix:{work}/grpc.sock\n"
        f"  admin_listen: 127.0.0.1:{admin_port}\n"
        "gateway:\n"
        "  tags: [env:bench]\n"
        "default_action: deny\n"
    )
    if store is None:
        return text + "policies:\n"
    return text + (
        f"store: {{url: 'sqlite://{store}', resync_interval: 1h}}\n"
        "admin:\n"
        "  tokens:\n"
        "    - {name: bench, role: admin, token: {env: SCALE_ADMIN_TOKEN}}\n"
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


def serve(binary, config, work, n):
    env = dict(os.environ, RUST_LOG="warn", SCALE_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.Popen(
        [binary, "serve", "--config", config],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"serve-{n}.log"), "a"),
    )


def wait_ready(proc, admin, n, work):
    while True:
        if proc.poll() is not None:
            sys.exit(f"serve exited ({proc.returncode}); see {work}/serve-{n}.log")
        r = readyz(admin)
        if r and r.get("ready") and r.get("policies_active") == n:
            return r
        time.sleep(0.01)


def file_source(binary, n, work, admin):
    """The config file holding the policies, and a change: a policy appended, then removed."""
    path = os.path.join(work, f"policies-{n}.yaml")
    head = header(work, admin)
    body = "".join(policy(i) for i in range(n))
    write(path, head + body)

    def change(c):
        before = readyz(admin)["config_version"]
        extra = policy(n + c) if c % 2 == 0 else ""
        t0 = time.monotonic()
        write(path, head + body + extra)
        while True:
            r = readyz(admin)
            if r and r["config_version"] != before:
                break
            time.sleep(0.005)
        took = time.monotonic() - t0
        expect = n + (1 if c % 2 == 0 else 0)
        if r["policies_active"] != expect:
            sys.exit(f"after change {c}: {r['policies_active']} active, expected {expect}")
        return took

    return path, change


def store_source(binary, n, work, admin):
    """A SQLite store holding the policies (its schema made by `serve`, its rows written
    in one transaction), and a change: one policy updated through the admin API."""
    db = os.path.join(work, f"store-{n}.db")
    path = os.path.join(work, f"store-{n}.yaml")
    write(path, header(work, admin, store=db))
    empty = serve(binary, path, work, n)
    wait_ready(empty, admin, 0, work)
    empty.terminate()
    empty.wait()
    at = "2026-01-01T00:00:00Z"
    rows = [
        (d["name"], json.dumps(d, separators=(",", ":")))
        for d in (definition(i) for i in range(n))
    ]
    with sqlite3.connect(db) as c:
        c.executemany(
            "INSERT INTO policies (name, version, deleted, definition, updated_at, revision)"
            " VALUES (?, 1, 0, ?, ?, 1)",
            [(name, text, at) for name, text in rows],
        )
        c.executemany(
            "INSERT INTO policy_versions (name, version, operation, operator, reason, at,"
            " definition) VALUES (?, 1, 'create', 'scale', 'bench/scale.py', ?, ?)",
            [(name, at, text) for name, text in rows],
        )
        c.execute("UPDATE store_revision SET revision = 1")

    def api(method, name, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}/v1/policies/{name}",
            data=json.dumps(body).encode() if body else None,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def change(c):
        i = c * 7919 % n
        name = definition(i)["name"]
        live = api("GET", name)["version"]
        edited = definition(i, path=f"/v2/{c}/*")
        t0 = time.monotonic()
        api("PUT", name, {"version": live, "policy": edited, "reason": "bench/scale.py"})
        return time.monotonic() - t0

    return path, change


def run(binary, n, changes, work, source):
    admin = free_port()
    config, change = (store_source if source == "store" else file_source)(binary, n, work, admin)
    start = time.monotonic()
    proc = serve(binary, config, work, n)
    try:
        wait_ready(proc, admin, n, work)
        ready = time.monotonic() - start
        time.sleep(2)
        at_ready = status(proc.pid)
        took = []
        for c in range(changes):
            took.append(change(c))
            time.sleep(0.2)
        # Steady again: the previous snapshots released, freed memory handed back.
        time.sleep(3)
        after = status(proc.pid)
        return {
            "policies": n,
            "source": source,
            "config_mb": os.path.getsize(config) / 1e6,
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
    source = os.environ.get("SOURCE", "file")
    if source not in ("file", "store"):
        sys.exit(f"SOURCE={source!r}: file or store")
    work = tempfile.mkdtemp(prefix="portcullis-scale-")
    try:
        for n in sizes:
            print(json.dumps(run(binary, n, changes, work, source)), flush=True)
    finally:
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

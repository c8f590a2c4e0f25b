#!/usr/bin/env python3
"""Recordings search at scale: index and query 1,000 recorded sessions (~1 GiB of casts).

    cargo build --release && python3 bench/search_bench.py [--sessions 1000] [--mib 1.0]

Makes a Penstock installation with `penstock init` (SQLite, the embedded default, or
`--database-url postgres://…`) in a temporary folder, writes N synthetic asciicast v2
recordings of shell sessions (keystrokes typed one event per key, then output of log-like
lines, ~MIB MiB each) with their session rows, then times `penstock recordings reindex` and a
set of `penstock recordings search` commands (each a whole process: start, open the store,
query, print). A few sessions contain the phrase `write_register 40001 17`. Prints a table.

Standard library only; needs the sqlite3 command for the SQLite session rows.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

WORDS = (
    "plc historian modbus register coil valve pump motor setpoint alarm trend scan cycle firmware "
    "backup restore config tag value quality timestamp line zone station batch recipe operator "
    "network switch port vlan link status ok warn error retry timeout connect disconnect"
).split()


def cast(rng, size, planted, start_ts):
    lines = [json.dumps({"version": 2, "width": 120, "height": 40, "timestamp": start_ts,
                         "title": "vendor → plc-line3", "env": {"TERM": "xterm-256color"}})]
    t = 0.0
    out = 0
    n = 0
    while out < size:
        cmd = "tail -n 200 /var/log/%s-%d.log" % (rng.choice(WORDS), rng.randrange(100))
        if planted and n == 3:
            cmd = "echo write_register 40001 17"
        for ch in cmd + "\r":
            t += 0.05
            lines.append(json.dumps([round(t, 6), "i", ch]))
        body = []
        for _ in range(200):
            body.append("%s %s[%d]: %s\r\n" % (
                "2026-11-25T22:%02d:%02d" % (rng.randrange(60), rng.randrange(60)),
                rng.choice(WORDS), rng.randrange(9999),
                " ".join(rng.choice(WORDS) for _ in range(8))))
        chunk = "".join(body)
        t += 0.2
        lines.append(json.dumps([round(t, 6), "o", chunk]))
        out += len(chunk)
        n += 1
    return ("\n".join(lines) + "\n").encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--mib", type=float, default=1.0)
    ap.add_argument("--database-url")
    ap.add_argument("--penstock", default=os.environ.get("PENSTOCK_BIN", "target/release/penstock"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    bin_ = os.path.abspath(a.penstock)
    tmp = tempfile.mkdtemp(prefix="penstock-search-bench-")
    d = os.path.join(tmp, "p")
    try:
        init = [bin_, "init", "--dir", d] + (["--database-url", a.database_url] if a.database_url else [])
        subprocess.run(init, check=True, stdout=subprocess.DEVNULL)
        cfg = os.path.join(d, "penstock.toml")
        run = lambda *args, **kw: subprocess.run([bin_, "-c", cfg] + list(args), check=True,
                                                  capture_output=True, **kw)
        run("user", "add", "vendor", "--role", "vendor", "--org", "Acme", "--password-stdin", input=b"pw-12345678\n")
        key = open(os.path.join(d, "evidence_ed25519_key")).read() and subprocess.run(
            [bin_, "-c", cfg, "evidence", "key"], check=True, capture_output=True).stdout.decode().split()[:2]
        run("target", "add", "plc-line3", "--address", "127.0.0.1:22", "--login", "maint", "--password-stdin",
            "--host-key", " ".join(key), input=b"secret\n")
        rng = random.Random(7)
        rec = os.path.join(d, "recordings", "2026", "11", "25")
        os.makedirs(rec, exist_ok=True)
        rows = []
        total = 0
        t0 = time.perf_counter()
        base = 1764108000
        for i in range(a.sessions):
            sid = "%032x" % rng.getrandbits(128)
            data = cast(rng, int(a.mib * 1024 * 1024), i % 250 == 17, base + i * 60)
            path = os.path.join(rec, sid + ".cast")
            with open(path, "wb") as f:
                f.write(data)
            total += len(data)
            rows.append("('%s', 1, 1, 1, '127.0.0.1:1', %d, %d, 'closed', '%s', '%s')" % (
                sid, base + i * 60, base + i * 60 + 50, path, hashlib.sha256(data).hexdigest()))
        gen = time.perf_counter() - t0
        sql = ("INSERT INTO sessions (id, user_id, target_id, grant_id, client_addr, started_at, ended_at, "
               "end_reason, recording_path, recording_sha256) VALUES " + ",".join(rows) + ";")
        if a.database_url:
            subprocess.run(["psql", a.database_url, "-q", "-c", sql], check=True)
        else:
            subprocess.run(["sqlite3", os.path.join(d, "penstock.db")], input=sql.encode(), check=True)
        t0 = time.perf_counter()
        out = run("recordings", "reindex").stdout.decode().strip()
        index_s = time.perf_counter() - t0
        print("generated %d casts, %.0f MiB in %.0f s; %s in %.1f s (%.1f MiB/s)" % (
            a.sessions, total / 2**20, gen, out, index_s, total / 2**20 / index_s))
        queries = [
            ["write_register"],
            ["write_register 40001 17", "--target", "plc-*"],
            ["valve pump", "--user", "vendor", "--since", "2025-11-26"],
            ["retry timeout", "--org", "Acme", "--json"],
            ["never-seen-word"],
        ]
        print("%-50s %10s %10s %8s" % ("search", "median ms", "max ms", "sessions"))
        for q in queries:
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = run("recordings", "search", *(q if "--json" in q else q + ["--json"]))
                times.append((time.perf_counter() - t0) * 1000)
            found = len(json.loads(r.stdout))
            print("%-50s %10.0f %10.0f %8d" % (" ".join(q), statistics.median(times), max(times), found))
        print("database size: %.0f MiB" % (sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                                              if f.startswith("penstock.db")) / 2**20))
    finally:
        if a.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

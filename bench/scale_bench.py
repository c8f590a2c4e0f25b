#!/usr/bin/env python3
"""Several Penstock gateways on one PostgreSQL: what the store carries and how fast signals travel.

    cargo build --release && python3 bench/scale_bench.py [--nodes 3] [--sessions 120] [--json out.json]

Starts, in a temporary folder, its own PostgreSQL server (initdb; Debian's postgresql package),
a real `sshd` target, and N `penstock serve` processes sharing one database (one installation
made with `penstock init --database-url`, each node with its own node id and ports). Then:

- logins per second: `--sessions` complete sessions (`ssh … true`: key + TOTP, grant check,
  upstream login with the injected credential, recording, audit), `--concurrency` at a time,
  spread round-robin over the nodes; wall time, rate, median and p95 per session;
- store writes per session: PostgreSQL's own counters (commits, rows inserted and updated) for
  the database, before and after, divided by the sessions;
- concurrent sessions: `--hold` interactive sessions kept open across the nodes at once, counted
  live by `penstock nodes`, with each node's resident memory;
- signal time: `--kills` times a session on one node is killed with `penstock session kill`
  (another process, like a manager on another node), measured from the command's start to the
  vendor's `ssh` ending; and the same for a revoke.

Needs root (sshd privilege separation, the PostgreSQL server runs as user postgres), OpenSSH,
PostgreSQL. Reuses bench/bench.py's helpers. Standard library only.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def start_postgres(d):
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        raise B.BenchError("PostgreSQL not found (install postgresql)")
    pg = bins[-1]
    data, sock = f"{d}/pgdata", f"{d}/pgsock"
    os.makedirs(sock)
    shutil.chown(d, "postgres")
    shutil.chown(sock, "postgres")
    B.sh(["runuser", "-u", "postgres", "--", f"{pg}/initdb", "-D", data, "-U", "postgres", "-A", "trust",
          "--no-sync", "-E", "UTF8", "--locale=C"])
    port = B.free_port()
    p = subprocess.Popen(["runuser", "-u", "postgres", "--", f"{pg}/postgres", "-D", data, "-p", str(port), "-k", sock,
                          "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=400"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f"{d}/pg.log", "wb"))
    end = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise B.BenchError(f"postgres exited at start (see {d}/pg.log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > end:
                raise B.BenchError(f"postgres does not answer on port {port}")
            time.sleep(0.1)
    psql = [f"{pg}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-X", "-q", "-A", "-t"]
    B.sh(psql + ["-c", "CREATE DATABASE penstock"])
    return p, port, psql


class Cluster:
    """The target, the nodes and their clients (shaped like bench.Env for its ssh())."""

    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="penstock-scale-")
        os.chmod(self.dir, 0o755)
        self.penstock = B.find_penstock(args.penstock)
        self.procs = []
        self.gateways = {}
        self.cg = B.CpuGroups(["target"] + [f"node{i}" for i in range(args.nodes)])

    def cli(self, args, timeout=60):
        e = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_")}
        p = subprocess.run([self.penstock, "-c", self.pconfig] + args, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=timeout)
        if p.returncode != 0:
            raise B.BenchError(f"penstock {' '.join(args)}: {p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace")

    def setup(self):
        if os.geteuid() != 0:
            raise B.BenchError("run as root")
        d = self.dir
        B.ensure_account(B.TARGET_USER)
        os.makedirs("/run/sshd", exist_ok=True)
        self.pg, self.pg_port, self.psql = start_postgres(d)
        self.procs.append(self.pg)
        for k in ("client", "gateway"):
            B.sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"scale-{k}", "-f", f"{d}/{k}_ed25519"])
        with open(f"{d}/authorized_keys", "w") as f:
            for k in ("client", "gateway"):
                f.write(open(f"{d}/{k}_ed25519.pub").read())
        os.chmod(f"{d}/authorized_keys", 0o644)
        with open(f"{d}/ssh_config", "w") as f:
            f.write(B.CLIENT_CONFIG.format(cipher=B.CIPHER, kex=B.KEX, key=f"{d}/client_ed25519"))
        with open(f"{d}/askpass", "w") as f:
            f.write(B.ASKPASS)
        os.chmod(f"{d}/askpass", 0o755)
        self.tport = B.free_port()
        B.sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/target_sshd_key"])
        cfg = f"{d}/target_sshd_config"
        with open(cfg, "w") as f:
            f.write(B.SSHD_CONFIG.format(port=self.tport, hostkey=f"{d}/target_sshd_key", dir=d, name="target",
                                         cipher=B.CIPHER, kex=B.KEX, forwarding="no"))
        t = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", cfg, "-E", f"{d}/target_sshd.log"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(t)
        B.wait_port(self.tport, t, "sshd")
        pdir = f"{d}/penstock"
        url = f"postgres://postgres@127.0.0.1:{self.pg_port}/penstock"
        B.sh([self.penstock, "init", "--dir", pdir, "--database-url", url])
        self.pconfig = f"{pdir}/penstock.toml"
        self.cli(["target", "add", B.TARGET_NAME, "--address", f"127.0.0.1:{self.tport}", "--login", B.TARGET_USER,
                  "--key-file", f"{d}/gateway_ed25519",
                  "--host-key", open(f"{d}/target_sshd_key.pub").read().strip()])
        B.log(f"creating {self.args.pool} users (key + TOTP, each with a grant)")
        users = []
        for i in range(self.args.pool):
            name = f"s{i:04d}"
            out = self.cli(["user", "add", name, "--role", "vendor", "--no-password"])
            m = re.search(r"secret=([A-Z2-7]+)", out)
            self.cli(["user", "add-key", name, "--key-file", f"{d}/client_ed25519.pub"])
            self.cli(["grant", "add", "--user", name, "--target", B.TARGET_NAME, "--for", "12h"])
            users.append((name, m.group(1)))
        self.pool = B.UserPool(users)
        for i in range(self.args.nodes):
            self.start_node(i)

    def start_node(self, i):
        name = f"node{i}"
        port = B.free_port()
        e = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_")}
        e.update({
            "PENSTOCK_SSH_LISTEN": f"127.0.0.1:{port}",
            "PENSTOCK_NODE_ID_FILE": f"node_id_{i}",
            "PENSTOCK_NODE_NAME": name,
            "PENSTOCK_RECORDINGS_DIR": f"recordings-{i}",
            "PENSTOCK_AUTH_MAX_FAILURES": "1000000",
            "PENSTOCK_WEB_ENABLED": "false",
            "PENSTOCK_RDP_ENABLED": "false",
            "PENSTOCK_SSH_MAX_PENDING_PER_SOURCE": "256",
        })
        logf = open(f"{self.dir}/{name}.log", "ab")
        p = subprocess.Popen([self.penstock, "-c", self.pconfig, "serve"], stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=logf, env=e, preexec_fn=self.cg.enter(name))
        B.wait_port(port, p, name)
        self.gateways[name] = type("Node", (), {"port": port, "proc": p})()

    def ssh(self, node, remote, tty=False):
        return B.Env.ssh(self, node, remote, tty=tty)

    def pg_counters(self):
        out = subprocess.run(self.psql + ["-d", "penstock", "-c",
                                          "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM "
                                          "pg_stat_database WHERE datname = 'penstock'"],
                             stdout=subprocess.PIPE, check=True).stdout.decode().strip()
        return [int(x) for x in out.split("|")]

    def close(self):
        for g in self.gateways.values():
            if g.proc.poll() is None:
                g.proc.send_signal(signal.SIGTERM)
        for g in self.gateways.values():
            try:
                g.proc.wait(10)
            except subprocess.TimeoutExpired:
                g.proc.kill()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.cg.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_one(c, node, remote="true"):
    argv, env = c.ssh(node, remote)
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120)
    return time.monotonic() - t0, p.returncode


def measure_logins(c, n, conc):
    nodes = sorted(c.gateways)
    lock = threading.Lock()
    todo = list(range(n))
    times, failures = [], []
    argvs = {}

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
                node = nodes[i % len(nodes)]
                argv, env = c.ssh(node, "true")
            t0 = time.monotonic()
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=120)
            dt = time.monotonic() - t0
            with lock:
                (times if p.returncode == 0 else failures).append(dt)
                argvs[i] = p.returncode

    # The nodes' own background work (polls, heartbeats), measured while idle, is subtracted.
    q0 = c.pg_counters()
    time.sleep(5)
    q1 = c.pg_counters()
    idle_rate = [(b - a) / 5.0 for a, b in zip(q0, q1)]
    before = c.pg_counters()
    t0 = time.monotonic()
    ths = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.monotonic() - t0
    time.sleep(2)  # session ends and their audit events are committed
    after = c.pg_counters()
    ok = len(times)
    span = wall + 2
    delta = [a - b - r * span for a, b, r in zip(after, before, idle_rate)]
    return {
        "sessions": ok, "failed": len(failures), "wall_s": wall, "per_s": ok / wall if wall else 0,
        "median_s": statistics.median(times) if times else None,
        "p95_s": B.pct(times, 95) if times else None,
        "commits_per_session": delta[0] / max(ok, 1), "rows_inserted_per_session": delta[1] / max(ok, 1),
        "rows_updated_per_session": delta[2] / max(ok, 1),
        "background_commits_per_s": idle_rate[0],
    }


def measure_hold(c, n):
    nodes = sorted(c.gateways)
    procs = []
    for i in range(n):
        argv, env = c.ssh(nodes[i % len(nodes)], "echo UP; cat > /dev/null")
        p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        procs.append(p)
    up = 0
    for p in procs:
        line = p.stdout.readline()
        up += line.strip() == b"UP"
    time.sleep(1)
    listed = json.loads(c.cli(["nodes", "--json"]))
    live = {n["name"]: n["live_sessions"] for n in listed}
    rss = {name: B.status_kib(g.proc.pid, "VmRSS") for name, g in c.gateways.items()}
    for p in procs:
        p.stdin.close()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    return {"requested": n, "up": up, "live_by_node": live, "rss_kib_by_node": rss}


def measure_signal(c, reps, how):
    nodes = sorted(c.gateways)
    times = []
    for r in range(reps):
        node = nodes[r % len(nodes)]
        argv, env = c.ssh(node, "echo UP; sleep 120")
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        if p.stdout.readline().strip() != b"UP":
            raise B.BenchError("session did not start")
        name = c.ssh_user_last
        sess = [s for s in json.loads(c.cli(["session", "list", "--live", "--json"])) if s.get("user") == name]
        if not sess:
            raise B.BenchError(f"no live session of {name}")
        t0 = time.monotonic()
        if how == "kill":
            c.cli(["session", "kill", sess[0]["id"]])
        else:
            c.cli(["grant", "revoke", str(sess[0]["grant_id"])])
            c.cli(["grant", "add", "--user", name, "--target", B.TARGET_NAME, "--for", "12h"])
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            raise B.BenchError(f"{how} did not end the session within 30 s")
        times.append(time.monotonic() - t0)
    return {"reps": reps, "median_s": statistics.median(times), "max_s": max(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=120)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--hold", type=int, default=90)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--penstock")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    c = Cluster(args)
    # Which user a session was opened with (for finding its session row).
    take = B.UserPool.take

    def remember(pool):
        name, code = take(pool)
        c.ssh_user_last = name
        return name, code

    B.UserPool.take = remember
    res = {"nodes": args.nodes, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    try:
        c.setup()
        B.log(f"{args.sessions} sessions, {args.concurrency} at a time, over {args.nodes} nodes")
        res["logins"] = measure_logins(c, args.sessions, args.concurrency)
        B.log(f"{args.hold} sessions held open at once")
        res["hold"] = measure_hold(c, args.hold)
        B.log("kill and revoke times")
        res["kill"] = measure_signal(c, args.kills, "kill")
        res["revoke"] = measure_signal(c, args.kills, "revoke")
    finally:
        c.close()
    res["load_after"] = os.getloadavg()[0]
    lg = res["logins"]
    print(f"\nPenstock, {args.nodes} nodes on one PostgreSQL ({res['cpus']} CPUs, load {res['load_before']:.1f})")
    print(f"  sessions (login+TOTP+connect+record+audit): {lg['sessions']} ok, {lg['failed']} failed, "
          f"{lg['per_s']:.1f}/s; median {lg['median_s']:.3f} s, p95 {lg['p95_s']:.3f} s")
    print(f"  store per session: {lg['commits_per_session']:.1f} commits, {lg['rows_inserted_per_session']:.1f} rows "
          f"inserted, {lg['rows_updated_per_session']:.1f} rows updated (beyond the nodes' background work: "
          f"{lg['background_commits_per_s']:.1f} commits/s for {args.nodes} idle nodes)")
    h = res["hold"]
    print(f"  held open at once: {h['up']}/{h['requested']}; live by node {h['live_by_node']}; "
          f"RSS KiB by node {h['rss_kib_by_node']}")
    print(f"  kill reaches the session's node: median {res['kill']['median_s']:.3f} s, max {res['kill']['max_s']:.3f} s")
    print(f"  revoke reaches it: median {res['revoke']['median_s']:.3f} s, max {res['revoke']['max_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except B.BenchError as e:
        print(f"scale_bench: {e}", file=sys.stderr)
        sys.exit(1)

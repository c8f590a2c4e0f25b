#!/usr/bin/env python3
"""Penstock against plain OpenSSH, on one machine, in one run.

    cargo build --release && python3 bench/bench.py [--quick] [--json out.json]

Starts, in a temporary folder, a real `sshd` target and a second `sshd` as an OpenSSH jump host
on loopback, a Penstock installation (made with `penstock init` and the CLI) served twice (with
and without recording), and compares four ways of reaching the target:

    direct          ssh -> sshd target
    jump            ssh -J jump-sshd -> sshd target  (plain OpenSSH jump host)
    penstock        ssh -> penstock (recording on) -> sshd target
    penstock-norec  ssh -> penstock (recording off) -> sshd target

Measures (variants alternate run by run; medians and spread are reported): bulk throughput both
ways through `ssh … 'cat > /dev/null'` / `ssh … cat FILE` and scp, session setup (`ssh … true`,
key + TOTP for Penstock), keystroke echo latency through a PTY, gateway CPU seconds per GiB, and
gateway memory with many idle sessions, with many streaming sessions, and with a target that
reads slower than the vendor sends. Every leg is pinned to one cipher and one key exchange; the
negotiated ciphers are printed. Prints a table; `--json` writes the figures for machines.

Needs root (sshd privilege separation, a local account `pstarget` for the target logins), the
OpenSSH client and server, and a release build of penstock (`--penstock PATH`, `$PENSTOCK_BIN`,
or target/release/penstock). Standard library only.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

CIPHER = "aes128-gcm@openssh.com"
KEX = "curve25519-sha256"
MIB = 1 << 20
GIB = 1 << 30
TARGET_USER = "pstarget"
TARGET_NAME = "bench"
VARIANTS = ["direct", "jump", "penstock", "penstock-norec"]
GATEWAYS = ["jump", "penstock", "penstock-norec"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = dict(
    bulk_bytes=GIB, bulk_iters=5, setup_n=50, latency_n=2000, idle_n=500, stream_n=100, stream_secs=6.0,
    slow_n=8, slow_secs=30.0, settle_secs=1.5,
)
QUICK = dict(
    bulk_bytes=4 * MIB, bulk_iters=2, setup_n=3, latency_n=20, idle_n=4, stream_n=2, stream_secs=0.5,
    slow_n=1, slow_secs=1.0, settle_secs=0.3,
)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# small helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited at start (status {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{what} does not answer on port {port}")


def sh(argv, input=None, check=True, env=None):
    p = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return p


def totp(secret_b32, step):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def pct(values, p):
    """Percentile with linear interpolation (p in 0..100)."""
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values):
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": values,
    }


def rotated(items, i):
    i %= len(items)
    return items[i:] + items[:i]


# /proc readers ----------------------------------------------------------------------------------


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14 -> rest[11]
    return {
        "ppid": int(rest[1]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
    }


def cpu_seconds(pid, children=False):
    s = proc_stat(pid)
    t = s["utime"] + s["stime"]
    if children:
        t += s["cutime"] + s["cstime"]
    return t / CLK_TCK


def children_map():
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            pp = proc_stat(int(d))["ppid"]
        except (OSError, ValueError, IndexError):
            continue
        m.setdefault(pp, []).append(int(d))
    return m


def tree(pid, cmap=None):
    cmap = cmap if cmap is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(cmap.get(p, []))
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuGroups:
    """CPU accounting per service through cgroup v2 (`cpu.stat` counts every process that ever
    ran in the group, including the per-connection sshd children that exit during a run). Without
    a writable cgroup v2 the root process's own and reaped children's times are used instead."""

    def __init__(self, names):
        self.root = None
        self.paths = {}
        mnt = None
        try:
            with open("/proc/mounts") as f:
                for line in f:
                    parts = line.split()
                    if parts[2] == "cgroup2":
                        mnt = parts[1]
                        break
        except OSError:
            pass
        if mnt is None:
            return
        try:
            with open("/proc/self/cgroup") as f:
                own = next((l.split(":", 2)[2].strip() for l in f if l.startswith("0::")), "/")
            root = os.path.join(mnt + own, f"penstock-bench-{os.getpid()}")
            os.mkdir(root)
            for n in names:
                os.mkdir(os.path.join(root, n))
                self.paths[n] = os.path.join(root, n)
            self.root = root
        except OSError as e:
            log(f"no cgroup v2 accounting ({e}); falling back to /proc times")
            self.paths = {}

    def enter(self, name):
        """A preexec_fn that moves the child into group `name`."""
        path = self.paths.get(name)
        if path is None:
            return None

        def move():
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")
        return move

    def usage(self, name, pid):
        path = self.paths.get(name)
        if path is None:
            return cpu_seconds(pid, children=True)
        with open(os.path.join(path, "cpu.stat")) as f:
            for line in f:
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
        return 0.0

    def close(self):
        if self.root is None:
            return
        for path in self.paths.values():
            try:
                with open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                pass
        for path in list(self.paths.values()) + [self.root]:
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# the environment: sshd target, sshd jump host, penstock


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {hostkey}
PidFile {dir}/{name}.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Ciphers {cipher}
KexAlgorithms {kex}
HostKeyAlgorithms ssh-ed25519
PubkeyAcceptedAlgorithms ssh-ed25519
Compression no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding {forwarding}
AllowAgentForwarding no
PermitTunnel no
ClientAliveInterval 0
MaxStartups 2000
MaxSessions 10
LoginGraceTime 120
LogLevel DEBUG1
Subsystem sftp /usr/lib/openssh/sftp-server
"""

CLIENT_CONFIG = """\
Host *
  Ciphers {cipher}
  KexAlgorithms {kex}
  HostKeyAlgorithms ssh-ed25519
  IdentityFile {key}
  IdentitiesOnly yes
  PreferredAuthentications publickey,keyboard-interactive
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking no
  CheckHostIP no
  UpdateHostKeys no
  ControlMaster no
  ControlPath none
  Compression no
  ForwardAgent no
  ForwardX11 no
  EscapeChar none
  LogLevel ERROR
  ConnectTimeout 30
  ServerAliveInterval 0
"""

ASKPASS = """#!/bin/sh
printf '%s\\n' "$BENCH_TOTP"
"""


class UserPool:
    """Penstock users for logins. A TOTP step is accepted once per user (and only after the last
    one used), within ±1 step of now; each user therefore gives the current and the next step."""

    def __init__(self, users):
        self.users = users  # [(name, secret)]
        self.last = {u: -1 for u, _ in users}
        self.i = 0

    def take(self):
        while True:
            now = int(time.time()) // 30
            for _ in range(len(self.users)):
                name, secret = self.users[self.i]
                self.i = (self.i + 1) % len(self.users)
                for step in (now, now + 1):
                    if step > self.last[name]:
                        self.last[name] = step
                        return name, totp(secret, step)
            log("every benchmark user has used this TOTP step; waiting for the next one")
            time.sleep(30.2 - time.time() % 30)


class Gateway:
    """One `penstock serve` process."""

    def __init__(self, env_, name, recording):
        self.env_ = env_
        self.name = name
        self.recording = recording
        self.port = free_port()
        self.logpath = os.path.join(env_.dir, f"{name}.log")
        self.config = env_.pconfig
        self.proc = None

    def start(self):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("PENSTOCK_") or k == "RUST_LOG":
                del e[k]
        e.update({
            "PENSTOCK_SSH_LISTEN": f"127.0.0.1:{self.port}",
            "PENSTOCK_RECORDINGS_ENABLED": "true" if self.recording else "false",
            # The benchmark logs in a thousand times from one address; a lockout would end the run.
            "PENSTOCK_AUTH_MAX_FAILURES": "1000000",
            # One SSH gateway per variant: the web console and RDP listeners would share ports.
            "PENSTOCK_WEB_ENABLED": "false",
            "PENSTOCK_RDP_ENABLED": "false",
            "PENSTOCK_SSH_MAX_PENDING_LOGINS": "256",
            # Every benchmark vendor logs in from 127.0.0.1 (the jump sshd gets MaxStartups 2000 for
            # the same reason); the default of 16 per source would drop logins while 100 stream.
            "PENSTOCK_SSH_MAX_PENDING_PER_SOURCE": "256",
        })
        for kv in self.env_.args.gateway_env or []:
            k, _, v = kv.partition("=")
            e[k] = v
        for spec in self.env_.args.gateway_env_for or []:
            name, _, kv = spec.partition(":")
            k, _, v = kv.partition("=")
            if name == self.name:
                e[k] = v
        self.logf = open(self.logpath, "ab")
        binary = self.env_.penstock
        for spec in self.env_.args.gateway_bin_for or []:
            name, _, path = spec.partition(":")
            if name == self.name:
                binary = path
        self.proc = subprocess.Popen(
            [binary, "-c", self.config, "serve"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=e,
            preexec_fn=self.env_.cg.enter(self.name),
        )
        wait_port(self.port, self.proc, f"penstock ({self.name})")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def ended(self):
        with open(self.logpath, "rb") as f:
            return f.read().count(b"session ended")

    @property
    def pid(self):
        return self.proc.pid


class Env:
    def __init__(self, args):
        self.args = args
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="penstock-bench-")
        os.chmod(self.dir, 0o755)  # the target account reads the data file and authorized_keys
        self.penstock = find_penstock(args.penstock)
        self.gateways = {}
        self.cg = CpuGroups(["target", "jump", "penstock", "penstock-norec", "client"])
        self.cli_hangs = 0

    # -- setup ---------------------------------------------------------------------------------

    def setup(self, pool_size, data_bytes):
        if os.geteuid() != 0:
            raise BenchError("run as root: sshd needs privilege separation and a local target account")
        for tool in ("ssh", "scp", "ssh-keygen"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found (install openssh-client)")
        if not os.path.exists("/usr/sbin/sshd"):
            raise BenchError("/usr/sbin/sshd not found (install openssh-server)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        ensure_account(TARGET_USER)
        os.makedirs("/run/sshd", exist_ok=True)
        d = self.dir
        for k in ("client", "gateway", "target_host", "jump_host"):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bench-{k}", "-f", f"{d}/{k}_ed25519"])
        with open(f"{d}/authorized_keys", "w") as f:
            for k in ("client", "gateway"):
                f.write(open(f"{d}/{k}_ed25519.pub").read())
        os.chmod(f"{d}/authorized_keys", 0o644)
        with open(f"{d}/ssh_config", "w") as f:
            f.write(CLIENT_CONFIG.format(cipher=CIPHER, kex=KEX, key=f"{d}/client_ed25519"))
        with open(f"{d}/askpass", "w") as f:
            f.write(ASKPASS)
        os.chmod(f"{d}/askpass", 0o755)
        self.data_path = f"{d}/data.txt"
        if self.args.data == "binary":
            write_random_file(self.data_path, data_bytes)
        else:
            write_text_file(self.data_path, data_bytes)
        self.block = text_block(MIB)

        self.tport, self.jport = free_port(), free_port()
        self.target = self.start_sshd("target", self.tport, forwarding="no")
        self.jump = self.start_sshd("jump", self.jport, forwarding="yes")

        # Penstock: init, the target (key credential, pinned host key), users with keys and grants.
        pdir = f"{d}/penstock"
        sh([self.penstock, "init", "--dir", pdir])
        self.pconfig = f"{pdir}/penstock.toml"
        self.recordings = f"{pdir}/recordings"
        self.cli(["target", "add", TARGET_NAME, "--address", f"127.0.0.1:{self.tport}", "--login", TARGET_USER,
                  "--key-file", f"{d}/gateway_ed25519",
                  "--host-key", open(f"{d}/target_sshd_key.pub").read().strip()])
        log(f"creating {pool_size} Penstock users (key + TOTP, each with a grant)")
        users = []
        for i in range(pool_size):
            name = f"b{i:04d}"
            out = self.cli(["user", "add", name, "--role", "vendor", "--no-password"], done="otpauth://")
            m = re.search(r"secret=([A-Z2-7]+)", out)
            if not m:
                raise BenchError(f"no TOTP secret in `user add` output: {out[-300:]}")
            self.cli(["user", "add-key", name, "--key-file", f"{d}/client_ed25519.pub"], done="added to")
            self.cli(["grant", "add", "--user", name, "--target", TARGET_NAME, "--for", "12h"], done="issued")
            users.append((name, m.group(1)))
        self.pool = UserPool(users)
        # SQLite holds one `serve`: the gateway without recording gets a copy of the installation
        # (same keys, users and grants; its own store and node id).
        shutil.copytree(pdir, f"{pdir}-norec")
        for name, rec in (("penstock", True), ("penstock-norec", False)):
            g = Gateway(self, name, rec)
            g.config = self.pconfig if rec else f"{pdir}-norec/penstock.toml"
            g.start()
            self.gateways[name] = g

    def cli(self, args, done=None):
        """Runs `penstock -c CONFIG ARGS`. `done`: text in its output that proves the work is
        done, so a process that hangs at exit (sqlx's pool reaper can spin forever there, see
        launchbadge/sqlx#3645) is killed and the run goes on."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_")}
        argv = [self.penstock, "-c", self.pconfig] + args
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=e, timeout=30)
        except subprocess.TimeoutExpired as t:
            out = (t.stdout or b"").decode(errors="replace")
            if done and done in out:
                log(f"warning: `penstock {' '.join(args[:2])}` hung after finishing its work; killed it")
                self.cli_hangs += 1
                return out
            raise BenchError(f"penstock {' '.join(args)} timed out: {out[-300:]}")
        if p.returncode != 0:
            raise BenchError(f"penstock {' '.join(args)} failed ({p.returncode}): "
                             f"{p.stderr.decode(errors='replace')}")
        return p.stdout.decode(errors="replace")

    def start_sshd(self, name, port, forwarding):
        d = self.dir
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{name}_sshd_key"])
        cfg = f"{d}/{name}_sshd_config"
        with open(cfg, "w") as f:
            f.write(SSHD_CONFIG.format(port=port, hostkey=f"{d}/{name}_sshd_key", dir=d, name=name, cipher=CIPHER,
                                       kex=KEX, forwarding=forwarding))
        sh(["/usr/sbin/sshd", "-t", "-f", cfg])
        p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", cfg, "-E", f"{d}/{name}_sshd.log"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=self.cg.enter(name))
        self.procs.append(p)
        wait_port(port, p, f"sshd ({name})")
        return p

    def close(self):
        for g in self.gateways.values():
            try:
                g.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.cg.close()
        if self.args.keep:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------------

    def ssh(self, variant, remote, tty=False, verbose=False):
        """argv and environment of an `ssh` through `variant` running `remote`."""
        argv = ["ssh", "-F", f"{self.dir}/ssh_config", "-tt" if tty else "-T"]
        if verbose:
            argv.append("-v")
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        if variant == "direct":
            argv += ["-p", str(self.tport), "-l", TARGET_USER, "127.0.0.1"]
        elif variant == "jump":
            argv += ["-J", f"{TARGET_USER}@127.0.0.1:{self.jport}", "-p", str(self.tport), "-l", TARGET_USER,
                     "127.0.0.1"]
        else:
            user, code = self.pool.take()
            argv += ["-p", str(self.gateways[variant].port), "-l", f"{user}@{TARGET_NAME}", "127.0.0.1"]
            env.update({"SSH_ASKPASS": f"{self.dir}/askpass", "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0",
                        "BENCH_TOTP": code})
        return argv + [remote], env

    def scp(self, variant, upload, local, remote):
        argv = ["scp", "-q", "-F", f"{self.dir}/ssh_config"]
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        if variant == "direct":
            argv += ["-P", str(self.tport)]
            user = TARGET_USER
        elif variant == "jump":
            argv += ["-J", f"{TARGET_USER}@127.0.0.1:{self.jport}", "-P", str(self.tport)]
            user = TARGET_USER
        else:
            name, code = self.pool.take()
            argv += ["-P", str(self.gateways[variant].port)]
            user = f"{name}@{TARGET_NAME}"
            env.update({"SSH_ASKPASS": f"{self.dir}/askpass", "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0",
                        "BENCH_TOTP": code})
        spec = f"{user}@127.0.0.1:{remote}"
        return argv + ([local, spec] if upload else [spec, local]), env

    # -- accounting ----------------------------------------------------------------------------

    def quiesce(self, variant, ended_before=None, timeout=30.0):
        """Waits until the sessions of a run are gone everywhere (so CPU is accounted)."""
        end = time.monotonic() + timeout
        listeners = [self.target.pid] + ([self.jump.pid] if variant == "jump" else [])
        while time.monotonic() < end:
            cmap = children_map()
            busy = any(cmap.get(p) for p in listeners)
            if variant in self.gateways and ended_before is not None:
                busy = busy or self.gateways[variant].ended() <= ended_before
            if not busy:
                return
            time.sleep(0.02)
        log(f"warning: {variant}: sessions still around after {timeout:.0f} s")

    def gateway_cpu(self, variant):
        if variant == "jump":
            return self.cg.usage("jump", self.jump.pid)
        if variant in self.gateways:
            return self.cg.usage(variant, self.gateways[variant].pid)
        return None

    def target_cpu(self):
        return self.cg.usage("target", self.target.pid)

    def client_cpu(self):
        return self.cg.usage("client", os.getpid())

    def gateway_mem(self, variant):
        """(rss KiB, pss KiB, hwm KiB or None, processes) of the gateway."""
        if variant == "jump":
            pids = tree(self.jump.pid)
            return (sum(status_kib(p, "VmRSS") for p in pids), sum(pss_kib(p) for p in pids), None, len(pids))
        pid = self.gateways[variant].pid
        return (status_kib(pid, "VmRSS"), pss_kib(pid), status_kib(pid, "VmHWM"), 1)

    def clear_recordings(self):
        if os.path.isdir(self.recordings):
            for e in os.listdir(self.recordings):
                shutil.rmtree(os.path.join(self.recordings, e), ignore_errors=True)


def find_penstock(given):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "target"))
    for c in (given, os.environ.get("PENSTOCK_BIN"), os.path.join(target_dir, "release", "penstock")):
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise BenchError("penstock binary not found: run `cargo build --release` or pass --penstock PATH")


def ensure_account(name):
    try:
        import pwd
        pwd.getpwnam(name)
        exists = True
    except KeyError:
        exists = False
    if not exists:
        sh(["useradd", "--create-home", "--shell", "/bin/bash", name])
    locked = True
    with open("/etc/shadow") as f:
        for line in f:
            parts = line.split(":")
            if parts[0] == name:
                locked = parts[1].startswith("!") or parts[1] == ""
    if locked:
        # sshd (without PAM) refuses locked accounts even for keys; give it a random password.
        sh(["chpasswd"], input=f"{name}:{base64.b64encode(os.urandom(18)).decode()}\n".encode())


def text_block(n):
    """`n` bytes of printable text lines (what a terminal or log download looks like)."""
    rnd = random.Random(42)
    out = bytearray()
    while len(out) < n:
        raw = bytes(rnd.getrandbits(8) for _ in range(57))
        out += base64.b64encode(raw) + b"\n"
    return bytes(out[:n])


def write_random_file(path, size):
    """`size` random bytes (what a firmware image or an archive looks like)."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    os.chmod(path, 0o644)


def write_text_file(path, size):
    block = text_block(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    os.chmod(path, 0o644)


# ---------------------------------------------------------------------------------------------
# measurements


def run_checked(argv, env, what, timeout=120, stdin=subprocess.DEVNULL, preexec=None):
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       preexec_fn=preexec)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise BenchError(f"{what}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[-500:]}")
    return dt, p


def negotiated(env_):
    """The cipher of every leg, as the peers report it."""
    out = {}
    for v in VARIANTS:
        tlog = f"{env_.dir}/target_sshd.log"
        jlog = f"{env_.dir}/jump_sshd.log"
        tpos, jpos = os.path.getsize(tlog), os.path.getsize(jlog)
        argv, e = env_.ssh(v, "true", verbose=True)
        _, p = run_checked(argv, e, f"{v}: ssh -v true")
        env_.quiesce(v)
        client = re.findall(r"kex: server->client cipher: (\S+)", p.stderr.decode(errors="replace"))
        kex = re.findall(r"kex: algorithm: (\S+)", p.stderr.decode(errors="replace"))
        with open(tlog, "rb") as f:
            f.seek(tpos)
            tgt = re.findall(rb"kex: client->server cipher: (\S+)", f.read())
        with open(jlog, "rb") as f:
            f.seek(jpos)
            jmp = re.findall(rb"kex: client->server cipher: (\S+)", f.read())
        legs = {}
        if v == "direct":
            legs["client -> target (client says)"] = client
            legs["client -> target (target sshd says)"] = [c.decode() for c in tgt]
        elif v == "jump":
            legs["client -> jump, client -> target through it (client says)"] = client
            legs["client -> jump (jump sshd says)"] = [c.decode() for c in jmp]
            legs["client -> target (target sshd says)"] = [c.decode() for c in tgt]
        else:
            legs["client -> penstock (client says)"] = client
            legs["penstock -> target (target sshd says)"] = [c.decode() for c in tgt]
        out[v] = {"legs": legs, "kex": kex}
        flat = [c for cs in legs.values() for c in cs]
        if not flat or any(c != CIPHER for c in flat):
            raise BenchError(f"{v}: a leg did not negotiate {CIPHER}: {legs}")
    return out


def measure_setup(env_, n):
    times = {v: [] for v in VARIANTS}
    for i in range(n):
        for v in rotated(VARIANTS, i):
            argv, e = env_.ssh(v, "true")
            ended = env_.gateways[v].ended() if v in env_.gateways else None
            dt, _ = run_checked(argv, e, f"{v}: ssh true")
            times[v].append(dt * 1000)
            env_.quiesce(v, ended)
    return {v: {"median_ms": statistics.median(t), "p90_ms": pct(t, 90), "samples_ms": t} for v, t in times.items()}


def read_until(fd, token, timeout=30.0):
    buf = b""
    end = time.monotonic() + timeout
    while token not in buf:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise BenchError(f"timed out waiting for {token!r} (got {buf[-200:]!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise BenchError(f"EOF waiting for {token!r} (got {buf[-200:]!r})")
        buf += chunk
    return buf


def measure_latency(env_, n):
    sess = {}
    try:
        for v in VARIANTS:
            argv, e = env_.ssh(v, "stty raw -echo; echo READY; exec cat", tty=True)
            p = subprocess.Popen(argv, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 bufsize=0)
            sess[v] = p
            read_until(p.stdout.fileno(), b"READY\n")
        samples = {v: [] for v in VARIANTS}
        rnd = random.Random(7)
        for i in range(n):
            for v in rotated(VARIANTS, i):
                p = sess[v]
                rfd, wfd = p.stdout.fileno(), p.stdin.fileno()
                ch = bytes([97 + (i % 26)])
                t0 = time.perf_counter_ns()
                os.write(wfd, ch)
                if not select.select([rfd], [], [], 10)[0]:
                    raise BenchError(f"{v}: keystroke not echoed within 10 s")
                got = os.read(rfd, 16)
                t1 = time.perf_counter_ns()
                if got != ch:
                    raise BenchError(f"{v}: echoed {got!r}, expected {ch!r}")
                samples[v].append((t1 - t0) / 1e6)
                time.sleep(0.003 + rnd.random() * 0.004)  # a typist's gap
    finally:
        for p in sess.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in sess.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    for v in VARIANTS:
        env_.quiesce(v)
    return {v: {"p50_ms": pct(s, 50), "p99_ms": pct(s, 99), "mean_ms": statistics.mean(s), "samples_ms": s}
            for v, s in samples.items()}


def bulk_ssh(env_, v, upload, size):
    """One `ssh … 'cat > /dev/null'` (upload) or `ssh … cat FILE` (download). Throughput is taken
    from the first MiB moved (the login is over) to the end, and also over the whole run."""
    warm = min(MIB, size // 8)
    remote = "cat > /dev/null" if upload else f"cat {env_.data_path}"
    argv, e = env_.ssh(v, remote)
    errf = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    if upload:
        p = subprocess.Popen(argv, env=e, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf, bufsize=0,
                             preexec_fn=env_.cg.enter("client"))
        fd = p.stdin.fileno()
        block = memoryview(env_.block)
        sent, t_warm = 0, None
        try:
            while sent < size:
                n = min(len(block), size - sent)
                m = 0
                while m < n:
                    m += os.write(fd, block[m:n])
                sent += n
                if t_warm is None and sent >= warm:
                    t_warm, warm_bytes = time.perf_counter(), sent
        except BrokenPipeError:
            pass
        p.stdin.close()
        rc = p.wait()
        moved = sent
    else:
        p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, bufsize=0,
                             preexec_fn=env_.cg.enter("client"))
        fd = p.stdout.fileno()
        got, t_warm = 0, None
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            got += len(chunk)
            if t_warm is None and got >= warm:
                t_warm, warm_bytes = time.perf_counter(), got
        rc = p.wait()
        moved = got
    t1 = time.perf_counter()
    if rc != 0 or moved != size:
        errf.seek(0)
        raise BenchError(f"{v}: bulk {'up' if upload else 'down'} moved {moved}/{size} bytes, exit {rc}: "
                         f"{errf.read().decode(errors='replace')[-500:]}")
    return {"mib_s": (size - warm_bytes) / MIB / (t1 - t_warm), "wall_mib_s": size / MIB / (t1 - t0),
            "secs": t1 - t0}


def bulk_scp(env_, v, upload, size):
    if upload:
        argv, e = env_.scp(v, True, env_.data_path, "/dev/null")
    else:
        argv, e = env_.scp(v, False, "/dev/null", env_.data_path)
    dt, _ = run_checked(argv, e, f"{v}: scp {'up' if upload else 'down'}", timeout=600,
                        preexec=env_.cg.enter("client"))
    return {"mib_s": size / MIB / dt, "wall_mib_s": size / MIB / dt, "secs": dt}


BULK_KINDS = [
    ("ssh_up", lambda env_, v, s: bulk_ssh(env_, v, True, s)),
    ("ssh_down", lambda env_, v, s: bulk_ssh(env_, v, False, s)),
    ("scp_up", lambda env_, v, s: bulk_scp(env_, v, True, s)),
    ("scp_down", lambda env_, v, s: bulk_scp(env_, v, False, s)),
]


def measure_bulk(env_, size, iters):
    res = {v: {k: [] for k, _ in BULK_KINDS} for v in VARIANTS}
    cpu = {v: {"gateway_s": 0.0, "target_s": 0.0, "client_s": 0.0, "bytes": 0, "per_run": []} for v in VARIANTS}
    r = 0
    for i in range(iters):
        for kind, fn in BULK_KINDS:
            for v in rotated(VARIANTS, r):
                ended = env_.gateways[v].ended() if v in env_.gateways else None
                env_.quiesce(v)
                g0, t0, c0 = env_.gateway_cpu(v), env_.target_cpu(), env_.client_cpu()
                m = fn(env_, v, size)
                env_.quiesce(v, ended)
                g1, t1, c1 = env_.gateway_cpu(v), env_.target_cpu(), env_.client_cpu()
                if g0 is not None:
                    cpu[v]["gateway_s"] += g1 - g0
                    cpu[v]["per_run"].append({"kind": kind, "gateway_s": g1 - g0, "gib": size / GIB})
                cpu[v]["target_s"] += t1 - t0
                cpu[v]["client_s"] += c1 - c0
                cpu[v]["bytes"] += size
                res[v][kind].append(m)
                log(f"  {kind:8} {v:15} {m['mib_s']:8.1f} MiB/s"
                    + (f"  gateway {g1 - g0:5.2f} s CPU" if g0 is not None else ""))
                if v == "penstock":
                    env_.clear_recordings()
            r += 1
    out = {}
    for v in VARIANTS:
        out[v] = {k: summary([m["mib_s"] for m in res[v][k]]) for k, _ in BULK_KINDS}
        for k, _ in BULK_KINDS:
            out[v][k]["wall_median"] = statistics.median(m["wall_mib_s"] for m in res[v][k])
        gib = cpu[v]["bytes"] / GIB
        out[v]["gateway_cpu_s_per_gib"] = cpu[v]["gateway_s"] / gib if v in GATEWAYS else None
        if v in GATEWAYS:
            out[v]["gateway_cpu_s_per_gib_runs"] = [x["gateway_s"] / x["gib"] for x in cpu[v]["per_run"]]
        out[v]["target_cpu_s_per_gib"] = cpu[v]["target_s"] / gib
        out[v]["client_cpu_s_per_gib"] = cpu[v]["client_s"] / gib
    return out


def close_all(procs, how=signal.SIGTERM, timeout=30.0):
    for p in procs:
        if p.poll() is None:
            try:
                if how is None:
                    p.stdin.close()
                else:
                    p.send_signal(how)
            except OSError:
                pass
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def fresh_gateway(env_, v, settle):
    """A fresh gateway process (so its peak RSS belongs to this measurement), warmed by one login."""
    if v in env_.gateways:
        env_.gateways[v].restart()
    argv, e = env_.ssh(v, "true")
    run_checked(argv, e, f"{v}: warm-up")
    env_.quiesce(v)
    time.sleep(settle / 5)


def measure_idle(env_, n, settle):
    out = {}
    for v in GATEWAYS:
        fresh_gateway(env_, v, settle)
        rss0, pss0, _, _ = env_.gateway_mem(v)
        procs = []
        try:
            batch = 16
            for b in range(0, n, batch):
                started = []
                for _ in range(min(batch, n - b)):
                    argv, e = env_.ssh(v, "echo ok; exec cat")
                    p = subprocess.Popen(argv, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, bufsize=0)
                    procs.append(p)
                    started.append(p)
                for p in started:
                    read_until(p.stdout.fileno(), b"ok\n", timeout=120)
            time.sleep(settle)
            rss1, pss1, hwm, nproc = env_.gateway_mem(v)
        finally:
            close_all(procs, how=None)
        env_.quiesce(v, timeout=120)
        out[v] = {
            "sessions": n,
            "rss_before_kib": rss0,
            "rss_kib": rss1,
            "peak_rss_kib": hwm if hwm is not None else rss1,
            "pss_kib": pss1,
            "processes": nproc,
            "kib_per_session": (rss1 - rss0) / n,
            "pss_kib_per_session": (pss1 - pss0) / n,
        }
        log(f"  idle {v:15} {n} sessions: {(rss1 - rss0) / n:8.1f} KiB RSS/session "
            f"({(pss1 - pss0) / n:.1f} KiB PSS), peak {out[v]['peak_rss_kib'] / 1024:.1f} MiB")
    return out


def measure_streaming(env_, n, secs, settle):
    out = {}
    for v in GATEWAYS:
        fresh_gateway(env_, v, settle)
        rss0, pss0, _, _ = env_.gateway_mem(v)
        procs, peak_rss, peak_pss = [], rss0, pss0
        zero = open("/dev/zero", "rb")
        try:
            for i in range(n):
                if i % 2 == 0:
                    argv, e = env_.ssh(v, "cat > /dev/null")
                    p = subprocess.Popen(argv, env=e, stdin=zero, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                else:
                    argv, e = env_.ssh(v, "exec yes 'penstock benchmark: a line of text output streaming by'")
                    p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                procs.append(p)
                if i % 8 == 7:
                    time.sleep(0.2)
            end = time.monotonic() + secs
            while time.monotonic() < end:
                rss, pss, _, _ = env_.gateway_mem(v)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(0.25)
            rss, pss, hwm, nproc = env_.gateway_mem(v)
            peak_rss = max(peak_rss, rss, hwm or 0)
            peak_pss = max(peak_pss, pss)
            alive = sum(1 for p in procs if p.poll() is None)
            if alive < n:
                raise BenchError(f"{v}: only {alive}/{n} streaming sessions survived")
        finally:
            close_all(procs)
            zero.close()
        env_.quiesce(v, timeout=120)
        if v == "penstock":
            env_.clear_recordings()
        out[v] = {
            "sessions": n,
            "rss_before_kib": rss0,
            "peak_rss_kib": peak_rss,
            "peak_pss_kib": peak_pss,
            "kib_per_session": (peak_rss - rss0) / n,
            "pss_kib_per_session": (peak_pss - pss0) / n,
        }
        log(f"  streaming {v:15} {n} sessions: peak {peak_rss / 1024:.1f} MiB, "
            f"{(peak_rss - rss0) / n:.0f} KiB/session")
    return out


SLOW_READER = "while [ \"$(head -c 65536 | wc -c)\" -gt 0 ]; do sleep 0.1; done"


def measure_slow_target(env_, n, secs, settle):
    """Vendors send as fast as they can; the target reads ~640 KiB/s. Memory must stay flat."""
    out = {}
    for v in GATEWAYS:
        fresh_gateway(env_, v, settle)
        _, pss0, _, _ = env_.gateway_mem(v)
        procs, series = [], []
        zero = open("/dev/zero", "rb")
        try:
            for _ in range(n):
                argv, e = env_.ssh(v, SLOW_READER)
                procs.append(subprocess.Popen(argv, env=e, stdin=zero, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            time.sleep(secs / 6)  # logins, and the queues filling up
            t0 = time.monotonic()
            cpu0 = env_.gateway_cpu(v)
            while time.monotonic() - t0 < secs:
                time.sleep(secs / 30)
                rss, pss, _, _ = env_.gateway_mem(v)
                series.append((round(time.monotonic() - t0, 2), rss, pss))
            cpu1 = env_.gateway_cpu(v)
            # Gateway CPU while every vendor is held back: a relay that spins on tiny window
            # grants shows here.
            busy = (cpu1 - cpu0) / (time.monotonic() - t0) if cpu0 is not None and cpu1 is not None else None
        finally:
            close_all(procs)
            zero.close()
            # What the vendors queued is still being fed to the slow reader; don't wait for it.
            if v in env_.gateways:
                env_.gateways[v].restart()
        env_.quiesce(v, timeout=120)
        # PSS: the jump host is many processes sharing their libraries; Penstock is one (PSS ~ RSS).
        half = len(series) // 2
        first, second = max(p for _, _, p in series[:half]), max(p for _, _, p in series[half:])
        peak = max(p for _, _, p in series)
        out[v] = {
            "sessions": n,
            "pss_before_kib": pss0,
            "peak_rss_kib": max(r for _, r, _ in series),
            "peak_pss_kib": peak,
            "growth_second_half_kib": second - first,
            "gateway_cpu_share": busy,
            "kib_per_session": (peak - pss0) / n,
            "series_t_rss_pss_kib": series,
        }
        log(f"  slow target {v:15} peak {peak / 1024:.1f} MiB PSS ({(peak - pss0) / n / 1024:.1f} MiB/session), "
            f"second half grew {second - first} KiB, gateway CPU "
            f"{'-' if busy is None else f'{busy * 100:.1f}%'} of a core")
    return out


# ---------------------------------------------------------------------------------------------
# report


def goals(res):
    b, s, lat, idle, slow = res["bulk"], res["setup"], res["latency"], res["idle"], res["slow_target"]
    g = []

    def add(name, figure, target, met):
        g.append({"goal": name, "measured": figure, "target": target, "met": bool(met)})

    for k, _ in BULK_KINDS:
        ratio = b["penstock"][k]["median"] / b["jump"][k]["median"]
        add(f"throughput {k} (recording on) vs jump host", f"{ratio:.2f}x", ">= 1.00x", ratio >= 1.0)
    for k, _ in BULK_KINDS:
        cost = 1 - b["penstock"][k]["median"] / b["penstock-norec"][k]["median"]
        add(f"recording cost, {k}", f"{cost * 100:.1f}%", "<= 5%", cost <= 0.05)
    ratio = b["penstock"]["gateway_cpu_s_per_gib"] / b["jump"]["gateway_cpu_s_per_gib"]
    add("gateway CPU per GiB vs jump host sshd", f"{ratio:.2f}x ({b['penstock']['gateway_cpu_s_per_gib']:.2f} vs "
        f"{b['jump']['gateway_cpu_s_per_gib']:.2f} s/GiB)", "<= 1.10x", ratio <= 1.10)
    ratio = s["penstock"]["median_ms"] / s["jump"]["median_ms"]
    add("session setup median vs jump host", f"{ratio:.2f}x ({s['penstock']['median_ms']:.0f} vs "
        f"{s['jump']['median_ms']:.0f} ms)", "<= 1.20x", ratio <= 1.20)
    added = lat["penstock"]["p99_ms"] - lat["direct"]["p99_ms"]
    add("added keystroke latency p99 over direct", f"{added:+.3f} ms", "<= 1 ms", added <= 1.0)
    per = idle["penstock"]["kib_per_session"]
    add("gateway memory per idle session", f"{per:.0f} KiB", "<= 256 KiB", per <= 256)
    grew = slow["penstock"]["growth_second_half_kib"]
    n = slow["penstock"]["sessions"]
    add("memory flat with a slow target", f"{grew:+d} KiB in the second half ({n} sessions), "
        f"{slow['penstock']['kib_per_session'] / 1024:.1f} MiB/session", "<= 1 MiB growth per session",
        grew <= 1024 * n)
    return g


def table(res):
    lines = []
    cols = VARIANTS
    w = 22

    def row(label, vals):
        lines.append(f"{label:<34}" + "".join(f"{x:>{w}}" for x in vals))

    def rng(d, fmt="{:.0f}"):
        return f"{fmt.format(d['median'])} [{fmt.format(d['min'])}-{fmt.format(d['max'])}]"

    row("measure", cols)
    lines.append("-" * (34 + w * len(cols)))
    b = res["bulk"]
    for k, label in (("ssh_up", "ssh upload MiB/s"), ("ssh_down", "ssh download MiB/s"),
                     ("scp_up", "scp upload MiB/s"), ("scp_down", "scp download MiB/s")):
        row(label + " med [min-max]", [rng(b[v][k]) for v in cols])
    row("gateway CPU s/GiB", ["-" if b[v]["gateway_cpu_s_per_gib"] is None else
                              f"{b[v]['gateway_cpu_s_per_gib']:.2f}" for v in cols])
    row("target sshd CPU s/GiB", [f"{b[v]['target_cpu_s_per_gib']:.2f}" for v in cols])
    row("client ssh/scp CPU s/GiB", [f"{b[v]['client_cpu_s_per_gib']:.2f}" for v in cols])
    s = res["setup"]
    row("setup ms median / p90", [f"{s[v]['median_ms']:.0f} / {s[v]['p90_ms']:.0f}" for v in cols])
    lat = res["latency"]
    row("echo latency ms p50 / p99", [f"{lat[v]['p50_ms']:.3f} / {lat[v]['p99_ms']:.3f}" for v in cols])
    row("added p99 latency over direct ms", [f"{lat[v]['p99_ms'] - lat['direct']['p99_ms']:+.3f}" for v in cols])
    i = res["idle"]
    n = res["sizes"]["idle_n"]
    row(f"{n} idle: gateway peak RSS MiB", ["-"] + [f"{i[v]['peak_rss_kib'] / 1024:.1f}" for v in GATEWAYS])
    row("idle: KiB/session RSS (PSS)", ["-"] + [f"{i[v]['kib_per_session']:.0f} ({i[v]['pss_kib_per_session']:.0f})"
                                               for v in GATEWAYS])
    st = res["streaming"]
    n = res["sizes"]["stream_n"]
    row(f"{n} streaming: peak RSS MiB", ["-"] + [f"{st[v]['peak_rss_kib'] / 1024:.1f}" for v in GATEWAYS])
    row("streaming: KiB/session RSS (PSS)", ["-"] + [f"{st[v]['kib_per_session']:.0f} ({st[v]['pss_kib_per_session']:.0f})"
                                                    for v in GATEWAYS])
    sl = res["slow_target"]
    n = res["sizes"]["slow_n"]
    row(f"{n} slow targets: peak PSS MiB", ["-"] + [f"{sl[v]['peak_pss_kib'] / 1024:.1f}" for v in GATEWAYS])
    row("slow: MiB/session PSS", ["-"] + [f"{sl[v]['kib_per_session'] / 1024:.1f}" for v in GATEWAYS])
    row("slow: growth in 2nd half KiB", ["-"] + [f"{sl[v]['growth_second_half_kib']:+d}" for v in GATEWAYS])
    row("slow: gateway CPU % of a core", ["-"] + [
        "-" if sl[v].get("gateway_cpu_share") is None else f"{sl[v]['gateway_cpu_share'] * 100:.1f}" for v in GATEWAYS])
    return "\n".join(lines)


def main():
    global VARIANTS, GATEWAYS, BULK_KINDS, CIPHER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (the test suite's smoke run)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--penstock", metavar="PATH", help="penstock binary (default: $PENSTOCK_BIN, target/release)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--only", default="setup,latency,bulk,idle,streaming,slow",
                    help="comma-separated phases (default: all)")
    ap.add_argument("--cipher", default=CIPHER, help=f"the cipher pinned on every leg (default {CIPHER})")
    ap.add_argument("--gateway-env", action="append", metavar="K=V",
                    help="extra environment for the penstock processes (experiments)")
    ap.add_argument("--gateway-env-for", action="append", metavar="GATEWAY:K=V",
                    help="extra environment for one gateway (penstock or penstock-norec), for A/B runs")
    ap.add_argument("--gateway-bin-for", action="append", metavar="GATEWAY:PATH",
                    help="another penstock binary for one gateway, for A/B runs of two builds")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of variants")
    ap.add_argument("--data", choices=("text", "binary"), default="text",
                    help="the bulk file: base64 text lines (default) or random bytes")
    ap.add_argument("--kinds", default=",".join(k for k, _ in BULK_KINDS), help="comma-separated bulk kinds")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"(default {v})")
    args = ap.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    phases = set(args.only.split(","))
    CIPHER = args.cipher
    VARIANTS = [v for v in VARIANTS if v in args.variants.split(",")]
    GATEWAYS = [v for v in GATEWAYS if v in VARIANTS]
    BULK_KINDS = [k for k in BULK_KINDS if k[0] in args.kinds.split(",")]

    env_ = Env(args)
    started = time.time()
    load0 = os.getloadavg()
    res = {"sizes": sizes, "cipher": CIPHER, "kex": KEX}
    try:
        # Logins needed at once: the idle sessions of one variant, plus slack.
        pool = max(sizes["idle_n"], sizes["stream_n"], 8) + 16
        env_.setup(pool, sizes["bulk_bytes"])
        log(f"penstock {env_.penstock}; target sshd :{env_.tport}, jump sshd :{env_.jport}, penstock :"
            f"{env_.gateways['penstock'].port} (recording) / :{env_.gateways['penstock-norec'].port} (no recording)")
        res["negotiated"] = negotiated(env_)
        for v, n in res["negotiated"].items():
            log(f"  {v}: " + "; ".join(f"{leg}: {', '.join(c)}" for leg, c in n["legs"].items()))
        if "setup" in phases:
            log(f"session setup: {sizes['setup_n']} x ssh true per variant")
            res["setup"] = measure_setup(env_, sizes["setup_n"])
        if "latency" in phases:
            log(f"keystroke echo latency: {sizes['latency_n']} keystrokes per variant")
            res["latency"] = measure_latency(env_, sizes["latency_n"])
        if "bulk" in phases:
            log(f"bulk: {sizes['bulk_bytes'] / MIB:.0f} MiB, {sizes['bulk_iters']} runs per variant and kind")
            res["bulk"] = measure_bulk(env_, sizes["bulk_bytes"], sizes["bulk_iters"])
        if "idle" in phases:
            log(f"memory: {sizes['idle_n']} idle sessions")
            res["idle"] = measure_idle(env_, sizes["idle_n"], sizes["settle_secs"])
        if "streaming" in phases:
            log(f"memory: {sizes['stream_n']} streaming sessions")
            res["streaming"] = measure_streaming(env_, sizes["stream_n"], sizes["stream_secs"], sizes["settle_secs"])
        if "slow" in phases:
            log(f"memory: {sizes['slow_n']} sessions to a slow target")
            res["slow_target"] = measure_slow_target(env_, sizes["slow_n"], sizes["slow_secs"], sizes["settle_secs"])
    finally:
        env_.close()
    res["meta"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "ssh_version": subprocess.run(["ssh", "-V"], capture_output=True).stderr.decode().strip(),
        "penstock": env_.penstock,
        "quick": args.quick,
        "cli_hangs_killed": env_.cli_hangs,
    }
    complete = all(k in res for k in ("setup", "latency", "bulk", "idle", "streaming", "slow_target")) and \
        len(VARIANTS) == 4 and len(BULK_KINDS) == 4
    if complete:
        res["goals"] = goals(res)
        print(table(res))
        print()
        for g in res["goals"]:
            print(f"{'MET ' if g['met'] else 'MISS'}  {g['goal']}: {g['measured']} (goal {g['target']})")
        b = res["bulk"]
        print(f"info  gateway CPU per GiB without recording vs jump host: "
              f"{b['penstock-norec']['gateway_cpu_s_per_gib'] / b['jump']['gateway_cpu_s_per_gib']:.2f}x")
        print(f"info  CPU per GiB of everything (client + gateway + target): "
              + ", ".join(f"{v} {(b[v]['gateway_cpu_s_per_gib'] or 0) + b[v]['target_cpu_s_per_gib'] + b[v]['client_cpu_s_per_gib']:.2f} s"
                          for v in VARIANTS))
    if "negotiated" in res:
        print()
        for v, n in res["negotiated"].items():
            print(f"negotiated {v}: " + "; ".join(f"{leg}: {', '.join(c)}" for leg, c in n["legs"].items())
                  + f" (kex {', '.join(sorted(set(n['kex'])))})")
    print(f"\nnegotiated: every leg {CIPHER}, kex {KEX}; load average {load0[0]:.2f} -> "
          f"{res['meta']['loadavg_end'][0]:.2f}; {res['meta']['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the temporary sshds and gateways are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

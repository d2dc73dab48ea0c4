"""Benchmark: ``opsq agent`` vs rsyslog imfile -> omhiredis, same file, same Redis, one run.

1. Generates a 1,000,000-line file (~115 MB, lines of varying length).
2. Starts a private valkey-server (AOF off for both: the disk is not what we compare).
3. rsyslog: ``rsyslogd -n`` with imfile (inotify) -> omhiredis, stream mode if this
   omhiredis has it, else queue mode (LPUSH, Debian 12's 8.2302 has no stream mode);
   timed from process start until all 1M lines are in Redis.
4. ``opsq agent`` on the same file into the stream, timed from process start until
   the last entry covers the end of the file (every record in the stream).
5. Agent peak RSS (VmHWM) with no shipper running, i.e. with the whole 1M-line backlog
   left in the stream: the agent must not grow with the backlog.

Each side runs ``ROUNDS`` times on a fresh database; the median is reported.
Installs ``rsyslog`` and ``rsyslog-hiredis`` with apt-get when missing.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml

from opsq.core.logformat import decode
from opsq.core.redis_server import RedisServer, free_port

LINES = 1_000_000
ROUNDS = 3
STREAM = "opsq:bench:logs"
RSYSLOG_KEY = "bench:rsyslog"
OMHIREDIS = Path("/usr/lib/x86_64-linux-gnu/rsyslog/omhiredis.so")
OPSQ = str(Path(sys.executable).with_name("opsq"))
RSS_TARGET_MB = 60
TIMEOUT_S = 300


def ensure_rsyslog() -> None:
    if shutil.which("rsyslogd") and OMHIREDIS.exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "rsyslog", "rsyslog-hiredis"], check=True, env=env)  # fmt: skip


def generate(path: Path) -> int:
    rng = random.Random(42)
    words = [b"GET", b"POST", b"/api/v1/items", b"/health", b"user=alice", b"status=200",
             b"status=503", b"latency_ms=12", b"trace=9f8e7d6c5b4a", b"bytes=5120"]  # fmt: skip
    with open(path, "wb") as f:
        for start in range(0, LINES, 10_000):
            chunk = []
            for i in range(start, start + 10_000):
                body = b" ".join(rng.choices(words, k=rng.randint(5, 10)))
                chunk.append(b"2026-11-27T02:00:00.%06dZ app[%d]: %s\n" % (i % 10**6, i, body))
            f.write(b"".join(chunk))
    return path.stat().st_size


def wait_until(check, proc: subprocess.Popen[bytes], what: str) -> float:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not finish in {TIMEOUT_S}s")


def rsyslog_conf(work: Path, log: Path, port: int, stream_mode: bool) -> Path:
    mode = (
        f'mode="stream" key="{RSYSLOG_KEY}"' if stream_mode else f'mode="queue" key="{RSYSLOG_KEY}"'
    )
    conf = work / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{work}/spool" maxMessageSize="64k")
module(load="imfile" mode="inotify")
module(load="omhiredis")
template(name="msg" type="string" string="%msg%")
ruleset(name="toredis") {{
  action(type="omhiredis" server="127.0.0.1" serverport="{port}" {mode} template="msg")
}}
input(type="imfile" File="{log}" Tag="bench" ruleset="toredis" freshStartTail="off")
""")
    (work / "spool").mkdir(exist_ok=True)
    return conf


def run_rsyslog(tmp: Path, log: Path, server: RedisServer, client: redis.Redis) -> float:
    stream_mode = b"XADD" in OMHIREDIS.read_bytes()
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="rsyslog-"))
    conf = rsyslog_conf(work, log, server.port, stream_mode)
    count = (
        (lambda: client.xlen(RSYSLOG_KEY)) if stream_mode else (lambda: client.llen(RSYSLOG_KEY))
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(work / "pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        t1 = wait_until(lambda: count() >= LINES, proc, "rsyslogd")
    finally:
        proc.terminate()
        proc.wait(30)
    return t1 - t0


def last_end(client: redis.Redis) -> int:
    last = client.xrevrange(STREAM, count=1)
    return decode(last[0][1]).end if last else 0


def run_agent(tmp: Path, log: Path, server: RedisServer, client: redis.Redis) -> tuple[float, int]:
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="agent-"))
    cfg = work / "agent.yaml"
    agent = {"paths": [str(log)], "checkpoint_dir": str(work / "ck"), "metrics_port": free_port()}
    cfg.write_text(
        yaml.safe_dump({"log_level": "WARNING", "logs": {"stream": STREAM, "agent": agent}})
    )
    size = log.stat().st_size
    t0 = time.monotonic()
    proc = subprocess.Popen([OPSQ, "agent", "--config", str(cfg), "--redis-url", server.url])
    try:
        t1 = wait_until(lambda: last_end(client) >= size, proc, "opsq agent")
        hwm = vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    records = sum(len(decode(f).records) for _, f in client.xrange(STREAM))
    if records != LINES:
        raise RuntimeError(f"agent shipped {records} records, expected {LINES}")
    return t1 - t0, hwm


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ensure_rsyslog()
    with tempfile.TemporaryDirectory(prefix="opsq-bench-logs-") as tmpdir:
        tmp = Path(tmpdir)
        log = tmp / "app.log"
        size = generate(log)
        server = RedisServer(tmp / "redis", appendonly=False)
        server.start()
        client = redis.Redis.from_url(server.url)
        rs, ag, hwm = [], [], []
        try:
            for _ in range(ROUNDS):
                client.flushall()
                rs.append(run_rsyslog(tmp, log, server, client))
                client.flushall()
                seconds, peak = run_agent(tmp, log, server, client)
                ag.append(seconds)
                hwm.append(peak)
        finally:
            client.close()
            server.stop()
    report(size, statistics.median(rs), statistics.median(ag), max(hwm))
    return 0


def report(size: int, rs: float, ag: float, hwm_kib: int) -> None:
    mode = "stream" if b"XADD" in OMHIREDIS.read_bytes() else "queue (LPUSH)"
    print(f"file: {LINES:,} lines, {size / 1e6:.0f} MB; median of {ROUNDS} rounds; same valkey")
    print(f"| {'path':<44} | {'seconds':>8} | {'lines/s':>10} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 12}|")
    print(f"| {'rsyslog imfile -> omhiredis ' + mode:<44} | {rs:8.2f} | {LINES / rs:10,.0f} |")
    print(f"| {'opsq agent -> stream':<44} | {ag:8.2f} | {LINES / ag:10,.0f} |")
    ratio = rs / ag
    print(f"agent / rsyslog: {ratio:.2f}x (target >= 1.0x) {'OK' if ratio >= 1 else 'MISSED'}")
    mb = hwm_kib / 1024
    verdict = "OK" if mb <= RSS_TARGET_MB else "MISSED"
    print(f"agent peak RSS (VmHWM), no shipper, 1M-line backlog: {mb:.1f} MB "
          f"(target <= {RSS_TARGET_MB} MB) {verdict}")  # fmt: skip

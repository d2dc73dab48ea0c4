"""Benchmark: a container log as the runtime writes it, into the stream, vs rsyslog.

1. Writes one ``/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`` (under a temporary
   root) of 1,000,000 physical lines in containerd's CRI format: RFC3339Nano times
   (trailing zeros trimmed), mostly stdout, every 20th line stderr, and every 10,000th
   logical line 20 KB long, so the runtime split it into a ``P`` part and an ``F`` part.
2. rsyslog ``imfile`` -> ``omhiredis`` on the same file into the same private
   valkey-server (the peer of ``bench/logs_agent.py``), timed from process start until
   all 1,000,000 lines are in Redis. rsyslog ships the lines as they are: no decoding.
3. ``opsq agent`` as a user runs it on a node: ``format: cri``, pod identity from the
   path (``kubernetes.pods_dir``), default settings otherwise; timed from process start
   until the last stream entry covers the end of the file. Every record is then checked:
   the logical line count (partials joined), and namespace/pod/container in ``meta``.
4. The same with pod metadata from the API on (``kubernetes.metadata.enabled``) against
   the fake API server of the test suite holding this node's pods: time, and the agent's
   peak RSS (VmHWM) with the whole backlog left in the stream (no shipper).

Each side runs ``ROUNDS`` times on a fresh database; medians are reported, with the
machine's load average. Installs rsyslog and rsyslog-hiredis with apt-get when missing.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.logs_agent import (  # noqa: E402
    LINES,
    OPSQ,
    STREAM,
    ensure_rsyslog,
    last_end,
    run_rsyslog,
    vm_hwm_kib,
    wait_until,
)
from opsq.core.logformat import decode  # noqa: E402
from opsq.core.redis_server import RedisServer, free_port  # noqa: E402
from tests.fakekube.server import FakeKube  # noqa: E402

ROUNDS = int(os.environ.get("K8S_LOGS_ROUNDS", "3"))
NODE = "bench-node"
NAMESPACE, POD, CONTAINER = "shop", "web-5d8f9c7b6-x2x4q", "app"
TARGET_RATIO = 3.0
RSS_TARGET_MB = 80
LONG_EVERY = 10_000
T0_NS = 1_795_000_000 * 10**9


def cri_time(ns: int) -> bytes:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction trimmed)."""
    seconds, frac = divmod(ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode()
    digits = b"%09d" % frac
    digits = digits.rstrip(b"0")
    return stamp + (b"." + digits if digits else b"") + b"Z"


def generate(path: Path) -> tuple[int, int]:
    """Write LINES physical CRI lines; returns (bytes, logical lines)."""
    rng = random.Random(14)
    words = [b"GET", b"POST", b"/api/v1/items", b"/health", b"user=alice", b"status=200",
             b"status=503", b"latency_ms=12", b"trace=9f8e7d6c5b4a", b"bytes=5120"]  # fmt: skip
    physical = logical = 0
    ns = T0_NS
    with open(path, "wb") as f:
        while physical < LINES:
            chunk = []
            for _ in range(min(10_000, LINES - physical)):
                ns += rng.randint(1_000, 90_000)
                stream = b"stderr" if logical % 20 == 19 else b"stdout"
                if logical % LONG_EVERY == LONG_EVERY - 1 and physical + 2 <= LINES:
                    body = b"x" * (20_000 - 16_384)
                    chunk.append(b"%s %s P %s\n" % (cri_time(ns), stream, b"L" * 16_384))
                    chunk.append(b"%s %s F %s\n" % (cri_time(ns + 7), stream, body))
                    physical += 2
                else:
                    body = b" ".join(rng.choices(words, k=rng.randint(5, 10)))
                    chunk.append(b"%s %s F app[%d]: %s\n" % (cri_time(ns), stream, logical, body))
                    physical += 1
                logical += 1
                if physical >= LINES:
                    break
            f.write(b"".join(chunk))
    return path.stat().st_size, logical


def agent_config(work: Path, pods: Path, **kubernetes: Any) -> Path:
    agent = {
        "paths": [str(pods / "*" / "*" / "*.log")],
        "checkpoint_dir": str(work / "ck"),
        "metrics_port": free_port(),
        "format": "cri",
        "kubernetes": {"pods_dir": str(pods), "node_name": NODE, **kubernetes},
    }
    cfg = work / "agent.yaml"
    doc = {"log_level": "WARNING", "logs": {"stream": STREAM, "agent": agent}}
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def run_agent(
    work: Path, cfg: Path, log: Path, server: RedisServer, client: redis.Redis, env: dict[str, str]
) -> tuple[float, int]:
    size = log.stat().st_size
    t0 = time.monotonic()
    proc = subprocess.Popen([OPSQ, "agent", "--config", str(cfg), "--redis-url", server.url],
                            env={**os.environ, **env})  # fmt: skip
    try:
        t1 = wait_until(lambda: last_end(client) >= size, proc, "opsq agent")
        hwm = vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return t1 - t0, hwm


def check_stream(client: redis.Redis, logical: int, *, labels: bool) -> None:
    records = 0
    for _, fields in client.xrange(STREAM):
        entry = decode(fields)
        meta = entry.meta or {}
        if (meta.get("namespace"), meta.get("pod"), meta.get("container")) != (
            NAMESPACE, POD, CONTAINER,
        ):  # fmt: skip
            raise RuntimeError(f"entry without pod identity: {meta}")
        if labels and meta.get("labels", {}).get("app") != "web":
            raise RuntimeError(f"entry without pod labels: {meta}")
        if entry.fmt != "cri":
            raise RuntimeError("entry not decoded")
        records += len(entry.records)
    if records != logical:
        raise RuntimeError(f"agent shipped {records} records, expected {logical}")


def fake_api(work: Path) -> tuple[FakeKube, Path, str]:
    fake = FakeKube().start()
    pod = fake.create("v1/pods", {
        "metadata": {"name": POD, "namespace": NAMESPACE,
                     "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6"}},
        "spec": {"nodeName": NODE, "containers": [{"name": CONTAINER, "image": "web:1"}]},
    }, namespace=NAMESPACE)  # fmt: skip
    for i in range(100):  # a busy node's other pods
        fake.create("v1/pods", {
            "metadata": {"name": f"other-{i}", "namespace": "misc", "labels": {"i": str(i)}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "c:1"}]},
        }, namespace="misc")  # fmt: skip
    return fake, fake.kubeconfig(work / "kubeconfig"), str(pod["metadata"]["uid"])


def main() -> int:
    ensure_rsyslog()
    with tempfile.TemporaryDirectory(prefix="opsq-bench-k8s-") as tmpdir:
        tmp = Path(tmpdir)
        fake, kubeconfig, uid = fake_api(tmp)
        pods = tmp / "var/log/pods"
        log = pods / f"{NAMESPACE}_{POD}_{uid}" / CONTAINER / "0.log"
        log.parent.mkdir(parents=True)
        size, logical = generate(log)
        server = RedisServer(tmp / "redis", appendonly=False)
        server.start()
        client = redis.Redis.from_url(server.url)
        rs, ag, en, hwm = [], [], [], []
        try:
            for n in range(ROUNDS):
                client.flushall()
                rs.append(run_rsyslog(tmp, log, server, client))
                client.flushall()
                work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"agent-{n}-"))
                seconds, _ = run_agent(work, agent_config(work, pods), log, server, client, {})
                check_stream(client, logical, labels=False)
                ag.append(seconds)
                client.flushall()
                work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"enriched-{n}-"))
                metadata = {"enabled": True, "kubeconfig": str(kubeconfig)}
                cfg = agent_config(work, pods, metadata=metadata)
                seconds, peak = run_agent(work, cfg, log, server, client, {"NODE_NAME": NODE})
                check_stream(client, logical, labels=True)
                en.append(seconds)
                hwm.append(peak)
        finally:
            client.close()
            server.stop()
            fake.stop()
    report(size, logical, statistics.median(rs), statistics.median(ag), statistics.median(en),
           max(hwm))  # fmt: skip
    return 0


def report(size: int, logical: int, rs: float, ag: float, en: float, hwm_kib: int) -> None:
    load = os.getloadavg()
    print(f"file: {LINES:,} CRI lines ({logical:,} logical), {size / 1e6:.0f} MB; median of "
          f"{ROUNDS} rounds; same valkey; load average {load[0]:.1f} {load[1]:.1f}")  # fmt: skip
    print(f"| {'path':<56} | {'seconds':>8} | {'lines/s':>10} | {'ratio':>6} |")
    print(f"|{'-' * 58}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    rows = [
        ("rsyslog imfile -> omhiredis (no decoding)", rs),
        ("opsq agent: cri decoding + pod identity from the path", ag),
        ("opsq agent: the same + pod metadata from the API", en),
    ]
    for name, seconds in rows:
        print(f"| {name:<56} | {seconds:8.2f} | {LINES / seconds:10,.0f} | {rs / seconds:5.2f}x |")
    ratio = rs / ag
    verdict = "OK" if ratio >= TARGET_RATIO else "MISSED"
    print(f"agent / rsyslog: {ratio:.2f}x (target >= {TARGET_RATIO:.0f}x) {verdict}")
    mb = hwm_kib / 1024
    verdict = "OK" if mb <= RSS_TARGET_MB else "MISSED"
    print(f"agent peak RSS (VmHWM) with metadata on, 1M-line backlog: {mb:.1f} MB "
          f"(target <= {RSS_TARGET_MB} MB) {verdict}")  # fmt: skip
    print(orjson.dumps({"rsyslog_s": rs, "agent_s": ag, "enriched_s": en, "rss_mb": mb}).decode())


if __name__ == "__main__":
    raise SystemExit(main())

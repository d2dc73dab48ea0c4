"""History in Redis and the status page: memory for 90 days, write cost, page times.

One private valkey-server (as ``opsq up`` embeds it, default settings). Three parts:

1. **Write path, same run.** N targets (default 1,000) in one probe set, runs applied
   every 30 s of an injected clock for ``OPSQ_BENCH_HISTORY_HOURS`` simulated hours
   (default 3, so hours are sealed) by ``MonitorStore.apply`` (what the completing worker
   calls), once with the history recorder and once without (the peer), interleaved.
   Prints ms per applied run and the ratio.
2. **90 days of memory.** The raw window (48 h at one run per 30 s: 5,760 entries per
   target) written entry by entry with the recorder's encoder and the XADD ... MINID it
   uses; 2,160 hourly and 90 daily rollup blobs per set with the recorder's
   ``encode_blob``. Each (target, hour) accumulator holds 120 simulated runs drawn from a
   pool of simulated hours per latency profile (medians 5-400 ms, spreads 0.1-0.6,
   rare slow outliers, 0.3% failing runs, an outage hour now and then); days merge their
   24 hours. Measured with Redis' own numbers: ``INFO memory`` ``used_memory`` before and
   after, and ``MEMORY USAGE`` summed per key type. Peer: raw verdicts kept 90 days
   (the measured bytes per raw entry, times 90 days), to show what rollups save.
3. **Pages as a user gets them.** ``opsq web`` started as a process (``python -m opsq
   web``) on that Redis: p50/p95 of the overview, a target page, ``/api/v1/targets`` and
   a target's 24 h raw history, with the default cache (5 s) and with ``web.cache_ttl:
   0`` (every answer rendered), the Redis round trips per answer (its
   ``X-Opsq-Redis-Roundtrips`` header), and the same overview HTML served by nginx from
   a file (the peer: the cost of just moving those bytes) in the same run.

    python -m bench history
    OPSQ_BENCH_HISTORY_N=200 python -m bench history
"""

from __future__ import annotations

import base64
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.history import HistorySettings
from opsq.core.config.probes import ProbeSet, Target
from opsq.core.redis_server import RedisServer, free_port
from opsq.engines.history import raw
from opsq.engines.history.recorder import HistoryRecorder, _append_raw, queue_day, queue_hour
from opsq.engines.history.rollup import Acc, encode_blob
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore

N = int(os.environ.get("OPSQ_BENCH_HISTORY_N", "1000"))
HOURS = float(os.environ.get("OPSQ_BENCH_HISTORY_HOURS", "3"))
REQUESTS = int(os.environ.get("OPSQ_BENCH_HISTORY_REQUESTS", "40"))
INTERVAL_S = 30.0
DAYS = 90
RAW_HOURS = 48
GOAL_ROLLUP_BYTES = 20 * 1024 * 1024
PASSWORD = "bench-password"
PROFILES = 40
POOL_HOURS = 150


def main() -> int:
    print(
        f"bench/history: N={N}, write path {HOURS:g} h, load {os.getloadavg()[0]:.2f}", flush=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            raw_client = redis.Redis.from_url(server.url)
            now = time.time()
            write_path(client, now - HOURS * 3600, now)
            memory(raw_client, now)
            pages(server.url, raw_client, Path(tmp))
            client.close()
            raw_client.close()
        finally:
            server.stop()
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


# --- 1. write path -------------------------------------------------------------------------
def targets(prefix: str) -> list[Target]:
    return [
        Target(name=f"{prefix}{i:04d}", url=f"https://svc{i}.example.com/health") for i in range(N)
    ]


class CountingConnection(redis.Connection):
    """Counts round trips: every request (a command, or a pipeline/MULTI sent at once)
    is one ``send_packed_command`` followed by its reads."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def write_path(client: redis.Redis, start: float, end: float) -> None:
    settings = HistorySettings()
    pool = client.connection_pool
    counted = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=CountingConnection, **pool.connection_kwargs
        )
    )
    on = (MonitorStore(counted, AlertsSettings(), HistoryRecorder(settings)), "web", targets("t"))
    off = (MonitorStore(counted, AlertsSettings()), "peer", targets("p"))
    times: dict[str, list[float]] = {"history on": [], "history off (peer)": []}
    trips: dict[str, list[int]] = {label: [] for label in times}
    rng = random.Random(1)
    now, run = start, 0
    while now < end:
        for label, (store, set_name, items) in zip(times, (on, off), strict=True):
            probe_set = ProbeSet(targets=[t.model_dump(mode="json") for t in items])
            spec = build_spec(set_name, probe_set, items, created_at=now)
            results = [result(t, rng) for t in items]
            run_id = f"{set_name}-{run}"
            store.register(run_id, spec)
            sent, started = CountingConnection.sent, time.perf_counter()
            store.apply(run_id, spec, results, now=now)
            times[label].append(time.perf_counter() - started)
            trips[label].append(CountingConnection.sent - sent)
        now += INTERVAL_S
        run += 1
    real_path_sizes(client)
    print(
        f"\n1. write path: {run} runs of {N} targets per set, one every {INTERVAL_S:g} s "
        "of injected clock (MonitorStore.apply, real Redis)"
    )
    base = statistics.median(times["history off (peer)"])
    print(
        "| path | median ms per run | p95 ms | ratio | Redis round trips per run "
        "(usual / at an hour's seal) |\n|---|---:|---:|---:|---:|"
    )
    for label, values in times.items():
        print(
            f"| {label} | {statistics.median(values) * 1000:.1f} | "
            f"{p95(values) * 1000:.1f} | {statistics.median(values) / base:.2f}x | "
            f"{statistics.median(trips[label]):g} / {max(trips[label])} |"
        )
    counted.close()


def real_path_sizes(client: redis.Redis) -> None:
    """Bytes per raw entry and per target-hour blob record as the recorder wrote them."""
    entries = size = 0
    for key in client.scan_iter("opsq:history:raw:web:*", count=1000):
        entries += client.xlen(key)
        size += client.memory_usage(key, samples=0) or 0
    hours = list(client.scan_iter("opsq:history:hour:web:*"))
    blob = sum(client.memory_usage(k, samples=0) or 0 for k in hours)
    per_hour = f"{blob / len(hours) / N:.1f} B per target-hour" if hours else "no hour sealed"
    print(
        f"   recorder's own writes: {size / max(entries, 1):.1f} B per raw entry "
        f"({entries} entries), {per_hour} ({len(hours)} sealed hour blobs)"
    )


def result(target: Target, rng: random.Random) -> dict[str, Any]:
    up = rng.random() > 0.003
    latency = rng.lognormvariate(math.log(0.08), 0.3)
    return {
        "name": target.name,
        "url": target.url,
        "up": up,
        "duration_s": latency,
        "status_code": 200 if up else 503,
        "error_kind": None if up else "status",
        "phases": split_phases(latency),
    }


def split_phases(latency: float) -> dict[str, float]:
    return {
        "dns": latency * 0.05,
        "connect": latency * 0.15,
        "tls": latency * 0.3,
        "ttfb": latency * 0.4,
        "transfer": latency * 0.1,
    }


# --- 2. memory -----------------------------------------------------------------------------
def hour_pool(rng: random.Random) -> list[list[Acc]]:
    """Simulated hours (120 runs each) per latency profile."""
    pools = []
    for profile in range(PROFILES):
        median = math.exp(rng.uniform(math.log(0.005), math.log(0.4)))
        spread = rng.uniform(0.1, 0.6)
        hours = []
        for _ in range(POOL_HOURS):
            acc = Acc(0)
            outage = rng.random() < 0.01
            for _ in range(120):
                if outage or rng.random() < 0.003:
                    acc.add("down", None)
                    continue
                latency = rng.lognormvariate(math.log(median), spread)
                if rng.random() < 0.01:
                    latency *= rng.uniform(3, 10)
                acc.add("up", latency)
            hours.append(acc)
        pools.append(hours)
        del profile
    return pools


def fill_rollups(client: redis.Redis, set_name: str, now: float) -> None:
    rng = random.Random(7)
    pools = hour_pool(rng)
    profile = [rng.randrange(PROFILES) for _ in range(N)]
    names = [f"{t.name}|{t.url}" for t in targets("t")]
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.history_roster(set_name), mapping={k: i for i, k in enumerate(names)})
    last_hour = int(now // 3600)
    ttl = int(HistorySettings().retention) + keys.HISTORY_BACKSTOP_S
    day_accs: dict[int, list[Acc]] = {}
    for hour in range(last_hour - DAYS * 24, last_hour):
        accs: list[Acc | None] = [_copy(rng.choice(pools[profile[i]]), hour) for i in range(N)]
        # what the recorder writes when it seals an hour, as of the last hour
        queue_hour(pipe, set_name, hour, accs, current_hour=last_hour, ttl=ttl)
        day = hour // 24
        merged = day_accs.setdefault(day, [Acc(day) for _ in range(N)])
        for total, acc in zip(merged, accs, strict=True):
            total.merge(acc or Acc(day))
        if hour % 24 == 23:
            queue_day(pipe, set_name, day, list(day_accs.pop(day)), ttl)
            pipe.execute()
    pipe.execute()


def _copy(acc: Acc, period: int) -> Acc:
    return Acc(
        period,
        acc.up,
        acc.degraded,
        acc.down,
        acc.unknown,
        acc.n_lat,
        acc.lat_sum,
        acc.lat_max,
        dict(acc.hist),
    )


def fill_raw(client: redis.Redis, set_name: str, now: float) -> None:
    """RAW_HOURS of entries per target, written as the recorder writes a run's entries
    (one EVAL per run of XADD ... MINID = ..., ``recorder._append_raw``)."""
    rng = random.Random(3)
    names = [keys.history_raw(set_name, f"{t.name}|{t.url}") for t in targets("t")]
    client.delete(*names)  # the write path's few hours
    medians = [math.exp(rng.uniform(math.log(0.005), math.log(0.4))) for _ in names]
    cutoff = int((now - RAW_HOURS * 3600) * 1000)
    pipe = client.pipeline(transaction=False)
    for step in range(int(RAW_HOURS * 3600 / INTERVAL_S)):
        ms = cutoff + 1000 + int(step * INTERVAL_S * 1000)
        appends = []
        for key, median in zip(names, medians, strict=True):
            latency = rng.lognormvariate(math.log(median), 0.3)
            up = rng.random() > 0.003
            sample = raw.Sample(
                at=0,
                state="up",
                verdict="up" if up else "down",
                reason="ok" if up else "status",
                latency=latency,
                status=200 if up else 503,
                phases=split_phases(latency),
            )
            appends.append((key, ms, raw.encode(sample)))
        _append_raw(pipe, appends, cutoff)
        if step % 20 == 19:
            pipe.execute()
    pipe.execute()


def record_sizes() -> None:
    """Encoded bytes per target-hour by the spread of an hour's latencies (lognormal
    sigma), with and without 1% slow outliers: full records (histograms: days and the
    last 25 hours) grow with it, summaries (hours kept for the retention) do not."""
    rng = random.Random(1)
    print("\nencoded hourly record, bytes per target (120 runs, all up; sigma of ln latency):")
    print(
        "| sigma | full, no outliers | full, 1% outliers x3-10 | summary, no outliers "
        "| summary, 1% outliers |\n|---|---:|---:|---:|---:|"
    )
    for sigma in (0.1, 0.2, 0.3, 0.45, 0.6):
        sizes: dict[tuple[bool, float], float] = {}
        for outliers in (0.0, 0.01):
            accs: list[Acc | None] = []
            for _ in range(200):
                acc, median = Acc(0), math.exp(rng.uniform(math.log(0.005), math.log(0.4)))
                for _ in range(120):
                    latency = rng.lognormvariate(math.log(median), sigma)
                    slow = rng.uniform(3, 10) if rng.random() < outliers else 1.0
                    acc.add("up", latency * slow)
                accs.append(acc)
            for summary in (False, True):
                sizes[summary, outliers] = len(encode_blob(accs, summary=summary)) / len(accs)
        print(
            f"| {sigma} | {sizes[False, 0.0]:.1f} | {sizes[False, 0.01]:.1f} | "
            f"{sizes[True, 0.0]:.1f} | {sizes[True, 0.01]:.1f} |"
        )


PATTERNS: dict[str, str | tuple[str, ...]] = {
    "raw verdicts (streams)": "opsq:history:raw:*",
    "hourly rollups (summary blobs)": "opsq:history:hour:*",
    "last 25 hours' histograms (blobs)": ("opsq:history:hour-hist:*", "opsq:history:recent:*"),
    "daily rollups (blobs)": "opsq:history:day:*",
    "live accumulators": "opsq:history:acc:*",
    "roster, blob index, incidents": (
        "opsq:history:roster:*",
        "opsq:history:periods:*",
        "opsq:history:incident*",
        "opsq:history:open:*",
    ),
    "monitor: state, transitions, verdicts": "opsq:monitor:*",
}


def usage(client: redis.Redis, patterns: str | tuple[str, ...]) -> tuple[int, int]:
    total = count = 0
    for pattern in (patterns,) if isinstance(patterns, str) else patterns:
        for key in client.scan_iter(pattern, count=1000):
            total += client.memory_usage(key, samples=0) or 0
            count += 1
    return count, total


def memory(client: redis.Redis, now: float) -> None:
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    fill_rollups(client, "web", now)
    rolled = int(client.info("memory")["used_memory"])
    fill_raw(client, "web", now)
    after = int(client.info("memory")["used_memory"])
    print(
        f"\n2. memory: {N} targets, {DAYS} days of rollups and a {RAW_HOURS} h raw window at "
        f"one run per {INTERVAL_S:g} s (filled in {time.perf_counter() - started:.0f} s)"
    )
    print("| key type | keys | MEMORY USAGE bytes | per target per day |\n|---|---:|---:|---:|")
    found = {}
    for label, pattern in PATTERNS.items():
        count, total = usage(client, pattern)
        found[label] = total
        days = RAW_HOURS / 24 if label.startswith("raw") else DAYS
        print(f"| {label} | {count} | {total:,} | {total / N / days:,.0f} |")
    rollups = (
        found["hourly rollups (summary blobs)"]
        + found["last 25 hours' histograms (blobs)"]
        + found["daily rollups (blobs)"]
    )
    raw_bytes = found["raw verdicts (streams)"]
    per_entry = raw_bytes / (N * RAW_HOURS * 3600 / INTERVAL_S)
    peer = per_entry * N * DAYS * 86400 / INTERVAL_S
    print(
        f"\nused_memory: {before:,} before, +{rolled - before:,} for the rollups, "
        f"+{after - rolled:,} for the raw window, {after:,} in all"
    )
    verdict = "met" if rollups <= GOAL_ROLLUP_BYTES else "NOT met"
    print(
        f"rollups for {DAYS} days: {rollups / 2**20:.1f} MiB (MEMORY USAGE), "
        f"{(rolled - before) / 2**20:.1f} MiB (used_memory growth); goal 20 MiB: {verdict}; "
        f"{rollups / N / DAYS:,.0f} B per target per day, "
        f"{rollups / N / (DAYS * 24):.1f} B per target-hour (daily blobs included)"
    )
    print(
        f"raw window: {raw_bytes / 2**20:.1f} MiB, {per_entry:.1f} B per verdict, "
        f"{raw_bytes / N / (RAW_HOURS / 24):,.0f} B per target per day"
    )
    record_sizes()
    print(
        f"peer, raw verdicts kept {DAYS} days instead: {peer / 2**30:.2f} GiB, "
        f"{peer / rollups:.0f}x the rollups"
    )


# --- 3. pages ------------------------------------------------------------------------------
def start_web(redis_url: str, tmp: Path, cache_ttl: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    env.update(
        {
            "OPSQ_REDIS_URL": redis_url,
            "OPSQ_WEB__PORT": str(port),
            "OPSQ_WEB__PASSWORD": PASSWORD,
            "OPSQ_WEB__CACHE_TTL": cache_ttl,
        }
    )
    log = (tmp / f"web-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsq", "web"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("opsq web did not start")


def fetch(url: str, auth: bool = True) -> tuple[float, bytes, dict[str, str]]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"opsq:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
        return time.perf_counter() - started, body, dict(response.headers)


def pages(redis_url: str, client: redis.Redis, tmp: Path) -> None:
    target = next(iter(client.hkeys(keys.monitor_state("web")))).decode()
    from opsq.engines.history.reader import target_id  # noqa: PLC0415

    paths = {
        "overview /": "/",
        "target page": f"/sets/web/{target_id(target)}",
        "/api/v1/targets": "/api/v1/targets",
        "/api/v1/.../history (24 h raw)": f"/api/v1/targets/web/{target_id(target)}/history",
    }
    print(
        f"\n3. pages: `opsq web` as a process, {N} targets, {REQUESTS} sequential requests "
        "per row (urllib on the same machine)"
    )
    print("| answer | cache | first (cold) ms | p50 ms | p95 ms | Redis round trips | bytes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    overview = b""
    for cache_ttl in ("0", "5"):
        proc, url = start_web(redis_url, tmp, cache_ttl)
        try:
            for label, path in paths.items():
                first, body, headers = fetch(url + path)
                trips = headers.get("X-Opsq-Redis-Roundtrips", "?")
                times = [fetch(url + path)[0] for _ in range(REQUESTS)]
                overview = overview or body
                mode = "off (every answer rendered)" if cache_ttl == "0" else "5 s (default)"
                print(
                    f"| {label} | {mode} | {first * 1000:.0f} | "
                    f"{statistics.median(times) * 1000:.1f} | {p95(times) * 1000:.1f} | "
                    f"{trips} | {len(body):,} |"
                )
        finally:
            proc.terminate()
            proc.wait(15)
    peer_nginx(tmp, overview)


def peer_nginx(tmp: Path, body: bytes) -> None:
    root = tmp / "www"
    root.mkdir()
    tmp.chmod(0o755)  # nginx's workers run as nobody
    (root / "index.html").write_bytes(body)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;\n"
        "events {}\nhttp { access_log off; server { listen 127.0.0.1:%d; root %s; } }\n"
        % (port, root)
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])
    try:
        url = f"http://127.0.0.1:{port}/index.html"
        for _ in _retry(50):
            try:
                fetch(url, auth=False)
                break
            except OSError:
                time.sleep(0.1)
        times = [fetch(url, auth=False)[0] for _ in range(REQUESTS)]
        print(
            f"| peer: nginx, the same overview HTML from a file | - | - | "
            f"{statistics.median(times) * 1000:.1f} | {p95(times) * 1000:.1f} | 0 | "
            f"{len(body):,} |"
        )
    finally:
        proc.terminate()
        proc.wait(10)


def _retry(count: int) -> Iterator[int]:
    yield from range(count)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


_: Callable[..., Any] = main

"""Redis memory under beat: a 1,000-target probe set every 30 s for a simulated week.

Two parts, one private valkey-server (noeviction, as opsq runs it):

1. **Real runs** (the user's path): ``celery -A tasks worker`` with a config holding a
   1,000-target probe set (95% served by a local nginx, 5% refused), and the set's beat
   task ``opsq.probe_set`` sent :data:`REAL_RUNS` times the way beat sends it. Each run
   is measured once complete: ``MEMORY USAGE`` of every key it left (meta, packed
   results, deliveries) plus its index entries, and the keys per run, so anything else
   a run leaves behind (a Celery result, say) shows up too.
2. **A simulated week with compressed TTLs**: the same runs written through the same
   store functions the worker uses (``AsyncRunStore.record`` in batches of 100, then
   ``finalize``) with a real run's results, as fast as Redis takes them (K times
   faster than one per 30 s), every retention divided by the same K: Redis expires
   each run at the same point of the simulated week, and retention / 30 s runs are
   alive at any moment. ``used_memory`` is sampled throughout; steady state is the
   median over the last simulated day.

Prints bytes per run, the steady-state figure against the goal (<= 200 MB), and what
the same set would hold with the old storage (650 KB per run for a week, measured in
issue 9).

    python -m bench run_storage
    OPSQ_BENCH_STORAGE_DAYS=2 python -m bench run_storage     # a shorter simulated span
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import yaml

from bench.probe_transports import local_server
from opsq.core import keys, signatures
from opsq.core.redis_server import RedisServer
from opsq.core.runs import (
    AsyncRunStore,
    RunMeta,
    RunPlan,
    RunStore,
    encode_result,
    new_run_id,
    result_key,
)
from opsq.core.settings import load_settings
from producers.probes import close_producer_app, producer_app

TARGETS = 1000
INTERVAL_S = 30.0
DAYS = float(os.environ.get("OPSQ_BENCH_STORAGE_DAYS", "7"))
REAL_RUNS = 5
SMOOTHING = 0.02
"""Weight of the latest run in the moving average of real seconds per run (~50 runs)."""
GOAL_MB = 200.0
OLD_BYTES_PER_RUN = 650 * 1024
OLD_RETENTION_S = 7 * 86400
ROOT = Path(__file__).resolve().parents[1]


def _targets_file(path: Path, base: str) -> Path:
    refused = TARGETS // 20
    targets = [
        {"name": f"web-{i}", "url": f"{base}/health?i={i}"} for i in range(TARGETS - refused)
    ]
    targets += [{"name": f"db-{i}", "url": f"tcp://127.0.0.1:1{i % 10}"} for i in range(refused)]
    path.write_text(yaml.safe_dump({"defaults": {"timeout": "2s"}, "targets": targets}))
    return path


@contextlib.contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "tasks", "worker"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "worker metrics on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def _run_bytes(client: redis.Redis[str], run_id: str) -> int:
    """Bytes a run's own keys hold (``MEMORY USAGE``), plus its two index entries."""
    total = 0
    for key in client.scan_iter(f"{keys.PREFIX}:run:{run_id}:*"):
        total += int(client.memory_usage(key, samples=0) or 0)
    return total + 2 * (len(run_id) + 24)


@dataclass
class RealRuns:
    run_bytes: list[int]
    """``MEMORY USAGE`` of each run's own keys (the run storage)."""
    used_per_run: float
    """``used_memory`` growth per run: everything a beat run leaves (monitor included)."""
    by_key: dict[str, int]
    """Bytes per run by key pattern (run id replaced by ``<id>``), every key that grew."""
    sample_run: str


def real_runs(server: RedisServer, base: str, tmp: Path) -> RealRuns:
    """Run the set through beat's task on a real worker and measure what each run leaves."""
    config = tmp / "opsq.yaml"
    _targets_file(tmp / "set.yaml", base)
    probe_set = {"file": "set.yaml", "interval": "30s"}
    config.write_text(yaml.safe_dump({"probes": {"sets": {"bench": probe_set}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    env.update(OPSQ_REDIS_URL=server.url, OPSQ_CONFIG=str(config),
               OPSQ_DATA_DIR=str(tmp / "data"), OPSQ_METRICS__PORT="0")  # fmt: skip
    client = redis.Redis.from_url(server.url, decode_responses=True)
    store = RunStore(client)
    with _worker(env, tmp / "worker.log"):
        app = producer_app(load_settings(config, redis_url=server.url))
        _one_run(client, store, app)  # warm-up: the index, set state and streams exist now
        before, used_before = _key_sizes(client), _used(client)
        run_ids = [_one_run(client, store, app) for _ in range(REAL_RUNS)]
        after, used_after = _key_sizes(client), _used(client)
        close_producer_app(app)
    by_key: dict[str, int] = {}
    for key, size in after.items():
        pattern = key
        for run_id in run_ids:
            pattern = pattern.replace(run_id, "<id>")
        by_key[pattern] = by_key.get(pattern, 0) + size - before.get(key, 0)
    return RealRuns(
        [_run_bytes(client, run_id) for run_id in run_ids],
        (used_after - used_before) / REAL_RUNS,
        {k: v // REAL_RUNS for k, v in by_key.items() if v > 0},
        run_ids[-1],
    )


def _one_run(client: redis.Redis[str], store: RunStore, app: Any) -> str:
    known = set(client.zrange(keys.RUNS_INDEX, 0, -1))
    app.send_task(signatures.PROBE_SET, kwargs={"name": "bench"})
    run_id = _wait_new_run(client, store, known)
    time.sleep(0.5)  # what follows completion (the monitor applying verdicts) settles
    return run_id


def _key_sizes(client: redis.Redis[str]) -> dict[str, int]:
    return {key: int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter()}


def _used(client: redis.Redis[str]) -> int:
    return int(client.info("memory")["used_memory"])


def _wait_new_run(client: redis.Redis[str], store: RunStore, known: set[str]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(client.zrange(keys.RUNS_INDEX, 0, -1)) - known
        if new and store.progress(run_id := new.pop()).finished:
            return run_id
        time.sleep(0.05)
    raise RuntimeError("the probe set's run did not complete")


async def simulate(url: str, sample_run: str, retention: float) -> list[tuple[float, int]]:
    """Write DAYS of runs (one per INTERVAL_S of simulated time) as fast as Redis takes
    them; each run's TTL is its retention compressed by the pace actually achieved, so
    exactly retention / INTERVAL_S runs are alive at any moment, as in real time."""
    sync = RunStore.from_url(url)
    view = sync.open(sample_run)
    assert view is not None
    results = list(view.results())
    client = aioredis.Redis.from_url(url, decode_responses=True)
    store = AsyncRunStore(client)
    alive = retention / INTERVAL_S
    runs = int(DAYS * 86400 / INTERVAL_S)
    samples: list[tuple[float, int]] = []
    began = time.monotonic()
    per_run = 0.02  # real seconds per run: a moving average, refined as the simulation goes
    for number in range(runs):
        ttl = max(1, round(alive * per_run))
        run_began = time.monotonic()
        # No messages: nobody probes here, the results are written below as a worker would.
        meta = {"source": "set.yaml", "probe_set": "bench"}
        plan = RunPlan(new_run_id(), "beat", ttl, TARGETS, [], meta)
        sync.submit(plan)
        await _record(store, await store.run_meta(plan.run_id), results)
        if number % 20 == 0:
            used = int((await client.info("memory"))["used_memory"])
            samples.append((number * INTERVAL_S / 86400, used))
        per_run += (time.monotonic() - run_began - per_run) * SMOOTHING
    elapsed = time.monotonic() - began
    print(f"simulated {runs:,} runs ({DAYS:g} days, one per {INTERVAL_S:g}s) in {elapsed:.0f}s "
          f"({elapsed / runs * 1000:.1f} ms per run: {INTERVAL_S * runs / elapsed:,.0f}x "
          f"faster than real time); TTLs compressed alike", flush=True)  # fmt: skip
    await client.aclose()  # type: ignore[attr-defined]  # stubs predate aclose
    sync.close()
    return samples


_ENCODED: dict[int, list[tuple[str, str, bool]]] = {}


async def _record(store: AsyncRunStore, meta: RunMeta, results: list[dict[str, object]]) -> None:
    """What a worker stores: the run's compact results in batches of 100, then packing.

    The results are encoded once (the same bytes for every run: a run's size does not
    depend on which run it is)."""
    created = meta.created_at
    entries = _ENCODED.get(len(results))
    if entries is None:
        entries = [
            (result_key(i), encode_result({**r, "started_at": created + 0.5}, i, created),
             bool(r["up"]))
            for i, r in enumerate(results)
        ]  # fmt: skip
        _ENCODED[len(results)] = entries
    outcome = None
    for start in range(0, len(entries), 100):
        outcome = await store.record(meta, entries[start : start + 100])
    if outcome is None or not outcome.needs_finalize:
        raise RuntimeError(f"run {meta.run_id} is not complete after its last write")
    if await store.finalize(meta.run_id) is None:
        raise RuntimeError(f"run {meta.run_id} was not packed")


def main() -> int:
    with local_server() as (base, _), tempfile.TemporaryDirectory(prefix="opsq-bench-st-") as td:
        tmp = Path(td)
        server = RedisServer(tmp / "valkey", appendonly=False)
        server.start()
        try:
            retention = load_settings(None).runs.retention.beat
            real = real_runs(server, base, tmp)
            _report_real(real)
            samples = asyncio.run(simulate(server.url, real.sample_run, retention))
        finally:
            server.stop()
    _report(statistics.median(real.run_bytes), samples, retention)
    return 0


def _report_real(real: RealRuns) -> None:
    print(f"real runs of the {TARGETS:,}-target set through opsq.probe_set on a worker "
          f"(after a warm-up run), MEMORY USAGE of each run's keys: "
          f"{', '.join(f'{b:,}' for b in real.run_bytes)} bytes", flush=True)  # fmt: skip
    print(f"used_memory growth per run, everything a beat run leaves: {real.used_per_run:,.0f} "
          "bytes; by key (bytes per run):")  # fmt: skip
    for key, size in sorted(real.by_key.items(), key=lambda kv: -kv[1]):
        print(f"  {size:>9,}  {key}")


def _report(per_run: float, samples: list[tuple[float, int]], retention: float) -> None:
    baseline = samples[0][1]
    last_day = [used for day, used in samples if day >= DAYS - 1] or [samples[-1][1]]
    steady = statistics.median(last_day) / 2**20
    peak = max(used for _, used in samples) / 2**20
    alive = retention / INTERVAL_S
    print("\n| simulated day | used_memory MB |\n|---:|---:|")
    for day in range(int(DAYS) + 1):
        near = min(samples, key=lambda s: abs(s[0] - day))
        print(f"| {day} | {near[1] / 2**20:,.1f} |")
    print(f"\nbytes per run ({TARGETS:,} targets, packed): {per_run:,.0f} "
          f"({per_run / TARGETS:.1f} per result)")  # fmt: skip
    print(f"runs alive at steady state (beat retention {retention / 3600:g} h / {INTERVAL_S:g} s): "
          f"{alive:,.0f} -> {alive * per_run / 2**20:,.1f} MB expected")  # fmt: skip
    print(f"steady state (median of the last simulated day): {steady:,.1f} MB used_memory, "
          f"peak {peak:,.1f} MB, empty server {baseline / 2**20:.1f} MB at the start "
          f"-> goal <= {GOAL_MB:.0f} MB: {'met' if steady <= GOAL_MB else 'NOT met'}")  # fmt: skip
    old = OLD_BYTES_PER_RUN * OLD_RETENTION_S / INTERVAL_S / 2**30
    print(f"before (650 KB per run, kept 7 days): {old:,.1f} GB at steady state")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    raise SystemExit(main())

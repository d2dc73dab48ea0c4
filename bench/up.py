"""How long a newcomer waits: `opsq up --demo` from start to the first demo result, and stop.

Measured from a cold start (fresh data dir, embedded valkey-server, free ports):
time to the banner, time until the first finished demo run is in Redis, and time from
SIGTERM to exit. The peer, measured in the same run on the same machine, is the floor
that no supervisor can beat: one bare ``celery -A tasks worker`` from start to "ready"
against an already running Redis. The ratio shows what everything else (Redis, beat,
Flower, demo server, the first probe run) adds on top of one worker's start.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opsq.core.errors import RedisUnavailable
from opsq.core.redis_server import RedisServer, free_port
from opsq.core.runs import RunStore

ROOTDIR = Path(__file__).resolve().parents[1]
ROUNDS = 3


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}


def _first_summary(url: str) -> bool:
    store = RunStore.from_url(url)
    try:
        return any(run["finished_at"] is not None for run in store.list_runs(100))
    except RedisUnavailable:
        return False
    finally:
        store.close()


def _wait(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def measure_up(work: Path) -> tuple[float, float, float]:
    out = work / "up.out"
    argv = [sys.executable, "-m", "opsq", "up", "--demo", "--data-dir", str(work / "data"),
            "--redis-port", "0", "--metrics-port", "0", "--flower-port", "0"]  # fmt: skip
    start = time.monotonic()
    with out.open("wb") as handle:
        proc = subprocess.Popen(argv, cwd=work, env=_clean_env(), stdout=handle,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait(lambda: "logs " in out.read_text(errors="replace"))
        banner = time.monotonic() - start
        text = out.read_text()
        url = next(w for w in text.split() if w.startswith("redis://"))
        _wait(lambda: _first_summary(url))
        first = time.monotonic() - start
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        stop = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
    return banner, first, stop


def measure_worker(work: Path, url: str) -> float:
    log = work / "worker.log"
    env = {**_clean_env(), "OPSQ_REDIS_URL": url, "OPSQ_DATA_DIR": str(work / "w"),
           "OPSQ_METRICS__PORT": str(free_port())}  # fmt: skip
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--concurrency", "2",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO"]  # fmt: skip
    start = time.monotonic()
    with log.open("wb") as handle:
        proc = subprocess.Popen(argv, cwd=ROOTDIR, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait(lambda: " ready." in log.read_text(errors="replace"))
        return time.monotonic() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ups: list[tuple[float, float, float]] = []
    workers: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            for i in range(ROUNDS):
                workers.append(measure_worker(Path(tmp), server.url))
                run = Path(tmp) / f"up{i}"
                run.mkdir()
                ups.append(measure_up(run))
        finally:
            server.stop()
    med = statistics.median
    worker = med(workers)
    rows = [
        ("opsq up --demo: banner printed", med(u[0] for u in ups)),
        ("opsq up --demo: first demo run finished", med(u[1] for u in ups)),
        ("opsq up --demo: SIGTERM to exit", med(u[2] for u in ups)),
        ("peer: bare celery worker start to ready", worker),
    ]
    print(f"median of {ROUNDS} cold starts, seconds (ratio to the bare worker start)")
    for label, value in rows:
        print(f"  {label:<42} {value:6.2f}s  x{value / worker:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

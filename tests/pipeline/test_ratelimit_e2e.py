"""Issue 9's acceptance test of the per-host rate limit, end to end.

Two real ``celery -A tasks worker`` processes (one pool process each) probe 1,000
targets on one host with ``per_host_rate: 50``, once with the README's tuned values
(``batch_size: 500``, ``per_host_concurrency: 128``) and once with the defaults. The
test server records when each request arrives. Before the fix, the tuned run let 473
probes through unthrottled (240 arrivals in one second) when redis-py's pool ran out,
and the default run reported 127 healthy targets DOWN ("timeout after 5s") without
contacting them, because the wait for a token counted against the probe's deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.pipeline.conftest import run_cli, write_targets
from tests.support.workers import Worker

RATE, BURST, TARGETS = 50, 50, 1000  # BURST: the default per_host_burst


class ArrivalServer:
    """An aiohttp server in a thread that notes the arrival time of every request."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.hits: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.hits[request.path] += 1
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/t/{i}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        # A deep accept queue: a burst of connections must not wait in SYN retries.
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=2048)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> ArrivalServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def arrival_server() -> Iterator[ArrivalServer]:
    with ArrivalServer() as server:
        yield server


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any window [t, t + 1 s)."""
    times = sorted(arrivals)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def ratelimit_errors(worker: Worker) -> float:
    """opsq_ratelimit_errors_total as the worker's /metrics shows it (0 when unset)."""
    port = re.search(r"opsq worker metrics on http://[\d.]+:(\d+)/metrics", worker.log())
    assert port is not None, worker.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^opsq_ratelimit_errors_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


CONFIGS = {
    "readme-tuned": (
        {"OPSQ_PROBES__PER_HOST_CONCURRENCY": "128"},
        {"OPSQ_PROBES__BATCH_SIZE": "500"},
    ),
    "defaults": ({}, {}),
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_two_workers_hold_the_per_host_rate_without_false_downs(
    config: str,
    start_worker: Callable[..., Worker],
    redis_url: str,
    arrival_server: ArrivalServer,
    tmp_path: Path,
) -> None:
    worker_env, cli_env = CONFIGS[config]
    env = {"OPSQ_PROBES__PER_HOST_RATE": str(RATE), **worker_env}
    workers = [start_worker(env=env, concurrency=1), start_worker(env=env, concurrency=1)]
    base = f"http://127.0.0.1:{arrival_server.port}"
    targets = [{"name": f"t{i}", "url": f"{base}/t/{i}"} for i in range(TARGETS)]
    path = write_targets(tmp_path / "t.yaml", targets)
    proc = run_cli(["probe", str(path), "--wait", "--output", "json"], redis_url,
                   env=cli_env, timeout=180)  # fmt: skip
    summary: dict[str, Any] = json.loads(proc.stdout)
    down = [r for r in summary["results"] if not r["up"]]
    assert (proc.returncode, summary["up"], down[:3]) == (0, TARGETS, []), proc.stderr
    # Every target was contacted exactly once: none is "down" without a request.
    assert len(arrival_server.hits) == TARGETS
    assert set(arrival_server.hits.values()) == {1}
    assert busiest_second(arrival_server.arrivals) <= RATE + BURST
    assert all("ratelimit" in r["phases"] for r in summary["results"])
    assert [ratelimit_errors(w) for w in workers] == [0.0, 0.0]

"""Drive real set runs through the monitor and the history recorder with a fake clock.

:class:`Sim` applies runs of one probe set (``MonitorStore.apply``, exactly what the
worker that completes a run calls) at times the test chooses, with results the test
scripts per target, against the session's real valkey-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.history import HistorySettings
from opsq.core.config.probes import ProbeSet, Target
from opsq.engines.history import raw
from opsq.engines.history.reader import HistoryReader
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore

URL = "http://user:hunter2@{name}.example/health?token=s3cret"
"""Target URLs carry a password and a token: pages and the API must never show them."""
SECRETS = ("hunter2", "s3cret")
Script = Callable[[str, int, float], tuple[bool, float]]
"""(target name, run number, time) -> (up, latency in seconds)."""


@dataclass
class Sim:
    url: str
    history: HistorySettings
    names: tuple[str, ...] = ("steady", "flappy", "slow", "dead")
    set_name: str = "web"
    thresholds: tuple[int, int] = (1, 1)
    runs: int = 0
    times: list[float] = field(default_factory=list)
    parts: int = 1
    """Apply each run in this many batches (``MonitorStore.apply_part``, what the worker
    that recorded a batch calls), then close it as ``setrun.finish`` does."""

    def __post_init__(self) -> None:
        self.deferred: list[bool] = []
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        self.raw_client = redis.Redis.from_url(self.url)
        self.targets = [Target(name=n, url=URL.format(name=n)) for n in self.names]
        self.probe_set = ProbeSet(
            targets=[t.model_dump(mode="json") for t in self.targets],
            failure_threshold=self.thresholds[0],
            success_threshold=self.thresholds[1],
        )
        self.store = MonitorStore(self.client, AlertsSettings(), HistoryRecorder(self.history))

    def key(self, name: str) -> str:
        target = next(t for t in self.targets if t.name == name)
        return f"{target.name}|{target.url}"

    def run(self, now: float, script: Script) -> None:
        spec = build_spec(self.set_name, self.probe_set, self.targets, created_at=now)
        results: list[dict[str, Any]] = []
        for target in self.targets:
            up, latency = script(target.name, self.runs, now)
            results.append(
                {
                    "name": target.name,
                    "url": target.url,
                    "up": up,
                    "duration_s": latency,
                    "status_code": 200 if up else 503,
                    "error_kind": None if up else "status",
                    "error": None if up else f"HTTP 503 from {target.url}",
                    "phases": {"dns": latency / 10, "connect": latency / 5, "ttfb": latency / 2},
                }
            )
        run_id = f"{self.set_name}-run-{self.runs}"
        self.store.register(run_id, spec)
        if self.parts > 1:
            self._apply_parts(run_id, results, now)
        else:
            assert self.store.apply(run_id, spec, results, now=now).applied
        self.runs += 1
        self.times.append(now)

    def _apply_parts(self, run_id: str, results: list[dict[str, Any]], now: float) -> None:
        head = self.store.head(run_id)
        assert head is not None
        size = -(-len(results) // self.parts)
        for start in range(0, len(results), size):
            batch = results[start : start + size]
            names = {f"{r['name']}|{r['url']}": (r["name"], r["url"]) for r in batch}
            self.store.apply_part(run_id, f"{run_id}#{start}",
                                  self.store.batch_spec(run_id, head, names), batch,
                                  now=now)  # fmt: skip
        if self.store.parts_done(run_id) >= head.size:
            self.deferred.append(False)
            assert self.store.apply(run_id, head, [], now=now).applied
        else:  # a batch was left to the run's end (history sealed a period)
            self.deferred.append(True)
            spec = build_spec(self.set_name, self.probe_set, self.targets, created_at=now)
            assert self.store.apply(run_id, spec, results, now=now).applied

    def raw_samples(self, name: str) -> list[raw.Sample]:
        entries = self.raw_client.xrange(keys.history_raw(self.set_name, self.key(name)))
        return [raw.decode(entry_id, fields) for entry_id, fields in entries]

    def close(self) -> None:
        self.client.close()
        self.raw_client.close()


def read(url: str, call: Callable[[HistoryReader], Any]) -> Any:
    """Run one reader coroutine against *url* (a fresh bytes client each time)."""

    async def go() -> Any:
        client = aioredis.Redis.from_url(url)
        try:
            return await call(HistoryReader(client))
        finally:
            await client.aclose()

    return asyncio.run(go())

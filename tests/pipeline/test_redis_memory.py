"""Redis memory past 80% of maxmemory is warned about and shown in /readyz.

Uses the session's valkey-server with ``maxmemory`` lowered just below what it already
holds (noeviction, as opsq runs it), then put back.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from opsq.core.observe import ObserveServer
from opsq.core.redis_memory import MemoryWatch


@pytest.fixture
def nearly_full(redis_client: redis.Redis) -> Iterator[int]:
    """maxmemory set so that what the server holds now is about 90% of it."""
    redis_client.set("ballast", "x" * 2_000_000)
    used = int(redis_client.info("memory")["used_memory"])
    limit = int(used / 0.9)
    redis_client.config_set("maxmemory", limit)
    try:
        yield limit
    finally:
        redis_client.config_set("maxmemory", 0)


def test_crossing_80_percent_logs_one_warning_and_readyz_reports_it(
    nearly_full: int, redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per crossing (not one per check), a line when back below, and the
    figures in /readyz without turning readiness red."""
    watch = MemoryWatch(redis_url)
    server = ObserveServer("127.0.0.1", 0, ready_checks={"ok": lambda: True},
                           reports={"redis_memory": watch.report}).start()  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="opsq.core.redis_memory"):
            watch.check()
            watch.check()
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "of its maxmemory" in warnings[0]
        assert "past 80%" in warnings[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as got:
            assert got.status == 200
            body = json.loads(got.read())
        assert body["ok"] is True
        assert body["redis_memory"]["high"] is True
        assert body["redis_memory"]["limit_bytes"] == nearly_full
        assert body["redis_memory"]["used_ratio"] >= 0.8

        redis_client.config_set("maxmemory", nearly_full * 4)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="opsq.core.redis_memory"):
            watch.check()
        assert ["back below 80%" in r.getMessage() for r in caplog.records] == [True]
        assert watch.report()["high"] is False
    finally:
        server.stop()


def test_unlimited_redis_is_compared_with_the_machines_memory(redis_url: str) -> None:
    """maxmemory 0 means the server stops where the machine does: that is the limit shown."""
    report = MemoryWatch(redis_url).report()
    assert report["limit"] == "system memory"
    assert report["limit_bytes"] > report["used_bytes"] > 0
    assert report["high"] is False

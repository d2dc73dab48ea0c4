"""`celery -A tasks beat` outlives a Redis restart (issue 12 hostile check F9)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml

from opsq.core import keys
from opsq.core.redis_server import RedisServer
from tests.pipeline.test_beat import start_beat  # noqa: F401  # a fixture


def wait_until(check: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s; beat log:\n{log.read_text()[-3000:]}")


def queued(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.llen(keys.QUEUE_PROBES))
    except redis.ConnectionError:
        return 0
    finally:
        client.close()


@pytest.mark.slow
def test_beat_keeps_running_sets_after_redis_restarts_without_its_data(
    tmp_path: Path,
    start_beat: Callable[[dict[str, str]], None],  # noqa: F811
) -> None:
    """Beat sends a 1 s set's runs (no worker: they pile up in `probes`); Redis is
    killed with -9 and started again empty on the same port. Beat logs the outage,
    stays up, takes its lock again, rewrites the schedule and sends runs again (it
    exited at the first failed tick, and monitoring stopped for good)."""
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    config = tmp_path / "opsq.yaml"
    config.write_text(yaml.safe_dump({"probes": {"sets": {"web": {
        "interval": 1, "targets": [{"name": "a", "url": "http://127.0.0.1:9/"}]}}}}))  # fmt: skip
    log = tmp_path / "beat.log"
    try:
        start_beat({"OPSQ_REDIS_URL": server.url, "OPSQ_CONFIG": str(config),
                    "OPSQ_METRICS__PORT": "0"})  # fmt: skip
        wait_until(lambda: queued(server.url) >= 2, 60, "runs queued", log)
        server.kill9()
        wait_until(lambda: "Redis unavailable" in log.read_text(), 60, "outage logged", log)
        server.start()
        wait_until(lambda: queued(server.url) >= 2, 60, "runs queued after the restart", log)
    finally:
        server.stop()

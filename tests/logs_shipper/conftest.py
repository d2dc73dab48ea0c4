"""Fixtures for the shipper tests: a raw-bytes Redis client and an in-process shipper factory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agents.shipper import Shipper
from agents.sinks import Sink
from agents.sinks.file import FileSink
from opsq.core.config.logs import ShipperSettings
from tests.logs_shipper.support import STREAM


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    """Bytes in, bytes out: stream entries hold arbitrary bytes."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def make_shipper(rclient: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., Shipper]]:
    """Build in-process shippers (file sink in tmp_path unless a sink is given)."""
    made: list[Shipper] = []

    def _make(consumer: str = "s1", sink: Sink | None = None, **conf: Any) -> Shipper:
        settings = ShipperSettings.model_validate({"batch": 10, "block": 0.05, **conf})
        sink = sink or FileSink(tmp_path / f"{consumer}.jsonl", max_bytes=1 << 30, backups=1)
        shipper = Shipper(
            rclient, stream=STREAM, settings=settings, sink=sink, consumer=consumer, retry_cap=0.2
        )
        made.append(shipper)
        return shipper

    yield _make
    for shipper in made:
        shipper.stop.set()
        shipper.sink.close()


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Shipper], threading.Thread]]:
    """Run a shipper's loop in a background thread; stopped and joined at teardown."""
    running: list[tuple[Shipper, threading.Thread]] = []

    def _run(shipper: Shipper) -> threading.Thread:
        thread = threading.Thread(target=shipper.run, daemon=True)
        thread.start()
        running.append((shipper, thread))
        return thread

    yield _run
    for shipper, thread in running:
        shipper.stop.set()
        thread.join(15)

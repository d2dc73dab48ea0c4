"""`opsq ship` as a real process: SIGTERM, kill -9 and a Redis restart mid-run.

Each test ends by checking the sink: every record at least once, and exactly the
expected set after dedupe by record id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from opsq.core.logformat import Entry
from opsq.core.redis_server import RedisServer
from tests.logs_shipper.support import (
    GROUP,
    STREAM,
    ShipperProc,
    ids_of,
    make_entry,
    pending_of,
    produce,
    sink_ids,
    wait_for,
)
from tests.support.tools import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture
def shippers(redis_url: str, tmp_path: Path) -> Iterator[list[ShipperProc]]:
    started: list[ShipperProc] = []
    yield started
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill9()


def start(started: list[ShipperProc], redis_url: str, tmp_path: Path, name: str, **conf: object):
    proc = ShipperProc(redis_url, tmp_path, name, **conf).start()
    started.append(proc)
    return proc


def all_acked(client: redis.Redis, expected_entries: int) -> bool:
    info = {g["name"]: g for g in client.xinfo_groups(STREAM)}
    group = info.get(GROUP.encode()) or info.get(GROUP)
    return bool(group) and group["pending"] == 0 and group["entries-read"] >= expected_entries


def shipped_all(client: redis.Redis, sink_dir: Path, entries: list[Entry]) -> bool:
    """Every record is in the sink and nothing is pending (robust to duplicate entries)."""
    return set(sink_ids(sink_dir)) >= ids_of(entries) and all_acked(client, len(entries))


def test_sigterm_finishes_the_in_flight_batch_and_exits_zero(
    rclient: redis.Redis, redis_url: str, tmp_path: Path, shippers
) -> None:
    """The sink is down when SIGTERM arrives; it recovers within the grace period; the
    held batch is written and acknowledged before the process exits 0."""
    blocker = tmp_path / "out"
    blocker.write_text("")
    ship = start(shippers, redis_url, tmp_path, "term", shutdown_grace=30,
                 sink={"type": "file", "path": str(blocker / "sink.jsonl")})  # fmt: skip
    entries = [make_entry(n) for n in range(5)]
    produce(rclient, entries)
    wait_for(
        lambda: (
            pending_of(rclient, "term") == 5 and ship.metric("opsq_shipper_sink_errors_total") > 0
        ),
        what="batch held while the sink fails",
    )

    ship.signal(signal.SIGTERM)
    blocker.unlink()

    assert ship.proc is not None
    assert ship.proc.wait(30) == 0
    assert set(sink_ids(blocker)) == ids_of(entries)
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0


def test_metrics_endpoint_passes_promtool_and_names_the_shipper_metrics(
    rclient: redis.Redis, redis_url: str, tmp_path: Path, shippers
) -> None:
    promtool = require_tool("promtool")
    ship = start(shippers, redis_url, tmp_path, "m")
    produce(rclient, [make_entry(n) for n in range(3)])
    wait_for(lambda: all_acked(rclient, 3), what="entries acked")
    # retention runs every trim_interval (1 s here): acknowledged entries are trimmed
    wait_for(lambda: ship.metric("opsq_stream_trimmed_total") == 3, what="acked entries trimmed")
    wait_for(lambda: rclient.xlen(STREAM) == 0, what="stream empty")

    text = httpx.get(f"http://127.0.0.1:{ship.port}/metrics", timeout=5).text
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    for name in (
        "opsq_shipper_entries_total", "opsq_shipper_records_total",
        "opsq_shipper_sink_errors_total", "opsq_shipper_claimed_total",
        "opsq_shipper_dead_lettered_total", "opsq_stream_length", "opsq_stream_pending",
        "opsq_stream_trimmed_total", "opsq_shipper_sink_append_seconds_bucket",
    ):  # fmt: skip
        assert name in text
    assert ship.metric("opsq_shipper_records_total") == 15
    assert ship.stop() == 0


class Producer(threading.Thread):
    """XADDs entries one by one, retrying while Redis is down (a retried XADD whose
    reply was lost may duplicate an entry: the ids stay the same, dedupe removes it)."""

    def __init__(self, redis_url: str, entries: list[Entry], pause: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.entries = entries
        self.pause = pause
        self.sent = 0
        self.halfway = threading.Event()

    def run(self) -> None:
        for n, entry in enumerate(self.entries):
            while True:
                try:
                    self.client.xadd(STREAM, entry.encode())
                    break
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.05)
            self.sent = n + 1
            if self.sent == len(self.entries) // 2:
                self.halfway.set()
            time.sleep(self.pause)
        self.client.close()


def test_kill9_shipper_its_pending_entries_are_reclaimed_by_another(
    rclient: redis.Redis, redis_url: str, tmp_path: Path, shippers
) -> None:
    entries = [make_entry(n) for n in range(600)]
    rclient.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    a = start(shippers, redis_url, tmp_path, "a")
    producer = Producer(redis_url, entries)
    producer.start()
    producer.halfway.wait(60)
    assert a.proc is not None
    held = 0
    for _ in range(500):  # freeze it at a moment when it holds unacknowledged entries
        os.kill(a.proc.pid, signal.SIGSTOP)
        held = pending_of(rclient, "a")
        if held:
            break
        os.kill(a.proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    assert held > 0, "never caught shipper a holding entries"
    a.kill9()

    b = start(shippers, redis_url, tmp_path, "b", claim_idle=0.5)
    producer.join(60)
    wait_for(lambda: shipped_all(rclient, tmp_path, entries), 60, "every record shipped and acked")

    assert pending_of(rclient, "a") == 0
    assert b.metric("opsq_shipper_claimed_total") >= held
    seen = sink_ids(tmp_path)
    assert set(seen) == ids_of(entries)  # every record at least once, nothing foreign
    assert b.stop() == 0


def test_redis_restart_mid_run_loses_nothing(
    rclient: redis.Redis, redis_server: RedisServer, redis_url: str, tmp_path: Path, shippers
) -> None:
    """Redis is killed (-9) and restarted while entries flow; the shipper reconnects.

    appendfsync is switched to ``always`` for this test: with the default ``everysec`` a
    kill -9 may lose the last second of *acknowledged* XADDs, which is Redis' documented
    durability trade-off, not something the shipper could recover.
    """
    rclient.config_set("appendfsync", "always")
    entries = [make_entry(n) for n in range(400)]
    try:
        ship = start(shippers, redis_url, tmp_path, "r")
        producer = Producer(redis_url, entries)
        producer.start()
        producer.halfway.wait(60)
        redis_server.restart()
        producer.join(60)
    finally:
        fresh = redis.Redis.from_url(redis_url)
        fresh.config_set("appendfsync", "everysec")
        fresh.close()
    wait_for(lambda: shipped_all(rclient, tmp_path, entries), 60, "every record shipped and acked")

    assert ship.proc is not None
    assert ship.proc.poll() is None  # it rode out the outage
    assert "redis unavailable" in ship.log.read_text()  # ... which it did see
    assert set(sink_ids(tmp_path)) == ids_of(entries)
    assert ship.stop() == 0

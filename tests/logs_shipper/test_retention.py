"""Retention trims only what every consumer group has acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from agents.retention import Retention
from agents.shipper import Shipper
from agents.sinks.stdout import StdoutSink
from opsq.core.config.logs import ShipperSettings
from opsq.core.errors import RedisUnavailable
from opsq.core.redis_server import RedisServer, free_port
from tests.logs_shipper.support import GROUP, STREAM, make_entry, produce


def test_pending_entries_survive_trim_and_acked_ones_are_trimmed(rclient: redis.Redis) -> None:
    ids = produce(rclient, [make_entry(n) for n in range(10)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "c", {STREAM: ">"}, count=6)  # ids[0:6] delivered
    rclient.xack(STREAM, GROUP, *ids[0:3], ids[4])  # ids[3] and ids[5] still pending

    trimmed = Retention(rclient, STREAM).trim()

    assert trimmed == 3
    remaining = [i.decode() for i, _ in rclient.xrange(STREAM)]
    assert remaining == ids[3:]  # the oldest pending entry and everything after it


def test_everything_acknowledged_up_to_last_delivered_is_trimmed(rclient: redis.Redis) -> None:
    ids = produce(rclient, [make_entry(n) for n in range(5)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "c", {STREAM: ">"}, count=3)
    rclient.xack(STREAM, GROUP, *ids[:3])

    assert Retention(rclient, STREAM).trim() == 3
    assert [i.decode() for i, _ in rclient.xrange(STREAM)] == ids[3:]  # never delivered: kept


def test_the_slowest_group_decides(rclient: redis.Redis) -> None:
    ids = produce(rclient, [make_entry(n) for n in range(6)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xgroup_create(STREAM, "archive", id="0")
    rclient.xreadgroup(GROUP, "c", {STREAM: ">"})
    rclient.xack(STREAM, GROUP, *ids)
    rclient.xreadgroup("archive", "a", {STREAM: ">"}, count=2)
    rclient.xack(STREAM, "archive", ids[0])

    Retention(rclient, STREAM).trim()

    assert [i.decode() for i, _ in rclient.xrange(STREAM)] == ids[1:]


def test_a_stream_nobody_consumes_is_left_alone(rclient: redis.Redis) -> None:
    produce(rclient, [make_entry(n) for n in range(3)])
    assert Retention(rclient, STREAM).trim() == 0
    assert rclient.xlen(STREAM) == 3
    assert Retention(rclient, "no-such-stream").trim() == 0


def test_a_read_only_redis_makes_the_shippers_trim_a_temporary_error(tmp_path: Path) -> None:
    """After a failover the old primary answers READONLY: back off, do not crash."""
    server = RedisServer(tmp_path / "r", appendonly=False)
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        client.xgroup_create(STREAM, "g", id="0", mkstream=True)
        settings = ShipperSettings.model_validate({"group": "g"})
        shipper = Shipper(client, stream=STREAM, settings=settings, sink=StdoutSink())
        client.replicaof("127.0.0.1", free_port())  # a replica: writes answer READONLY
        with pytest.raises(RedisUnavailable, match="XTRIM"):
            shipper.trim()
    finally:
        client.close()
        server.stop()

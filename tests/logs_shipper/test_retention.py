"""Retention trims only what every consumer group has acknowledged."""

from __future__ import annotations

import redis

from agents.retention import Retention
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

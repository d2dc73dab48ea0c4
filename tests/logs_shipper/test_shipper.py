"""The shipper engine against a real Redis: ordering of drain/read, ack-after-write,
claiming, dead-lettering and what the file sink receives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from agents.attempts import Attempts
from agents.shipper import ensure_group, group_exists, redis_errors
from agents.sinks.base import Delivery, jsonl_bytes
from agents.sinks.file import FileSink
from opsq.core import keys
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.logformat import Entry, record_id
from opsq.core.metrics.logs_shipper import STREAM_PENDING
from tests.logs_shipper.support import (
    FID,
    GROUP,
    STREAM,
    ids_of,
    make_entry,
    pending_of,
    produce,
    sink_docs,
    sink_ids,
    wait_for,
)


def idle_ms(client: redis.Redis) -> int:
    """How long the oldest pending entry has been idle."""
    return int(client.xpending_range(STREAM, GROUP, "-", "+", 1)[0]["time_since_delivered"])


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_file_sink_gets_every_record_with_its_fields_and_entries_are_acked(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    entries = [make_entry(n) for n in range(25)]
    produce(rclient, entries)
    shipper = make_shipper()
    acked_before = metric("opsq_shipper_entries_total", result="acked")

    while shipper.step():
        pass

    docs = sink_docs(tmp_path)
    assert {d["id"] for d in docs} == ids_of(entries)
    assert len(docs) == 25 * 5
    first = next(d for d in docs if d["id"] == record_id(FID, 0))
    assert first["line"] == "entry 0 line 0"
    assert first["path"] == "/var/log/app.log"
    assert first["offset"] == 0
    assert first["host"] == "node1"
    assert first["fid"] == FID
    assert first["ts"].endswith("Z")
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0
    assert metric("opsq_shipper_entries_total", result="acked") - acked_before == 25


def test_invalid_utf8_and_nul_bytes_stay_visible_and_valid_json(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    raw = b"bad \xff\xfe byte, nul \x00 here, tab\tend"
    produce(rclient, [Entry("node1", "/l/x.log", FID, 0, len(raw), ((0, raw),))])
    make_shipper().step()

    line_bytes = (tmp_path / "s1.jsonl").read_bytes()
    assert b"\x00" not in line_bytes  # NUL escaped, never written raw
    (doc,) = sink_docs(tmp_path)
    assert doc["line"] == "bad \\xff\\xfe byte, nul \x00 here, tab\tend"


def test_own_pending_entries_are_drained_before_new_ones(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    """A restarted consumer finds what it had read but not acked (a crash) and ships it first."""
    old = [make_entry(n) for n in range(3)]
    produce(rclient, old)
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "s1", {STREAM: ">"}, count=10)  # delivered, never acked
    new = [make_entry(n) for n in range(3, 6)]
    produce(rclient, new)
    shipper = make_shipper("s1", claim_idle=3600)

    shipper.drain_own_pending()

    assert set(sink_ids(tmp_path)) == ids_of(old)  # only the pending ones so far
    assert pending_of(rclient, "s1") == 0
    while shipper.step():
        pass
    assert set(sink_ids(tmp_path)) == ids_of(old + new)


def test_nothing_is_acked_while_the_sink_fails_and_all_is_shipped_once_it_recovers(
    rclient: redis.Redis, make_shipper, run_in_thread, tmp_path: Path
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the sink's directory should be")
    sink = FileSink(blocker / "sink.jsonl", max_bytes=1 << 30, backups=1)
    entries = [make_entry(n) for n in range(8)]
    produce(rclient, entries)
    errors_before = metric("opsq_shipper_sink_errors_total", sink="file")
    STREAM_PENDING.labels(STREAM, GROUP).set(-1)  # so only a refresh can make it 8
    run_in_thread(make_shipper("s1", sink=sink, batch=100, trim_interval=0.05))

    wait_for(lambda: metric("opsq_shipper_sink_errors_total", sink="file") > errors_before + 2)
    assert pending_of(rclient, "s1") == 8  # delivered, held, not acked
    # the backlog gauge keeps being refreshed during the outage
    wait_for(lambda: metric("opsq_stream_pending", stream=STREAM, group=GROUP) == 8)
    assert rclient.xlen(STREAM) == 8  # retention keeps what is not acknowledged
    blocker.unlink()  # the sink recovers

    wait_for(lambda: rclient.xpending(STREAM, GROUP)["pending"] == 0, what="all acked")
    counts = sink_ids(blocker)
    assert set(counts) == ids_of(entries)
    assert max(counts.values()) == 1


def test_poison_entry_goes_to_dead_letter_stream_acked_and_counted(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    good = make_entry(1)
    produce(rclient, [make_entry(0)])
    poison_id = rclient.xadd(STREAM, {b"v": b"1", b"data": b"\xff", b"lens": b"x"}).decode()
    produce(rclient, [good])
    before = metric("opsq_shipper_dead_lettered_total", reason="poison")

    make_shipper().step()

    dead = rclient.xrange(keys.dead_letter(STREAM))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"original_id"].decode() == poison_id
    assert fields[b"reason"].startswith(b"undecodable entry")
    assert fields[b"data"] == b"\xff"  # the original fields, untouched
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0
    assert metric("opsq_shipper_dead_lettered_total", reason="poison") == before + 1
    assert set(sink_ids(tmp_path)) == ids_of([make_entry(0), good])


def test_an_entry_whose_writes_died_max_deliveries_times_is_dead_lettered_when_claimed(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    """An entry that keeps killing its shippers mid-write stops circulating: three
    shippers began a sink write with it (Attempts.begin, as _ship does) and died."""
    (entry_id,) = produce(rclient, [make_entry(0)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "dead-1", {STREAM: ">"})
    for _ in range(3):
        Attempts(rclient, STREAM, GROUP).begin([entry_id])
    shipper = make_shipper("s1", claim_idle=0.01, max_deliveries=3)
    wait_for(lambda: idle_ms(rclient) > 20)
    before = metric("opsq_shipper_dead_lettered_total", reason="max_deliveries")

    shipper.claim_idle()

    dead = rclient.xrange(keys.dead_letter(STREAM))
    assert [f[b"original_id"].decode() for _, f in dead] == [entry_id]
    assert dead[0][1][b"reason"] == b"3 sink writes died unfinished (max_deliveries 3)"
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0
    assert rclient.hlen(keys.log_attempts(STREAM, GROUP)) == 0  # gone with the entry
    assert metric("opsq_shipper_dead_lettered_total", reason="max_deliveries") == before + 1
    assert sink_ids(tmp_path) == {}


def test_redeliveries_without_failed_writes_never_dead_letter(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    """XREADGROUP 0 on every restart raises the XPENDING delivery counter; that counter
    no longer decides anything: the entry is shipped, not dead-lettered."""
    produce(rclient, [make_entry(0)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "s1", {STREAM: ">"})
    for _ in range(8):  # eight restarts that re-read the pending entry
        rclient.xreadgroup(GROUP, "s1", {STREAM: "0"})
    assert rclient.xpending_range(STREAM, GROUP, "-", "+", 1)[0]["times_delivered"] >= 8
    shipper = make_shipper("s1", max_deliveries=3)
    while shipper.step():
        pass
    assert rclient.xlen(keys.dead_letter(STREAM)) == 0
    assert set(sink_ids(tmp_path)) == ids_of([make_entry(0)])
    assert rclient.exists(keys.log_attempts(STREAM, GROUP)) == 0


def test_idle_entries_of_a_dead_consumer_are_claimed_and_shipped(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    entries = [make_entry(n) for n in range(30)]
    produce(rclient, entries)
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "crashed", {STREAM: ">"}, count=30)
    shipper = make_shipper("s1", claim_idle=0.01, batch=7)  # several XAUTOCLAIM pages
    wait_for(lambda: idle_ms(rclient) > 20)
    before = metric("opsq_shipper_claimed_total")

    shipper.claim_idle()

    assert set(sink_ids(tmp_path)) == ids_of(entries)
    assert pending_of(rclient, "crashed") == 0
    assert metric("opsq_shipper_claimed_total") - before == 30


def test_entries_a_live_consumer_just_read_are_not_claimed(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    produce(rclient, [make_entry(0)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "busy", {STREAM: ">"})
    make_shipper("s1", claim_idle=3600).claim_idle()
    assert pending_of(rclient, "busy") == 1
    assert not (tmp_path / "s1.jsonl").exists()


def test_stream_gauges_report_length_and_pending(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    produce(rclient, [make_entry(n) for n in range(4)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "other", {STREAM: ">"}, count=3)
    make_shipper("s1").trim()
    assert metric("opsq_stream_length", stream=STREAM) == 4
    assert metric("opsq_stream_pending", stream=STREAM, group=GROUP) == 3


def test_rendered_lines_are_json_objects_one_per_record(tmp_path: Path) -> None:
    entry = Entry("h", "/p\udcff", FID, 0, 10, ((0, b'q"uote'), (6, b"\\back")))
    data = jsonl_bytes([Delivery("1700000000000-0", entry, entry.encode())])
    lines = data.decode().splitlines()
    assert [json.loads(line)["line"] for line in lines] == ['q"uote', "\\back"]
    assert json.loads(lines[0])["path"] == "/p\\xff"
    assert json.loads(lines[0])["ts"] == "2023-11-14T22:13:20.000Z"


def test_pending_entries_deleted_from_the_stream_are_counted_not_shipped(
    rclient: redis.Redis, make_shipper, tmp_path: Path
) -> None:
    """A user's MAXLEN cap or XDEL can remove entries still pending: XAUTOCLAIM reports
    them as deleted ids (Redis 7+) and a history read returns them without fields."""
    ids = produce(rclient, [make_entry(n) for n in range(4)])
    rclient.xgroup_create(STREAM, GROUP, id="0")
    rclient.xreadgroup(GROUP, "crashed", {STREAM: ">"}, count=2)  # ids[0:2] -> crashed
    rclient.xreadgroup(GROUP, "s1", {STREAM: ">"}, count=2)  # ids[2:4] -> s1 itself
    rclient.xdel(STREAM, ids[0], ids[2])
    shipper = make_shipper("s1", claim_idle=0.01)
    wait_for(lambda: idle_ms(rclient) > 20)
    gone_before = metric("opsq_shipper_entries_total", result="gone")

    shipper.drain_own_pending()
    shipper.claim_idle()

    assert metric("opsq_shipper_entries_total", result="gone") - gone_before == 2
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0
    assert set(sink_ids(tmp_path)) == ids_of([make_entry(1), make_entry(3)])


def test_readiness_needs_the_group_and_start_creates_it_idempotently(
    rclient: redis.Redis, make_shipper
) -> None:
    assert not group_exists(rclient, STREAM, GROUP)  # no stream yet
    make_shipper().step()
    assert group_exists(rclient, STREAM, GROUP)
    ensure_group(rclient, STREAM, GROUP)  # a second shipper starting: no BUSYGROUP error
    assert len(rclient.xinfo_groups(STREAM)) == 1


def test_oom_reply_is_mapped_to_redis_unavailable_so_the_shipper_backs_off(
    rclient: redis.Redis,
) -> None:
    """redis-py strips the ``OOM`` code from the message; the mapping must still see it.

    A full Redis under ``noeviction`` is a designed-for state (agent backpressure): a
    dead-letter XADD refused with OOM must back off and retry, not crash the shipper.
    """
    limit = rclient.config_get("maxmemory")["maxmemory"]
    rclient.config_set("maxmemory", 1)
    try:
        with pytest.raises(RedisUnavailable, match="maxmemory"):
            with redis_errors("XADD"):
                rclient.xadd(keys.dead_letter(STREAM), {b"k": b"v"})
    finally:
        rclient.config_set("maxmemory", limit)


def test_nogroup_is_retried_but_wrongtype_is_a_bug(rclient: redis.Redis) -> None:
    """The shipper's one caller-specific rule (NOGROUP: Redis lost the group, recovery
    recreates it) on top of the shared policy, where WRONGTYPE is permanent."""
    with pytest.raises(RedisUnavailable, match="NOGROUP"), redis_errors("XREADGROUP"):
        rclient.xreadgroup("missing-group", "c", {"no-such-stream": ">"})
    rclient.set("not-a-stream", "x")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"), redis_errors("XREADGROUP"):
        rclient.xreadgroup("g", "c", {"not-a-stream": ">"})

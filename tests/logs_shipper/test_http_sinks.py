"""Loki and Elasticsearch sinks over real HTTP against local servers of the same shape."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from aiohttp import web

from agents.sinks.base import Delivery
from agents.sinks.elasticsearch import ElasticsearchSink
from agents.sinks.loki import LokiSink
from opsq.core import keys
from opsq.core.config.logs import SinkSettings
from opsq.core.errors import TemporaryError
from opsq.core.logformat import record_id
from tests.logs_shipper.fake_http import FakeElasticsearch, FakeLoki, ServerThread
from tests.logs_shipper.support import FID, GROUP, STREAM, ids_of, make_entry, produce


@pytest.fixture
def loki() -> Iterator[tuple[FakeLoki, str]]:
    fake = FakeLoki()
    server = ServerThread(fake.app()).start()
    yield fake, server.url
    server.stop()


@pytest.fixture
def elastic() -> Iterator[tuple[FakeElasticsearch, str]]:
    fake = FakeElasticsearch()
    server = ServerThread(fake.app()).start()
    yield fake, server.url
    server.stop()


def drain(shipper) -> None:
    while shipper.step():
        pass


def test_loki_receives_streams_with_labels_and_every_line_after_5xx_retries(
    rclient: redis.Redis, make_shipper, loki
) -> None:
    fake, url = loki
    fake.fail_next = 2
    entries = [make_entry(n) for n in range(4)] + [make_entry(9, path="/var/log/other.log")]
    produce(rclient, entries)
    settings = SinkSettings(
        type="loki", url=url, labels={"env": "test"}, tenant="team-a", username="u", password="p"
    )
    drain(make_shipper(sink=LokiSink(settings)))

    assert fake.failures == 2  # retried, nothing acked in between
    values = fake.values()
    assert Counter(line for _, _, line in values) == Counter(
        r.decode() for e in entries for _, r in e.records
    )
    labels = {tuple(sorted(s.items())) for s, _, _ in values}
    assert labels == {
        (("env", "test"), ("host", "node1"), ("path", "/var/log/app.log")),
        (("env", "test"), ("host", "node1"), ("path", "/var/log/other.log")),
    }
    assert all(ts.isdigit() and len(ts) == 19 for _, ts, _ in values)  # nanoseconds
    assert fake.headers[-1]["X-Scope-OrgID"] == "team-a"
    assert fake.headers[-1]["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0


def test_loki_redelivery_repeats_the_same_timestamps(
    rclient: redis.Redis, make_shipper, loki
) -> None:
    """Loki drops exact (timestamp, line) duplicates, so redelivery must reuse timestamps."""
    fake, url = loki
    produce(rclient, [make_entry(0)])
    shipper = make_shipper("s1", sink=LokiSink(SinkSettings(type="loki", url=url)))
    shipper.step()
    first = fake.values()
    fake.pushes.clear()
    rclient.xgroup_setid(STREAM, GROUP, "0")  # the group delivers the entry again

    shipper.step()

    assert len(first) == 5
    assert fake.values() == first


def test_loki_400_dead_letters_only_the_refused_entry(
    rclient: redis.Redis, make_shipper, loki
) -> None:
    fake, url = loki
    good = [make_entry(n) for n in range(5)]
    produce(rclient, good[:2])
    bad = make_entry(7)
    bad = type(bad)(bad.host, bad.path, bad.fid, bad.start, bad.end, ((bad.start, b"REJECT me"),))
    (bad_id,) = produce(rclient, [bad])
    produce(rclient, good[2:])

    drain(make_shipper(sink=LokiSink(SinkSettings(type="loki", url=url))))

    assert {line for _, _, line in fake.values()} == {
        r.decode() for e in good for _, r in e.records
    }
    dead = rclient.xrange(keys.dead_letter(STREAM))
    assert [f[b"original_id"].decode() for _, f in dead] == [bad_id]
    assert b"HTTP 400" in dead[0][1][b"reason"]
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0


def test_elasticsearch_bulk_uses_record_ids_retries_429_items_and_dead_letters_4xx(
    rclient: redis.Redis, make_shipper, elastic
) -> None:
    fake, url = elastic
    entries = [make_entry(n) for n in range(4)]
    throttled = record_id(FID, entries[1].records[2][0])
    unmappable = record_id(FID, entries[2].records[0][0])
    fake.throttle_once.add(throttled)
    fake.mapping_error.add(unmappable)
    ids = produce(rclient, entries)
    sink = ElasticsearchSink(SinkSettings(type="elasticsearch", url=url, index="logs-x"))

    drain(make_shipper(sink=sink))

    assert set(fake.docs) == ids_of(entries) - {unmappable}
    assert all(a["index"]["_index"] == "logs-x" for a in fake.actions)
    assert fake.content_types[0] == "application/x-ndjson"
    doc = fake.docs[record_id(FID, 0)]
    assert doc["line"] == "entry 0 line 0"
    assert doc["@timestamp"].endswith("Z")
    dead = rclient.xrange(keys.dead_letter(STREAM))
    assert [f[b"original_id"].decode() for _, f in dead] == [ids[2]]
    assert b"mapper_parsing_exception" in dead[0][1][b"reason"]
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0


def test_elasticsearch_redelivery_is_idempotent(
    rclient: redis.Redis, make_shipper, elastic
) -> None:
    fake, url = elastic
    entry = make_entry(0)
    produce(rclient, [entry, entry])  # the same records delivered twice (a redelivery)
    drain(make_shipper(sink=ElasticsearchSink(SinkSettings(type="elasticsearch", url=url))))

    assert len(fake.actions) == 10  # both copies were sent ...
    assert set(fake.docs) == ids_of([entry])  # ... and each record is one document


def test_a_408_from_a_proxy_is_retried_not_dead_lettered(
    rclient: redis.Redis, make_shipper, loki
) -> None:
    """Request Timeout means "send it again", not "this entry is refused"."""
    fake, url = loki
    fake.fail_next, fake.fail_status = 2, 408
    entries = [make_entry(n) for n in range(3)]
    produce(rclient, entries)
    drain(make_shipper(sink=LokiSink(SinkSettings(type="loki", url=url))))
    assert fake.failures == 2
    assert len(fake.values()) == sum(len(e.records) for e in entries)
    assert rclient.xlen(keys.dead_letter(STREAM)) == 0
    assert rclient.xpending(STREAM, GROUP)["pending"] == 0


def test_elasticsearch_non_object_answer_is_retried_not_a_crash() -> None:
    """A 200 whose JSON body is not an object (a proxy, a broken node) is a temporary error."""

    async def bulk(_: web.Request) -> web.Response:
        return web.json_response(["not", "an", "object"])

    app = web.Application()
    app.router.add_post("/_bulk", bulk)
    server = ServerThread(app).start()
    entry = make_entry(1)
    sink = ElasticsearchSink(SinkSettings(type="elasticsearch", url=server.url))
    try:
        with pytest.raises(TemporaryError):
            sink.write([Delivery("1-0", entry, entry.encode())])
    finally:
        sink.close()
        server.stop()

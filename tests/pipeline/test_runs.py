"""The results store: idempotent writes, progress, and the aggregated summary."""

from __future__ import annotations

import asyncio
import json

import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.config.probes import Target
from opsq.core.runs import AsyncRunStore, RunStore, encode_result, new_run_id
from opsq.core.settings import load_settings
from producers.probes import ProbeProducer


def _result(name: str, up: bool, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "url": f"http://127.0.0.1/{name}",
        "group": "default",
        "up": up,
        "status_code": 200 if up else 503,
        "attempts": 1,
        "duration_s": 0.01,
        "phases": {"connect": 0.001},
        "error": None if up else "status 503 not in 200-399",
        "error_kind": None if up else "status",
        **extra,
    }


def _entry(name: str, up: bool, index: int) -> tuple[str, str]:
    result = _result(name, up)
    return f"{name}|{result['url']}", encode_result(result, index)


def test_double_write_of_a_result_counts_once(redis_client: redis.Redis) -> None:
    store = RunStore(redis_client)
    run_id = new_run_id()
    store.create_run(run_id, 2, source="t.yaml")
    first = store.record(run_id, [_entry("a", True, 0)])
    again = store.record(run_id, [_entry("a", False, 0)])  # a redelivered batch
    assert (first.added, first.done) == (1, 1)
    assert (again.added, again.done) == (0, 1)
    stored = json.loads(redis_client.hget(keys.run_results(run_id), "a|http://127.0.0.1/a"))
    assert stored["up"] is True  # the first write wins; the duplicate changed nothing
    assert store.progress(run_id).done == 1
    assert store.summary(run_id)["pending"] == 1


def test_the_completing_write_stores_the_summary_in_input_order(redis_client: redis.Redis) -> None:
    store = RunStore(redis_client)
    run_id = new_run_id()
    store.create_run(run_id, 3, source="t.yaml")
    assert not store.record(run_id, [_entry("c", True, 2), _entry("a", True, 0)]).completed_now
    assert redis_client.get(keys.run_summary(run_id)) is None
    outcome = store.record(run_id, [_entry("b", False, 1), _entry("a", True, 0)])
    assert outcome.completed_now
    assert outcome.added == 1
    summary = json.loads(redis_client.get(keys.run_summary(run_id)))
    assert [r["name"] for r in summary["results"]] == ["a", "b", "c"]
    assert (summary["total"], summary["up"], summary["down"]) == (3, 2, 1)
    assert summary["results"][1]["error"] == "status 503 not in 200-399"
    assert set(summary["results"][0]) >= {
        "name", "url", "up", "status_code", "attempts", "duration_s", "phases", "error",
    }  # fmt: skip
    assert 0 < redis_client.ttl(keys.run_summary(run_id)) <= keys.RUN_TTL_S
    assert 0 < redis_client.ttl(keys.run_results(run_id)) <= keys.RUN_TTL_S


def test_a_reader_builds_the_summary_when_the_completing_writer_died(
    redis_client: redis.Redis,
) -> None:
    """The worker may die between the last result and the summary: readers finish it."""
    store = RunStore(redis_client)
    run_id = new_run_id()
    store.create_run(run_id, 1)
    key, value = _entry("a", True, 0)
    redis_client.hset(keys.run_results(run_id), key, value)  # result written, no summary
    summary = store.summary(run_id)
    assert summary is not None
    assert (summary["up"], summary["pending"]) == (1, 0)
    assert redis_client.get(keys.run_summary(run_id)) is not None


def test_unknown_run_has_no_summary(redis_client: redis.Redis) -> None:
    assert RunStore(redis_client).summary("nope") is None


def test_runs_list_shows_recent_runs_first(redis_client: redis.Redis) -> None:
    store = RunStore(redis_client)
    store.create_run("20260101T000000-aaaaaa", 1, source="one.yaml")
    store.create_run("20260101T000001-bbbbbb", 2, source="two.yaml")
    runs = store.list_runs()
    assert [r["run_id"] for r in runs] == ["20260101T000001-bbbbbb", "20260101T000000-aaaaaa"]
    assert (runs[0]["total"], runs[0]["done"]) == ("2", 0)


def test_async_store_counts_concurrent_duplicate_writes_once(redis_url: str) -> None:
    """Two deliveries of the same batch racing: each target is counted exactly once."""

    async def scenario() -> tuple[list[int], int, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store = AsyncRunStore(client)
        run_id = new_run_id()
        RunStore.from_url(redis_url).create_run(run_id, 50)
        entries = [_entry(f"t{i}", i % 2 == 0, i) for i in range(50)]
        outcomes = await asyncio.gather(
            *(store.record(run_id, entries[i : i + 5]) for i in range(0, 50, 5)),
            *(store.record(run_id, entries[i : i + 10]) for i in range(0, 50, 10)),
        )
        deliveries = [await store.count_delivery(run_id, "b0") for _ in range(3)]
        summary = json.loads(await client.get(keys.run_summary(run_id)))
        await client.aclose()
        assert sum(o.completed_now for o in outcomes) == 1
        return deliveries, sum(o.added for o in outcomes), summary["up"]

    deliveries, added, up = asyncio.run(scenario())
    assert deliveries == [1, 2, 3]
    assert added == 50
    assert up == 25


def test_closed_producers_leave_no_connection_behind(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Sending subscribes the producer's result backend on a pub/sub connection of its
    own; close() must release it (and the store's client). Only kombu's process-wide
    publishing pool may stay, so after the first producer the count no longer grows."""

    def connection_ids() -> set[int]:
        return {int(c["id"]) for c in redis_client.client_list()}

    def submit_and_close() -> None:
        producer = ProbeProducer(load_settings(None, redis_url=redis_url))
        producer.submit([Target(name="a", url="http://127.0.0.1:1/")], source="test")
        producer.close()

    submit_and_close()  # opens the shared publishing pool
    settled = connection_ids()
    for _ in range(3):
        submit_and_close()
    assert connection_ids() - settled == set()

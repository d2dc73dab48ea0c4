"""The run store: whole submission, idempotent writes, packing once, retention, reading."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.config.probes import Target
from opsq.core.runs import (
    _HOOKS,
    AsyncRunStore,
    CompletedRun,
    Kind,
    RunPlan,
    RunStore,
    decode_result,
    encode_result,
    on_run_complete,
    plan_run,
    result_key,
)
from opsq.core.settings import load_settings
from opsq.engines.probe.result import ProbeResult
from producers.probes import ProbeProducer, encode_targets


def _result(name: str, up: bool, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "url": f"http://127.0.0.1/{name}",
        "group": "default",
        "up": up,
        "status_code": 200 if up else 503,
        "attempts": 1,
        "duration_s": 0.012345,
        "phases": {"connect": 0.001},
        "error": None if up else "status 503 not in 200-399",
        "error_kind": None if up else "status",
        "cert_days_left": None,
        "started_at": time.time(),
        **extra,
    }


def _plan(names: list[str], *, kind: Kind = "on_demand", retention: int = 600) -> RunPlan:
    targets = [Target(name=n, url=f"http://127.0.0.1/{n}") for n in names]
    return plan_run(encode_targets(targets, 2), kind=kind, retention=retention, source="t.yaml")


def _entry(store: RunStore, run_id: str, name: str, up: bool, index: int) -> tuple[str, str, bool]:
    created = store.run_meta(run_id).created_at
    return result_key(index), encode_result(_result(name, up), index, created), up


@pytest.fixture
def store(redis_client: redis.Redis) -> RunStore:
    return RunStore(redis_client)


@pytest.fixture
def completion_calls() -> Iterator[list[CompletedRun]]:
    calls: list[CompletedRun] = []
    hook = on_run_complete(calls.append)
    yield calls
    _HOOKS.remove(hook)


def _finalize(redis_url: str, run_id: str) -> CompletedRun | None:
    async def scenario() -> CompletedRun | None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await AsyncRunStore(client).finalize(run_id)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_submit_registers_the_run_and_enqueues_every_batch_in_one_transaction(
    store: RunStore, redis_client: redis.Redis
) -> None:
    """All batches are in the queue, in file order, when the run becomes visible."""
    plan = _plan(["a", "b", "c", "d", "e"])
    submitted = store.submit(plan)
    assert (submitted.total, submitted.batches) == (5, 3)
    assert redis_client.llen(keys.QUEUE_PROBES) == 3
    oldest = json.loads(redis_client.lindex(keys.QUEUE_PROBES, -1))  # BRPOP takes the tail
    assert oldest["headers"]["task"] == "opsq.probe_batch"
    assert store.progress(submitted.run_id).total == 5
    assert 0 < redis_client.ttl(keys.run_meta(submitted.run_id)) <= 600


def test_double_write_of_a_result_counts_once(store: RunStore, redis_client: redis.Redis) -> None:
    """A redelivered batch re-writes nothing: the first result wins, counts do not double."""
    run_id = store.submit(_plan(["a", "b"])).run_id
    first = store.record(run_id, [_entry(store, run_id, "a", True, 0)])
    again = store.record(run_id, [_entry(store, run_id, "a", False, 0)])
    assert (first.added, first.done) == (1, 1)
    assert (again.added, again.done) == (0, 1)
    stored = json.loads(redis_client.hget(keys.run_results(run_id), "0"))
    assert stored["u"] == 1  # the first write wins; the duplicate changed nothing
    summary = store.summary(run_id)
    assert summary is not None
    assert (summary["up"], summary["down"], summary["pending"]) == (1, 0, 1)


def test_the_last_write_packs_the_results_in_file_order_and_runs_hooks_once(
    store: RunStore,
    redis_client: redis.Redis,
    redis_url: str,
    completion_calls: list[CompletedRun],
) -> None:
    """The completing write is told to pack; packing deletes the live hash, keeps file
    order and TTLs, and a second packer (a racing worker) does nothing."""
    run_id = store.submit(_plan(["a", "b", "c"])).run_id
    store.record(run_id, [_entry(store, run_id, "c", True, 2), _entry(store, run_id, "a", True, 0)])
    outcome = store.record(run_id, [_entry(store, run_id, "b", False, 1)])
    assert outcome.needs_finalize
    assert _finalize(redis_url, run_id) is not None
    assert _finalize(redis_url, run_id) is None  # already packed: exactly once
    assert [run.run_id for run in completion_calls] == [run_id]
    assert [r["name"] for r in completion_calls[0].results] == ["a", "b", "c"]
    assert not redis_client.exists(keys.run_results(run_id))
    assert 0 < redis_client.ttl(keys.run_packed(run_id)) <= 600
    summary = store.summary(run_id)
    assert summary is not None
    assert [r["name"] for r in summary["results"]] == ["a", "b", "c"]
    assert (summary["total"], summary["up"], summary["down"], summary["pending"]) == (3, 2, 1, 0)
    assert summary["results"][1]["error"] == "status 503 not in 200-399"
    assert summary["results"][0]["duration_s"] == 0.012345
    assert store.record(run_id, [_entry(store, run_id, "a", False, 0)]).finished


def test_a_complete_run_nobody_packed_is_read_live_and_packed_by_the_next_write(
    store: RunStore, redis_url: str
) -> None:
    """The worker may die between the last result and packing: readers read the live
    results, and the redelivered batch's write (which adds nothing) packs the run."""
    run_id = store.submit(_plan(["a"])).run_id
    store.record(run_id, [_entry(store, run_id, "a", True, 0)])
    summary = store.summary(run_id)
    assert summary is not None
    assert (summary["up"], summary["pending"], len(summary["results"])) == (1, 0, 1)
    redelivered = store.record(run_id, [_entry(store, run_id, "a", True, 0)])
    assert redelivered.added == 0
    assert redelivered.needs_finalize
    assert _finalize(redis_url, run_id) is not None
    packed = store.summary(run_id)
    assert packed is not None
    assert packed["finished_at"] is not None
    assert packed["results"] == summary["results"]


def test_unknown_run_has_no_summary(store: RunStore) -> None:
    """An id that was never created (or expired) reads as None, not an empty run."""
    assert store.summary("nope") is None
    assert store.open("nope") is None


def test_a_compact_result_round_trips_every_field() -> None:
    """What the engine returns comes back with the same names and values (durations to
    the microsecond), including fields this module does not know."""
    created = 1_700_000_000.0
    result = _result("a", False, group="web", location="eu", cert_days_left=12.5,
                     dns_answers=["1.2.3.4"], started_at=created + 1.234)  # fmt: skip
    back = decode_result(json.loads(encode_result(result, 7, created)), created)
    for name in ("name", "url", "group", "up", "status_code", "attempts", "duration_s",
                 "error", "error_kind", "cert_days_left", "location", "dns_answers"):  # fmt: skip
        assert back[name] == result[name], name
    assert back["phases"] == {"connect": 0.001}
    assert back["started_at"] == created + 1.234


def test_runs_list_shows_counts_duration_and_newest_first(store: RunStore) -> None:
    """Each run comes with done/total, up and down, duration and creation time."""
    older = store.submit(_plan(["a"])).run_id
    newer = store.submit(_plan(["a", "b"])).run_id
    store.record(newer, [_entry(store, newer, "a", True, 0), _entry(store, newer, "b", False, 1)])
    runs = store.list_runs()
    assert [r["run_id"] for r in runs] == [newer, older]
    assert (runs[0]["total"], runs[0]["done"], runs[0]["up"], runs[0]["down"]) == (2, 2, 1, 1)
    assert runs[1]["done"] == 0
    assert runs[0]["duration_s"] >= 0
    assert runs[0]["created_at"] <= time.time()


@pytest.mark.slow
def test_beat_runs_expire_by_their_retention_and_leave_the_index(
    store: RunStore, redis_client: redis.Redis, redis_url: str
) -> None:
    """A beat run with a short retention disappears (all keys and its index entry)
    while an on-demand run created at the same time stays."""
    beat = store.submit(_plan(["a"], kind="beat", retention=1)).run_id
    kept = store.submit(_plan(["a"], retention=600)).run_id
    store.record(beat, [_entry(store, beat, "a", True, 0)])
    assert _finalize(redis_url, beat) is not None
    assert redis_client.ttl(keys.run_packed(beat)) <= 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and redis_client.exists(keys.run_meta(beat)):
        time.sleep(0.1)
    assert not redis_client.exists(keys.run_meta(beat), keys.run_packed(beat))
    store.submit(_plan(["b"]))  # creating a run trims expired index entries
    listed = {r["run_id"] for r in store.list_runs()}
    assert beat not in listed
    assert kept in listed
    assert beat not in redis_client.zrange(keys.RUNS_INDEX, 0, -1)
    assert store.summary(kept) is not None


def test_async_store_counts_concurrent_duplicate_writes_once(
    redis_url: str, completion_calls: list[CompletedRun]
) -> None:
    """Two deliveries of the same batch racing: each target is counted once and the run
    is packed (and its hooks run) once."""

    async def scenario() -> tuple[list[int], int, dict[str, Any]]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store = AsyncRunStore(client)
        sync = RunStore.from_url(redis_url)
        run_id = sync.submit(_plan([f"t{i}" for i in range(50)])).run_id
        meta = await store.run_meta(run_id)
        entries = [
            (
                result_key(i),
                encode_result(_result(f"t{i}", i % 2 == 0), i, meta.created_at),
                i % 2 == 0,
            )
            for i in range(50)
        ]

        async def write(part: list[tuple[str, str, bool]]) -> int:
            outcome = await store.record(meta, part)
            if outcome.needs_finalize:
                await store.finalize(run_id)
            return outcome.added

        added = await asyncio.gather(
            *(write(entries[i : i + 5]) for i in range(0, 50, 5)),
            *(write(entries[i : i + 10]) for i in range(0, 50, 10)),
        )
        deliveries = [await store.count_delivery(meta, "b0") for _ in range(3)]
        summary = sync.summary(run_id)
        sync.close()
        await client.aclose()
        assert summary is not None
        return deliveries, sum(added), summary

    deliveries, added, summary = asyncio.run(scenario())
    assert deliveries == [1, 2, 3]
    assert added == 50
    assert (summary["up"], summary["down"], summary["finished_at"] is not None) == (25, 25, True)
    assert len(completion_calls) == 1


def test_closed_producers_leave_no_connection_behind(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Submitting opens the store's client only; close() releases it, so the count of
    server connections does not grow with each producer."""

    def connection_ids() -> set[int]:
        return {int(c["id"]) for c in redis_client.client_list()}

    def submit_and_close() -> None:
        producer = ProbeProducer(load_settings(None, redis_url=redis_url))
        producer.submit([Target(name="a", url="http://127.0.0.1:1/")], source="test")
        producer.close()

    submit_and_close()
    settled = connection_ids()
    for _ in range(3):
        submit_and_close()
    assert connection_ids() - settled == set()


def test_a_run_stored_by_an_older_opsq_is_still_shown(
    store: RunStore, redis_client: redis.Redis
) -> None:
    """Format 1 kept the whole summary as one JSON string: show and list still read it."""
    run_id = "20260101T000000-abcdef"
    old = {"run_id": run_id, "source": "t.yaml", "total": 1, "done": 1, "pending": 0, "up": 1,
           "down": 0, "created_at": 1.0, "duration_s": 0.5,
           "results": [_result("a", True)]}  # fmt: skip
    redis_client.hset(keys.run_meta(run_id), mapping={"total": 1, "created_at": 1.0})
    redis_client.set(keys.run_summary(run_id), json.dumps(old))
    redis_client.zadd(keys.RUNS_INDEX, {run_id: 1.0})
    assert store.summary(run_id) == old
    listed = store.list_runs()[0]
    assert (listed["up"], listed["down"], listed["finished_at"]) == (1, 0, 1.5)


def test_a_delivery_keeps_for_the_monitor_only_the_results_it_wrote(redis_url: str) -> None:
    """Another copy of the batch stored t0's result first: the flush that finds it
    stored keeps none of its results for the monitor (the run's end applies them from
    what is stored), so target state never follows a result the run does not show; a
    flush that wrote everything keeps its results."""
    from tasks.batch import ResultRecorder  # noqa: PLC0415 - the worker's side

    async def scenario() -> tuple[list[str], list[str]]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store, sync = AsyncRunStore(client), RunStore.from_url(redis_url)
        run_id = sync.submit(_plan(["t0", "t1", "t2", "t3"])).run_id
        meta = await store.run_meta(run_id)
        sync.record(run_id, [_entry(sync, run_id, "t0", False, 0)])  # the other copy
        index = {f"t{i}|http://127.0.0.1/t{i}": i for i in range(4)}
        kept = []
        for names in (["t0", "t1"], ["t2", "t3"]):  # two deliveries, one flush each
            recorder = ResultRecorder(store, meta, index)
            for name in names:
                recorder.add(ProbeResult(**_result(name, True)))  # type: ignore[arg-type]
            await recorder.close()
            kept.append([str(r["name"]) for r in recorder.results])
        sync.close()
        await client.aclose()
        return kept[0], kept[1]

    lost_race, clean = asyncio.run(scenario())
    assert lost_race == []
    assert clean == ["t2", "t3"]

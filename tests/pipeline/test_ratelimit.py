"""The shared per-host rate limit (GCRA reservations), against the real test Redis."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest
import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.metrics import pipeline as metrics
from opsq.core.ratelimit import GUARD_S, RedisTokenBucket, interval_us
from opsq.core.redis_server import free_port

RATE = 20.0
BURST = 5


async def _hammer(url: str, clients: int, grants_wanted: int) -> tuple[list[float], float]:
    """Several clients (own connections) acquire until *grants_wanted* grants in total."""
    granted: list[float] = []
    start = time.monotonic()

    async def client_loop() -> None:
        client = aioredis.Redis.from_url(url)
        bucket = RedisTokenBucket(client, rate=RATE, burst=BURST)
        try:
            while len(granted) < grants_wanted:
                await bucket.acquire("api.example")
                granted.append(time.monotonic())
        finally:
            await client.aclose()

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return granted, start


def test_concurrent_clients_never_exceed_burst_plus_rate_times_window(redis_url: str) -> None:
    granted, start = asyncio.run(_hammer(redis_url, clients=6, grants_wanted=30))
    # Every grant was decided by Redis after `start` and before it was appended, so
    # for each prefix of grants the window [start, grant time] bounds its count.
    for count, at in enumerate(sorted(granted), start=1):
        assert count <= BURST + RATE * (at - start) + 1e-6, (count, at - start)
    assert len(granted) >= 30


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_each_acquire_costs_one_redis_call_however_many_wait(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Issue 9: waiters polled in lock-step (90,945 script calls for 1,000 probes).
    Now each reserves its own slot once and sleeps until it."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=200, burst=10)
        await asyncio.gather(*(bucket.acquire("busy.example") for _ in range(100)))
        await client.aclose()

    redis_client.config_resetstat()
    asyncio.run(scenario())
    assert _script_calls(redis_client) == 100


def test_reservations_are_exact_integer_microseconds(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The stored time advances by exactly one interval per reservation (Lua's
    tostring once cut timestamps to 100 us and the bucket over-granted by ~2%)."""

    async def reserve(n: int) -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=3, burst=1000)
        tats = []
        for _ in range(n):
            await bucket.reserve("exact.example")
            tats.append(int(redis_client.hget(keys.host_bucket("exact.example"), "tat")))
        await client.aclose()
        return tats

    tats = asyncio.run(reserve(5))
    assert [b - a for a, b in itertools.pairwise(tats)] == [333_334] * 4
    assert all(str(t).isdigit() for t in tats)


def test_intervals_round_up_so_the_limit_is_never_exceeded() -> None:
    assert (interval_us(50), interval_us(3), interval_us(0.1)) == (20_000, 333_334, 10_000_000)
    for rate in (0.3, 1, 7, 50, 333.3, 999_999):
        assert interval_us(rate) * rate >= 1_000_000
    with pytest.raises(ValueError, match="positive finite"):
        interval_us(float("inf"))


def test_hosts_have_independent_buckets(redis_url: str) -> None:
    async def scenario() -> list[float]:
        client = aioredis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=1.0, burst=3)  # 2 at once (see the guard)
        waits = [await bucket.reserve("a") for _ in range(3)]
        waits.append(await bucket.reserve("b"))
        await client.aclose()
        return waits

    waits = asyncio.run(scenario())
    assert waits[:2] == [0, 0]
    assert 0.9 < waits[2] <= 1.0  # "a" is empty: its third slot is one interval on
    assert waits[3] == 0  # "b" has its own full bucket


def test_the_guard_holds_back_rate_times_guard_of_the_burst(redis_url: str) -> None:
    """Requests granted together reach the host spread out; the bucket keeps
    rate x GUARD_S of the burst back so the host still sees at most burst + rate."""

    async def scenario() -> list[float]:
        client = aioredis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=1.0, burst=10)
        waits = [await bucket.reserve("guarded.example") for _ in range(12)]
        await client.aclose()
        return waits

    waits = asyncio.run(scenario())
    assert sum(1 for w in waits if w == 0) == 10 - math.ceil(1.0 * GUARD_S)


def test_rate_zero_disables_limiting_without_touching_redis() -> None:
    """Nothing listens on the port, so any Redis call would fail open and be counted:
    an unchanged error counter proves no call was made."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        bucket = RedisTokenBucket(client, rate=0, burst=1)
        before = metrics.RATELIMIT_ERRORS._value.get()
        try:
            for _ in range(100):
                await bucket.acquire("h")
        finally:
            await client.aclose()
        assert metrics.RATELIMIT_ERRORS._value.get() == before

    asyncio.run(scenario())


def test_unreachable_redis_fails_open_and_is_counted() -> None:
    """A Redis outage must not turn into 'target down': acquire lets the probe go."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        bucket = RedisTokenBucket(client, rate=5, burst=1)
        try:
            with pytest.raises(RedisUnavailable):
                await bucket.reserve("h")
            before = metrics.RATELIMIT_ERRORS._value.get()
            await bucket.acquire("h")
            assert metrics.RATELIMIT_ERRORS._value.get() == before + 1
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_small_pool_makes_waiters_queue_never_fail_open(redis_url: str) -> None:
    """Issue 9: over 100 waiters exhausted redis-py's pool ('Too many connections') and
    the limiter let those probes through unthrottled. Calls in flight are bounded by
    the pool, so 60 concurrent acquires on 2 connections all get real slots."""

    async def scenario() -> list[float]:
        client = aioredis.Redis.from_url(redis_url, max_connections=2)
        bucket = RedisTokenBucket(client, rate=10, burst=1)
        waits = await asyncio.gather(*(bucket.reserve("pool.example") for _ in range(60)))
        await client.aclose()
        return list(waits)

    before = metrics.RATELIMIT_ERRORS._value.get()
    waits = asyncio.run(scenario())
    assert metrics.RATELIMIT_ERRORS._value.get() == before
    # 60 distinct slots 0.1 s apart: the last is ~5.9 s out (less the calls' own time).
    assert max(waits) >= 5.0


def test_a_client_side_error_is_raised_not_waved_through(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A key of the wrong type is a bug or a foreign writer, not an outage: no fail-open."""
    redis_client.set(keys.host_bucket("wrong.example"), "not a hash")

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            with pytest.raises(RedisCommandError, match="WRONGTYPE"):
                await RedisTokenBucket(client, rate=5, burst=1).acquire("wrong.example")
        finally:
            await client.aclose()

    before = metrics.RATELIMIT_ERRORS._value.get()
    asyncio.run(scenario())
    assert metrics.RATELIMIT_ERRORS._value.get() == before

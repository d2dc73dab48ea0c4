"""The shared per-host token bucket, against the real test Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from opsq.core.errors import RedisUnavailable
from opsq.core.metrics import pipeline as metrics
from opsq.core.ratelimit import RedisTokenBucket
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


def test_hosts_have_independent_buckets(redis_url: str) -> None:
    async def scenario() -> list[float]:
        client = aioredis.Redis.from_url(redis_url)
        bucket = RedisTokenBucket(client, rate=1.0, burst=2)
        waits = [await bucket.try_acquire("a") for _ in range(3)]
        waits.append(await bucket.try_acquire("b"))
        await client.aclose()
        return waits

    waits = asyncio.run(scenario())
    assert waits[:2] == [0, 0]
    assert waits[2] > 0  # "a" is empty and must wait for a refill
    assert waits[3] == 0  # "b" has its own full bucket


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
    """A Redis blip must not turn into 'target down': acquire lets the probe go."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        bucket = RedisTokenBucket(client, rate=5, burst=1)
        try:
            with pytest.raises(RedisUnavailable):
                await bucket.try_acquire("h")
            before = metrics.RATELIMIT_ERRORS._value.get()
            await bucket.acquire("h")
            assert metrics.RATELIMIT_ERRORS._value.get() == before + 1
        finally:
            await client.aclose()

    asyncio.run(scenario())

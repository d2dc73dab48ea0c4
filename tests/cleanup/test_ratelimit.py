"""Deletion rate limits: evenly spaced in-process, one shared token bucket across workers."""

from __future__ import annotations

import time

import redis

from opsq.core import keys
from opsq.engines.cleanup.ratelimit import LocalRateLimiter, RedisRateLimiter


def test_local_limiter_spaces_deletions_at_the_configured_rate() -> None:
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = LocalRateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert waits == [0.25, 0.25, 0.25, 0.25]


def test_redis_limit_is_shared_by_every_limiter_on_the_same_redis(
    redis_client: redis.Redis,
) -> None:
    """Two workers at 2/s share one schedule: the second deletion waits half a second,
    the third a whole one, whichever worker asks (the waits are reservations, so the
    fake sleep need not let time pass)."""
    waits: list[float] = []
    first = RedisRateLimiter(redis_client, 2.0, sleep=waits.append)
    second = RedisRateLimiter(redis_client, 2.0, sleep=waits.append)
    first.acquire()
    second.acquire()
    first.acquire()
    assert len(waits) == 2
    assert 0.45 < waits[0] <= 0.5
    assert 0.95 < waits[1] <= 1.0
    assert redis_client.pttl(keys.cleanup_rate()) > 0


def test_the_first_second_does_not_burst_to_twice_the_rate(redis_client: redis.Redis) -> None:
    """Issue 9: the bucket started full with a second's worth of tokens, so the first
    second deleted 2x delete_rate. Now deletion k waits k intervals (less only the
    time the loop itself took), so the first second holds exactly `rate` deletions."""
    rate = 10.0
    waits: list[float] = []
    limiter = RedisRateLimiter(redis_client, rate, sleep=waits.append)
    began = time.monotonic()
    for _ in range(20):
        limiter.acquire()
    elapsed = time.monotonic() - began
    slots = [0.0, *waits]
    for k, wait in enumerate(slots):
        assert k / rate - elapsed <= wait <= k / rate + 1e-6, (k, wait)
    assert sum(1 for w in slots if w < 1.0 - elapsed) <= rate

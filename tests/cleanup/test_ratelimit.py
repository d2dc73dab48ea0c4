"""Deletion rate limits: evenly spaced in-process, one shared token bucket across workers."""

from __future__ import annotations

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


def test_redis_bucket_is_shared_by_every_limiter_on_the_same_redis(
    redis_client: redis.Redis,
) -> None:
    """Two workers at 2/s share one bucket (burst 2): the third permit must wait ~0.5 s."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        """Let *seconds* pass for the bucket instead of sleeping: move its refill time back."""
        waits.append(seconds)
        redis_client.hincrbyfloat(keys.cleanup_rate(), "ts", -seconds)

    first = RedisRateLimiter(redis_client, 2.0, sleep=sleep)
    second = RedisRateLimiter(redis_client, 2.0, sleep=sleep)
    first.acquire()
    second.acquire()
    assert waits == []
    first.acquire()
    assert len(waits) == 1
    assert 0 < waits[0] <= 0.5
    assert redis_client.ttl(keys.cleanup_rate()) > 0

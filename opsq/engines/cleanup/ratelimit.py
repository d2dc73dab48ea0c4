"""Deletion rate limits: in-process for ``--local``, shared through Redis for workers.

Deleting 5,000 Jobs at once makes the garbage collector and every controller watching
them busy for minutes, so ``cleanup.delete_rate`` bounds deletions per second. One
process paces itself with :class:`LocalRateLimiter`; Celery workers share one token
bucket in Redis (:class:`RedisRateLimiter`, key :func:`opsq.core.keys.cleanup_rate`)
so adding workers never raises the rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from opsq.core import keys
from opsq.core.errors import RedisUnavailable
from opsq.core.ratelimit import RATE_BUCKET_LUA


class RateLimiter(Protocol):
    def acquire(self) -> None:
        """Block until one deletion may proceed."""


class Unlimited:
    def acquire(self) -> None:
        return


class LocalRateLimiter:
    """Evenly spaced permits: at most *rate* per second, no burst."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0

    def acquire(self) -> None:
        now = self.clock()
        wait = self._next - now
        if wait > 0:
            self.sleep(wait)
        self._next = max(now, self._next) + self.interval


class RedisRateLimiter:
    """A token bucket shared by every worker (burst = one second's worth)."""

    def __init__(
        self, client: redis.Redis[Any], rate: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.client = client
        self.rate = rate
        self.burst = max(1.0, rate)
        self.sleep = sleep
        self._script: Any = client.register_script(RATE_BUCKET_LUA)

    def acquire(self) -> None:
        while True:
            try:
                wait = float(self._script(keys=[keys.cleanup_rate()], args=[self.rate, self.burst]))
            except redis.RedisError as exc:
                raise RedisUnavailable(f"rate limiter: {exc}") from exc
            if wait <= 0:
                return
            self.sleep(wait)

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
from opsq.core.ratelimit import RESERVE_LUA, interval_us
from opsq.core.redis_errors import redis_errors


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
    """One limit shared by every worker, evenly spaced (burst 1), one Redis call each.

    Burst 1 on purpose: a bucket that starts full with a second's worth of tokens lets
    the first second delete twice the rate (the full bucket, then the refill). Each
    call reserves the next slot (:data:`opsq.core.ratelimit.RESERVE_LUA`) and sleeps
    until it. A Redis error is raised (``RedisUnavailable`` is temporary: the task
    retries); a deletion never goes ahead unlimited.
    """

    def __init__(
        self, client: redis.Redis[Any], rate: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.client = client
        self.rate = rate
        self.interval = interval_us(rate)
        self.sleep = sleep
        self._script: Any = client.register_script(RESERVE_LUA)

    def reserve(self) -> float:
        """Reserve the next deletion slot: seconds until it (0.0: now)."""
        with redis_errors("cleanup delete_rate"):
            return int(self._script(keys=[keys.cleanup_rate()], args=[self.interval, 1])) / 1e6

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)

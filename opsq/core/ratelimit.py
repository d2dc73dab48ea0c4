"""Rate limits shared by every worker through Redis: one reservation per request.

Each limited thing (a probed host, cleanup's deletions) has one key holding its
*theoretical arrival time* (TAT): the moment the bucket would be full again. This is
the generic cell rate algorithm (GCRA, ITU-T I.371), which is a token bucket of
``burst`` tokens refilled at ``rate`` per second told as one number. One Lua script
(:data:`RESERVE_LUA`) reads Redis's clock, *reserves* the caller's slot and returns how
long to wait for it, so any number of processes on any number of machines together
never start more than ``burst + rate * t`` requests in any window of length ``t``.
Why these choices:

- **One Redis call per request.** The script never says "try again later": it hands
  out the next free slot, even one in the future, and the caller sleeps until its own
  slot. Waiters are spread one interval apart by construction; no waiter polls, and no
  group of waiters wakes at the same moment to race for one token (which cost 90,945
  script calls for 1,000 probes before).
- **Exact integers.** Times are integer microseconds (``TIME`` gives seconds and
  microseconds; ``1.7e15`` fits a Lua double exactly, below 2**53) and the interval is
  ``ceil(1e6 / rate)`` microseconds, so rounding can only make the limiter slower, by
  under a microsecond per request, never faster. The value is written with
  ``string.format('%.0f')``: ``tostring`` keeps 14 significant digits and cut
  timestamps to 100 microseconds, which over-granted about 2%.
- **Server time** (``TIME`` inside the script): worker clocks may disagree; Redis is
  the one clock every client shares (effect replication, the default since Redis 5,
  lets scripts call it).
- **Keys expire** when the bucket is full again, so idle hosts cost nothing.
- **A reservation is spent** even if its caller is cancelled while sleeping: the limit
  errs on the side of fewer requests.
- **A guard for the way to the host.** The host, not Redis, is what must never see
  more than ``burst + rate`` requests in a second, and requests granted together reach
  it spread out: a process that sends a whole burst at once takes tens of milliseconds
  to open those connections, while the requests after it go out at once. So the
  per-host bucket hands out ``burst - rate * GUARD_S`` at once (at least 1) and keeps
  the rest in reserve: the host sees at most ``burst + rate`` in any second as long as
  requests granted together arrive within :data:`GUARD_S` of each other. Measured with
  ``tests/pipeline/test_ratelimit_e2e.py`` on a loaded 2-core machine (bound 100): 102-104
  without a guard, 92-100 with 0.2 s, 86-88 with 0.3 s.

Errors follow :mod:`opsq.core.redis_errors`. :class:`RedisTokenBucket` (the probes'
per-host limit) **fails open only on a Redis outage** (connection refused or lost, a
timeout, LOADING, READONLY, OOM): the probe goes ahead unthrottled and the fail-open
is counted in ``opsq_ratelimit_errors_total`` and logged, because a probe must not be
reported down because Redis blinked (the batch's own result write needs Redis too,
and it is what retries the batch). Anything else is a bug or a misconfiguration and is
raised, never waved through: a client-side error is not evidence that Redis is down.
In particular the client's connection pool can never run out (that is what made the
limiter fail open under load): calls in flight are bounded by a semaphore the size of
the client's pool, which :func:`limiter_client` sizes from the concurrency allowed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from fractions import Fraction
from typing import Any

import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.errors import RedisUnavailable
from opsq.core.metrics import pipeline as metrics
from opsq.core.redis_errors import redis_errors

log = logging.getLogger(__name__)

# KEYS[1]: the bucket hash (field 'tat', integer microseconds). ARGV[1]: the interval
# between requests in microseconds (integer >= 1); ARGV[2]: burst (integer >= 1).
# Returns the microseconds the caller must wait for its reserved slot (0: go now).
RESERVE_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat')) or t
if tat < t then tat = t end
local new_tat = tat + interval
local slot = new_tat - burst * interval
if slot < t then slot = t end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', new_tat))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((new_tat - t) / 1000) + 1))
return slot - t
"""

_MICROS = 1_000_000
GUARD_S = 0.3
"""The spread in arrival at the host that the per-host bucket absorbs (see above)."""
_WARN_EVERY_S = 10.0
"""At most one fail-open warning per this many seconds per limiter (a Redis outage
would otherwise log once per probe)."""


def interval_us(rate: float) -> int:
    """Microseconds between requests at ``rate`` per second, rounded up (never faster)."""
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}")
    return max(1, math.ceil(Fraction(_MICROS) / Fraction(rate)))


def limiter_client(url: str, *, max_in_flight: int) -> aioredis.Redis[Any]:
    """A client of its own for a limiter: ``max_in_flight`` connections at most.

    Size it from the concurrency allowed (``probes.concurrency``: every probe in flight
    may be in its one limiter call at the same moment, and then none ever waits for a
    connection). Connections are opened only as calls overlap.
    """
    return aioredis.Redis.from_url(url, max_connections=max_in_flight, socket_timeout=10)


class RedisTokenBucket:
    """``async acquire(key)`` reserves the next slot of *key*'s bucket and sleeps until it."""

    def __init__(self, client: aioredis.Redis[Any], *, rate: float, burst: int) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._interval = interval_us(rate) if rate > 0 else 0
        self._at_once = max(1, burst - math.ceil(rate * GUARD_S))
        self._client = client
        self._script = client.register_script(RESERVE_LUA)
        # Never more calls in flight than the pool has connections: a pool that runs out
        # raises a client-side error, which must not be mistaken for an outage.
        self._slots = asyncio.Semaphore(client.connection_pool.max_connections)
        self._warned_at = -math.inf

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def reserve(self, host: str) -> float:
        """Reserve *host*'s next slot: seconds until it (0.0: now). Raises on errors."""
        async with self._slots:
            with redis_errors(f"rate limit of {host}"):
                reply = await self._script(
                    keys=[keys.host_bucket(host)], args=[self._interval, self._at_once]
                )
        return int(reply) / _MICROS

    async def acquire(self, host: str) -> None:
        """Wait for *host*'s slot; fail open (counted) only when Redis is unavailable."""
        if not self.enabled:
            return
        try:
            wait = await self.reserve(host)
        except RedisUnavailable as exc:
            metrics.RATELIMIT_ERRORS.inc()
            self._warn(host, exc)
            return
        if wait > 0:
            await asyncio.sleep(wait)

    def _warn(self, host: str, exc: RedisUnavailable) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "rate limit for %s not applied (failing open; counted in "
                "opsq_ratelimit_errors_total): %s",
                host,
                exc,
            )

"""A per-host token bucket shared by every worker through Redis.

Each probed host has one bucket (``keys.host_bucket(host)``) holding up to ``burst``
tokens that refill at ``rate`` per second. One Lua script refills, takes a token and
answers "granted" or "retry in N seconds" atomically, so any number of worker
processes on any number of machines together never exceed ``burst + rate * t``
probes to one host over any window ``t``. Why these choices:

- **Server time** (``TIME`` inside the script): worker clocks may disagree; Redis is
  the one clock every client shares. Scripts may call ``TIME`` under effect
  replication (the default since Redis 5), so replicas see the written values.
- **The client sleeps**, not Redis: a refusal returns how long until the next token,
  and the caller ``asyncio.sleep``-s that long (plus jitter so waiters do not arrive
  in lock-step), so a throttled host costs one round trip per wake-up, not polling.
- **Keys expire** once a bucket would be full again, so idle hosts cost nothing.
- ``rate == 0`` disables limiting without touching Redis.
- **Fail open** when Redis cannot answer: the engine awaits ``acquire`` inside a
  probe's attempt, so an exception here would turn a Redis blip into "target down",
  a false verdict. The probe goes ahead unthrottled, the error is logged and counted
  (``opsq_ratelimit_errors_total``), and the batch's own result write — which needs
  Redis too — is what fails and retries the batch.

It implements the engine's ``RateLimiter`` protocol (``async acquire(host)``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.errors import RedisUnavailable
from opsq.core.metrics import pipeline as metrics

log = logging.getLogger(__name__)

# Shared by every Redis token bucket in opsq (also cleanup's deletion rate).
# KEYS[1]: bucket. ARGV: rate (tokens/s), burst. Returns "0" when granted, else the
# seconds to wait as a string (Lua numbers would be truncated to integers).
RATE_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate) * 1000) + 1000)
return tostring(wait)
"""

_MAX_JITTER_S = 0.01


class RedisTokenBucket:
    """``async acquire(host)`` blocks until *host*'s shared bucket grants a token."""

    def __init__(self, client: aioredis.Redis[Any], *, rate: float, burst: int) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._client = client
        self._script = client.register_script(RATE_BUCKET_LUA)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def try_acquire(self, host: str) -> float:
        """Take a token if one is there: 0.0 when granted, else seconds until the next."""
        try:
            reply = await self._script(keys=[keys.host_bucket(host)], args=[self.rate, self.burst])
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise RedisUnavailable(f"rate limiter cannot reach Redis: {exc}") from exc
        return float(reply)

    async def acquire(self, host: str) -> None:
        if not self.enabled:
            return
        while True:
            try:
                wait = await self.try_acquire(host)
            except RedisUnavailable as exc:
                metrics.RATELIMIT_ERRORS.inc()
                log.warning("rate limit for %s not applied: %s", host, exc)
                return
            if wait <= 0:
                return
            await asyncio.sleep(wait + random.uniform(0, _MAX_JITTER_S))  # noqa: S311 - jitter

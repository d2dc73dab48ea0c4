"""Drop expired batches that a stopped location left in its queue.

A set with locations sends each run's batches to every location's queue with Celery's
``expires`` at the run's deadline; a worker that pops an expired one discards it. A
location with no worker pops nothing, so its queue kept every batch of every run:
one message per batch per run (at 1,000 targets every 30 s, ~100 KB a run, about
2 GB a week in a Redis that runs with ``noeviction``). The alerts tick calls
:func:`drop_expired` for each location queue: kombu ``LPUSH``es and workers
``BRPOP``, so the oldest message is at the tail; expired ones are removed from there
(``LREM`` of that exact message, so a message a worker took meanwhile is not touched)
until the tail is one that has not expired.
"""

from __future__ import annotations

from datetime import datetime

import orjson
import redis

from opsq.core.redis_errors import redis_errors

DROP_PER_TICK = 1000
"""At most this many per queue and tick; a backlog is worked off over several ticks."""


def expires_at(message: str) -> float | None:
    """The ``expires`` of a Celery task message as epoch seconds, or None."""
    try:
        expires = orjson.loads(message).get("headers", {}).get("expires")
        return datetime.fromisoformat(expires).timestamp() if isinstance(expires, str) else None
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return None


def drop_expired(client: redis.Redis[str], queue: str, now: float) -> int:
    """Remove expired messages from the tail of *queue*; how many were removed."""
    dropped = 0
    with redis_errors(f"drop expired batches of {queue}"):
        for _ in range(DROP_PER_TICK):
            tail = client.lindex(queue, -1)
            expires = None if tail is None else expires_at(tail)
            if tail is None or expires is None or expires > now:
                break
            dropped += int(client.lrem(queue, -1, tail))
    return dropped

"""Run storage follows the Redis error policy: a wrong-typed key is a bug, not an outage."""

from __future__ import annotations

import pytest
import redis

from opsq.core import keys
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.redis_server import free_port
from opsq.core.runs import RunStore


def test_wrongtype_under_a_run_key_is_permanent(redis_url: str, redis_client: redis.Redis) -> None:
    """Before: every ResponseError became RedisUnavailable, so a worker retried a batch
    whose results key held a string for as long as its retries lasted."""
    redis_client.set(keys.run_results("r1"), "not a hash")
    store = RunStore.from_url(redis_url)
    try:
        with pytest.raises(RedisCommandError, match="WRONGTYPE"):
            store.progress("r1")
    finally:
        store.close()


def test_redis_down_is_still_temporary() -> None:
    """Nothing listening: the caller retries (RedisUnavailable)."""
    store = RunStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailable):
        store.progress("r1")

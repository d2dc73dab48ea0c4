"""The one Redis error policy (opsq.core.redis_errors), against a real valkey-server.

Every reply is produced by the server itself (WRONGTYPE, OOM, READONLY, BUSY ...);
only LOADING/TRYAGAIN/CLUSTERDOWN, which a single local server cannot be made to
send on demand, go through redis-py's own reply parser.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from kombu import Connection
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.retry import Retry

from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.redis_errors import (
    classify,
    ignore_reply,
    redis_errors,
    reply_error,
    reply_is_temporary,
    translate,
)
from opsq.core.redis_server import RedisServer, free_port


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of our own: these tests change maxmemory, replication and passwords."""
    server = RedisServer(tmp_path_factory.mktemp("policy"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private(private_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_server.url)
    client.flushall()
    yield client
    client.close()


NO_RETRY = {"retry": Retry(NoBackoff(), 0)}
"""redis-py 8 retries connection errors itself (3 times, backing off): not wanted here."""


def _refused(call: object) -> RedisCommandError:
    with pytest.raises(RedisCommandError) as info, redis_errors("doing it"):
        call()  # type: ignore[operator]
    return info.value


def test_wrongtype_is_permanent_with_a_hint(redis_client: redis.Redis) -> None:
    """WRONGTYPE means a bug or a foreign key under our prefix: never retried."""
    redis_client.set("k", "string")
    err = _refused(lambda: redis_client.lpush("k", "x"))
    assert err.code == "WRONGTYPE"
    assert "doing it" in str(err)
    assert "another type" in str(err)


@pytest.mark.parametrize(
    "command",
    [("SET", "k", "v", "BOGUS"), ("NOSUCHCOMMAND",), ("GET",), ("EVALSHA", "0" * 40, "0")],
    ids=["syntax", "unknown-command", "wrong-args", "noscript"],
)
def test_command_errors_are_permanent(redis_client: redis.Redis, command: tuple[str, ...]) -> None:
    """Syntax, unknown command, wrong arity and NOSCRIPT are bugs in the caller."""
    err = _refused(lambda: redis_client.execute_command(*command))
    assert "not retried" in str(err) or err.code == "NOSCRIPT"


def test_connection_refused_is_temporary() -> None:
    """Nothing listening: Redis is down, retry later."""
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, **NO_RETRY)
    with pytest.raises(RedisUnavailable, match="ping: cannot reach Redis"), redis_errors("ping"):
        client.ping()


def test_read_timeout_is_temporary(redis_client: redis.Redis, redis_url: str) -> None:
    """A reply slower than socket_timeout (a blocked server) is retried."""
    slow = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    with pytest.raises(RedisUnavailable), redis_errors("pop"):
        slow.blpop(["empty"], timeout=5)
    slow.close()


def test_oom_under_noeviction_is_temporary(private: redis.Redis) -> None:
    """maxmemory reached with noeviction: writes are refused until memory frees up."""
    private.config_set("maxmemory", "1")
    try:
        with pytest.raises(RedisUnavailable, match=r"OOM|memory"), redis_errors("write"):
            private.set("k", "v")
    finally:
        private.config_set("maxmemory", "0")


def test_readonly_replica_and_masterdown_are_temporary(private: redis.Redis) -> None:
    """After a failover the old primary is a replica: READONLY, and MASTERDOWN for reads."""
    private.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    private.config_set("replica-serve-stale-data", "no")
    try:
        with pytest.raises(RedisUnavailable, match=r"read only|READONLY"), redis_errors("w"):
            private.set("k", "v")
        with pytest.raises(RedisUnavailable, match="MASTERDOWN"), redis_errors("r"):
            private.get("k")
    finally:
        private.execute_command("REPLICAOF", "NO", "ONE")
        private.config_set("replica-serve-stale-data", "yes")


def test_busy_script_is_temporary(private: redis.Redis, private_server: RedisServer) -> None:
    """BUSY: another client's script runs too long; the server answers again after it."""
    private.config_set("busy-reply-threshold", "10")
    looping = redis.Redis.from_url(private_server.url)

    def run_forever() -> None:
        with pytest.raises(redis.ResponseError):  # killed by SCRIPT KILL below
            looping.eval("while true do end", 0)

    runner = threading.Thread(target=run_forever)
    runner.start()
    try:
        other = redis.Redis.from_url(private_server.url)
        busy: redis.ResponseError | None = None
        for _ in range(200):  # until the script has started and passed the threshold
            try:
                other.ping()
            except redis.ResponseError as exc:
                busy = exc
                break
        assert busy is not None, "the server never answered BUSY"
        assert classify(busy) == "temporary"
        assert isinstance(translate(busy, "ping"), RedisUnavailable)
    finally:
        while runner.is_alive():
            try:
                private.script_kill()
            except redis.ResponseError:
                pass  # NOTBUSY: not started yet
            runner.join(0.05)
        private.config_set("busy-reply-threshold", "5000")
        looping.close()
        other.close()


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "BUSY Redis is busy running a script.",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_replies_that_mean_not_now_are_temporary(reply: str) -> None:
    """As redis-py parses them (some become their own class with the code stripped)."""
    exc = BaseParser.parse_error(reply)
    assert classify(exc) == "temporary"
    assert reply_is_temporary(reply)


@pytest.mark.parametrize(
    "reply",
    ["WRONGTYPE Operation against a key", "ERR syntax error", "NOSCRIPT No matching script"],
)
def test_raw_resp_replies_that_mean_a_bug_are_permanent(reply: str) -> None:
    """The log agent's own RESP client classifies reply text with the same rules."""
    assert not reply_is_temporary(reply)
    assert classify(BaseParser.parse_error(reply)) == "permanent"


def test_a_caller_may_treat_one_more_code_as_temporary(redis_client: redis.Redis) -> None:
    """NOGROUP is 'retry' for the shipper (recovery recreates the group), nowhere else."""

    def read() -> object:
        return redis_client.xreadgroup("g", "c", {"missing": ">"})

    with pytest.raises(RedisCommandError), redis_errors("read"):
        read()
    with pytest.raises(RedisUnavailable), redis_errors("read", temporary={"NOGROUP"}):
        read()
    assert reply_is_temporary("NOGROUP No such key", temporary={"NOGROUP"})


def test_wrong_password_is_permanent_with_the_fix(
    private: redis.Redis, private_server: RedisServer
) -> None:
    """WRONGPASS/NOAUTH need a config fix; waiting an hour would not help."""
    private.config_set("requirepass", "s3cret")
    try:
        anonymous = redis.Redis(port=private_server.port, **NO_RETRY)
        with pytest.raises(RedisCommandError, match="redis_url"), redis_errors("get"):
            anonymous.get("k")
        wrong = redis.Redis(port=private_server.port, password="nope", **NO_RETRY)
        with pytest.raises(RedisCommandError, match="redis_url"), redis_errors("get"):
            wrong.get("k")
    finally:
        admin = redis.Redis(port=private_server.port, password="s3cret")
        admin.config_set("requirepass", "")
        admin.close()


def test_an_exhausted_client_pool_is_permanent(redis_url: str) -> None:
    """'Too many connections' is a sizing bug in the client, not a Redis outage."""
    pool = redis.ConnectionPool.from_url(redis_url, max_connections=1)
    held = pool.get_connection()
    try:
        with pytest.raises(RedisCommandError, match="Too many connections"), redis_errors("get"):
            redis.Redis(connection_pool=pool).get("k")
    finally:
        pool.release(held)
        pool.disconnect()


def test_broker_connection_failure_from_kombu_is_temporary() -> None:
    """send_task's kombu OperationalError (broker down) is judged like a redis error."""
    conn = Connection(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1)
    with pytest.raises(RedisUnavailable), redis_errors("publish"):
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    conn.release()


def test_other_exceptions_pass_through_untouched() -> None:
    """The policy translates Redis errors only; a KeyError stays a KeyError."""
    with pytest.raises(KeyError), redis_errors("lookup"):
        raise KeyError("x")


def test_passwords_in_messages_are_redacted() -> None:
    """A connection error quoting a URL never prints its password."""
    exc = redis.ConnectionError("cannot connect to redis://:hunter2@db:6379/0")
    assert "hunter2" not in str(translate(exc, "connect"))


def test_decorator_translates_sync_and_async_functions(redis_url: str, tmp_path: Path) -> None:
    """@redis_errors(...) works on plain and async def functions alike."""

    @redis_errors("sync get")
    def sync_get() -> object:
        return redis.Redis(port=free_port(), **NO_RETRY).get("k")

    @redis_errors("async get")
    async def async_get() -> object:
        client = aioredis.Redis(port=free_port(), retry=None)
        try:
            return await client.get("k")
        finally:
            await client.aclose()

    with pytest.raises(RedisUnavailable, match="sync get"):
        sync_get()
    with pytest.raises(RedisUnavailable, match="async get"):
        asyncio.run(async_get())


def test_pipeline_errors_keep_their_verdict(
    private: redis.Redis, private_server: RedisServer
) -> None:
    """redis-py rewraps pipeline errors ('Command # 1 ... caused error: ...'), differently
    sync and async; WRONGTYPE stays permanent and NOREPLICAS temporary in both."""
    private.set("s", "string")
    pipe = private.pipeline(transaction=True)
    pipe.lpush("s", "x")
    with pytest.raises(RedisCommandError) as info, redis_errors("pipe"):
        pipe.execute()
    assert info.value.code == "WRONGTYPE"

    private.config_set("min-replicas-to-write", "1")
    try:
        pipe = private.pipeline(transaction=False)
        pipe.set("k", "v")
        with pytest.raises(RedisUnavailable, match="NOREPLICAS"), redis_errors("pipe"):
            pipe.execute()

        async def async_pipeline() -> None:
            client = aioredis.Redis.from_url(private_server.url)
            try:
                apipe = client.pipeline(transaction=False)
                apipe.set("k", "v")
                with redis_errors("async pipe"):
                    await apipe.execute()
            finally:
                await client.aclose()

        with pytest.raises(RedisUnavailable, match="NOREPLICAS"):
            asyncio.run(async_pipeline())
    finally:
        private.config_set("min-replicas-to-write", "0")


def test_an_expected_reply_can_be_ignored(redis_client: redis.Redis) -> None:
    """BUSYGROUP when the group exists is expected; any other reply still fails loudly."""
    redis_client.xgroup_create("s", "g", id="0", mkstream=True)
    with redis_errors("create group"), ignore_reply("BUSYGROUP"):
        redis_client.xgroup_create("s", "g", id="0", mkstream=True)
    redis_client.set("k", "v")
    with pytest.raises(RedisCommandError, match="WRONGTYPE"):
        with redis_errors("create group"), ignore_reply("BUSYGROUP"):
            redis_client.xgroup_create("k", "g", id="0")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", RedisUnavailable),
        ("LOADING Redis is loading the dataset in memory", RedisUnavailable),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", RedisCommandError),
        ("ERR unknown command 'XADDD'", RedisCommandError),
    ],
)
def test_raw_resp_replies_become_the_same_exceptions(reply: str, expected: type) -> None:
    """The log agent's own RESP client maps replies exactly as redis-py's callers do."""
    assert isinstance(reply_error(reply, "XADD"), expected)

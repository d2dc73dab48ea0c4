"""The agent's minimal RESP client against a real server: auth, db, errors, sync."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import redis

from agents.resp import RespClient
from opsq.core.errors import RedisCommandError, RedisUnavailable
from opsq.core.redis_server import RedisServer, free_port


def test_pipelined_replies_come_back_in_order(redis_url: str) -> None:
    client = RespClient(redis_url)
    try:
        replies = client.execute([[b"SET", b"k", b"v\r\nwith crlf"], [b"GET", b"k"],
                                  [b"INCR", b"n"], [b"GET", b"missing"], [b"PING"]])  # fmt: skip
    finally:
        client.close()
    assert replies == [b"OK", b"v\r\nwith crlf", 1, None, b"PONG"]


def test_an_error_reply_raises_but_keeps_the_connection_in_sync(redis_url: str) -> None:
    """WRONGTYPE is a bug, not an outage (opsq.core.redis_errors): RedisCommandError."""
    client = RespClient(redis_url)
    try:
        with pytest.raises(RedisCommandError, match="WRONGTYPE"):
            client.execute([[b"SET", b"s", b"x"], [b"LPUSH", b"s", b"y"], [b"GET", b"s"]])
        assert client.execute([[b"GET", b"s"]]) == [b"x"]  # replies were all consumed
    finally:
        client.close()


def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendonly=False, password="s3cret")
    server.start()
    try:
        client = RespClient(server.url.replace("/0", "/3"))
        client.execute([[b"SET", b"where", b"db3"]])
        client.close()
        check = redis.Redis.from_url(server.url.replace("/0", "/3"))
        assert check.get("where") == b"db3"
        check.close()
        bad = RespClient(server.url.replace("s3cret", "wrong"))
        with pytest.raises(RedisCommandError, match="WRONGPASS"):  # a config fix, not a wait
            bad.execute([[b"PING"]])
        assert bad.ping() is False
        wrong_db = RespClient(server.url.replace("/0", "/999"))
        for _ in range(2):  # a failed SELECT must not leave a connection on db 0
            with pytest.raises(RedisCommandError):
                wrong_db.execute([[b"SET", b"lost", b"x"]])
        wrong_db.close()
    finally:
        server.stop()


def test_unreachable_server_is_redis_unavailable_and_ping_false() -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1)
    with pytest.raises(RedisUnavailable, match="unreachable"):
        client.execute([[b"PING"]])
    assert client.ping() is False


def test_a_malformed_reply_is_redis_unavailable_and_the_connection_is_dropped() -> None:
    """Garbage where a length should be must back off like an outage, not crash the sender."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"$not-a-length\r\n")
            conn.recv(1024)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = RespClient(f"redis://127.0.0.1:{port}")
    try:
        with pytest.raises(RedisUnavailable, match="unreachable"):
            client.execute([[b"PING"]])
        thread.join(10)
        assert not thread.is_alive()  # the client closed the unusable connection
    finally:
        client.close()
        listener.close()


def test_an_error_inside_exec_is_found_and_oom_while_queueing_aborts_all(redis_url: str) -> None:
    """MULTI/EXEC: a runtime error sits inside EXEC's reply; a refusal while queueing
    (OOM under maxmemory) aborts the whole transaction, so nothing half-applies."""
    client = RespClient(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        admin.set("s", "x")
        with pytest.raises(RedisCommandError, match="WRONGTYPE"):
            client.execute([[b"MULTI"], [b"INCR", b"n"], [b"LPUSH", b"s", b"y"], [b"EXEC"]])
        assert admin.get("n") == b"1"  # EXEC ran the other command (no rollback)
        admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(RedisUnavailable, match="OOM"):
                client.execute([[b"MULTI"], [b"XADD", b"st", b"*", b"f", b"v"], [b"EXEC"]])
        finally:
            admin.config_set("maxmemory", "0")
        assert admin.exists("st") == 0
        assert client.execute([[b"PING"]]) == [b"PONG"]  # still in sync
    finally:
        client.close()
        admin.close()


def test_interrupt_wakes_a_blocked_round_trip(redis_url: str) -> None:
    """A sender blocked on a frozen Redis must not hold shutdown past its grace."""
    client = RespClient(redis_url, timeout=60)
    client.execute([[b"PING"]])
    errors: list[Exception] = []

    def blocked() -> None:
        try:
            client.execute([[b"BLPOP", b"never", b"0"]])
        except RedisUnavailable as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    thread.join(0.3)
    client.interrupt()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1


def test_oom_reply_is_temporary(tmp_path: Path) -> None:
    """OOM under noeviction: the sender backs off and retries (RedisUnavailable)."""
    server = RedisServer(tmp_path / "r", appendonly=False)
    server.start()
    try:
        redis.Redis.from_url(server.url).config_set("maxmemory", "1")
        client = RespClient(server.url)
        with pytest.raises(RedisUnavailable, match="OOM"):
            client.execute([[b"XADD", b"s", b"*", b"k", b"v"]])
        client.close()
    finally:
        server.stop()

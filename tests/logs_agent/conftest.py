"""Helpers for the log agent tests: an in-process agent, stream readers, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agents.agent import Agent
from opsq.core.config.logs import LogsSettings
from opsq.core.logformat import decode, record_id

STREAM = "opsq:test:logs"


def agent_settings(tmp_path: Path, **agent: Any) -> LogsSettings:
    base: dict[str, Any] = {
        "paths": [str(tmp_path / "logs" / "*.log")],
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "rescan_interval": 0.2,
        "rotated_grace": 5,
        "checkpoint_every": 0.1,
        "shutdown_grace": 5,
    }
    base.update(agent)
    return LogsSettings.model_validate({"stream": STREAM, "agent": base})


def stream_records(client: redis.Redis, stream: str = STREAM) -> list[tuple[str, str, int, bytes]]:
    """Every record in the stream in stream order: (path, id, offset, bytes)."""
    out = []
    for _id, fields in client.xrange(stream):
        entry = decode(fields)
        for off, data in entry.records:
            out.append((entry.path, record_id(entry.fid, off), off, data))
    return out


def lines_by_path(client: redis.Redis) -> dict[str, list[bytes]]:
    """Records per path after dedupe by record id, in stream order."""
    seen: set[str] = set()
    out: dict[str, list[bytes]] = {}
    for path, rid, _off, data in stream_records(client):
        if rid not in seen:
            seen.add(rid)
            out.setdefault(path, []).append(data)
    return out


def all_lines(client: redis.Redis) -> list[bytes]:
    return [line for lines in lines_by_path(client).values() for line in lines]


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def raw_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def run_agent(redis_url: str) -> Iterator[Callable[[LogsSettings], Agent]]:
    """Start in-process agents; each is stopped (gracefully) at teardown."""
    started: list[Agent] = []

    def _run(settings: LogsSettings) -> Agent:
        agent = Agent(settings, redis_url, host="testhost").start()
        started.append(agent)
        return agent

    yield _run
    for agent in started:
        agent.stop()
        agent.join(30)


def write_lines(path: Path, lines: list[bytes], mode: str = "ab") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(b"".join(line + b"\n" for line in lines))

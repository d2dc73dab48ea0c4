"""A scan that misses a rotated copy must not make the agent forget it (``app.log*``).

logrotate renames every copy (``app.log.1`` -> ``app.log.2`` ...) at each rotation, and
the agent rescans on those very renames: a scan listing the directory while a copy is
renamed sees neither name (the old one is gone by its ``lstat``, the new one was not in
the listing). The copy's checkpoint used to be pruned on that one miss, and the next
scan read the copy again from 0 as a new file: its lines went out a second time under
the copy's own record ids. The engine is driven step by step here (real files, a real
sender and Redis); the missed scan is reproduced by moving the copy out of the
directory for the length of one discovery, which is what that scan saw.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import redis

from agents.agent import Agent
from agents.sender import Sender
from tests.logs_agent.conftest import agent_settings, stream_records, write_lines

DEADLINE_S = 30.0


def lines(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:04d}".encode() for i in range(n)]


def step_until(agent: Agent, done, what: str) -> None:
    """Run reader rounds (read, housekeeping) until *done()*; the sender runs on its own."""
    end = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        agent._read_round()
        agent._housekeeping(time.monotonic())
        time.sleep(0.01)


def acknowledged(agent: Agent) -> bool:
    return all(t.acknowledged() for t in agent.tailers.values())


def read_to_the_end(agent: Agent) -> bool:
    return all(t.remaining() == 0 for t in agent.tailers.values()) and acknowledged(agent)


def test_a_copy_missed_by_one_scan_is_not_read_again(tmp_path: Path, redis_url: str) -> None:
    logs = tmp_path / "logs"
    log = logs / "app.log"
    write_lines(log, lines("one", 200))
    agent = Agent(agent_settings(tmp_path, paths=[str(logs / "app.log*")]), redis_url, host="h")
    agent.store.load()
    agent.sender = Sender(agent.client, agent.stream, agent.batches, agent.store, agent.cfg)
    agent.sender.start()
    client = redis.Redis.from_url(redis_url)
    try:
        agent._discover(startup=True)
        step_until(
            agent,
            lambda: acknowledged(agent) and len(stream_records(client)) >= 200,
            "the first 200 lines",
        )

        # copytruncate: the copy is found at the truncation, read to its end, released.
        write_lines(log, lines("two", 50))
        shutil.copyfile(log, logs / "app.log.1")
        os.truncate(log, 0)
        write_lines(log, lines("three", 20))
        copy_ino = os.stat(logs / "app.log.1").st_ino
        step_until(
            agent,
            lambda: (
                len(agent.tailers) == 1
                and acknowledged(agent)
                and len(stream_records(client)) >= 270
            ),
            "the copy read to its end and released",
        )
        assert [cp for cp in agent.store.snapshot().values() if cp.copy_ino == copy_ino]

        # The next rotation renames app.log.1 -> app.log.2 while a scan runs: that scan
        # does not see the copy at all; the following one finds it at its new name.
        aside = tmp_path / "aside"
        os.rename(logs / "app.log.1", aside)
        agent._discover(startup=False)
        os.rename(aside, logs / "app.log.2")
        agent._discover(startup=False)
        step_until(agent, lambda: read_to_the_end(agent), "every file read")
        agent.sender.close(time.monotonic() + 5)

        records = stream_records(client)
        ids = {rid for _path, rid, _off, _data in records}
        data = [d for _path, _rid, _off, d in records]
        expected = lines("one", 200) + lines("two", 50) + lines("three", 20)
        assert sorted(set(data)) == sorted(expected)
        assert len(ids) == len(set(data)), "a line went out under two record ids"
    finally:
        agent.stop()
        if agent.sender.is_alive():
            agent.sender.close(time.monotonic() + 5)
        for tailer in list(agent.tailers.values()):
            agent._release(tailer, lost=None)
        client.close()

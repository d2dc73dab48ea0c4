"""The real logrotate with copytruncate against `opsq agent` processes with default settings."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from opsq.core.logformat import decode
from tests.logs_agent.conftest import wait_for
from tests.logs_agent.process import AgentProcess
from tests.support.tools import require_tool

RATE = 2000
SECONDS = 30
ROTATE_EVERY = 2.0


def line(n: int) -> bytes:
    return b"seq %08d %s\n" % (n, b"x" * 48)


def write_steadily(path: Path, stop: threading.Event) -> int:
    """Append RATE lines/s with O_APPEND (as an application does) for SECONDS."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start, n = time.monotonic(), 0
    try:
        while n < RATE * SECONDS and not stop.is_set():
            os.write(fd, line(n))
            n += 1
            ahead = start + n / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    finally:
        os.close(fd)
    return n


def rotate_until(logrotate: str, conf: Path, state: Path, done: threading.Event) -> int:
    rotations = 0
    while not done.wait(ROTATE_EVERY):
        subprocess.run([logrotate, "-f", "-s", str(state), str(conf)], check=True)
        rotations += 1
    return rotations


def kept_by_logrotate(logs: Path) -> set[int]:
    """Sequence numbers present in the live file or any copy when the run ends."""
    out = set()
    for path in logs.iterdir():
        for raw in path.read_bytes().splitlines():
            out.add(int(raw.split()[1]))
    return out


class Shipped:
    """What one agent put in its stream: sequence number per record id, and order."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.ids: dict[str, int] = {}
        self.out_of_order: list[str] = []
        last: dict[str, int] = {}
        for _id, fields in client.xrange(stream):
            entry = decode(fields)
            for off, data in entry.records:
                rid = f"{entry.fid}:{off}"
                if rid in self.ids:
                    continue  # a retried entry: same ids, nothing new
                self.ids[rid] = int(data.split()[1])
                if off <= last.get(entry.fid, -1):
                    self.out_of_order.append(rid)
                last[entry.fid] = off

    @property
    def lines(self) -> set[int]:
        return set(self.ids.values())


@pytest.mark.slow
def test_copytruncate_every_2s_under_a_steady_writer_loses_and_duplicates_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """Two agents tail the same file: ``paths: [app.log]`` and ``paths: [app.log*]``.

    logrotate itself loses the lines written between the end of its copy and the
    truncate (its man page says so); the test holds the agents to every line that
    logrotate kept, plus: with ``app.log*`` no line is shipped under two record ids
    (no copy is read twice)."""
    logrotate = require_tool("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  copytruncate\n  rotate 1000\n  missingok\n  nocompress\n}}\n")
    streams = {"app.log": "opsq:test:logs:single", "app.log*": "opsq:test:logs:star"}
    agents = [
        AgentProcess(
            tmp_path,
            redis_url,
            {"paths": [str(logs / pattern)], "checkpoint_dir": str(tmp_path / name)},
            stream=stream,
            name=name,
        ).start()
        for name, (pattern, stream) in zip(["single", "star"], streams.items(), strict=True)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        done = threading.Event()
        rotations: list[int] = []
        rotator = threading.Thread(
            target=lambda: rotations.append(rotate_until(logrotate, conf, tmp_path / "state", done))
        )
        rotator.start()
        written = write_steadily(log, threading.Event())
        done.set()
        rotator.join()
        kept = kept_by_logrotate(logs)
        assert rotations[0] >= SECONDS / ROTATE_EVERY - 2
        for pattern, stream in streams.items():
            wait_for(
                lambda s=stream: kept <= Shipped(client, s).lines,
                timeout=60,
                what=f"every line logrotate kept, shipped ({pattern})",
            )
        for agent in agents:
            assert agent.terminate() == 0
        single, star = Shipped(client, streams["app.log"]), Shipped(client, streams["app.log*"])
        assert single.lines <= set(range(written))
        assert star.lines <= set(range(written))
        assert len(star.ids) == len(star.lines)  # each line under one record id only
        assert len(single.ids) == len(single.lines)
        assert not single.out_of_order
        assert not star.out_of_order
    finally:
        for agent in agents:
            agent.stop()

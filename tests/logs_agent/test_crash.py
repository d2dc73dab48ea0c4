"""Crash tests: kill -9 the agent repeatedly, restart Redis, fill Redis to OOM.

The writer appends numbered lines and rotates by rename (``app.log`` ->
``app.log.<n>``, dateext style) while the agent is killed at random moments and
restarted. The globs match the rotated names too, because that is what lets *any*
agent finish a file rotated while it was down: a rotated file that no glob matches
cannot be found again after a crash.

At the end, every line written must be in the stream at least once; after dedupe by
record id exactly once; and per file in the order written.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
import redis

from opsq.core.logformat import decode, record_id
from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import STREAM, agent_settings, wait_for
from tests.logs_agent.process import AgentProcess


class RotatingWriter(threading.Thread):
    """Append ``f<gen>-<seq>`` lines in bursts; rename-rotate every *per_file* lines."""

    def __init__(self, logs: Path, *, files: int, per_file: int) -> None:
        super().__init__(daemon=True)
        self.logs, self.files, self.per_file = logs, files, per_file
        self.written: dict[int, list[bytes]] = {}

    def run(self) -> None:
        log = self.logs / "app.log"
        for gen in range(self.files):
            lines = [b"f%d-%06d " % (gen, i) + b"p" * random.randint(0, 150)
                     for i in range(self.per_file)]  # fmt: skip
            self.written[gen] = lines
            with open(log, "ab") as f:
                for start in range(0, len(lines), 500):
                    f.write(b"".join(line + b"\n" for line in lines[start : start + 500]))
                    f.flush()
                    time.sleep(0.01)
            os.rename(log, self.logs / f"app.log.{gen}")

    def total(self) -> int:
        return sum(len(v) for v in self.written.values())


def unique_by_fid(client: redis.Redis) -> tuple[int, dict[str, list[bytes]]]:
    """(total records incl. duplicates, first occurrences per file identity in order)."""
    seen: set[str] = set()
    total = 0
    per_fid: dict[str, list[bytes]] = {}
    for _id, fields in client.xrange(STREAM):
        entry = decode(fields)
        for off, data in entry.records:
            total += 1
            rid = record_id(entry.fid, off)
            if rid not in seen:
                seen.add(rid)
                per_fid.setdefault(entry.fid, []).append(data)
    return total, per_fid


def check_delivery(client: redis.Redis, writer: RotatingWriter) -> None:
    _total, per_fid = unique_by_fid(client)
    got = sorted(per_fid.values(), key=lambda lines: lines[0])
    expected = [writer.written[g] for g in sorted(writer.written)]
    assert len(got) == len(expected)
    for lines, want in zip(got, expected, strict=True):
        assert lines == want  # every line, once, in the order written


def unique_count(client: redis.Redis) -> int:
    return sum(len(v) for v in unique_by_fid(client)[1].values())


@pytest.mark.slow
def test_kill9_agent_repeatedly_while_writing_and_rotating_loses_nothing(
    tmp_path: Path, redis_url: str, raw_client: redis.Redis
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = {"paths": [str(logs / "app.log*")], "checkpoint_dir": str(tmp_path / "ck"),
           "rescan_interval": 0.2, "batch_lines": 200, "checkpoint_every_lines": 1000,
           "queue_entries": 4}  # fmt: skip
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    writer = RotatingWriter(logs, files=6, per_file=20_000)
    writer.start()
    rng = random.Random(os.getpid())
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.3, 1.5))
            agent.kill9()
            agent.start()
        writer.join(60)
        expected = writer.total()
        wait_for(lambda: unique_count(raw_client) >= expected, timeout=60, what="every line")
        assert agent.terminate() == 0
        check_delivery(raw_client, writer)
        print("records incl. duplicates:", unique_by_fid(raw_client)[0], "unique:", expected)
    finally:
        agent.stop()


@pytest.mark.slow
def test_redis_restart_mid_run_loses_nothing(
    tmp_path: Path, redis_server, redis_url: str, run_agent
) -> None:
    """A graceful Redis restart (SHUTDOWN fsyncs the AOF). With kill -9, appendfsync
    everysec may lose the last second of writes Redis already acknowledged, which no
    client can detect; that is a Redis durability setting, not something to test here."""
    logs = tmp_path / "logs"
    logs.mkdir()
    run_agent(agent_settings(tmp_path, paths=[str(logs / "app.log*")], batch_lines=200))
    writer = RotatingWriter(logs, files=3, per_file=20_000)
    writer.start()
    time.sleep(0.5)
    redis_server.stop()
    time.sleep(1.0)  # the agent keeps reading into its queue, then blocks
    redis_server.start()
    writer.join(60)
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: unique_count(client) >= writer.total(), timeout=60, what="every line")
    check_delivery(client, writer)


@pytest.mark.slow
def test_redis_oom_backs_off_and_resumes(tmp_path: Path, run_agent, raw_client) -> None:
    """With noeviction a full Redis answers OOM: the agent retries, nothing is lost."""
    logs = tmp_path / "logs"
    logs.mkdir()
    # Any limit below what the server already uses makes every write answer OOM
    # (used_memory itself is a poor base: it includes AOF buffers that do not count).
    raw_client.config_set("maxmemory", 1)
    errors = metrics.SEND_ERRORS._value.get()
    try:
        run_agent(agent_settings(tmp_path, paths=[str(logs / "app.log*")]))
        writer = RotatingWriter(logs, files=1, per_file=20_000)
        writer.start()
        wait_for(lambda: metrics.SEND_ERRORS._value.get() > errors, what="OOM replies")
    finally:
        raw_client.config_set("maxmemory", 0)
    writer.join(60)
    wait_for(lambda: unique_count(raw_client) >= writer.total(), timeout=60, what="every line")
    check_delivery(raw_client, writer)

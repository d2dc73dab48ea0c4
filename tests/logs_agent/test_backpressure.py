"""Redis down: block mode pauses readers and freezes checkpoints; drop mode counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from agents.checkpoint import FILE_NAME
from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import agent_settings, all_lines, wait_for, write_lines


def checkpoint_offsets(tmp_path: Path) -> list[int]:
    path = tmp_path / "ckpt" / FILE_NAME
    if not path.exists():
        return []
    return [f["offset"] for f in json.loads(path.read_text())["files"]]


def test_block_mode_pauses_readers_and_keeps_the_checkpoint_until_redis_returns(
    tmp_path: Path, run_agent, redis_server, redis_url: str
) -> None:
    log = tmp_path / "logs" / "a.log"
    lines = [b"line %05d" % i for i in range(2000)]
    write_lines(log, lines)
    size = log.stat().st_size
    errors_before = metrics.SEND_ERRORS._value.get()
    redis_server.stop()
    agent = run_agent(agent_settings(tmp_path, queue_entries=1, batch_lines=10))
    wait_for(agent.batches.full, what="queue full")
    wait_for(lambda: metrics.SEND_ERRORS._value.get() > errors_before, what="send errors")
    [tailer] = agent.tailers.values()
    assert tailer.offset < size  # the reader is paused, not racing ahead
    assert checkpoint_offsets(tmp_path) in ([], [0])  # nothing acknowledged, nothing moved
    redis_server.start()
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: len(all_lines(client)) == 2000, what="every line after Redis is back")
    assert all_lines(client) == lines
    wait_for(lambda: checkpoint_offsets(tmp_path) == [size], what="checkpoint at the end")


def test_drop_mode_keeps_reading_and_counts_what_it_dropped(
    tmp_path: Path, run_agent, redis_server, redis_url: str
) -> None:
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"line %05d" % i for i in range(2000)])
    size = log.stat().st_size
    dropped = metrics.LINES_DROPPED.labels(reason="queue_full")
    before = dropped._value.get()
    redis_server.stop()
    agent = run_agent(agent_settings(tmp_path, queue_entries=1, batch_lines=10, on_full="drop"))
    wait_for(lambda: agent.tailers and next(iter(agent.tailers.values())).offset == size,
             what="reader reached EOF despite Redis down")  # fmt: skip
    redis_server.start()
    client = redis.Redis.from_url(redis_url)
    lost = dropped._value.get() - before
    assert lost > 0
    wait_for(lambda: len(all_lines(client)) + lost == 2000, what="sent + dropped == written")


def released_unread(reason: str) -> float:
    return float(metrics.BYTES_LOST.labels(reason=reason)._value.get())


def open_fds_to(path: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        # files below the directory only: the rescan briefly opens the directory itself
        count += target.startswith(str(path) + os.sep)
    return count


@pytest.mark.parametrize("limit", ["grace", "max_open_deleted"])
def test_with_redis_down_deleted_files_are_released_and_counted(
    tmp_path: Path, run_agent, redis_server, limit: str
) -> None:
    """A dead Redis must not keep deleted files open (and their disk space used) forever."""
    logs = tmp_path / "logs"
    for name in ("a.log", "b.log"):
        write_lines(logs / name, [b"%s %05d" % (name.encode(), i) for i in range(5000)])
    reason = "rotated_grace" if limit == "grace" else "max_open_deleted"
    before = released_unread(reason)
    redis_server.stop()
    bounds = {"rotated_grace": 0.5} if limit == "grace" else {"max_open_deleted": 0}
    agent = run_agent(agent_settings(tmp_path, queue_entries=1, batch_lines=10, **bounds))
    wait_for(lambda: len(agent.tailers) == 2 and agent.batches.full(), what="blocked")
    for name in ("a.log", "b.log"):
        os.unlink(logs / name)
    wait_for(lambda: not agent.tailers, what="deleted files released while blocked")
    assert open_fds_to(logs) == 0
    assert released_unread(reason) > before

"""copytruncate: the lines only the copy holds arrive, once, in order; a missing copy is counted."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from opsq.core.config.logs import LogsSettings
from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import (
    STREAM,
    agent_settings,
    stream_records,
    wait_for,
    write_lines,
)
from tests.logs_agent.process import AgentProcess


def batch(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:04d}".encode() for i in range(n)]


def copytruncate(log: Path, copy: Path | None) -> None:
    """What logrotate's copytruncate does: copy the file, then truncate it in place."""
    if copy is not None:
        shutil.copyfile(log, copy)
    with open(log, "r+b") as f:
        f.truncate(0)


def unique_lines(client: redis.Redis) -> list[bytes]:
    """Records deduped by record id, in stream order."""
    seen: set[str] = set()
    out = []
    for _path, rid, _off, data in stream_records(client):
        if rid not in seen:
            seen.add(rid)
            out.append(data)
    return out


def assert_each_line_once(client: redis.Redis, expected: list[bytes]) -> None:
    """Every expected line under exactly one record id (a copy read twice would show
    its lines under the copy's ids as well as the original's)."""
    got = unique_lines(client)
    assert sorted(got) == sorted(expected)


def settled(agent, logs: Path, pattern: str) -> bool:
    """Every matching file is open, read to its end and acknowledged (so a copy read
    a second time would already be in the stream)."""
    names = sorted(p.name for p in logs.glob(pattern))
    open_names = sorted(os.path.basename(t.path) for t in agent.tailers.values())
    done = all(t.remaining() == 0 and t.acknowledged() for t in agent.tailers.values())
    return done and open_names == names


def lost(reason: str) -> float:
    return float(metrics.BYTES_LOST.labels(reason=reason)._value.get())


def frozen_after_300_lines(
    tmp_path: Path, redis_url: str, prefix: str, pattern: str = "app.log"
) -> tuple[AgentProcess, redis.Redis]:
    """An ``opsq agent`` process on ``logs/<pattern>`` that shipped the 300 lines of
    ``logs/app.log``, then SIGSTOPped."""
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch(prefix, 300))
    cfg = {"paths": [str(log.parent / pattern)], "checkpoint_dir": str(tmp_path / "ck")}
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: len(unique_lines(client)) == 300, what="first lines")
    except AssertionError:
        agent.stop()
        raise
    agent.signal(signal.SIGSTOP)
    return agent, client


def two_copytruncates(log: Path) -> list[bytes]:
    """Two copytruncate rotations of *log* (``.1`` shifted to ``.2`` by the second),
    with lines before each and after; returns those lines."""
    logs = log.parent
    write_lines(log, batch("two", 50))
    copytruncate(log, logs / "app.log.1")
    os.utime(logs / "app.log.1", (1_000_000, 1_000_000))  # logrotate's order of copies
    write_lines(log, batch("three", 40))
    os.rename(logs / "app.log.1", logs / "app.log.2")
    copytruncate(log, logs / "app.log.1")
    os.utime(logs / "app.log.1", (2_000_000, 2_000_000))
    write_lines(log, batch("four", 10))
    return batch("two", 50) + batch("three", 40) + batch("four", 10)


def test_lines_only_in_the_copy_are_read_from_it_in_order(tmp_path: Path, redis_url: str) -> None:
    """The agent process is frozen (SIGSTOP) while lines are appended and the file is
    copied and truncated: those lines exist only in the copy when it wakes up."""
    logs = tmp_path / "logs"
    log = logs / "app.log"
    agent, client = frozen_after_300_lines(tmp_path, redis_url, "before")
    try:
        write_lines(log, batch("unread", 500))
        copytruncate(log, logs / "app.log.1")
        write_lines(log, batch("after", 20))
        agent.signal(signal.SIGCONT)
        wait_for(lambda: len(unique_lines(client)) >= 820, what="every line")
        by_fid: dict[str, list[tuple[int, bytes]]] = {}
        for _path, rid, off, data in stream_records(client):
            by_fid.setdefault(rid.rsplit(":", 1)[0], []).append((off, data))
        old, new = by_fid.values()
        assert [d for _o, d in old] == batch("before", 300) + batch("unread", 500)
        assert [o for o, _d in old] == sorted(o for o, _d in old)  # offset order
        assert [d for _o, d in new] == batch("after", 20)
        assert {p for p, *_ in stream_records(client)} == {str(log)}  # the original's path
        assert agent.metric("opsq_agent_bytes_lost_total") == 0
        assert agent.terminate() == 0
    finally:
        agent.signal(signal.SIGCONT)
        agent.stop()


def each_line_once_after_a_freeze(
    tmp_path: Path,
    redis_url: str,
    pattern: str,
    disturb: Callable[[Path], list[bytes]],
    settle: float = 0.0,
) -> None:
    """Freeze an agent after 300 lines, let *disturb* rotate ``app.log`` (it returns the
    lines it wrote), wake the agent: every line arrives under exactly one record id.
    *settle* waits on after the last line, for a late second read to show up."""
    log = tmp_path / "logs" / "app.log"
    agent, client = frozen_after_300_lines(tmp_path, redis_url, "one", pattern)
    try:
        later = disturb(log)
        agent.signal(signal.SIGCONT)
        expected = batch("one", 300) + later
        wait_for(lambda: len(unique_lines(client)) >= len(expected), what="every line")
        time.sleep(settle)
        assert_each_line_once(client, expected)
        assert agent.terminate() == 0
    finally:
        agent.signal(signal.SIGCONT)
        agent.stop()


def copytruncate_then_regrow(log: Path) -> list[bytes]:
    """copytruncate, then more bytes than the 300 short lines read before."""
    copytruncate(log, log.parent / "app.log.1")
    later = batch("two-longer-lines", 600)
    write_lines(log, later)
    return later


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_a_file_truncated_and_regrown_past_the_offset_is_not_read_on_as_the_old_one(
    tmp_path: Path, redis_url: str, pattern: str
) -> None:
    """CI, real logrotate every 2 s at load 10: a whole generation under two record ids.
    The agent was slow; copytruncate emptied the file and the writer wrote past the
    agent's offset before a size check could see it shrink, so the new generation's
    bytes after that offset were read on under the old file's ids, then again from 0.
    The start is checked before new bytes are read (settle: past the agent's 5 s check)."""
    each_line_once_after_a_freeze(tmp_path, redis_url, pattern, copytruncate_then_regrow, 6.0)


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_two_copytruncate_rotations_between_two_checks_lose_no_generation(
    tmp_path: Path, redis_url: str, pattern: str
) -> None:
    """Hostile check F8: logrotate faster than the agent's checks (the process is frozen
    here) left the generation copied in between in ``.1``, never read with ``app.log``:
    365 lines lost, uncounted, at a rotation every 0.1 s. With ``app.log*`` the globs
    find that generation themselves: it must not be read a second time."""
    each_line_once_after_a_freeze(tmp_path, redis_url, pattern, two_copytruncates)


def test_no_copy_found_counts_the_lost_bytes(
    tmp_path: Path, run_agent, redis_server, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("before", 300))
    size = log.stat().st_size
    before = lost("copy_not_found")
    redis_server.stop()
    agent = run_agent(agent_settings(tmp_path, queue_entries=1, batch_lines=10, rotated_grace=1))
    wait_for(agent.batches.full, what="reader held back")
    copytruncate(log, None)
    wait_for(lambda: lost("copy_not_found") > before, what="lost bytes counted")
    # everything past what the reader had handed out: the sender holds one entry and
    # the queue another (10 lines of 12 bytes each); the reader's next one was refused
    assert size - 3 * 120 <= lost("copy_not_found") - before <= size
    assert "no copy of it was found" in caplog.text
    redis_server.start()


def test_emptying_a_fully_read_file_is_not_a_loss_warning(
    tmp_path: Path, run_agent, raw_client, caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile check F6: ``: > app.log`` after the agent read everything warned, 10 s
    later, that lines were lost ("at least 0 bytes"): a false alarm per cron run."""
    caplog.set_level(logging.INFO, logger="agents.agent")
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("before", 30))
    run_agent(agent_settings(tmp_path, rotated_grace=0.5))
    wait_for(lambda: len(unique_lines(raw_client)) >= 30, what="first lines")
    copytruncate(log, None)
    wait_for(lambda: "none needed" in caplog.text, what="the truncation judged")
    write_lines(log, batch("after", 5))
    wait_for(lambda: len(unique_lines(raw_client)) >= 35, what="lines after the truncation")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_a_copy_is_never_shipped_twice_whatever_the_globs(
    tmp_path: Path, run_agent, raw_client, pattern: str
) -> None:
    """With ``app.log*`` the copy also matches the globs: it must not be read from 0."""
    logs = tmp_path / "logs"
    log = logs / "app.log"
    write_lines(log, batch("one", 200))
    agent = run_agent(agent_settings(tmp_path, paths=[str(logs / pattern)]))
    wait_for(lambda: len(unique_lines(raw_client)) >= 200, what="first lines")
    write_lines(log, batch("two", 50))
    copytruncate(log, logs / "app.log.1")
    write_lines(log, batch("three", 20))
    expected = batch("one", 200) + batch("two", 50) + batch("three", 20)
    wait_for(lambda: len(unique_lines(raw_client)) >= 270, what="every line")
    wait_for(lambda: settled(agent, logs, pattern), what="all files read and acknowledged")
    assert_each_line_once(raw_client, expected)


def read_200_lines_then_stop(tmp_path: Path, run_agent, raw_client, pattern: str) -> LogsSettings:
    """A first run that ships ``one-0000..0199`` of ``logs/app.log`` and stops."""
    logs = tmp_path / "logs"
    write_lines(logs / "app.log", batch("one", 200))
    settings = agent_settings(tmp_path, paths=[str(logs / pattern)])
    agent = run_agent(settings)
    wait_for(lambda: len(unique_lines(raw_client)) >= 200, what="first run")
    agent.stop()
    agent.join(30)
    return settings


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_copytruncate_while_the_agent_was_down_reads_the_rest_from_the_copy(
    tmp_path: Path, run_agent, raw_client, pattern: str
) -> None:
    logs = tmp_path / "logs"
    log = logs / "app.log"
    settings = read_200_lines_then_stop(tmp_path, run_agent, raw_client, pattern)
    write_lines(log, batch("while-down", 50))
    copytruncate(log, logs / "app.log.1")
    write_lines(log, batch("after", 10))
    agent = run_agent(settings)
    expected = batch("one", 200) + batch("while-down", 50) + batch("after", 10)
    wait_for(lambda: len(unique_lines(raw_client)) >= 260, what="every line")
    wait_for(lambda: settled(agent, logs, pattern), what="all files read and acknowledged")
    assert_each_line_once(raw_client, expected)


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
def test_two_copytruncate_rotations_while_the_agent_was_down_lose_no_generation(
    tmp_path: Path, run_agent, raw_client, pattern: str
) -> None:
    """Hostile check F1: the checkpointed generation's copy is shifted to ``.2`` and
    ``.1`` holds a generation the agent never saw; with ``paths: [app.log]`` (which the
    README calls enough for copytruncate) that generation was lost, uncounted."""
    logs = tmp_path / "logs"
    log = logs / "app.log"
    settings = read_200_lines_then_stop(tmp_path, run_agent, raw_client, pattern)
    later = two_copytruncates(log)
    agent = run_agent(settings)
    expected = batch("one", 200) + later
    wait_for(lambda: len(unique_lines(raw_client)) >= 300, what="every line")
    wait_for(lambda: settled(agent, logs, pattern), what="all files read and acknowledged")
    assert_each_line_once(raw_client, expected)


def test_an_unfinished_copy_shifted_by_a_rotation_while_down_is_finished(
    tmp_path: Path, run_agent, redis_server, raw_client
) -> None:
    """Hostile check F9: stopped while a copy was unfinished (Redis down), the agent
    looked for it only at ``app.log.1``; the next rotation had shifted it to ``.2``,
    so the rest of it was lost, and the generation copied to ``.1`` as well."""
    logs = tmp_path / "logs"
    log = logs / "app.log"
    write_lines(log, batch("one", 200))
    settings = agent_settings(tmp_path, paths=[str(log)], batch_lines=10, queue_entries=1)
    agent = run_agent(settings)
    wait_for(lambda: len(unique_lines(raw_client)) >= 200, what="first lines")
    redis_server.stop()
    try:
        write_lines(log, batch("two", 50))
        copytruncate(log, logs / "app.log.1")
        write_lines(log, batch("three", 40))
        wait_for(
            lambda: {t.kind for t in agent.tailers.values() if t.identity} == {"file", "copy"},
            what="the copy and the truncated file both being read",
        )
        agent.stop()
        agent.join(30)
        os.utime(logs / "app.log.1", (1_000_000, 1_000_000))
        os.rename(logs / "app.log.1", logs / "app.log.2")
        copytruncate(log, logs / "app.log.1")
        os.utime(logs / "app.log.1", (2_000_000, 2_000_000))
        write_lines(log, batch("four", 10))
    finally:
        redis_server.start()
    agent = run_agent(settings)
    expected = batch("one", 200) + batch("two", 50) + batch("three", 40) + batch("four", 10)
    wait_for(lambda: len(unique_lines(raw_client)) >= len(expected), what="every line")
    wait_for(lambda: settled(agent, logs, "app.log"), what="all files read and acknowledged")
    assert_each_line_once(raw_client, expected)
    assert {p for p, *_ in stream_records(raw_client)} == {str(log)}  # the original's path


def test_a_copy_shorter_than_what_was_read_is_not_read_again_after_its_rename(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """logrotate's own window: lines written after its copy and before its truncate are
    read from the original but are not in the copy. That copy, renamed to ``.2`` by the
    next rotation and found by ``app.log*``, is finished, not "truncated"."""
    logs = tmp_path / "logs"
    log = logs / "app.log"
    write_lines(log, batch("one", 200))
    agent = run_agent(agent_settings(tmp_path, paths=[str(logs / "app.log*")]))
    wait_for(lambda: len(unique_lines(raw_client)) >= 200, what="first lines")
    shutil.copyfile(log, logs / "app.log.1")
    write_lines(log, batch("window", 30))  # after the copy, before the truncate
    wait_for(lambda: len(unique_lines(raw_client)) >= 230, what="the window's lines")
    copytruncate(log, None)
    write_lines(log, batch("two", 10))
    wait_for(lambda: len(unique_lines(raw_client)) >= 240, what="lines after the truncate")
    os.rename(logs / "app.log.1", logs / "app.log.2")  # the next rotation shifts it
    wait_for(lambda: settled(agent, logs, "app.log*"), what="all files read and acknowledged")
    assert_each_line_once(raw_client, batch("one", 200) + batch("window", 30) + batch("two", 10))

"""Rotation: rename+create, copytruncate, delete+recreate, inode reuse, new files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import (
    agent_settings,
    lines_by_path,
    stream_records,
    wait_for,
    write_lines,
)


def rotations(kind: str) -> float:
    return metrics.ROTATIONS.labels(kind=kind)._value.get()


def batch(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:04d}".encode() for i in range(n)]


def lines_by_fid(client) -> list[list[bytes]]:
    """Deduped records grouped per file identity, in the order the files first appear."""
    out: dict[str, list[bytes]] = {}
    seen: set[str] = set()
    for _path, rid, _off, data in stream_records(client):
        if rid not in seen:
            seen.add(rid)
            out.setdefault(rid.rsplit(":", 1)[0], []).append(data)
    return list(out.values())


@pytest.mark.parametrize("poll", [False, True])
def test_rename_and_create_keeps_every_line_of_both_files(
    tmp_path: Path, run_agent, raw_client, poll: bool
) -> None:
    """Including lines the application writes to the renamed file *after* the agent
    noticed the rotation, and a last line without newline (shipped at grace end)."""
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("a", 100))
    before = rotations("rename")
    run_agent(agent_settings(tmp_path, poll=poll, rotated_grace=1))
    wait_for(lambda: len(stream_records(raw_client)) >= 100, what="first lines")
    with open(log, "ab", buffering=0) as old:
        os.rename(log, tmp_path / "logs" / "app.log.1")
        write_lines(log, batch("b", 100))
        wait_for(lambda: len(stream_records(raw_client)) >= 200, what="the new file's lines")
        old.write(b"".join(line + b"\n" for line in batch("late", 50)) + b"no newline")
    wait_for(lambda: len(stream_records(raw_client)) >= 251, what="late lines")
    old_file, new_file = lines_by_fid(raw_client)
    assert old_file == batch("a", 100) + batch("late", 50) + [b"no newline"]
    assert new_file == batch("b", 100)
    assert rotations("rename") == before + 1


def test_copytruncate_restarts_at_zero_and_counts(tmp_path: Path, run_agent, raw_client) -> None:
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("before", 200))
    before = rotations("copytruncate")
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: len(stream_records(raw_client)) >= 200, what="first lines")
    with open(log, "r+b") as f:  # what logrotate's copytruncate does after copying
        f.truncate(0)
    write_lines(log, batch("after", 20))
    wait_for(lambda: len(stream_records(raw_client)) >= 220, what="lines after truncation")
    assert [r[3] for r in stream_records(raw_client)] == batch("before", 200) + batch("after", 20)
    assert rotations("copytruncate") == before + 1
    ids = [r[1] for r in stream_records(raw_client)]
    assert len(set(ids)) == len(ids)  # a new identity: no id collides with pre-truncation ones


def test_delete_and_recreate_finishes_the_old_file_then_reads_the_new(
    tmp_path: Path, run_agent, raw_client
) -> None:
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("one", 100))
    before_delete, before_new = rotations("delete"), rotations("new")
    agent = run_agent(agent_settings(tmp_path, rotated_grace=1))
    wait_for(lambda: len(stream_records(raw_client)) >= 100, what="first lines")
    with open(log, "ab") as old:
        os.unlink(log)
        old.write(b"".join(line + b"\n" for line in batch("tail", 10)))
    write_lines(log, batch("two", 30))
    wait_for(lambda: len(stream_records(raw_client)) >= 140, what="all lines")
    assert lines_by_path(raw_client)[str(log)] == batch("one", 100) + batch("tail", 10) + batch(
        "two", 30
    )
    assert rotations("delete") == before_delete + 1
    assert rotations("new") >= before_new + 1
    wait_for(lambda: len(agent.tailers) == 1, what="deleted file released")


def test_inode_reuse_by_a_different_file_starts_at_zero(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """While the agent is down, the inode it checkpointed now holds another, shorter file.

    Real reuse (delete, create until the inode number comes back) is not deterministic
    on a busy machine; rewriting the same inode leaves exactly what reuse leaves on disk
    (same dev:inode, other content), which is all the agent can observe.
    """
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("first-file", 50))
    ino = os.stat(log).st_ino
    settings = agent_settings(tmp_path)
    agent = run_agent(settings)
    wait_for(lambda: len(stream_records(raw_client)) >= 50, what="first file shipped")
    agent.stop()
    agent.join(30)
    write_lines(log, [b"second file, shorter"], mode="wb")
    assert os.stat(log).st_ino == ino
    raw_client.delete(settings.stream)
    run_agent(settings)
    wait_for(lambda: len(stream_records(raw_client)) >= 1, what="reused-inode file shipped")
    [(_path, _rid, offset, data)] = stream_records(raw_client)
    assert (offset, data) == (0, b"second file, shorter")


def test_new_files_matching_the_glob_are_picked_up_and_excludes_respected(
    tmp_path: Path, run_agent, raw_client
) -> None:
    logs = tmp_path / "logs"
    write_lines(logs / "a.log", [b"a"])
    run_agent(agent_settings(tmp_path, paths=[str(logs / "*")], exclude=["*.gz"]))
    wait_for(lambda: len(stream_records(raw_client)) >= 1, what="a.log")
    write_lines(logs / "b.log", [b"b"])
    write_lines(logs / "old.gz", [b"compressed"])
    wait_for(lambda: len(stream_records(raw_client)) >= 2, what="b.log")
    paths = set(lines_by_path(raw_client))
    assert paths == {str(logs / "a.log"), str(logs / "b.log")}


def test_truncated_while_the_agent_was_down_restarts_at_zero_even_with_read_from_tail(
    tmp_path: Path, run_agent, raw_client
) -> None:
    log = tmp_path / "logs" / "app.log"
    lines = batch("keep", 200)
    write_lines(log, lines)
    settings = agent_settings(tmp_path, read_from="tail")
    agent = run_agent(agent_settings(tmp_path))  # first run from head
    wait_for(lambda: len(stream_records(raw_client)) >= 200, what="first run")
    agent.stop()
    agent.join(30)
    write_lines(log, lines[:150] + batch("new", 10), mode="wb")  # same first KiB, shorter
    raw_client.delete(settings.stream)
    before = rotations("copytruncate")
    run_agent(settings)
    wait_for(lambda: len(stream_records(raw_client)) >= 160, what="file read again from 0")
    assert [r[3] for r in stream_records(raw_client)] == lines[:150] + batch("new", 10)
    assert rotations("copytruncate") == before + 1


def test_a_fully_read_deleted_file_is_released_at_once_quietly(
    tmp_path: Path, run_agent, raw_client, caplog: pytest.LogCaptureFixture
) -> None:
    """rotated_grace is an hour: only a file with unread bytes may be held that long.
    The release is logged at DEBUG, not as a WARNING per rotation."""
    caplog.set_level(logging.DEBUG, logger="agents.agent")
    log = tmp_path / "logs" / "app.log"
    write_lines(log, batch("one", 100))
    agent = run_agent(agent_settings(tmp_path, rotated_grace="1h"))
    wait_for(lambda: len(stream_records(raw_client)) >= 100, what="first lines")
    os.unlink(log)
    wait_for(lambda: not agent.tailers, what="the deleted file released")
    released = [r for r in caplog.records if "fully read; releasing it" in r.getMessage()]
    assert [r.levelno for r in released] == [logging.DEBUG]
    assert not [r for r in caplog.records if r.name == "agents.agent" and r.levelno >= 30]

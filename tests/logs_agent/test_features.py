"""Multiline joining, ignore_older, read_from tail, partial lines, MAXLEN cap."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agents import watcher
from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import (
    STREAM,
    agent_settings,
    all_lines,
    stream_records,
    wait_for,
    write_lines,
)


def test_multiline_records_join_and_the_last_is_flushed_after_the_timeout(
    tmp_path: Path, run_agent, raw_client
) -> None:
    write_lines(tmp_path / "logs" / "a.log",
                [b"2024 error", b"  at a()", b"  at b()", b"2024 ok", b"  detail"])  # fmt: skip
    ml = {"start_pattern": r"^\d{4} ", "timeout": 0.3}
    run_agent(agent_settings(tmp_path, multiline=ml))
    wait_for(lambda: len(all_lines(raw_client)) == 2, what="both records")
    assert all_lines(raw_client) == [b"2024 error\n  at a()\n  at b()", b"2024 ok\n  detail"]


def test_ignore_older_skips_files_not_modified_recently(
    tmp_path: Path, run_agent, raw_client
) -> None:
    logs = tmp_path / "logs"
    write_lines(logs / "stale.log", [b"stale"])
    old = time.time() - 3600
    os.utime(logs / "stale.log", (old, old))
    write_lines(logs / "fresh.log", [b"fresh"])
    run_agent(agent_settings(tmp_path, ignore_older="10m"))
    wait_for(lambda: all_lines(raw_client) == [b"fresh"], what="fresh file only")
    time.sleep(0.5)  # a few rescans: the stale file must still be ignored
    assert all_lines(raw_client) == [b"fresh"]


def test_read_from_tail_skips_existing_content_of_files_present_at_start(
    tmp_path: Path, run_agent, raw_client
) -> None:
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"history"])
    agent = run_agent(agent_settings(tmp_path, read_from="tail"))
    wait_for(lambda: len(agent.tailers) == 1, what="file opened")
    write_lines(log, [b"live"])
    wait_for(lambda: all_lines(raw_client) == [b"live"], what="only the new line")


def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path, run_agent, raw_client) -> None:
    log = tmp_path / "logs" / "a.log"
    log.parent.mkdir()
    log.write_bytes(b"done\nhalf")
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: all_lines(raw_client) == [b"done"], what="complete line")
    time.sleep(0.5)
    assert all_lines(raw_client) == [b"done"]
    with open(log, "ab") as f:
        f.write(b" and the rest\n")
    wait_for(lambda: all_lines(raw_client) == [b"done", b"half and the rest"], what="joined line")
    assert stream_records(raw_client)[1][2] == 5


def test_user_maxlen_caps_the_stream_and_counts_trimmed_entries(
    tmp_path: Path, run_agent, raw_client
) -> None:
    before = metrics.ENTRIES_TRIMMED._value.get()
    write_lines(tmp_path / "logs" / "a.log", [b"l%04d" % i for i in range(100)])
    run_agent(agent_settings(tmp_path, batch_lines=1, maxlen=10))
    wait_for(lambda: metrics.ENTRIES_TRIMMED._value.get() - before == 90, what="90 trimmed")
    assert raw_client.xlen(STREAM) == 10


def test_when_inotify_fails_the_agent_warns_and_keeps_polling(
    tmp_path: Path, run_agent, raw_client, monkeypatch, caplog
) -> None:
    """E.g. fs.inotify.max_user_instances exhausted: inotify_init1 fails, polling carries on."""

    def no_inotify():
        raise OSError(24, "Too many open files (inotify instances)")

    monkeypatch.setattr(watcher, "_libc", no_inotify)
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"before"])
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: all_lines(raw_client) == [b"before"], what="first line")
    write_lines(log, [b"after"])
    wait_for(lambda: all_lines(raw_client) == [b"before", b"after"], what="polled line")
    assert "inotify unavailable" in caplog.text


def test_a_pending_multiline_record_survives_a_restart_whole(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """The checkpoint stops before the record still being joined, so after a restart it
    is read again and joined with its continuation lines, not split in two."""
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"2024 a", b"  x", b"2024 b"])
    settings = agent_settings(tmp_path, multiline={"start_pattern": r"^\d{4} ", "timeout": "1h"})
    agent = run_agent(settings)
    wait_for(lambda: all_lines(raw_client) == [b"2024 a\n  x"], what="first record")
    agent.stop()
    agent.join(30)
    write_lines(log, [b"  y", b"2024 c"])
    run_agent(settings)
    wait_for(lambda: len(all_lines(raw_client)) == 2, what="second record")
    assert all_lines(raw_client) == [b"2024 a\n  x", b"2024 b\n  y"]

"""Hostile input: bad encodings, NUL bytes, huge lines, vanishing and unreadable files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from opsq.core.metrics import logs_agent as metrics
from tests.logs_agent.conftest import (
    STREAM,
    agent_settings,
    all_lines,
    lines_by_path,
    stream_records,
    wait_for,
    write_lines,
)
from tests.logs_agent.process import AgentProcess
from tests.support.tools import require_tool


def value(counter) -> float:
    return float(counter._value.get())


def test_invalid_utf8_and_nul_bytes_arrive_byte_exact_and_are_counted(
    tmp_path: Path, run_agent, raw_client
) -> None:
    lines = [b"plain", b"latin1 caf\xe9", b"nul\x00inside", b"\xff\xfe\xfd", "utf8 ✓".encode()]
    write_lines(tmp_path / "logs" / "a.log", lines)
    before = value(metrics.INVALID_ENCODING)
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: len(stream_records(raw_client)) >= 5, what="records")
    assert all_lines(raw_client) == lines
    assert value(metrics.INVALID_ENCODING) == before + 3


def test_a_10mb_line_is_truncated_counted_and_the_next_lines_follow(
    tmp_path: Path, run_agent, raw_client
) -> None:
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"before", b"A" * (10 * 1024 * 1024), b"after"])
    before = value(metrics.LINES_TRUNCATED)
    run_agent(agent_settings(tmp_path, max_line_bytes=4096))
    wait_for(lambda: len(stream_records(raw_client)) >= 3, what="records")
    records = stream_records(raw_client)
    assert [r[3] for r in records] == [b"before", b"A" * 4096, b"after"]
    assert records[2][2] == 7 + 10 * 1024 * 1024 + 1  # offsets still count the skipped bytes
    assert value(metrics.LINES_TRUNCATED) == before + 1


@pytest.mark.slow
def test_agent_rss_stays_small_while_skipping_a_100mb_line(tmp_path: Path, redis_url: str) -> None:
    """The tail of an oversized line is scanned, never buffered (RSS measured by VmHWM)."""
    log = tmp_path / "logs" / "a.log"
    log.parent.mkdir()
    with open(log, "wb") as f:
        for _ in range(100):
            f.write(b"B" * (1024 * 1024))
        f.write(b"\nafter\n")
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck")}
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: len(stream_records(client)) >= 2, what="records", timeout=60)
        assert [r[3] for r in stream_records(client)][1] == b"after"
        assert agent.vm_hwm_kib() < 100 * 1024
    finally:
        agent.stop()


def test_a_file_deleted_while_being_read_is_finished_and_others_continue(
    tmp_path: Path, run_agent, raw_client
) -> None:
    big = tmp_path / "logs" / "big.log"
    lines = [b"big line %07d " % i + b"x" * 100 for i in range(100_000)]
    write_lines(big, lines)
    other = tmp_path / "logs" / "other.log"
    write_lines(other, [b"other-1"])
    agent = run_agent(agent_settings(tmp_path, queue_entries=2))
    wait_for(lambda: len(agent.tailers) == 2, what="both files open")
    os.unlink(big)
    write_lines(other, [b"other-2"])
    wait_for(lambda: len(stream_records(raw_client)) >= 100_002, what="all records", timeout=60)
    got = lines_by_path(raw_client)
    assert got[str(big)] == lines
    assert got[str(other)] == [b"other-1", b"other-2"]


def test_paths_that_are_not_regular_files_are_skipped(
    tmp_path: Path, run_agent, raw_client, caplog: pytest.LogCaptureFixture
) -> None:
    logs = tmp_path / "logs"
    (logs / "dir.log").mkdir(parents=True)
    os.mkfifo(logs / "fifo.log")
    write_lines(logs / "ok.log", [b"fine"])
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: all_lines(raw_client) == [b"fine"], what="the regular file")
    assert "fifo.log is not a regular file" in caplog.text


def test_permission_denied_warns_and_other_files_continue(tmp_path: Path, redis_url: str) -> None:
    """Tests run as root, so the agent runs without CAP_DAC_OVERRIDE: chmod 000 then bites."""
    logs = tmp_path / "logs"
    write_lines(logs / "secret.log", [b"must not be read"])
    os.chmod(logs / "secret.log", 0)
    write_lines(logs / "open.log", [b"readable"])
    drop = [require_tool("setpriv"), "--bounding-set=-dac_override,-dac_read_search"]
    agent = AgentProcess(
        tmp_path,
        redis_url,
        {
            "paths": [str(logs / "*.log")],
            "checkpoint_dir": str(tmp_path / "ck"),
            "rescan_interval": 0.2,
        },
        stream=STREAM,
        prefix=drop,
    ).start()
    try:
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: all_lines(client) == [b"readable"], what="readable file")
        write_lines(logs / "open.log", [b"still going"])
        wait_for(lambda: all_lines(client) == [b"readable", b"still going"], what="more")
        assert agent.terminate() == 0
        assert "secret.log: [Errno 13] Permission denied" in agent.log_file.read_text()
    finally:
        agent.stop()


@pytest.mark.slow
def test_agent_rss_stays_bounded_with_a_large_backlog_and_no_consumer(
    tmp_path: Path, redis_url: str
) -> None:
    """Default settings, 500k lines (~60 MB) pushed with nobody reading the stream: the
    bounded queue keeps the agent's peak RSS flat (the README budget is 60 MB; 70 here
    leaves room for other library builds)."""
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"%07d " % i + b"r" * 110 for i in range(500_000)])
    cfg = {"paths": [str(log)], "checkpoint_dir": str(tmp_path / "ck")}
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        client = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: agent.metric("opsq_agent_lines_read_total") >= 500_000,
            timeout=60,
            what="all lines read",
        )
        wait_for(lambda: agent.metric("opsq_agent_lag_bytes") == 0, what="all acknowledged")
        assert client.xlen(STREAM) > 0
        assert agent.vm_hwm_kib() < 70 * 1024
    finally:
        agent.stop()


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_keeps_metrics_valid_and_inotify_on(
    tmp_path: Path, redis_url: str
) -> None:
    """The name made /metrics answer nothing (UnicodeEncodeError in the lag label) and
    ended the inotify watch. With a one-hour rescan, the file created after the odd one
    is only found if inotify still works."""
    promtool = require_tool("promtool")
    logs = tmp_path / "logs"
    logs.mkdir()
    odd = os.path.join(os.fsencode(logs), b"caf\xe9-\xff.log")
    cfg = {
        "paths": [str(logs / "*.log")],
        "checkpoint_dir": str(tmp_path / "ck"),
        "rescan_interval": "1h",
    }
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        client = redis.Redis.from_url(redis_url)
        with open(odd, "wb") as f:
            f.write(b"from the odd file\n")
        wait_for(lambda: len(stream_records(client)) >= 1, what="the odd file's line")
        [(path, *_rest)] = stream_records(client)
        assert os.fsencode(path) == odd  # the name arrives byte for byte
        write_lines(logs / "later.log", [b"found by inotify"])
        wait_for(lambda: len(stream_records(client)) >= 2, what="a file created afterwards")
        text = agent.get("/metrics")
        assert 'path="' + str(logs) + '/caf\\\\xe9-\\\\xff.log"' in text
        res = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert agent.terminate() == 0
    finally:
        agent.stop()

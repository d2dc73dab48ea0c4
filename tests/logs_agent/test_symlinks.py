"""Symlinks: loops under ``**`` cannot stall discovery or shutdown; links are not followed
by default, and a followed link must stay under an allowed root."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
import redis

from agents.discovery import Finder
from tests.logs_agent.conftest import (
    STREAM,
    agent_settings,
    lines_by_path,
    stream_records,
    wait_for,
    write_lines,
)
from tests.logs_agent.process import AgentProcess


def finder(patterns: list[str], **kwargs: object) -> tuple[Finder, list[str]]:
    notices: list[str] = []
    options: dict = {"max_depth": 8, "follow_symlinks": False, "symlink_roots": []}
    options.update(kwargs)
    found = Finder(
        patterns, [], stop=threading.Event(), notice=lambda _p, m: notices.append(m), **options
    )
    return found, notices


def test_symlink_loops_under_double_star_ship_other_files_and_sigterm_stops_in_grace(
    tmp_path: Path, redis_url: str
) -> None:
    """``ln -s . d/a; ln -s . d/b`` made glob visit ~2^40 paths and ignore SIGTERM."""
    logs = tmp_path / "logs"
    (logs / "d").mkdir(parents=True)
    os.symlink(".", logs / "d" / "a")
    os.symlink(".", logs / "d" / "b")
    os.symlink("..", logs / "d" / "up")
    write_lines(logs / "d" / "in-loop-dir.log", [b"one"])
    write_lines(logs / "x" / "y" / "app.log", [b"two"])
    cfg = {
        "paths": [str(logs / "**" / "*.log")],
        "checkpoint_dir": str(tmp_path / "ck"),
        "shutdown_grace": 5,
    }
    agent = AgentProcess(tmp_path, redis_url, cfg, stream=STREAM).start()
    try:
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: len(stream_records(client)) >= 2, timeout=15, what="both files")
        assert sorted(lines_by_path(client)) == [
            str(logs / "d" / "in-loop-dir.log"),
            str(logs / "x" / "y" / "app.log"),
        ]  # each once, never again through a/ b/ up/
        write_lines(logs / "x" / "y" / "app.log", [b"three"])
        wait_for(lambda: len(stream_records(client)) >= 3, timeout=15, what="a new line")
        assert agent.terminate(timeout=5) == 0  # within shutdown_grace
    except subprocess.TimeoutExpired:
        pytest.fail("the agent did not stop within shutdown_grace after SIGTERM")
    finally:
        agent.stop()


def test_a_link_to_a_file_outside_is_not_followed_by_default(
    tmp_path: Path, run_agent, raw_client
) -> None:
    outside = tmp_path / "outside"
    write_lines(outside / "secret.txt", [b"root-only secret"])
    logs = tmp_path / "logs"
    write_lines(logs / "app.log", [b"ordinary"])
    os.symlink(outside / "secret.txt", logs / "secret.log")
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: len(stream_records(raw_client)) >= 1, what="the ordinary file")
    write_lines(logs / "app.log", [b"later"])
    wait_for(lambda: len(stream_records(raw_client)) >= 2, what="a later line")
    assert lines_by_path(raw_client) == {str(logs / "app.log"): [b"ordinary", b"later"]}


def test_followed_links_must_resolve_under_an_allowed_root(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """Like /var/log/containers/*.log -> /var/log/pods/...: allowed when the root is given."""
    pods = tmp_path / "pods"
    write_lines(pods / "p1" / "0.log", [b"from a pod"])
    write_lines(tmp_path / "etc" / "shadow", [b"never"])
    logs = tmp_path / "logs"
    logs.mkdir()
    os.symlink(pods / "p1" / "0.log", logs / "p1.log")
    os.symlink(tmp_path / "etc" / "shadow", logs / "shadow.log")
    os.symlink(logs / "p1.log", logs / "chain.log")  # a link to a link into the root
    settings = agent_settings(tmp_path, follow_symlinks=True, symlink_roots=[str(pods)])
    agent = run_agent(settings)
    wait_for(lambda: len(stream_records(raw_client)) >= 1, what="the pod's file")
    write_lines(pods / "p1" / "0.log", [b"more"])
    wait_for(lambda: len(stream_records(raw_client)) >= 2, what="more")
    assert [r[3] for r in stream_records(raw_client)] == [b"from a pod", b"more"]
    [tailer] = agent.tailers.values()  # two links, one file: read once
    assert tailer.path in {str(logs / "p1.log"), str(logs / "chain.log")}


def test_double_star_stops_at_max_depth_and_never_enters_directory_links(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c" / "d"
    write_lines(deep / "deep.log", [b"x"])
    write_lines(tmp_path / "a" / "top.log", [b"x"])
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    pattern = [str(tmp_path / "**" / "*.log")]
    shallow, _ = finder(pattern, max_depth=2)
    assert [f.path for f in shallow.find()] == [str(tmp_path / "a" / "top.log")]
    full, _ = finder(pattern, max_depth=8)
    assert [f.path for f in full.find()] == [
        str(deep / "deep.log"),
        str(tmp_path / "a" / "top.log"),
    ]


def test_a_set_stop_flag_ends_the_walk(tmp_path: Path) -> None:
    write_lines(tmp_path / "a" / "x.log", [b"x"])
    walk, _ = finder([str(tmp_path / "**" / "*.log")])
    walk.stop.set()
    assert walk.find() == []

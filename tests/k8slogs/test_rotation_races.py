"""Kubelet rotation noticed in an unlucky order: the agent's steps driven one by one.

The agent loop reads, then checks each open file for rotation (housekeeping), then runs
discovery when inotify asked for it. A rotation that lands between the housekeeping check
and discovery's directory scan is first seen by discovery: the old inode at
``0.log.<stamp>``, a new file at ``0.log``. These tests run exactly that order (no thread,
no timing) and check that a line whose ``P`` parts straddle the rotation is still joined,
and is never glued to another line of the new file, with the chart's globs and with the
README's "both directories" globs (``/var/log/pods`` plus the ``/var/log/containers``
links).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.agent import Agent
from agents.formats import split_framed
from opsq.core.config.logs import LogsSettings
from opsq.core.logformat import decode
from tests.k8slogs.runtimes import Clock, CriWriter, kubelet_rotate
from tests.logs_agent.conftest import agent_settings

T0 = 1_795_000_000 * 10**9
UID = "0b6a8f2e-1111-4222-8333-444455556666"
CID = "c" * 64
LONG = b"straddling " + b"x" * 600


class Node:
    """One container's log on a node, written by containerd's logger (256-byte parts)."""

    def __init__(self, tmp_path: Path) -> None:
        self.pods = tmp_path / "pods"
        self.containers = tmp_path / "containers"
        self.log = self.pods / f"shop_web_{UID}" / "app" / "0.log"
        self.writer = CriWriter(self.log, Clock(T0), max_len=256)
        self.containers.mkdir(parents=True)
        link = self.containers / f"web_shop_app-{CID}.log"
        os.symlink(os.path.relpath(self.log, self.containers), link)

    def settings(self, tmp_path: Path, *, links: bool) -> LogsSettings:
        paths = [str(self.pods / "*/*/*.log"), str(self.pods / "*/*/*.log.*")]
        if links:
            paths.append(str(self.containers / "*.log"))
        return agent_settings(
            tmp_path,
            paths=paths,
            exclude=["*.gz", "*.tmp"],
            format="cri",
            follow_symlinks=links,
            symlink_roots=[str(self.pods)],
            partial_timeout=3600,
            kubernetes={"pods_dir": str(self.pods), "containers_dir": str(self.containers)},
        )

    def rotate_mid_line(self) -> None:
        """First part of LONG, kubelet rename + containerd reopen, then the other parts."""
        parts = self.writer.physical_lines("stdout", LONG + b"\n")
        assert len(parts) == 3
        self.writer.write_physical("stdout", *parts[0])
        kubelet_rotate(self.log, "20261118-110000", self.writer.reopen)
        for tag, content in parts[1:]:
            self.writer.write_physical("stdout", tag, content)


def messages(agent: Agent) -> list[bytes]:
    """The messages of every batch the agent queued, in order."""
    out = []
    while not agent.batches.empty():
        entry = decode(agent.batches.get_nowait().fields)
        out += [split_framed(raw)[2] for _, raw in entry.records]
    return out


@contextmanager
def node_agent(tmp_path: Path, *, links: bool) -> Iterator[tuple[Node, Agent]]:
    """A node with one line written and an agent (not started) that has read it."""
    node = Node(tmp_path)
    node.writer.write("stdout", b"before 1\n")
    agent = Agent(node.settings(tmp_path, links=links), "redis://127.0.0.1:1/0", host="h")
    try:
        agent.store.load()
        agent._discover(startup=True)
        agent._read_round()
        yield node, agent
    finally:
        for tailer in list(agent.tailers.values()):
            tailer.close()
        node.writer.close()


def run_racy_rotation(tmp_path: Path, *, links: bool) -> list[bytes]:
    with node_agent(tmp_path, links=links) as (node, agent):
        node.rotate_mid_line()
        node.writer.write("stdout", b"after 1\n")
        node.writer.write("stderr", b"after 2\n")
        # Discovery runs before housekeeping has looked at the renamed file.
        agent._discover(startup=False)
        for _ in range(3):
            agent._read_round()
            agent._housekeeping(time.monotonic())
            agent._discover(startup=False)
        node.writer.write("stdout", b"after 3\n")
        for _ in range(2):
            agent._read_round()
            agent._housekeeping(time.monotonic())
        return messages(agent)


def test_a_rotation_first_seen_by_discovery_never_glues_lines(tmp_path: Path) -> None:
    """Chart globs (*.log and *.log.*): discovery sees the rotation before housekeeping;
    the straddling line is joined whole and the new file's lines stay their own."""
    got = run_racy_rotation(tmp_path, links=False)
    assert got == [b"before 1", LONG, b"after 1", b"after 2", b"after 3"]


def test_a_rotation_with_pods_and_containers_globs_joins_the_straddling_line(
    tmp_path: Path,
) -> None:
    """Both directories globbed (the file is found through its /var/log/containers link
    and its /var/log/pods name): the rotated file and the new one still form one chain."""
    got = run_racy_rotation(tmp_path, links=True)
    assert got == [b"before 1", LONG, b"after 1", b"after 2", b"after 3"]


def test_open_lines_are_never_handed_to_a_file_already_read(tmp_path: Path) -> None:
    """If the new file was decoded before the old one was known to be rotated (forced
    here by reading it directly), the old file's open part is not glued to the new
    file's next line: it stays the old file's, and the new lines stay whole."""
    with node_agent(tmp_path, links=False) as (node, agent):
        node.rotate_mid_line()
        node.writer.write("stdout", b"after 1\n")
        agent._discover(startup=False)
        new = next(t for t in agent.tailers.values() if t.path == str(node.log))
        new.read(agent._emit, 1 << 20)  # out of turn
        node.writer.write("stdout", b"after 2\n")
        for _ in range(3):
            agent._read_round()
            agent._housekeeping(time.monotonic())
        got = messages(agent)
    assert {b"before 1", b"after 1", b"after 2"} <= set(got), got
    assert all(len(m) < len(LONG) for m in got), "no line glued to another"

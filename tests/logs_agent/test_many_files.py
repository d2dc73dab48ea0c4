"""Many files in one directory: discovery looks at each file a bounded number of times."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.agent import Agent
from agents.checkpoint import Checkpoint
from agents.copytruncate import RotatedNames
from tests.logs_agent.conftest import agent_settings, all_lines, wait_for, write_lines

FILES = 1000


def test_discovering_many_files_is_linear_in_their_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hostile check F3: with 10,000 files the first discovery compared every new file
    with every open one (copy-in-the-making and replaced-file checks) and scanned every
    checkpoint twice per file; 3,000 files took 113 s and nothing was shipped meanwhile.
    Counted here in comparisons, not seconds."""
    for i in range(FILES):
        write_lines(tmp_path / "logs" / f"f{i:05d}.log", [b"line %d" % i])
    looks = {"rotated": 0, "checkpoint": 0}
    is_rotated, ino = RotatedNames.is_rotated, Checkpoint.ino

    def counted_is_rotated(self: RotatedNames, original: str, candidate: str) -> bool:
        looks["rotated"] += 1
        return is_rotated(self, original, candidate)

    def counted_ino(self: Checkpoint) -> int:
        looks["checkpoint"] += 1
        return int(ino.__get__(self))

    monkeypatch.setattr(RotatedNames, "is_rotated", counted_is_rotated)
    monkeypatch.setattr(Checkpoint, "ino", property(counted_ino))
    agent = Agent(agent_settings(tmp_path), "redis://127.0.0.1:1/0", host="testhost")
    agent.store.load()
    try:
        agent._discover(startup=True)
        agent._discover(startup=False)
        assert len(agent.tailers) == FILES
    finally:
        for tailer in list(agent.tailers.values()):
            agent._release(tailer, lost=None)
    assert looks["rotated"] <= 10 * FILES
    assert looks["checkpoint"] <= 10 * FILES


def test_every_file_of_a_large_directory_is_shipped(tmp_path: Path, run_agent, raw_client) -> None:
    for i in range(FILES):
        write_lines(tmp_path / "logs" / f"f{i:05d}.log", [b"line %d" % i])
    run_agent(agent_settings(tmp_path))
    expected = sorted(b"line %d" % i for i in range(FILES))
    wait_for(lambda: sorted(all_lines(raw_client)) == expected, what="one line of every file")

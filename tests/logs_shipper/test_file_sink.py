"""The JSON-lines file sink: rotation by size, crash-torn lines, failures as TemporaryError."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.sinks.base import Delivery
from agents.sinks.file import FileSink
from opsq.core.errors import TemporaryError
from tests.logs_shipper.support import make_entry, sink_ids


def delivery(n: int) -> Delivery:
    entry = make_entry(n, lines=10)
    return Delivery(f"1700000000000-{n}", entry, entry.encode())


def test_rotation_by_size_keeps_only_the_configured_number_of_backups(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out.jsonl", max_bytes=4096, backups=2)
    for n in range(40):  # ~1.6 KB per batch: many rotations
        sink.write([delivery(n)])
    sink.close()

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 4096
    # the newest records are in the live file, older ones in .1, the oldest kept in .2
    newest = sink_ids(tmp_path, "out.jsonl")
    assert "2049:131:9f2c:39900" in newest
    kept = sink_ids(tmp_path)
    assert "2049:131:9f2c:0" not in kept  # rotated out of the last backup


def test_zero_backups_means_the_file_starts_over(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out.jsonl", max_bytes=2048, backups=0)
    for n in range(10):
        sink.write([delivery(n)])
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_torn_last_line_is_finished_before_appending(tmp_path: Path) -> None:
    """After a kill -9 mid-write the next record must not be glued onto the fragment."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"x:1","line":"complete"}\n{"id":"x:2","li')
    sink = FileSink(path, max_bytes=1 << 20, backups=1)
    sink.write([delivery(0)])
    sink.close()

    lines = path.read_bytes().splitlines()
    assert lines[1] == b'{"id":"x:2","li'
    assert set(sink_ids(tmp_path)) >= {"x:1", "2049:131:9f2c:0"}
    assert len(sink_ids(tmp_path)) == 11


def test_unwritable_destination_is_a_temporary_error(tmp_path: Path) -> None:
    (tmp_path / "dir-is-a-file").write_text("")
    sink = FileSink(tmp_path / "dir-is-a-file" / "out.jsonl", max_bytes=1 << 20, backups=1)
    with pytest.raises(TemporaryError):
        sink.write([delivery(0)])

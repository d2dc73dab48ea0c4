"""The JSON-lines file sink: rotation by size, crash-torn lines, failures as TemporaryError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.sinks.base import Delivery, entry_jsonl, json_records
from agents.sinks.file import FileSink
from agents.sinks.stdout import StdoutSink
from opsq.core.errors import ConfigError, TemporaryError
from opsq.core.logformat import Entry
from opsq.core.settings import load_settings
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


@pytest.mark.parametrize(
    "records",
    [
        ((0, b"plain ascii line"), (17, b"another one")),
        ((0, b'with "quotes" and \\ backslash'), (40, b"tab\there")),
        ((0, b"caf\xc3\xa9 utf-8"), (12, b"bad \xff byte"), (30, b"nul \x00")),
        ((0, b"100% done %s %d"),),
    ],
)
def test_fast_and_escaping_renderers_write_identical_lines(records) -> None:
    """Plain-ASCII entries take a template fast path; it must match the escaping path."""
    entry = Entry("node%1", "/var/log/50%.log", "1:2:%x", 0, 99, records)
    delivery = Delivery("1700000000123-4", entry, entry.encode())
    expected = "".join(doc + "\n" for _, doc in json_records(delivery)).encode()
    assert entry_jsonl(delivery) == expected
    assert [json.loads(line)["line"] for line in expected.splitlines()] == [
        raw.decode("utf-8", "backslashreplace") for _, raw in records
    ]


def test_a_file_sink_without_path_is_a_config_error_naming_file_and_field(tmp_path: Path) -> None:
    config = tmp_path / "opsq.yaml"
    config.write_text("logs:\n  shipper:\n    sink: {type: file}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert str(config) in str(err.value)
    assert "logs.shipper.sink" in str(err.value)
    assert "set logs.shipper.sink.path" in str(err.value)


def test_stdout_sink_writes_the_same_json_lines(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    StdoutSink().write([delivery(0)])
    out = capfdbinary.readouterr().out
    assert out == entry_jsonl(delivery(0))
    assert len(out.splitlines()) == 10

"""Checkpoint store: atomic persistence, corrupt files, identity checks."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from agents import checkpoint as checkpoint_module
from agents.checkpoint import FILE_NAME, CheckpointStore
from agents.identity import FINGERPRINT_BYTES, FileIdentity, identify, matches
from tests.logs_agent.conftest import (
    STREAM,
    agent_settings,
    all_lines,
    stream_records,
    wait_for,
    write_lines,
)

IDENT = FileIdentity(dev=1, ino=2, fingerprint="00ff", fp_len=10)


def test_flush_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.load()
    store.put(IDENT, 5, "/a.log")
    store.advance(IDENT.fid, 42)
    store.advance(IDENT.fid, 7)  # a late, older ack never moves it back
    assert store.flush()
    assert sorted(os.listdir(tmp_path)) == [FILE_NAME]
    again = CheckpointStore(tmp_path)
    again.load()
    cp = again.get(IDENT.fid)
    assert cp is not None
    assert (cp.identity, cp.offset, cp.path) == (IDENT, 42, "/a.log")


def test_a_failed_write_keeps_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.load()
    store.put(IDENT, 100, "/a.log")
    store.flush()

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "replace", fail_replace)
    store.advance(IDENT.fid, 200)
    assert store.flush() is False
    monkeypatch.undo()
    reread = CheckpointStore(tmp_path)
    reread.load()
    cp = reread.get(IDENT.fid)
    assert cp is not None
    assert cp.offset == 100
    assert store.flush()  # still dirty: the next flush writes 200
    reread.load()
    cp = reread.get(IDENT.fid)
    assert cp is not None
    assert cp.offset == 200


@pytest.mark.parametrize("garbage", [b"{not json", b'{"version": 1, "files": [{"dev": -1}]}', b""])
def test_corrupt_file_is_moved_aside_with_a_warning_not_a_crash(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(garbage)
    store = CheckpointStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        store.load()
    assert store.corrupt
    assert "corrupt" in caplog.text
    assert not (tmp_path / FILE_NAME).exists()
    assert any(name.startswith(f"{FILE_NAME}.corrupt-") for name in os.listdir(tmp_path))
    store.put(IDENT, 1, "/a.log")
    assert store.flush()  # and it keeps working


def test_fingerprint_of_short_files_is_stable_and_detects_other_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"first line\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        ident = identify(fd, os.fstat(fd))
        assert ident is not None
        assert ident.fp_len == 11
        with open(path, "ab") as f:
            f.write(b"x" * 5000)
        assert matches(fd, ident)  # growing does not change who it is
        assert identify(fd, os.fstat(fd)).fp_len == FINGERPRINT_BYTES  # type: ignore[union-attr]
    finally:
        os.close(fd)
    path.write_bytes(b"other line\n")  # same inode, other content
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not matches(fd, ident)
    finally:
        os.close(fd)


def test_empty_file_has_no_identity_yet(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert identify(fd, os.fstat(fd)) is None
    finally:
        os.close(fd)


@pytest.mark.parametrize(("fallback", "expect_old"), [("head", True), ("tail", False)])
def test_agent_applies_on_corrupt_checkpoint_fallback(
    tmp_path: Path, run_agent, raw_client, fallback: str, expect_old: bool
) -> None:
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"old-1", b"old-2"])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / FILE_NAME).write_bytes(b"\x00\x01garbage")
    agent = run_agent(agent_settings(tmp_path, on_corrupt_checkpoint=fallback, read_from="head"))
    wait_for(lambda: agent.tailers != {}, what="file opened")
    write_lines(log, [b"new-1"])
    wait_for(lambda: b"new-1" in all_lines(raw_client), what="new line shipped")
    lines = all_lines(raw_client)
    assert (b"old-1" in lines) is expect_old
    assert raw_client.xlen(STREAM) >= 1


def test_checkpoint_with_same_inode_but_other_fingerprint_restarts_at_zero(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """Inode reuse: a stale checkpoint for this dev:ino must not be applied."""
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"brand new file line %d" % i for i in range(3)])
    st = os.stat(log)
    ckpt = tmp_path / "ckpt"
    stale = CheckpointStore(ckpt)
    stale.load()
    stale.put(FileIdentity(st.st_dev, st.st_ino, "deadbeefdeadbeef", 16), 40, str(log))
    stale.flush()
    run_agent(agent_settings(tmp_path))
    wait_for(lambda: len(stream_records(raw_client)) >= 3, what="three records")
    records = stream_records(raw_client)
    assert [r[3] for r in records] == [b"brand new file line %d" % i for i in range(3)]
    assert records[0][2] == 0


def test_a_new_identity_is_on_disk_before_its_first_entry_is_sent(
    tmp_path: Path, run_agent, raw_client
) -> None:
    """Otherwise a crash before the periodic flush would re-fingerprint a longer prefix
    on restart and re-send the file under record ids no consumer could dedupe."""
    log = tmp_path / "logs" / "a.log"
    write_lines(log, [b"tiny"])
    run_agent(agent_settings(tmp_path, checkpoint_every="1h", checkpoint_every_lines=10**9))
    wait_for(lambda: len(stream_records(raw_client)) == 1, what="first record")
    [(_path, rid, _off, _data)] = stream_records(raw_client)
    doc = (tmp_path / "ckpt" / FILE_NAME).read_text()
    fid = rid.rsplit(":", 1)[0]
    assert fid.split(":")[2] in doc
    assert '"fp_len": 5' in doc


def test_concurrent_flushes_from_reader_and_sender_never_tear_the_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.load()
    errors: list[BaseException] = []

    def hammer(base: int) -> None:
        try:
            for i in range(200):
                ident = FileIdentity(dev=1, ino=base + i, fingerprint="aa", fp_len=2)
                store.put(ident, i, f"/f{base + i}")
                assert store.flush()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n * 1000,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    again = CheckpointStore(tmp_path)
    again.load()
    assert not again.corrupt
    assert len(again.snapshot()) == 400
    assert sorted(os.listdir(tmp_path)) == [FILE_NAME]

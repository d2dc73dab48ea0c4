"""JSON-lines file sink with size-based rotation.

One record per line. Each batch is appended with one ``write`` and then ``fsync``ed
before the shipper acknowledges anything: a power cut after the ack cannot lose a
line that Redis no longer holds.

Crash safety of the file itself: if the process dies in the middle of a write, the
file may end with a partial line. That entry was never acknowledged, so it will be
delivered again; on (re)open the sink therefore finishes a torn last line with a
newline so the redelivered records start on a line of their own and the torn
fragment stays a single unparseable line (readers skip it and dedupe by ``id``).
A write that fails (``ENOSPC`` mid-batch) is cut back to where it started, so a
full disk leaves no fragment at all.

Rotation (``path`` -> ``path.1`` -> ... -> ``path.<backups>``) happens between
batches, so a file can exceed ``max_bytes`` by at most one batch. The directory is
fsynced after the renames so a crash cannot leave two files with the same name history.
One shipper process per file: rotation is not coordinated across processes (put
``{consumer}`` in the path to give each shipper its own file).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from agents.sinks.base import Delivery, Outcome, jsonl_bytes
from opsq.core.errors import TemporaryError


class FileSink:
    name = "file"

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        data = jsonl_bytes(batch)
        try:
            self._write(data)
        except OSError as exc:
            self._close_quietly()  # reopen (and mend a torn line) on the next attempt
            raise TemporaryError(f"file sink {self.path}: {exc}") from exc
        return Outcome()

    def close(self) -> None:
        self._close_quietly()

    def _write(self, data: bytes) -> None:
        fd = self._open()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            fd = self._open()
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            # A disk that fills up mid-batch takes part of it: cut that part off, or each
            # retry as space comes and goes appends another fragment (duplicates and a
            # torn line per attempt, eating the space the retry needs).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise
        self._size += len(data)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd = fd
            self._size = os.fstat(fd).st_size
            if self._size and not _ends_with_newline(self.path):
                _write_all(fd, b"\n")
                self._size += 1
        return self._fd

    def _rotate(self) -> None:
        self._close_quietly()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = self._backup(n)
                if older.exists():
                    older.replace(self._backup(n + 1))
            self.path.replace(self._backup(1))
        _fsync_dir(self.path.parent)

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _close_quietly(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

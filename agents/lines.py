"""Turning a chunk of file bytes into records and stream entries, fast.

The agent reads 1 MiB at a time and cuts at the last newline, so this module only ever
sees whole lines. The hot path does no per-line Python work beyond what C-level
builtins do for it: ``bytes.split`` for the lines, ``map(len)`` and
``itertools.accumulate`` for lengths and offsets, ``str.join(map(str, ...))`` for the
``lens``/``offs`` fields, one ``isascii()`` (or one ``decode``) per chunk for the
encoding check. Per-line Python loops run only when a chunk actually holds an
oversized line, invalid UTF-8 or NUL bytes, or when multiline joining is on. That is
what lets one Python process out-run rsyslog's imfile → omhiredis (see README).

Records never include their trailing newline. Invalid UTF-8 and NUL bytes are kept as
the raw bytes (the entry format is bytes end to end) and only counted.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Protocol

from opsq.core.logformat import VERSION


@dataclass(slots=True)
class Records:
    """Records cut from file bytes: ``lines[i]`` starts at file offset ``offs[i]``."""

    lines: list[bytes]
    offs: list[int]
    truncated: int = 0
    invalid: int = 0


@dataclass(slots=True)
class Batch:
    """One stream entry ready for XADD, plus what the sender needs after the ack."""

    fid: str
    end: int
    """File offset up to which this entry (and everything before it) is covered."""
    lines: int
    fields: dict[bytes, bytes] = field(repr=False)
    also: tuple[tuple[str, int], ...] = ()
    """Other files' checkpoints this entry moves once acknowledged: a line joined across
    a rotation ships under the file it began in, and covers the new file's first bytes."""


@dataclass(frozen=True, slots=True)
class Source:
    host: bytes
    path: bytes
    fid: str
    fmt: bytes = b""
    """``cri`` for runtime-framed records (see :mod:`agents.formats`)."""
    meta: bytes = b""
    """The file's pod identity and metadata as a JSON object (see :mod:`agents.podmeta`)."""


def split_chunk(body: bytes, base: int, max_line: int) -> Records:
    """Split the whole lines of *body* (which starts at file offset *base*).

    Bytes after the last newline (a partial line) are ignored: the caller reads them
    again next time. Splitting the read buffer itself saves a 1 MiB copy per read.
    """
    lines = body.split(b"\n")
    lines.pop()  # the partial line after the final newline (empty when body ends with one)
    lens = list(map(len, lines))
    # off[i] = base + sum(lens[:i]) + i  (each earlier line also had its newline)
    # (map stops at the shorter input, so accumulate's final running total is unused)
    offs = list(map(operator.add, accumulate(lens, initial=base), range(len(lines))))
    records = Records(lines, offs)
    if lens and max(lens) > max_line:
        records.truncated = _truncate(lines, max_line)
    if not body.isascii() and (b"\0" in body or not _valid_utf8(body)):
        records.invalid = sum(1 for line in lines if not _clean(line))
    elif b"\0" in body:
        records.invalid = sum(1 for line in lines if b"\0" in line)
    return records


def _truncate(lines: list[bytes], max_line: int) -> int:
    cut = 0
    for i, line in enumerate(lines):
        if len(line) > max_line:
            lines[i] = line[:max_line]
            cut += 1
    return cut


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _clean(line: bytes) -> bool:
    return b"\0" not in line and (line.isascii() or _valid_utf8(line))


def is_clean(line: bytes) -> bool:
    """Valid UTF-8 without NUL bytes."""
    return _clean(line)


def pack(
    src: Source, records: Records, end: int, batch_lines: int, batch_bytes: int
) -> list[Batch]:
    """Group records into entries of at most *batch_lines* lines / about *batch_bytes*.

    The last entry's ``end`` is *end* (it may lie past the last record when a
    truncated line's tail was skipped); every other entry ends where the next begins.
    """
    lines, offs = records.lines, records.offs
    bounds = _group_bounds(lines, batch_lines, batch_bytes)
    out = []
    for k, (i, j) in enumerate(bounds):
        group_end = end if k == len(bounds) - 1 else offs[j]
        out.append(_encode(src, lines[i:j], offs[i:j], group_end))
    return out


def _group_bounds(lines: list[bytes], batch_lines: int, batch_bytes: int) -> list[tuple[int, int]]:
    bounds = []
    for i in range(0, len(lines), batch_lines):
        j = min(i + batch_lines, len(lines))
        if sum(map(len, lines[i:j])) <= batch_bytes:
            bounds.append((i, j))
        else:
            bounds.extend(_split_by_bytes(lines, i, j, batch_bytes))
    return bounds


def _split_by_bytes(lines: list[bytes], i: int, j: int, batch_bytes: int) -> list[tuple[int, int]]:
    bounds, start, size = [], i, 0
    for k in range(i, j):
        if size and size + len(lines[k]) > batch_bytes:
            bounds.append((start, k))
            start, size = k, 0
        size += len(lines[k])
    bounds.append((start, j))
    return bounds


def _encode(src: Source, lines: list[bytes], offs: list[int], end: int) -> Batch:
    """The same fields as :meth:`opsq.core.logformat.Entry.encode`, built without
    per-record tuples (a test proves the two agree byte for byte)."""
    fields = {
        b"v": VERSION,
        b"host": src.host,
        b"path": src.path,
        b"fid": src.fid.encode(),
        b"start": str(offs[0]).encode(),
        b"end": str(end).encode(),
        b"data": b"".join(lines),
        b"lens": ",".join(map(str, map(len, lines))).encode(),
        b"offs": ",".join(map(str, offs)).encode(),
    }
    if src.fmt:
        fields[b"fmt"] = src.fmt
    if src.meta:
        fields[b"meta"] = src.meta
    return Batch(src.fid, end, len(lines), fields)


class Stage(Protocol):
    """One step between cutting lines and packing entries (decode, join, ...).

    The tailer runs read -> split/truncate -> stages in order -> pack. A stage may
    hold records back (a multiline record waiting for its next start line, a
    container runtime's partial line): ``held_from`` is the file offset of the first
    byte it holds, so the checkpoint never passes it. ``flush`` hands out whatever is
    held (a timeout, a rotated file's end); ``reset`` drops it because the tailer will
    re-read from an earlier offset.
    """

    @property
    def held_from(self) -> int | None: ...

    def feed(self, records: Records) -> Records: ...

    def flush(self) -> Records: ...

    def reset(self) -> None: ...


class Joiner:
    """Multiline joining: a line matching *start_pattern* starts a record, others append.

    The pending record stays here (not shipped, so not checkpointed) until the next
    start line, *max_lines*, or the caller's timeout flushes it.
    """

    def __init__(self, start_pattern: str, max_lines: int, max_bytes: int) -> None:
        self.start = re.compile(start_pattern.encode())
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.off = 0
        self.head = b""
        """What precedes the text of the record's first line (a runtime's framing)."""
        self.group = b""
        self.end = 0
        self.emitted_end = 0
        """File offset just past the last record handed out (the entry's ``end``)."""

    @property
    def pending(self) -> bool:
        return bool(self.parts)

    @property
    def held_from(self) -> int | None:
        return self.off if self.parts else None

    def feed(self, records: Records) -> Records:
        """Join *records*; return the completed ones (the last may stay pending)."""
        done = Records([], [])
        for off, line in zip(records.offs, records.lines, strict=True):
            text, group = self.split(line)
            starts = self.start.match(text) is not None
            if self.parts and (starts or group != self.group or len(self.parts) >= self.max_lines):
                self._emit(done)
            if not self.parts:
                self.off, self.head, self.group = off, line[: len(line) - len(text)], group
            self.parts.append(text)
            self.end = off + len(line) + 1
        return done

    @staticmethod
    def split(line: bytes) -> tuple[bytes, bytes]:
        """(the text to match and join, the group it belongs to): a plain line is all
        text and one group; :class:`agents.formats.FramedJoiner` joins per stream."""
        return line, b""

    def flush(self) -> Records:
        done = Records([], [])
        if self.parts:
            self._emit(done)
        return done

    def reset(self) -> None:
        self.parts = []

    def _emit(self, done: Records) -> None:
        joined = b"\n".join(self.parts)
        if len(joined) > self.max_bytes:
            joined = joined[: self.max_bytes]
            done.truncated += 1
        done.lines.append(self.head + joined if self.head else joined)
        done.offs.append(self.off)
        self.emitted_end = self.end
        self.parts = []

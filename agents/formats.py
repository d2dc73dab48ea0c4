"""Container runtime log formats: CRI and Docker json-file lines into logical records.

On a Kubernetes node the container runtime, not the application, writes the files:

- **CRI** (containerd ``internal/cri/io/logger.go`` ``redirectLogs``; CRI-O's conmon
  writes the same): ``<RFC 3339 nano time> <stdout|stderr> <P|F> <content>\\n``. A
  line longer than ``max_container_log_line_size`` (16 KiB by default) is cut into
  ``P`` (partial) lines ended by one ``F`` (full) line, and output that ends without a
  newline is written as a lone ``P``. stdout and stderr have one writer each over the
  same file, so their lines interleave: a ``P`` of stdout can be followed by an ``F``
  of stderr before its own ``F`` arrives.
- **Docker json-file** (moby ``daemon/logger/jsonfilelog``):
  ``{"log":"content\\n","stream":"stdout","time":"<RFC 3339 nano, UTC>"}``. The copier
  (``daemon/logger/copier.go``) cuts lines at 16 KiB; every part but the last lacks the
  trailing ``\\n`` and all parts carry the first part's time.

A decoder turns physical lines into logical records, reassembling parts per stream
*before* multiline joining and ``max_line_bytes`` (a part is cut at 16 KiB, a logical
line is not). Records keep the CRI framing, ``<time> <stream> F <message>``: for a
line the runtime did not split that is the line exactly as written, so the hot path
(1 MiB chunks of ``F`` lines) checks each line's framing with two C-level ``map``
calls and copies nothing. The shipper splits time, stream and message (entry field
``fmt: cri``). Docker lines are re-framed the same way, so sinks know one format.

Checkpoint safety: records leave in the order of their first byte, and the decoder
reports a *safe end*: the file offset before which every byte belongs to a record
already handed out. While a partial line is pending, the safe end stays at its first
part, so a crash re-reads the whole line rather than losing its head. Records of
another stream completed meanwhile wait behind it (bounded by ``partial_timeout``).

Across a rotation: the parts of one line can straddle ``0.log.<stamp>`` and the new
``0.log``. A rotated file's pending partials (and what waits behind them) are handed
to its successor with :meth:`Decoder.adopt`; when the line completes there, it leaves
as a *carried* record that keeps the first part's file identity and offset (its id
does not depend on where the rest was), and its stream entry also advances the
successor's checkpoint past the parts it consumed.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Literal

import orjson

from agents.lines import Records, Source

Format = Literal["raw", "cri", "docker"]
FORMATS = ("raw", "cri", "docker", "auto")

FRAMED = "cri"
"""Value of the stream entry field ``fmt`` for records framed ``<time> <stream> F <msg>``."""
UNKNOWN = b"-"
"""Time and stream of a line that does not parse (shipped framed as ``- - F <line>``)."""
PREFIX_MAX = 64
"""Longest CRI prefix: a 35-byte time with zone offset plus `` stderr F ``, rounded up."""
MIN_PREFIX = 30
"""Shortest CRI prefix: ``2006-01-02T15:04:05Z`` (20 bytes) plus `` stdout F ``."""
DOCKER_ESCAPE = 6
"""Worst-case growth of a Docker log line as JSON (``\\u00XX`` per byte)."""
RUN_WINDOW = 64 * 1024
"""Bytes before a resume offset re-read to learn the repeat count of the last timestamp."""

_HEADS = (b" stdout F ", b" stderr F ")
_FIND_SPACE = operator.methodcaller("find", b" ")
_CRI = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d))"  # RFC 3339 nano
    rb" (stdout|stderr) ([PF])(?: |$)"
)
_OWN = 1 << 62
"""Order rank of this file's own lines (adopted lines rank by adoption, below it)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The rotated file an adopted line began in, and where its checkpoint may go."""

    source: Source
    end: int
    """That file's size at hand-over: its checkpoint moves there once the carried
    records are acknowledged (it has nothing else unshipped)."""
    rank: int


@dataclass(slots=True)
class _Line:
    """A logical line being assembled (pending) or complete but held."""

    rank: int
    off: int
    """Offset of the first part in the file it began in."""
    start: int
    """Offset in *this* file before which checkpoints must stay while it is held."""
    ts: bytes
    stream: bytes
    parts: list[bytes]
    size: int = 0
    cut: bool = False
    origin: Origin | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.rank, self.off)

    def framed(self) -> bytes:
        return b"".join([self.ts, b" ", self.stream, b" F ", *self.parts])


@dataclass(slots=True)
class Carried:
    """Records that began in a rotated predecessor, ready to ship under its identity."""

    origin: Origin
    records: Records
    also_end: int
    """Safe end of the successor file once these are acknowledged."""


@dataclass(slots=True)
class Decoded:
    records: Records
    """This file's records in the order of their first byte."""
    end: int
    """Checkpoint-safe end of this file after *records* (and *carried*) are shipped."""
    carried: list[Carried] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Parsed:
    ts: bytes
    stream: bytes
    partial: bool
    message: bytes


def detect(first_line: bytes) -> Format:
    """``cri``, ``docker`` or ``raw`` from a file's first line (``format: auto``)."""
    if _CRI.match(first_line):
        return "cri"
    if first_line.startswith(b"{") and parse_docker(first_line) is not None:
        return "docker"
    return "raw"


def parse_cri(line: bytes) -> Parsed | None:
    match = _CRI.match(line)
    if match is None:
        return None
    return Parsed(match[1], match[2], match[3] == b"P", line[match.end() :])


def parse_docker(line: bytes) -> Parsed | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    log, stream, time = doc.get("log", ""), doc.get("stream", "stdout"), doc.get("time")
    if not (isinstance(log, str) and isinstance(stream, str) and isinstance(time, str)):
        return None
    partial = not log.endswith("\n")
    message = (log if partial else log[:-1]).encode("utf-8", "surrogatepass")
    return Parsed(time.encode(), stream.encode() or b"stdout", partial, message)


def split_framed(record: bytes) -> tuple[bytes, bytes, bytes]:
    """``(time, stream, message)`` of a framed record (the shipper's side)."""
    parts = record.split(b" ", 3)
    if len(parts) < 4:
        return UNKNOWN, UNKNOWN, record
    return parts[0], parts[1], parts[3]


def record_time(record: bytes) -> bytes:
    return record[: record.find(b" ")]


class Decoder:
    """Physical lines of one file -> logical records (see the module docstring)."""

    def __init__(self, fmt: Format, max_line: int) -> None:
        if fmt == "raw":
            raise ValueError("raw files need no decoder")
        self.fmt = fmt
        self.max_line = max_line
        self.parse = parse_cri if fmt == "cri" else parse_docker
        self.pending: dict[bytes, _Line] = {}
        self.held: list[_Line] = []
        self.truncated = 0
        self.malformed = 0
        self._ranks = 0

    @property
    def physical_max(self) -> int:
        """Longest physical line kept whole before decoding (longer ones are cut)."""
        if self.fmt == "docker":
            return self.max_line * DOCKER_ESCAPE + 256
        return self.max_line + PREFIX_MAX

    @property
    def busy(self) -> bool:
        """True while a partial line is pending or complete records wait behind one."""
        return bool(self.pending or self.held)

    # --- decoding ---------------------------------------------------------------------
    def feed(self, records: Records, end: int) -> Decoded:
        """Decode the physical lines in *records* (which end at file offset *end*)."""
        self.truncated = self.malformed = 0
        if not self.busy and self._all_full(records.lines):
            return Decoded(records, end)  # the hot path: the lines are the records
        for off, line in zip(records.offs, records.lines, strict=True):
            self._line(off, line)
        decoded = self._release(end)
        decoded.records.invalid = records.invalid
        return decoded

    def _all_full(self, lines: list[bytes]) -> bool:
        """Every line is an ``F`` line of stdout or stderr whose message fits max_line.

        Two C-level passes (find the first space, compare the 10 bytes after it); the
        time itself is not validated here (the shipper falls back to the entry's time
        when it does not parse).
        """
        if self.fmt != "cri":
            return False
        if not lines:
            return True
        if not all(map(bytes.startswith, lines, repeat(_HEADS), map(_FIND_SPACE, lines))):
            return False
        return max(map(len, lines)) <= self.max_line + MIN_PREFIX

    def _line(self, off: int, line: bytes) -> None:
        parsed = self.parse(line)
        if parsed is None:
            self.malformed += 1
            self._done(_Line(_OWN, off, off, UNKNOWN, UNKNOWN, [self._cut(line)]))
            return
        part = self.pending.get(parsed.stream)
        if part is None:
            part = _Line(_OWN, off, off, parsed.ts, parsed.stream, [])
        self._append(part, parsed.message)
        if parsed.partial:
            self.pending[parsed.stream] = part
        else:
            self.pending.pop(parsed.stream, None)
            self._done(part)

    def _append(self, part: _Line, message: bytes) -> None:
        room = self.max_line - part.size
        if len(message) > room:
            if not part.cut:
                self.truncated += 1
            part.cut = True
            message = message[: max(room, 0)]
        if message:
            part.parts.append(message)
            part.size += len(message)

    def _cut(self, line: bytes) -> bytes:
        if len(line) <= self.max_line:
            return line
        self.truncated += 1
        return line[: self.max_line]

    def _done(self, line: _Line) -> None:
        self.held.append(line)

    def _release(self, end: int) -> Decoded:
        barrier = min((p.key for p in self.pending.values()), default=None)
        self.held.sort(key=operator.attrgetter("rank", "off"))
        cut = len(self.held) if barrier is None else next(
            (i for i, h in enumerate(self.held) if h.key > barrier), len(self.held)
        )  # fmt: skip
        ready, self.held = self.held[:cut], self.held[cut:]
        safe = min([end, *(p.start for p in self.pending.values()), *(h.start for h in self.held)])
        own = [r for r in ready if r.origin is None]
        records = Records([r.framed() for r in own], [r.off for r in own])
        records.truncated = self.truncated
        carried = list(self._carried([r for r in ready if r.origin is not None], own, safe))
        return Decoded(records, safe, carried)

    @staticmethod
    def _carried(adopted: list[_Line], own: list[_Line], safe: int) -> Iterator[Carried]:
        also = own[0].off if own else safe
        for origin in sorted({r.origin for r in adopted if r.origin}, key=lambda o: o.rank):
            mine = [r for r in adopted if r.origin is origin]
            yield Carried(origin, Records([r.framed() for r in mine], [r.off for r in mine]), also)

    # --- timeouts, hand-over, rewind ------------------------------------------------
    def flush(self, end: int) -> Decoded:
        """Give up waiting: pending partials leave as they are (the writer stopped)."""
        self.truncated = self.malformed = 0
        for part in list(self.pending.values()):
            self._done(part)
        self.pending.clear()
        return self._release(end)

    def hand_over(self, source: Source, end: int) -> tuple[list[_Line], list[_Line]]:
        """A rotated file's unfinished lines and those held behind them, for adopt().

        *source* and *end* describe this file; afterwards this decoder holds nothing.
        """
        pending, held = list(self.pending.values()), self.held
        self.pending, self.held = {}, []
        origin = Origin(source, end, 0)
        for line in (*pending, *held):
            if line.origin is None:
                line.origin = origin
        return pending, held

    def adopt(self, pending: list[_Line], held: list[_Line], start: int) -> None:
        """Continue a predecessor's lines; this file's bytes from *start* follow them."""
        renamed: dict[int, Origin] = {}
        for line in sorted([*pending, *held], key=operator.attrgetter("rank", "off")):
            old = line.origin
            if old is None:
                raise ValueError("adopt() takes lines from hand_over()")
            new = renamed.get(id(old))
            if new is None:
                self._ranks += 1
                new = renamed[id(old)] = Origin(old.source, old.end, self._ranks)
            line.origin, line.rank, line.start = new, new.rank, start
        for line in pending:
            if line.stream in self.pending:
                self.held.append(line)  # this file already began another line: ship as is
            else:
                self.pending[line.stream] = line
        self.held.extend(held)

    def reset(self, start: int) -> None:
        """Forget this file's lines from *start* on (they will be read again).

        Adopted lines (from a predecessor) are kept: their first bytes are not here.
        """
        self.pending = {s: p for s, p in self.pending.items() if p.origin is not None}
        self.held = [h for h in self.held if h.origin is not None or h.off < start]


class Runs:
    """Repeat count of identical runtime timestamps, carried from entry to entry.

    Loki drops a line whose stream, timestamp and text equal another's. Two identical
    lines written in the same nanosecond must both survive, and a re-sent line must
    get exactly the timestamp it had. The rule: a record's Loki time is its runtime
    time plus *k* ns, where *k* counts the records right before it in the same file
    with the same timestamp text. Within an entry the shipper counts; the agent tells
    it the *k* of the entry's first record (field ``tsk``), and after a restart
    re-reads up to :data:`RUN_WINDOW` bytes before the checkpoint to learn it again.
    """

    def __init__(self) -> None:
        self.last = b""
        self.run = 0

    def first_k(self, first: bytes) -> int:
        return self.run if record_time(first) == self.last else 0

    def consume(self, lines: list[bytes]) -> None:
        if not lines:
            return
        last = record_time(lines[-1])
        count = 1
        for line in reversed(lines[:-1]):
            if record_time(line) != last:
                break
            count += 1
        if count == len(lines) and last == self.last:
            self.run += count
        else:
            self.last, self.run = last, count

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
calls and copies nothing (stripping the prefix would cost a slice per line here, and
the shipper touches every record anyway). The shipper splits time, stream and message
(entry field ``fmt: cri``). Docker lines are re-framed the same way, so sinks know one
format.

Checkpoint safety: records leave in the order of their first byte, and while a partial
line is open the decoder's ``held_from`` is its first part, so the checkpoint stays
there and a crash re-reads the whole line rather than losing its head. Records of the
other stream completed meanwhile wait behind it (bounded by ``partial_timeout``). A
chunk is decoded in runs: plain ``F`` lines pass through as they are, and only the
lines around a partial (or a line that does not parse) take the careful path.

Across a rotation: the parts of one line can straddle ``0.log.<stamp>`` and the new
``0.log``. A rotated file's pending partials (and what waits behind them) are handed
to its successor with :meth:`Decoder.adopt`; when the line completes there, it leaves
as a *carried* record that keeps the first part's file identity and offset (its id
does not depend on where the rest was), and its stream entry also advances the
successor's checkpoint past the parts it consumed.
"""

from __future__ import annotations

import calendar
import operator
import os
import re
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Literal

import orjson

from agents.lines import Joiner, Records, Source, split_chunk
from opsq.core.metrics import logs_agent as metrics

Format = Literal["raw", "cri", "docker"]

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

TIME_MIN, TIME_MAX = 20, 35
"""Length of an RFC 3339 nano time: ``2006-01-02T15:04:05Z`` .. ``...05.999999999+07:00``."""

_HEADS = (b" stdout F ", b" stderr F ")
_FIND_SPACE = operator.methodcaller("find", b" ")
_TIME = (
    rb"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)"
    rb"(?:\.(\d{1,9}))?(Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)
"""RFC 3339 with up to 9 fraction digits (Go's RFC3339Nano), fields within their ranges."""
_CRI = re.compile(rb"(" + _TIME + rb") (stdout|stderr) ([PF])(?: |$)")
_TIME_RE = re.compile(_TIME)
_SECONDS: dict[bytes, int] = {}
"""Epoch seconds per ``YYYY-MM-DDThh:mm:ss`` text: consecutive lines share seconds."""
_SECONDS_MAX = 4096
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
    """Records that began in a rotated predecessor, to ship under its identity."""

    origin: Origin
    records: Records


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
    return Parsed(match[1], match[10], match[11] == b"P", line[match.end() :])


def runtime_ns(stamp: bytes) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time (Go's RFC3339Nano), or None when
    *stamp* is not one or names no instant (February 30th, year 0)."""
    match = _TIME_RE.fullmatch(stamp)
    if match is None:
        return None
    base = stamp[:19]
    seconds = _SECONDS.get(base)
    if seconds is None:
        try:
            seconds = calendar.timegm(time.strptime(base.decode(), "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        _SECONDS[base] = seconds
    frac, zone = match[7], match[8]
    if zone != b"Z":
        sign = -1 if zone[:1] == b"+" else 1
        seconds += sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((frac or b"0").ljust(9, b"0"))


def parse_docker(line: bytes) -> Parsed | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    log, stream, when = doc.get("log", ""), doc.get("stream", "stdout"), doc.get("time")
    if not (isinstance(log, str) and isinstance(stream, str) and isinstance(when, str)):
        return None
    stamp = when.encode("utf-8", "surrogatepass")
    if _TIME_RE.fullmatch(stamp) is None:
        return None
    partial = not log.endswith("\n")
    message = (log if partial else log[:-1]).encode("utf-8", "surrogatepass")
    return Parsed(stamp, stream.encode() or b"stdout", partial, message)


def split_framed(record: bytes) -> tuple[bytes, bytes, bytes]:
    """``(time, stream, message)`` of a framed record (the shipper's side)."""
    parts = record.split(b" ", 3)
    if len(parts) < 4:
        return UNKNOWN, UNKNOWN, record
    return parts[0], parts[1], parts[3]


def record_time(record: bytes) -> bytes:
    return record[: record.find(b" ")]


class Decoder:
    """Physical lines of one file -> logical records: a line-pipeline stage.

    It follows :class:`agents.lines.Stage`: ``feed`` returns this file's records in
    the order of their first byte; ``held_from`` is where the checkpoint must stop
    while a partial line is open (or complete records wait behind one); ``flush``
    ships open lines as they are; ``reset`` forgets this file's open lines (the tailer
    re-reads them). Records that began in a predecessor file come out separately
    (:meth:`take_carried`), to be shipped under that file's identity.
    """

    def __init__(self, fmt: Format, max_line: int) -> None:
        if fmt == "raw":
            raise ValueError("raw files need no decoder")
        self.fmt = fmt
        self.max_line = max_line
        self.parse = parse_cri if fmt == "cri" else parse_docker
        self.pending: dict[bytes, _Line] = {}
        self.held: list[_Line] = []
        self.carried: list[Carried] = []
        self._truncated = 0
        self._ranks = 0

    @property
    def physical_max(self) -> int:
        """Longest physical line kept whole before decoding (longer ones are cut)."""
        if self.fmt == "docker":
            return self.max_line * DOCKER_ESCAPE + 256
        return self.max_line + PREFIX_MAX

    @property
    def busy(self) -> bool:
        """True while a partial line is open or complete records wait behind one."""
        return bool(self.pending or self.held)

    @property
    def adopted(self) -> bool:
        """True while lines handed over by a predecessor are not finished."""
        return any(p.origin is not None for p in (*self.pending.values(), *self.held))

    def snapshot(self) -> tuple[dict[bytes, _Line], list[_Line], list[Carried]]:
        """The open and held lines (copies), to go back to if a read is refused."""
        return (
            {s: _copy(p) for s, p in self.pending.items()},
            [_copy(h) for h in self.held],
            list(self.carried),
        )

    def restore(self, snap: tuple[dict[bytes, _Line], list[_Line], list[Carried]]) -> None:
        self.pending, self.held, self.carried = snap

    @property
    def held_from(self) -> int | None:
        starts = [p.start for p in self.pending.values()] + [h.start for h in self.held]
        return min(starts) if starts else None

    # --- decoding ---------------------------------------------------------------------
    def feed(self, records: Records) -> Records:
        """Decode physical lines; runs of plain ``F`` lines pass through untouched."""
        lines, offs = records.lines, records.offs
        full = self._full_lines(lines)
        if full is True and not self.busy:
            return records  # the hot path: the lines are the records
        out = Records([], [])
        self._truncated = 0
        i, n = 0, len(lines)
        while i < n:
            if full is not None and not self.busy:
                j = n if full is True else _next_false(full, i)
                out.lines += lines[i:j]
                out.offs += offs[i:j]
                if j >= n:
                    break
                i = j
            self._line(offs[i], lines[i], out)
            i += 1
        self._release(out)
        out.truncated = self._truncated
        return out

    def _full_lines(self, lines: list[bytes]) -> list[bool] | Literal[True] | None:
        """True when every line is a plain ``F`` line of stdout or stderr whose message
        fits max_line, else a flag per line; None for formats without a fast path.

        Two C-level passes (find the first space, compare the 10 bytes after it) and the
        length of the first word (a time is 20 to 35 bytes): a line with no time, or a
        word there, takes the careful path and is counted. The time's digits are not
        checked here (a regex per line would cost more than all the rest); the sinks
        that read the time (Loki, Elasticsearch) fall back to the entry's time when it
        names no instant.
        """
        if self.fmt != "cri":
            return None
        spaces = list(map(_FIND_SPACE, lines))
        flags = list(map(bytes.startswith, lines, repeat(_HEADS), spaces))
        if spaces and (min(spaces) < TIME_MIN or max(spaces) > TIME_MAX):
            flags = [f and TIME_MIN <= n <= TIME_MAX for f, n in zip(flags, spaces, strict=True)]
        limit = self.max_line + MIN_PREFIX
        if lines and max(map(len, lines)) > limit:
            flags = [f and len(line) <= limit for f, line in zip(flags, lines, strict=True)]
        return True if all(flags) else flags

    def _line(self, off: int, line: bytes, out: Records) -> None:
        counted = len(line) >= self.physical_max  # already cut (and counted) by splitting
        parsed = self.parse(line)
        if parsed is None:
            metrics.DECODE_ERRORS.labels(format=self.fmt).inc()
            raw = _Line(_OWN, off, off, UNKNOWN, UNKNOWN, [], cut=counted)
            self._append(raw, line)
            self.held.append(raw)
        else:
            part = self.pending.get(parsed.stream)
            if part is None:
                part = _Line(_OWN, off, off, parsed.ts, parsed.stream, [], cut=counted)
            self._append(part, parsed.message)
            if parsed.partial:
                self.pending[parsed.stream] = part
            else:
                self.pending.pop(parsed.stream, None)
                self.held.append(part)
        if not self.pending:
            self._release(out)

    def _append(self, part: _Line, message: bytes) -> None:
        room = self.max_line - part.size
        if len(message) > room:
            if not part.cut:
                self._truncated += 1
            part.cut = True
            message = message[: max(room, 0)]
        if message:
            part.parts.append(message)
            part.size += len(message)

    def _release(self, out: Records) -> None:
        """Move complete records that no open line precedes to *out* (or carried)."""
        if not self.held:
            return
        barrier = min((p.key for p in self.pending.values()), default=None)
        if len(self.held) > 1:
            self.held.sort(key=operator.attrgetter("rank", "off"))
        cut = len(self.held)
        if barrier is not None:
            cut = next((i for i, h in enumerate(self.held) if h.key > barrier), cut)
        ready, self.held = self.held[:cut], self.held[cut:]
        for line in ready:
            if line.origin is None:
                out.lines.append(line.framed())
                out.offs.append(line.off)
            elif self.carried and self.carried[-1].origin is line.origin:
                self.carried[-1].records.lines.append(line.framed())
                self.carried[-1].records.offs.append(line.off)
            else:
                self.carried.append(Carried(line.origin, Records([line.framed()], [line.off])))

    def take_carried(self) -> list[Carried]:
        """Records completed here that began in a predecessor (ship those first)."""
        carried, self.carried = self.carried, []
        return carried

    # --- timeouts, hand-over, rewind ------------------------------------------------
    def flush(self) -> Records:
        """Give up waiting: open partial lines leave as they are (the writer stopped)."""
        out = Records([], [])
        self._truncated = 0
        if self.pending:
            metrics.PARTIALS_FLUSHED.inc(len(self.pending))
        self.held.extend(self.pending.values())
        self.pending.clear()
        self._release(out)
        out.truncated = self._truncated
        return out

    def reset(self) -> None:
        """Forget this file's open and held lines: the tailer reads them again.

        Adopted lines (from a predecessor) are kept: their first bytes are not here.
        """
        self.pending = {s: p for s, p in self.pending.items() if p.origin is not None}
        self.held = [h for h in self.held if h.origin is not None]

    def hand_over(self, source: Source, end: int) -> tuple[list[_Line], list[_Line]]:
        """A rotated file's open lines and those held behind them, for adopt().

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


def _copy(line: _Line) -> _Line:
    return _Line(line.rank, line.off, line.start, line.ts, line.stream, list(line.parts),
                 line.size, line.cut, line.origin)  # fmt: skip


def recover_runs(fd: int, offset: int, fmt: Format, max_line: int) -> Runs:
    """The repeat count of the last runtime time before *offset* (a resumed file).

    Re-reads up to :data:`RUN_WINDOW` bytes before the checkpoint and decodes the whole
    lines there, so the first entry after a restart carries the ``tsk`` the entries of
    the previous run would have: Loki timestamps stay the same across restarts.
    """
    runs = Runs()
    if offset <= 0:
        return runs
    start = max(0, offset - RUN_WINDOW)
    window = os.pread(fd, offset - start, start)
    if start > 0:
        window = window[window.find(b"\n") + 1 :]  # drop the line the window cut
        start = offset - len(window)
    decoder = Decoder(fmt, max_line)
    records = decoder.feed(split_chunk(window, start, decoder.physical_max))
    runs.consume([*records.lines, *decoder.flush().lines])
    return runs


def _next_false(flags: list[bool], start: int) -> int:
    try:
        return flags.index(False, start)
    except ValueError:
        return len(flags)


class FramedJoiner(Joiner):
    """Multiline joining of runtime-framed records (a Java stack trace inside CRI).

    ``start_pattern`` is matched against the message, not the runtime's prefix; the
    joined record keeps the first line's time and stream; a line of the other stream
    ends the record (stdout and stderr interleave in one file, and a trace is written
    to one of them).
    """

    @staticmethod
    def split(line: bytes) -> tuple[bytes, bytes]:
        _ts, stream, message = split_framed(line)
        return message, stream


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

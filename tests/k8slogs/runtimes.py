"""Container log files written byte for byte the way containerd, Docker and the kubelet do.

Each writer is a line-by-line port of the upstream code that writes the files (cited
per class, from containerd 301026e5 and moby b985e231), so the agent is tested against
what real nodes hold, not against what we think they hold:

- :class:`CriWriter`: containerd ``internal/cri/io/logger.go`` ``redirectLogs`` +
  ``readLine``: ``bufio.Reader`` of ``min(4096, maxLen)``, ``\\r\\n`` stripped, a line
  longer than ``maxLen`` (``max_container_log_line_size``, 16 KiB) written as ``P``
  parts of exactly ``maxLen`` bytes then an ``F`` part, output ending without a newline
  written as a lone ``P``; time ``time.Now().AppendFormat(RFC3339Nano)`` (local zone,
  trailing zeros trimmed). The file is opened ``O_APPEND`` with mode 0640
  (``internal/cri/server/helpers_linux.go`` ``openLogFile``).
- :class:`DockerWriter`: moby ``daemon/logger/copier.go`` (16 KiB buffer; a full buffer
  without a newline becomes a partial message, all parts carrying the first part's time)
  and ``jsonfilelog.marshalMessage`` + ``jsonlog.JSONLogs.MarshalJSONBuf`` (``\\n``
  appended only to complete lines; ``<``, ``>``, ``&`` as ``\\u003c``..; invalid UTF-8
  as ``\\ufffd``; time in UTC).
- :func:`kubelet_rotate` / :func:`kubelet_compress`: ``pkg/kubelet/logs/
  container_log_manager.go`` ``rotateLatestLog`` (rename to ``<log>.<20060102-150405>``,
  then ``ReopenContainerLog``) and ``compressLog`` (gzip to ``<rotated>.tmp``, rename to
  ``.gz``, remove the uncompressed file).
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import threading
from collections.abc import Callable
from pathlib import Path

MAX_LEN = 16 * 1024
"""containerd's default ``max_container_log_line_size`` and Docker's copier buffer."""
CRI_READ_BUF = 4096
"""containerd's ``defaultBufSize`` for the ``bufio.Reader`` over the container's pipe."""


class Clock:
    """A deterministic wall clock with nanoseconds, advancing a step per reading."""

    def __init__(self, start_ns: int, step_ns: int = 1_000, tz: dt.tzinfo = dt.UTC) -> None:
        self.now_ns = start_ns
        self.step_ns = step_ns
        self.tz = tz
        self._lock = threading.Lock()

    def read(self) -> int:
        with self._lock:
            self.now_ns += self.step_ns
            return self.now_ns

    def stamp(self, ns: int) -> bytes:
        return go_rfc3339nano(ns, self.tz)


def go_rfc3339nano(ns: int, tz: dt.tzinfo = dt.UTC) -> bytes:
    seconds, frac = divmod(ns, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds, tz)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    if digits:
        text += "." + digits
    offset = moment.utcoffset() or dt.timedelta(0)
    if offset == dt.timedelta(0):
        text += "Z"
    else:
        sign = "+" if offset > dt.timedelta(0) else "-"
        minutes = abs(int(offset.total_seconds())) // 60
        text += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return text.encode()


class CriWriter:
    """containerd's CRI logger for one container log path (both streams share the file)."""

    def __init__(self, path: Path, clock: Clock, max_len: int = MAX_LEN) -> None:
        self.path = path
        self.clock = clock
        self.max_len = max_len
        self.lock = threading.Lock()
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """``ReopenContainerLog``: a new file at the path (after the kubelet renamed it)."""
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o640)

    def close(self) -> None:
        with self.lock:
            os.close(self.fd)
            self.fd = -1

    def physical_lines(self, stream: str, output: bytes) -> list[tuple[bytes, bytes]]:
        """``redirectLogs`` over *output* then EOF: the (tag, content) pairs it writes."""
        out: list[tuple[bytes, bytes]] = []
        buf: list[bytes] = []
        length = 0
        bufsize = min(CRI_READ_BUF, self.max_len) if self.max_len > 0 else CRI_READ_BUF
        pos = 0
        while True:
            line, is_prefix, pos, eof = _read_line(output, pos, bufsize)
            stop = False
            if line:
                buf.append(line)
                length += len(line)
            if eof:
                if length == 0:
                    break
                stop = True
            if 0 < self.max_len < length:
                exceed = length - self.max_len
                last = buf[-1]
                buf[-1] = last[: len(last) - exceed]
                out.append((b"P", b"".join(buf)))
                buf, length = [last[len(last) - exceed :]], exceed
            if is_prefix:
                continue
            out.append((b"P" if stop else b"F", b"".join(buf)))
            buf, length = [], 0
            if stop:
                break
        return out

    def write_physical(self, stream: str, tag: bytes, content: bytes) -> bytes:
        """``writeLineBuffer``: one physical line, written with one write(2)."""
        stamp = self.clock.stamp(self.clock.read())
        line = b"%s %s %s %s\n" % (stamp, stream.encode(), tag, content)
        with self.lock:
            os.write(self.fd, line)
        return stamp

    def write(self, stream: str, output: bytes) -> list[bytes]:
        """Everything the container wrote to *stream*; returns the physical lines' times."""
        return [
            self.write_physical(stream, tag, c) for tag, c in self.physical_lines(stream, output)
        ]


def _read_line(data: bytes, pos: int, bufsize: int) -> tuple[bytes, bool, int, bool]:
    """containerd's ``readLine`` over ``bufio.Reader.ReadSlice('\\n')``.

    Returns (line without its newline, isPrefix, new position, hit EOF without newline).
    """
    window = data[pos : pos + bufsize]
    nl = window.find(b"\n")
    if nl < 0 and len(window) == bufsize:  # ErrBufferFull
        line = window
        if line.endswith(b"\r"):  # "\r\n" straddling the buffer: unread the '\r'
            line = line[:-1]
        return line, True, pos + len(line), False
    if nl < 0:  # EOF: whatever is left, without a newline
        return window, False, pos + len(window), True
    line = window[:nl]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line, False, pos + nl + 1, False


class DockerWriter:
    """Docker's copier + json-file logger for one container (``<id>-json.log``)."""

    def __init__(self, path: Path, clock: Clock, bufsize: int = MAX_LEN) -> None:
        self.path = path
        self.clock = clock
        self.bufsize = bufsize
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o640)

    def messages(self, output: bytes) -> list[tuple[bytes, bool]]:
        """The copier over *output* then EOF: (line, ends a line) per message."""
        out: list[tuple[bytes, bool]] = []
        rest = output
        pending = b""
        while True:
            buf = pending + rest[: self.bufsize - len(pending)]
            rest = rest[self.bufsize - len(pending) :]
            eof = not rest
            p = 0
            while (q := buf.find(b"\n", p)) >= 0:
                out.append((buf[p:q], True))
                p = q + 1
            if eof or (p == 0 and len(buf) == self.bufsize):
                if p < len(buf):
                    out.append((buf[p:], False))
                pending = b""
                if eof:
                    return out
                continue
            pending = buf[p:]

    def write(self, stream: str, output: bytes) -> list[bytes]:
        """Everything the container wrote to *stream*; returns each message's time.

        A complete line gets a fresh time; the parts of a split line all carry the
        time of the first part (``partialTS``), its last part included.
        """
        stamps: list[bytes] = []
        partial_ts: bytes | None = None
        for line, complete in self.messages(output):
            stamp = partial_ts or self.clock.stamp(self.clock.read())
            partial_ts = None if complete else stamp
            log = line + b"\n" if complete else line
            doc = b'{"log":%s,"stream":%s,"time":"%s"}\n' % (
                json_bytes(log),
                json_bytes(stream.encode()),
                stamp,
            )
            os.write(self.fd, doc)
            stamps.append(stamp)
        return stamps

    def close(self) -> None:
        os.close(self.fd)


def json_bytes(data: bytes) -> bytes:
    """moby's ``ffjsonWriteJSONBytesAsString``."""
    out = bytearray(b'"')
    text = data.decode("utf-8", "surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an invalid byte (surrogateescape)
            out += b"\\ufffd"
        elif ch in '\\"':
            out += b"\\" + ch.encode()
        elif ch == "\n":
            out += b"\\n"
        elif ch == "\r":
            out += b"\\r"
        elif code < 0x20 or ch in "<>&":
            out += b"\\u00%02x" % code
        elif ch in "\u2028\u2029":
            out += b"\\u202%x" % (code & 0xF)
        else:
            out += ch.encode()
    out += b'"'
    return bytes(out)


def kubelet_rotate(log: Path, stamp: str, reopen: Callable[[], None]) -> Path:
    """``rotateLatestLog``: rename to ``<log>.<stamp>``, then the runtime reopens."""
    rotated = log.with_name(f"{log.name}.{stamp}")
    os.rename(log, rotated)
    reopen()
    return rotated


def kubelet_compress(rotated: Path) -> Path:
    """``compressLog``: gzip into ``<rotated>.tmp``, rename to ``.gz``, remove the original."""
    tmp = rotated.with_name(rotated.name + ".tmp")
    with open(rotated, "rb") as src, gzip.open(tmp, "wb") as dst:
        dst.write(src.read())
    final = rotated.with_name(rotated.name + ".gz")
    os.rename(tmp, final)
    os.remove(rotated)
    return final

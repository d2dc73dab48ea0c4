"""Reading one file: line-aligned offsets, long lines, rotation and truncation checks.

A :class:`Tailer` owns one open file descriptor and reads it with ``pread`` from the
start of the first line it has not handed out yet. A partial last line is simply read
again next time (nothing is buffered), so memory stays bounded by one read. A line
longer than ``max_line_bytes`` keeps its first ``max_line_bytes`` and the rest is
skipped by scanning forward for the newline, never held in memory.

The tailer keeps its descriptor when the path is renamed or deleted: the agent keeps
draining it for at most ``rotated_grace`` (tracked here as ``rotated_at``), so lines
written just before a rotation are not lost, and then releases it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from agents.checkpoint import CheckpointStore
from agents.identity import FileIdentity, identify, matches
from agents.lines import Batch, Joiner, Records, Source, is_clean, pack, split_chunk
from opsq.core.config.logs import AgentSettings
from opsq.core.metrics import logs_agent as metrics

READ_SIZE = 1024 * 1024
"""1 MiB reads: big enough that per-read overhead vanishes, small enough for the RSS budget."""

Emit = Callable[[Batch], bool]
"""Hand a batch to the sender; False means the agent is stopping and it was not taken."""


class Tailer:
    def __init__(
        self,
        path: str,
        fd: int,
        st: os.stat_result,
        *,
        identity: FileIdentity | None,
        offset: int,
        cfg: AgentSettings,
        host: bytes,
        store: CheckpointStore,
    ) -> None:
        self.path = path
        self.fd = fd
        self.key = (st.st_dev, st.st_ino)
        self.identity = identity
        self.offset = offset
        """Start of the first line not yet handed to the sender (the read position)."""
        self.cfg = cfg
        self.host = host
        self.store = store
        self.read_size = max(READ_SIZE, cfg.max_line_bytes + 1)
        self.skip: tuple[int, bytes] | None = None
        """(offset, kept head) of an oversized line whose tail is being skipped."""
        self.rotated_at: float | None = None
        self.rotation = ""
        self.last_data = time.monotonic()
        ml = cfg.multiline
        self.joiner = (
            Joiner(ml.start_pattern, ml.max_lines, cfg.max_line_bytes) if ml is not None else None
        )

    # --- reading ----------------------------------------------------------------------
    def read(self, emit: Emit, budget: int) -> int:
        """Hand out up to about *budget* bytes of whole lines; return bytes consumed."""
        done = 0
        while done < budget:
            buf = os.pread(self.fd, self.read_size, self.offset)
            if not buf:
                break
            self.last_data = time.monotonic()
            if self.identity is None:
                self._identify()
            skip = self.skip
            n = self._lines(buf, emit) if skip is None else self._skip_tail(buf, skip, emit)
            if n <= 0:
                break
            done += n
        return done

    def _identify(self) -> None:
        self.identity = identify(self.fd, os.fstat(self.fd))
        if self.identity is not None:
            self.store.register(self.identity, self.offset, self.path)

    def _lines(self, buf: bytes, emit: Emit) -> int:
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) <= self.cfg.max_line_bytes:
                return 0  # a partial line: wait for its newline
            self.skip = (self.offset, buf[: self.cfg.max_line_bytes])
            metrics.LINES_TRUNCATED.inc()
            return self._advance_skipped(len(buf))
        records = split_chunk(buf, self.offset, self.cfg.max_line_bytes)
        del buf  # the records hold their own copies; free the read buffer before packing
        start, end = self.offset, self.offset + last + 1
        if not self._ship(records, end, emit):
            return -1
        self.offset = end
        metrics.BYTES_READ.inc(end - start)
        return end - start

    def _skip_tail(self, buf: bytes, skip: tuple[int, bytes], emit: Emit) -> int:
        nl = buf.find(b"\n")
        if nl < 0:
            return self._advance_skipped(len(buf))
        off, head = skip
        end = self.offset + nl + 1
        if not self._emit_records(self._one(off, head), end, emit):
            return -1
        self.skip = None
        self.offset = end
        metrics.BYTES_READ.inc(nl + 1)
        return nl + 1

    def _advance_skipped(self, n: int) -> int:
        self.offset += n
        metrics.BYTES_READ.inc(n)
        return n

    @staticmethod
    def _one(off: int, data: bytes) -> Records:
        rec = Records([data], [off])
        if not is_clean(data):
            rec.invalid = 1
        return rec

    def _ship(self, records: Records, end: int, emit: Emit) -> bool:
        if records.truncated:
            metrics.LINES_TRUNCATED.inc(records.truncated)
        if records.invalid:
            metrics.INVALID_ENCODING.inc(records.invalid)
        if self.joiner is not None:
            records = self.joiner.feed(records)
            end = self.joiner.emitted_end
            metrics.LINES_TRUNCATED.inc(records.truncated)
        return self._emit_records(records, end, emit)

    def _emit_records(self, records: Records, end: int, emit: Emit) -> bool:
        """Hand out *records* as batches; on refusal rewind to the last accepted one.

        A refusal (queue full in ``block`` mode, or stopping) must not lose anything:
        the read position goes back to the end of the last accepted batch (a record
        boundary) and everything after it is read again later. Multiline state is
        rebuilt from there too.
        """
        if not records.lines or self.identity is None:
            return True
        src = Source(self.host, self.path.encode("utf-8", "surrogateescape"), self.identity.fid)
        accepted = records.offs[0]
        for batch in pack(src, records, end, self.cfg.batch_lines, self.cfg.batch_bytes):
            if not emit(batch):
                self._rewind(accepted)
                return False
            metrics.LINES_READ.inc(batch.lines)
            accepted = batch.end
        return True

    def _rewind(self, offset: int) -> None:
        self.offset = offset
        self.skip = None
        if self.joiner is not None:
            self.joiner.reset()

    # --- timeouts and end of life -----------------------------------------------------
    def tick(self, now: float, emit: Emit) -> None:
        """Ship a pending multiline record once no line arrived for the timeout."""
        ml = self.cfg.multiline
        if self.joiner is None or ml is None or not self.joiner.pending:
            return
        if now - self.last_data >= ml.timeout:
            records = self.joiner.flush()
            self._emit_records(records, self.joiner.emitted_end, emit)

    def flush_partial(self, emit: Emit) -> bool:
        """Ship what is left (a last line without newline) before the file is released.

        False when the queue refused it (try again later, the file is not done).
        """
        joiner = self.joiner
        if joiner is not None and joiner.pending:
            ok = self._emit_records(joiner.flush(), joiner.emitted_end, emit)
            if not ok:
                return False
        size = os.fstat(self.fd).st_size
        if self.skip is not None:
            off, head = self.skip
            if not self._emit_records(self._one(off, head), size, emit):
                return False
            self.skip, self.offset = None, size
            return True
        data = os.pread(self.fd, self.cfg.max_line_bytes + 1, self.offset)
        if not data or b"\n" in data:
            return True
        if self.identity is None:
            self._identify()
        if not self._emit_records(self._one(self.offset, data), self.offset + len(data), emit):
            return False
        self.offset += len(data)
        return True

    def remaining(self) -> int:
        return max(0, os.fstat(self.fd).st_size - self.offset)

    # --- checks ------------------------------------------------------------------------
    def path_moved(self) -> str | None:
        """``rename`` or ``delete`` when the path no longer leads to this file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return None
        if st is not None and (st.st_dev, st.st_ino) == self.key:
            return None
        return "delete" if os.fstat(self.fd).st_nlink == 0 else "rename"

    def truncated(self, *, verify_prefix: bool) -> bool:
        """Whether the file was truncated (copytruncate) or rewritten from the start."""
        if os.fstat(self.fd).st_size < self.offset:
            return True
        return verify_prefix and self.identity is not None and not matches(self.fd, self.identity)

    def restart_from_zero(self) -> None:
        """After copytruncate: a new identity (so record ids never collide) from offset 0."""
        if self.identity is not None:
            self.store.forget(self.identity.fid)
        self.identity = None
        self.offset = 0
        self.skip = None
        if self.joiner is not None:
            self.joiner.reset()

    def lag(self) -> int:
        size = os.fstat(self.fd).st_size
        if self.identity is None:
            return size
        cp = self.store.get(self.identity.fid)
        return max(0, size - (cp.offset if cp is not None else 0))

    def close(self) -> None:
        os.close(self.fd)

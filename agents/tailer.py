"""Reading one file: line-aligned offsets, long lines, rotation and truncation checks.

A :class:`Tailer` owns one open file descriptor and reads it with ``pread`` from the
start of the first line it has not handed out yet. A partial last line is simply read
again next time (nothing is buffered), so memory stays bounded by one read. A line
longer than ``max_line_bytes`` keeps its first ``max_line_bytes`` and the rest is
skipped by scanning forward for the newline, never held in memory.

The line pipeline has fixed stages: read (``pread``) -> split and cut oversized lines
(:func:`agents.lines.split_chunk`) -> the configured :class:`agents.lines.Stage` list
(decoders, multiline joining) -> pack into stream entries. A stage that holds records
back keeps the checkpoint before them (``held_from``).

Runtime log formats (``cri``, ``docker``, or ``auto`` from the first line) put a
:class:`agents.formats.Decoder` first among the stages; its records are framed
``<time> <stream> F <message>`` and its entries carry ``fmt``, the file's pod ``meta``
and ``tsk`` (the repeat count of the first record's time, for Loki). A line it joins
across a rotation comes out of the new file's decoder as *carried* records, shipped
first under the old file's identity; if the queue refuses them, the decoder goes back
to its state before the read and the read is retried later.

The tailer keeps its descriptor when the path is renamed or deleted: the agent keeps
draining it (see :mod:`agents.agent` for how long), so lines written just before a
rotation are not lost. After ``copytruncate`` it hands its identity, offset and stage
state to a tailer of the copy (:meth:`continue_in`) and starts over at 0 itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from agents.checkpoint import CheckpointStore
from agents.copytruncate import Copy
from agents.formats import (
    FRAMED,
    Carried,
    Decoder,
    Format,
    FramedJoiner,
    Runs,
    detect,
    recover_runs,
)
from agents.identity import FileIdentity, identify, matches
from agents.lines import Batch, Joiner, Records, Source, Stage, is_clean, pack, split_chunk
from opsq.core.config.logs import AgentSettings
from opsq.core.metrics import logs_agent as metrics

READ_SIZE = 1024 * 1024
"""1 MiB reads: big enough that per-read overhead vanishes, small enough for the RSS budget."""
DETECT_BYTES = 64 * 1024
"""``format: auto`` decides on the first line; one longer than this is a raw file."""

Emit = Callable[[Batch], bool]
"""Hand a batch to the sender; False means the agent is stopping and it was not taken."""


def make_stages(cfg: AgentSettings) -> list[Stage]:
    """The stages between splitting and packing, in order, for these settings."""
    ml = cfg.multiline
    if ml is None:
        return []
    return [Joiner(ml.start_pattern, ml.max_lines, cfg.max_line_bytes)]


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
        kind: str = "file",
        source: str | None = None,
        via_link: bool = False,
        fmt: str = "raw",
        meta: Callable[[], bytes] | None = None,
    ) -> None:
        self.path = path
        """Where the file is found now (rotation checks, metrics label)."""
        self.source = source or path
        """The path the records carry: for a copy, the original file's path."""
        self.kind = kind
        """``file``, or ``copy``: a copytruncate copy read to its end, then released."""
        self.via_link = via_link
        """Found through a (followed, checked) symlink: rotation checks follow it too."""
        self.fd = fd
        self.key = (st.st_dev, st.st_ino)
        self.identity = identity
        self.head = b"" if identity is None else os.pread(fd, identity.fp_len, 0)
        """The bytes the identity was made from (to recognise copies in the making)."""
        self.offset = offset
        """Start of the first line not yet handed to the sender (the read position)."""
        self.last_size = st.st_size
        """File size at the last check (a lower bound of what a truncation destroyed)."""
        self.cfg = cfg
        self.host = host
        self.store = store
        self.fmt = fmt
        """raw, cri, docker, or auto until the first line decided it."""
        self.meta = meta
        """The ``meta`` bytes of this file's entries (pod identity), if it has any."""
        self.decoder: Decoder | None = None
        self.runs: Runs | None = None
        """Repeat count of the last runtime time (None: to be learnt before the first read)."""
        self.skip: tuple[int, bytes] | None = None
        """(offset, kept head) of an oversized line whose tail is being skipped."""
        self.rotated_at: float | None = None
        self.rotation = ""
        self.last_data = time.monotonic()
        self.consumed = False
        """Bytes were decoded here: an older file's open lines can no longer continue here."""
        self.rewritten = False
        """read() found start_changed() and stopped: the agent treats it as copytruncate."""
        self.handover_refused = False
        """This file's open lines could not continue in its successor (said once)."""
        self.stages = self._make_stages()

    def _make_stages(self) -> list[Stage]:
        self.decoder = None
        if self.fmt in ("cri", "docker"):
            fmt: Format = "cri" if self.fmt == "cri" else "docker"
            self.decoder = Decoder(fmt, self.cfg.max_line_bytes)
            ml = self.cfg.multiline
            if ml is None:
                return [self.decoder]
            joiner = FramedJoiner(ml.start_pattern, ml.max_lines, self.cfg.max_line_bytes)
            return [self.decoder, joiner]
        return make_stages(self.cfg)

    @property
    def max_line(self) -> int:
        """Longest physical line kept whole (a runtime's prefix or JSON comes on top)."""
        return self.decoder.physical_max if self.decoder else self.cfg.max_line_bytes

    @property
    def read_size(self) -> int:
        return max(READ_SIZE, self.max_line + 1)

    # --- reading ----------------------------------------------------------------------
    def read(self, emit: Emit, budget: int) -> int:
        """Hand out up to about *budget* bytes of whole lines; return bytes consumed."""
        if not self.decide_format():
            return 0
        if self.decoder is not None and self.runs is None:
            self.runs = recover_runs(
                self.fd, self.offset, self.decoder.fmt, self.cfg.max_line_bytes
            )
        done = 0
        while done < budget:
            buf = os.pread(self.fd, self.read_size, self.offset)
            if not buf:
                break
            if done == 0 and self.start_changed():
                self.rewritten = True
                break
            self.last_data = time.monotonic()
            if self.identity is None:
                self._identify()
            skip = self.skip
            n = self._lines(buf, emit) if skip is None else self._skip_tail(buf, skip, emit)
            if n <= 0:
                break
            self.consumed = True
            done += n
        return done

    def start_changed(self) -> bool:
        """New bytes after a start that is no longer this file's: copytruncate, then the
        writer wrote past our offset before a size check saw the file shrink (a slow or
        loaded agent). Checked before reading them, so they never go out under the old
        file's record ids (they would again under the copy's, read in full)."""
        return (
            self.kind == "file"
            and self.identity is not None
            and not matches(self.fd, self.identity)
        )

    def decide_format(self) -> bool:
        """``format: auto``: decide from the first line (False: it is not complete yet)."""
        if self.fmt != "auto":
            return True
        head = os.pread(self.fd, DETECT_BYTES, 0)
        nl = head.find(b"\n")
        if nl < 0 and len(head) < DETECT_BYTES:
            return False
        self.fmt = detect(head[:nl]) if nl >= 0 else "raw"
        self.stages = self._make_stages()
        return True

    def _identify(self) -> None:
        self.identity = identify(self.fd, os.fstat(self.fd))
        if self.identity is not None:
            self.head = os.pread(self.fd, self.identity.fp_len, 0)
            self.store.register(self.identity, self.offset, self.path)

    def _lines(self, buf: bytes, emit: Emit) -> int:
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) <= self.max_line:
                return 0  # a partial line: wait for its newline
            self.skip = (self.offset, buf[: self.max_line])
            metrics.LINES_TRUNCATED.inc()
            return self._advance_skipped(len(buf))
        records = split_chunk(buf, self.offset, self.max_line)
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
        self.skip = None  # the record below covers the whole line (a refusal rewinds)
        if not self._ship(self._one(off, head), end, emit, counted=True):
            return -1
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

    def _ship(self, records: Records, end: int, emit: Emit, *, counted: bool = False) -> bool:
        """Run *records* (cut from bytes up to *end*) through the stages and emit them."""
        if not counted:
            metrics.LINES_TRUNCATED.inc(records.truncated)
            metrics.INVALID_ENCODING.inc(records.invalid)
        decoder = self.decoder
        before = decoder.snapshot() if decoder is not None and decoder.adopted else None
        for stage in self.stages:
            records = stage.feed(records)
            metrics.LINES_TRUNCATED.inc(records.truncated)
        carried = decoder.take_carried() if decoder is not None else []
        if carried and not self._emit_carried(carried, records, end, emit):
            if decoder is not None and before is not None:
                decoder.restore(before)  # the read is retried from the same state
            return False
        return self._emit_records(records, self._covered(end), emit)

    def _emit_carried(self, carried: list[Carried], records: Records, end: int, emit: Emit) -> bool:
        """Ship lines that began in a rotated predecessor, under its identity, first.

        The last entry also moves this file's checkpoint to where its own records
        begin: the bytes before that only finished the predecessor's lines.
        """
        if self.identity is None:
            self._identify()
        mine = self._covered(end)
        if records.lines:
            mine = min(mine, records.offs[0])
        also = ((self.identity.fid, mine),) if self.identity is not None else ()
        for n, group in enumerate(carried):
            src = group.origin.source
            batches = pack(src, group.records, group.origin.end, self.cfg.batch_lines,
                           self.cfg.batch_bytes)  # fmt: skip
            batches[-1].also = also
            for batch in batches:
                if not emit(batch):
                    if self.decoder is not None:  # shipped with the next read (ids dedupe)
                        self.decoder.carried[:0] = carried[n:]
                    return False
                metrics.LINES_READ.inc(batch.lines)
        return True

    def _covered(self, end: int) -> int:
        """*end*, or the first byte still held back (by a stage, or an oversized line
        being skipped) if that is earlier: the checkpoint must never pass it."""
        held = [h for h in (s.held_from for s in self.stages) if h is not None]
        if self.skip is not None:
            held.append(self.skip[0])
        return min([end, *held])

    def _emit_records(self, records: Records, end: int, emit: Emit) -> bool:
        """Hand out *records* as batches; on refusal rewind to the last accepted one.

        A refusal (queue full in ``block`` mode, or stopping) must not lose anything:
        the read position goes back to the end of the last accepted batch (a record
        boundary) and everything after it is read again later. Stage state (multiline)
        is rebuilt from there too.
        """
        src = self.entry_source()
        if not records.lines or src is None:
            return True
        accepted, first = records.offs[0], 0
        for batch in pack(src, records, end, self.cfg.batch_lines, self.cfg.batch_bytes):
            runs = self.runs
            if runs is not None and self.decoder is not None:
                k = runs.first_k(records.lines[first])
                if k:
                    batch.fields[b"tsk"] = str(k).encode()
            if not emit(batch):
                self._rewind(accepted)
                return False
            if runs is not None and self.decoder is not None:
                runs.consume(records.lines[first : first + batch.lines])
            metrics.LINES_READ.inc(batch.lines)
            accepted, first = batch.end, first + batch.lines
        return True

    def entry_source(self) -> Source | None:
        """What this file's stream entries say about it (None before it has an identity)."""
        if self.identity is None:
            return None
        return Source(
            self.host,
            self.source.encode("utf-8", "surrogateescape"),
            self.identity.fid,
            FRAMED.encode() if self.decoder is not None else b"",
            self.meta() if self.meta is not None else b"",
        )

    def _rewind(self, offset: int) -> None:
        self.offset = offset
        self.skip = None
        for stage in self.stages:
            stage.reset()

    # --- timeouts and end of life -----------------------------------------------------
    def tick(self, now: float, emit: Emit) -> None:
        """Ship what the stages hold once no line arrived for its timeout: the runtime's
        partial lines after ``partial_timeout``, multiline records after theirs."""
        idle = now - self.last_data
        ml = self.cfg.multiline
        if ml is not None and idle >= ml.timeout:
            self._flush_stages(emit)
        elif self.decoder is not None and self.decoder.busy and idle >= self.cfg.partial_timeout:
            self._flush_stages(emit, first_only=True)

    def _flush_stages(self, emit: Emit, *, first_only: bool = False) -> bool:
        """Flush every stage in order (each one's output goes through the next)."""
        for i, stage in enumerate(self.stages[:1] if first_only else self.stages):
            if stage.held_from is None:
                continue
            records = stage.flush()
            for later in self.stages[i + 1 :]:
                records = later.feed(records)
            carried = self.decoder.take_carried() if self.decoder is not None else []
            covered = self._covered(self.offset)
            if carried and not self._emit_carried(carried, records, covered, emit):
                return False
            if not self._emit_records(records, covered, emit):
                return False
        return True

    def flush_partial(self, emit: Emit) -> bool:
        """Ship what is left (a last line without newline) before the file is released.

        False when the queue refused it (try again later, the file is not done).
        """
        trailing = self.decoder is None or self._ship_trailing(emit)
        if not (trailing and self._flush_stages(emit)):
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

    def _ship_trailing(self, emit: Emit) -> bool:
        """A runtime file's last line without its newline goes through the decoder."""
        data = os.pread(self.fd, self.max_line + 1, self.offset)
        if not data or b"\n" in data or self.skip is not None:
            return True
        if self.identity is None:
            self._identify()
        end = self.offset + len(data)
        if not self._ship(self._one(self.offset, data), end, emit):
            return False
        self.offset = end
        return True

    def remaining(self) -> int:
        return max(0, os.fstat(self.fd).st_size - self.offset)

    def drained(self) -> bool:
        """Every whole line is read: what is left, if anything, is one partial line."""
        rest = self.remaining()
        if rest == 0:
            return True
        return rest <= self.max_line and b"\n" not in os.pread(self.fd, rest, self.offset)

    def acknowledged(self) -> bool:
        """Whether Redis acknowledged everything handed out so far."""
        if self.identity is None:
            return True
        cp = self.store.get(self.identity.fid)
        return cp is not None and cp.offset >= self.offset

    def resume_offset(self) -> int:
        """Where reading must start again to rebuild this tailer's state exactly."""
        return self._covered(self.offset)

    # --- checks ------------------------------------------------------------------------
    def path_moved(self) -> str | None:
        """``rename`` or ``delete`` when the path no longer leads to this file."""
        try:
            st = os.stat(self.path, follow_symlinks=self.via_link)
        except FileNotFoundError:
            st = None
        except OSError:
            return None
        if st is not None and (st.st_dev, st.st_ino) == self.key:
            return None
        return "delete" if os.fstat(self.fd).st_nlink == 0 else "rename"

    def truncated(self, *, verify_prefix: bool) -> bool:
        """Whether the file was truncated (copytruncate) or rewritten from the start."""
        size = os.fstat(self.fd).st_size
        if size < self.offset:
            return True
        self.last_size = size
        return verify_prefix and self.identity is not None and not matches(self.fd, self.identity)

    def continue_in(self, copy: Copy, identity: FileIdentity) -> Tailer:
        """A tailer reading *copy* on from here, under this file's identity and state.

        Its records keep this file's identity and offsets (ids go on where this file
        stopped) and its path; the checkpoint now points into the copy.
        """
        follow = Tailer(
            copy.path,
            copy.fd,
            copy.st,
            identity=identity,
            offset=self.offset,
            cfg=self.cfg,
            host=self.host,
            store=self.store,
            kind="copy",
            source=self.source,
            fmt=self.fmt,
            meta=self.meta,
        )
        follow.skip, follow.stages, follow.last_data = self.skip, self.stages, self.last_data
        follow.decoder, follow.runs = self.decoder, self.runs
        self.stages = self._make_stages()
        self.store.move(identity.fid, copy.st.st_ino, copy.path)
        return follow

    def restart_from_zero(self) -> None:
        """After copytruncate: a new identity (so record ids never collide) from offset 0.

        The old identity's checkpoint is not forgotten here: it moved into the copy,
        or the agent keeps it while it still looks for one.
        """
        self.identity = None
        self.rewritten = False
        self.head = b""
        self.offset = 0
        self.last_size = 0
        self.skip = None
        self.runs = None
        for stage in self.stages:
            stage.reset()

    def lag(self) -> int:
        size = os.fstat(self.fd).st_size
        if self.identity is None:
            return size
        cp = self.store.get(self.identity.fid)
        return max(0, size - (cp.offset if cp is not None else 0))

    def close(self) -> None:
        os.close(self.fd)

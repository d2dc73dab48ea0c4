"""The log agent engine: discover files, tail them, hand batches to the sender.

Threads, not asyncio, chosen by measurement of where the time goes: reading and
splitting is C-level bytes work and the Redis round trip releases the GIL, so one
reader thread and one sender thread overlap well, and a blocking ``queue.Queue`` of
``queue_entries`` batches between them is the bounded queue the design needs
(``block``: a full queue pauses the reader; ``drop``: the batch is dropped and counted).

Discovery is a glob of ``paths`` minus ``exclude`` at start, every
``rescan_interval``, and whenever inotify (:mod:`agents.watcher`) reports a created or
deleted file. Inotify only shortens latency: every ``POLL_INTERVAL_S`` the reader
checks sizes itself, so when inotify is unavailable, out of watches, or ``poll: true``,
nothing is missed, only a little later.

Rotation handling per open file (see :class:`agents.tailer.Tailer`):

- rename: the path now leads elsewhere; keep reading the old descriptor for
  ``rotated_grace`` (the writer may not have reopened yet), then ship a trailing
  partial line and release it; the new file at the path is a new file.
- copytruncate: size below the read offset (or a changed first-bytes fingerprint).
  The lines written after the last read and before the truncate live only in the
  copy logrotate just made: the agent finds it (:mod:`agents.copytruncate`), reads it
  from the old offset to its end under the old identity, and restarts the truncated
  file at 0 under a new identity. No copy found within ``COPY_SEARCH_S``: the bytes
  are counted lost (``opsq_agent_bytes_lost_total{reason="copy_not_found"}``) and logged.
- delete: a fully read deleted file is released at once; one with unread bytes is
  drained for at most ``rotated_grace``, and at most ``max_open_deleted`` are held,
  so a dead Redis cannot fill the disk with unlinked files; bytes released unread are
  counted lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agents.chains import Chains
from agents.checkpoint import Checkpoint, CheckpointStore
from agents.copytruncate import Copy, RotatedNames, find_copy, starts_like
from agents.discovery import Finder, Found
from agents.identity import FINGERPRINT_BYTES, FileIdentity, digest, identify, matches
from agents.lines import Batch
from agents.pods import PodFiles
from agents.resp import RespClient
from agents.sender import Sender
from agents.tailer import Tailer
from agents.watcher import Watcher
from opsq.core.config.logs import AgentSettings, LogsSettings
from opsq.core.errors import OpsqError
from opsq.core.metrics import logs_agent as metrics

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
"""Longest wait between size checks when inotify says nothing (or is unavailable)."""
WAITING_RESCAN_S = 0.5
"""Discovery interval while a pod's file waits for its metadata (opt-out unknown yet)."""
READ_BUDGET = 8 * 1024 * 1024
"""Bytes read from one file before the next file gets its turn (fairness)."""
PREFIX_CHECK_S = 5.0
"""How often each open file's first bytes are re-hashed to catch truncate-and-regrow."""
READY_TIMEOUT_S = 2.0
EXIT_MARGIN_S = 1.0
"""Of ``shutdown_grace``, what is kept for the process to exit after the drain."""
PRUNE_AFTER_SCANS = 2
"""Consecutive discoveries a checkpointed file must be missing from before its checkpoint
is forgotten. One scan can miss a file that is there: logrotate renames every rotated
name (``app.log.1`` -> ``app.log.2``) while the rescan its renames triggered lists the
directory, and a name renamed between the listing and its ``lstat`` is seen under
neither name. Forgetting a copy's checkpoint on that one miss made the next scan read
the copy again from 0 (``app.log*``: every line of it shipped a second time)."""
COPY_SEARCH_S = 10.0
"""How long to keep looking for a copytruncate copy that was not there at once (a
copy on a slow network filesystem) before its bytes are counted lost."""

Key = tuple[int, int]


@dataclass(slots=True)
class Orphan:
    """A truncated file's old identity whose copy has not been found (yet)."""

    path: str
    source: str
    identity: FileIdentity
    head: bytes
    offset: int
    seen: int
    """File size last seen before the truncation: at least ``seen - offset`` bytes lost."""
    since: float
    while_down: bool = False
    """Truncated while the agent was down: what it held before the truncation is unknown."""


class Agent:
    """Tail ``cfg.paths`` into the stream *stream* on *redis_url*.

    ``run()`` blocks until :meth:`stop`; ``start()`` runs it in a thread (tests).
    """

    def __init__(self, settings: LogsSettings, redis_url: str, *, host: str | None = None) -> None:
        self.cfg: AgentSettings = settings.agent
        self.stream = settings.stream
        self.redis_url = redis_url
        self.host = (host or socket.gethostname()).encode()
        self.store = CheckpointStore(Path(self.cfg.checkpoint_dir))
        self.batches: queue.Queue[Batch] = queue.Queue(maxsize=self.cfg.queue_entries)
        self.tailers: dict[Key, Tailer] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rescan = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self.names = RotatedNames(self.cfg.copytruncate_suffix)
        self.finder = Finder(
            self.cfg.paths,
            self.cfg.exclude,
            max_depth=self.cfg.max_depth,
            follow_symlinks=self.cfg.follow_symlinks,
            symlink_roots=[str(r) for r in self.cfg.symlink_roots],
            stop=self._stop,
            notice=self._warn_once,
        )
        self.orphans: list[Orphan] = []
        self._named: dict[str, list[Tailer]] = {}
        """Open tailers by path, built for one discovery (files it opens are added): a
        look over every tailer for every file found made discovering 10,000 files
        quadratic (minutes before the first line was shipped)."""
        self.pods = PodFiles(self.cfg)
        """Kubernetes: per-file format, pod identity, admission, entry metadata."""
        self._last_prefix_check = 0.0
        self._missed: dict[str, int] = {}
        """Checkpoints (fid) whose file the last discoveries did not find: how many in a row."""
        self._stop_at: float | None = None
        self._blocked = False
        """Set when the queue refused a batch this round (block mode, queue full)."""
        self.sender: Sender | None = None

    def client(self) -> RespClient:
        return RespClient(self.redis_url)

    def redis_reachable(self) -> bool:
        """Readiness: a PING answered within READY_TIMEOUT_S (a frozen Redis is not ready)."""
        client = RespClient(
            self.redis_url, timeout=READY_TIMEOUT_S, connect_timeout=READY_TIMEOUT_S
        )
        try:
            return client.ping()
        finally:
            client.close()

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> Agent:
        self._thread = threading.Thread(target=self.run, name="opsq-agent-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading; ``run()`` then drains and returns within ``shutdown_grace``."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()
        self._wake.set()

    def _deadline(self) -> float:
        """When the drain must be over: ``shutdown_grace`` after the stop, minus the
        little the process needs to exit (checkpoint flush, closing files)."""
        start = self._stop_at if self._stop_at is not None else time.monotonic()
        return start + max(0.0, self.cfg.shutdown_grace - EXIT_MARGIN_S)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        self.store.load()
        self.pods.start()
        self.sender = Sender(self.client, self.stream, self.batches, self.store, self.cfg)
        self.sender.start()
        watcher = (
            None
            if self.cfg.poll
            else Watcher(self.cfg.paths, self._wake, self._rescan, max_depth=self.cfg.max_depth)
        )
        if watcher is not None:
            watcher.start()
        try:
            self._resume_copies()
            self._discover(startup=True)
            self._loop()
        finally:
            if watcher is not None:
                watcher.stop()
            self.pods.stop()
            self.sender.close(self._deadline())
            self.store.flush()  # the checkpoint at the last acknowledged entry, even if
            for tailer in list(self.tailers.values()):  # the sender was cut off mid-flight
                self._release(tailer, lost=None)

    def _loop(self) -> None:
        next_rescan = self._next_rescan(time.monotonic())
        while not self._stop.is_set():
            if self.sender is not None and not self.sender.is_alive():
                failure = self.sender.failure
                if failure is not None:
                    raise OpsqError(f"cannot write to the log stream: {failure}") from failure
                raise OpsqError("the sender thread died unexpectedly; see the log above")
            progressed = self._read_round()
            now = time.monotonic()
            self._housekeeping(now)
            if self._rescan.is_set() or now >= next_rescan or self.pods.settled():
                self._rescan.clear()
                self._discover(startup=False)
                next_rescan = self._next_rescan(now)
            if not progressed:
                self._wake.wait(POLL_INTERVAL_S)
                self._wake.clear()

    def _next_rescan(self, now: float) -> float:
        """Soon while a pod's file waits for its metadata, else after rescan_interval."""
        interval = self.cfg.rescan_interval
        if self.pods.waiting:
            interval = min(interval, WAITING_RESCAN_S)
        return now + interval

    # --- the bounded queue ------------------------------------------------------------
    def _emit(self, batch: Batch) -> bool:
        if self.cfg.on_full == "drop":
            try:
                self.batches.put_nowait(batch)
            except queue.Full:
                metrics.LINES_DROPPED.labels(reason="queue_full").inc(batch.lines)
            return True
        if self._stop.is_set():
            return False
        try:
            # Wait a little, then give the reader back so housekeeping (rotation grace,
            # deleted-file limits) keeps running while Redis is down.
            self.batches.put(batch, timeout=POLL_INTERVAL_S)
        except queue.Full:
            self._blocked = True
            return False
        return True

    # --- reading ----------------------------------------------------------------------
    def _read_round(self) -> bool:
        progressed = False
        self._blocked = False
        chains = Chains(self.tailers.values())
        for tailer in chains.order:
            if self._stop.is_set() or self._blocked:
                break
            try:
                if not chains.ready(tailer):
                    continue  # an older file of its container is read first
                n = tailer.read(self._emit, READ_BUDGET)
                if tailer.rewritten:
                    self._truncated(tailer, time.monotonic())
                    progressed = True
                    continue
            except OSError as exc:
                self._warn_once(tailer.path, f"cannot read {tailer.path}: {exc}")
                continue
            progressed = progressed or n > 0
        return progressed

    def _retire(self, tailer: Tailer) -> None:
        """Grace over: ship a trailing partial line if the queue takes it, then release.

        Not at the first EOF: after a rename or unlink the application keeps writing to
        its open descriptor until it reopens the path (logrotate's postrotate SIGHUP),
        so lines can still arrive during the grace period (Fluent Bit's rotate_wait).
        """
        tailer.flush_partial(self._emit)
        unread = tailer.remaining()
        if unread:
            log.warning("%s rotated %.0fs ago; releasing it with %d bytes unread",
                        tailer.path, self.cfg.rotated_grace, unread)  # fmt: skip
        self._release(tailer, lost="rotated_grace")

    # --- rotation, truncation, grace --------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        verify = now - self._last_prefix_check >= PREFIX_CHECK_S
        if verify:
            self._last_prefix_check = now
        for tailer in list(self.tailers.values()):
            try:
                self._check(tailer, now, verify=verify)
            except OSError as exc:
                self._warn_once(tailer.path, f"cannot check {tailer.path}: {exc}")
        if self.orphans:
            self._search_orphans(now)
        self._enforce_deleted_limit()

    def _check(self, tailer: Tailer, now: float, *, verify: bool) -> None:
        if tailer.kind == "file" and tailer.truncated(verify_prefix=verify):
            self._truncated(tailer, now)
        if tailer.rotated_at is None:
            kind = tailer.path_moved()
            if kind == "rename" and tailer.kind == "copy":
                kind = None  # nobody writes to a copy: a rename changes nothing
            if kind is not None:
                metrics.ROTATIONS.labels(kind=kind).inc()
                tailer.rotated_at, tailer.rotation = now, kind
                self._rescan.set()  # pick up the file that replaced it without waiting
        if self._finished(tailer):
            log.debug(
                "%s (%s) fully read; releasing it", tailer.path, tailer.rotation or tailer.kind
            )
            self._release(tailer, lost=None)
            return
        if tailer.rotated_at is not None and now - tailer.rotated_at > self.cfg.rotated_grace:
            self._retire(tailer)
            return
        tailer.tick(now, self._emit)
        metrics.LAG_BYTES.labels(path=metrics.path_label(tailer.path)).set(tailer.lag())

    def _finished(self, tailer: Tailer) -> bool:
        """A copy, or a deleted file, read to its end: nothing more can come.

        A renamed file keeps its grace period (the application writes to it until it
        reopens the path); a deleted one with unread bytes too. A copy's last line may
        lack its newline (it is shipped as is), and a copy waits for Redis's
        acknowledgement, so that a restart does not read it again.
        """
        if tailer.kind == "copy":
            done = tailer.drained() and tailer.flush_partial(self._emit)
            return done and tailer.acknowledged()
        if tailer.rotation == "delete":
            return tailer.remaining() == 0 and tailer.flush_partial(self._emit)
        return False

    # --- copytruncate -----------------------------------------------------------------
    def _truncated(self, tailer: Tailer, now: float) -> None:
        """The file shrank (or its first bytes changed): read the rest from its copy."""
        metrics.ROTATIONS.labels(kind="copytruncate").inc()
        identity = tailer.identity
        if identity is not None:
            copy = find_copy(self.names, tailer.path, identity)
            if copy is not None:
                self._follow_copy(tailer.continue_in(copy, identity), copy)
                # rotations faster than the checks: whole generations copied in between
                self._follow_unseen_copies(tailer.path, copy, tailer.key)
            else:
                self.orphans.append(
                    Orphan(
                        tailer.path,
                        tailer.source,
                        identity,
                        tailer.head,
                        tailer.resume_offset(),
                        tailer.last_size,
                        now,
                    )
                )
                log.info(
                    "%s was truncated (copytruncate) and no copy of it was found yet", tailer.path
                )
        log.info("%s was truncated (copytruncate); reading it again from 0", tailer.path)
        tailer.restart_from_zero()

    def _follow_copy_at(
        self, copy: Copy, identity: FileIdentity, offset: int, *, source: str | None = None
    ) -> None:
        """Read *copy* from *offset* under *identity* (its checkpoint moves into the copy)."""
        follow = Tailer(
            copy.path,
            copy.fd,
            copy.st,
            identity=identity,
            offset=offset,
            cfg=self.cfg,
            host=self.host,
            store=self.store,
            kind="copy",
            source=source,
            fmt=self.pods.format_of(source or copy.path),
            meta=self.pods.meta(source or copy.path),
        )
        if self.store.get(identity.fid) is None:
            self.store.put(identity, offset, copy.path)
        self.store.move(identity.fid, copy.st.st_ino, copy.path)
        self._follow_copy(follow, copy)

    def _follow_copy(self, follow: Tailer, copy: Copy) -> None:
        if follow.key in self.tailers:  # already read as a file of its own (found first)
            os.close(copy.fd)
            return
        self.tailers[follow.key] = follow
        self.store.flush()
        log.info(
            "reading the rest of %s from its copy %s (offset %d)",
            follow.source,
            copy.path,
            follow.offset,
        )

    def _search_orphans(self, now: float) -> None:
        """Look again for copies not found at truncation; give up after COPY_SEARCH_S."""
        for orphan in list(self.orphans):
            copy = find_copy(self.names, orphan.path, orphan.identity)
            if copy is not None:
                self.orphans.remove(orphan)
                self._follow_copy_at(copy, orphan.identity, orphan.offset, source=orphan.source)
            elif now - orphan.since > min(COPY_SEARCH_S, self.cfg.rotated_grace):
                self.orphans.remove(orphan)
                self._copy_lost(orphan)

    def _copy_lost(self, orphan: Orphan) -> None:
        lost = max(0, orphan.seen - orphan.offset)
        metrics.BYTES_LOST.labels(reason="copy_not_found").inc(lost)
        self.store.forget(orphan.identity.fid)
        if lost == 0 and not orphan.while_down:
            # ``: > app.log`` after everything was read (a cron job emptying its log):
            # nothing the agent saw is missing; a warning every hour would cry wolf.
            log.info("%s was truncated after every byte seen in it was read; no copy "
                     "found, none needed", orphan.path)  # fmt: skip
            return
        log.warning(
            "%s was truncated but no copy of it was found (looked for names matching "
            "copytruncate_suffix %r); lines written between the last read and the "
            "truncation are lost (at least %d bytes)",
            orphan.path,
            self.cfg.copytruncate_suffix,
            lost,
        )

    def _resume_copies(self) -> None:
        """At start-up: go on reading copies a previous run had not finished.

        A rotation while the agent was down shifts the copy (``.1`` -> ``.2``): it is
        looked for by inode among its directory's rotated names, and the records keep
        the original file's path.
        """
        for cp in self.store.copies():
            original = self.names.original_of(cp.path)
            copy = self._open_copy(cp, original)
            if copy is None:
                continue
            if not matches(copy.fd, cp.identity) or copy.st.st_size <= cp.offset:
                os.close(copy.fd)
                continue
            self._follow_copy_at(copy, cp.identity, cp.offset, source=original)
            if original is not None:
                live = _key_of(original)
                self._follow_unseen_copies(original, copy, live)

    def _open_copy(self, cp: Checkpoint, original: str | None) -> Copy | None:
        """The copy *cp* points into: at its recorded path, or shifted to another name."""
        paths = [cp.path]
        if original is not None:
            paths += sorted(self.names.siblings(original))
        for path in paths:
            copy = _open_regular(path)
            if copy is None:
                continue
            if (copy.st.st_dev, copy.st.st_ino) == (cp.identity.dev, cp.ino):
                return copy
            os.close(copy.fd)
        return None

    def _copy_in_the_making(self, path: str, fd: int) -> bool:
        """A rotated name of a tailed file that starts like it: a copy being made.

        Reading it as a new file would ship the original's lines twice; the truncation
        that follows the copy hands it its place (:meth:`_truncated`).
        """
        directory, name = os.path.split(path)
        heads = [(o.path, o.head) for o in self.orphans]
        for end in range(1, len(name)):  # the originals it can be a rotated name of
            original = os.path.join(directory, name[:end])
            named = self._named.get(original, ())
            heads += [(t.path, t.head) for t in named if t.kind == "file" and t.path == original]
        return any(
            self.names.is_rotated(original, path) and starts_like(fd, head)
            for original, head in heads
        )

    def _enforce_deleted_limit(self) -> None:
        deleted = sorted(
            (t for t in self.tailers.values() if t.rotation == "delete"),
            key=lambda t: t.rotated_at or 0.0,
        )
        for tailer in deleted[: max(0, len(deleted) - self.cfg.max_open_deleted)]:
            log.warning(
                "more than %d deleted files held open; releasing %s with %d bytes unread",
                self.cfg.max_open_deleted,
                tailer.path,
                tailer.remaining(),
            )
            self._release(tailer, lost="max_open_deleted")

    def _release(self, tailer: Tailer, *, lost: str | None) -> None:
        """Close *tailer*; *lost* names the reason its unread bytes are counted lost."""
        if lost is not None:
            metrics.BYTES_LOST.labels(reason=lost).inc(tailer.remaining())
        tailer.close()
        self.tailers.pop(tailer.key, None)
        metrics.FILES_WATCHED.set(len(self.tailers))
        if not any(t.path == tailer.path for t in self.tailers.values()):
            _remove_lag(tailer.path)

    # --- discovery --------------------------------------------------------------------
    def _discover(self, *, startup: bool) -> None:
        seen: set[Key] = set()
        paths: set[str] = set()
        self.pods.waiting = False
        self._named = {}
        for tailer in self.tailers.values():
            self._named.setdefault(tailer.path, []).append(tailer)
        for found in _one_name_per_file(self.finder.find()):
            if self._stop.is_set():
                return  # stopping: not a moment to open files (nor to prune checkpoints)
            key = (found.st.st_dev, found.st.st_ino)
            seen.add(key)
            paths.add(found.path)
            if key in self.tailers and self.pods.opted_out(found.path):
                self._release(self.tailers[key], lost=None)  # the pod opted out meanwhile
            elif key in self.tailers:
                self._renamed_within_glob(self.tailers[key], found)
            elif not self._too_old(found.st) and self.pods.admit(found.path):
                self._replaced(found.path, time.monotonic())
                self._open(found, startup=startup)
        metrics.FILES_WATCHED.set(len(self.tailers))
        if not startup:
            self._prune_checkpoints(seen)
            self.pods.forget(paths)
        # New identities reach the disk before any of their batches is sent (see
        # CheckpointStore.register); one fsync for the whole scan, not one per file.
        self.store.flush()

    def _renamed_within_glob(self, tailer: Tailer, found: Found) -> None:
        """A rotated name that still matches the globs is the same file: keep tailing it.

        Discovery may see a rename before housekeeping does (the kubelet renamed and the
        runtime reopened between the two): then the tailer's own path no longer leads to
        its file, and the name found now is where it went.
        """
        if tailer.path == found.path:
            return
        noticed = tailer.rotated_at is not None and tailer.rotation == "rename"
        if not noticed and tailer.rotated_at is None and tailer.path_moved() == "rename":
            metrics.ROTATIONS.labels(kind="rename").inc()
            noticed = True
        if noticed:
            _remove_lag(tailer.path)
            tailer.path, tailer.rotated_at, tailer.rotation = found.path, None, ""
            tailer.via_link = found.real != found.path

    def _replaced(self, path: str, now: float) -> None:
        """A new file at *path*: a tailer still known by that path was rotated away.

        Marked before the new file is opened, so the read order of their chain (the old
        file first, its open lines handed to the new one) holds from the first round.
        """
        for tailer in self._named.get(path, ()):
            if tailer.path == path and tailer.rotated_at is None:
                kind = tailer.path_moved()
                if kind is not None:
                    metrics.ROTATIONS.labels(kind=kind).inc()
                    tailer.rotated_at, tailer.rotation = now, kind

    def _too_old(self, st: os.stat_result) -> bool:
        older = self.cfg.ignore_older
        return older is not None and time.time() - st.st_mtime > older

    def _open(self, found: Found, *, startup: bool) -> None:
        path = found.path
        try:
            # Never through a symlink: the target was checked (or links are off), and a
            # file swapped for a link since the scan must not be opened through it.
            fd = os.open(found.real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            self._warn_once(path, f"cannot open {path}: {exc}; other files continue")
            return
        try:
            st = os.fstat(fd)
            known = self.store.candidates(st.st_dev, st.st_ino)
            if not known and self._copy_in_the_making(path, fd):
                os.close(fd)
                log.debug("%s looks like a copy of a file being tailed; not read as new", path)
                return
            identity, offset = self._start_position(fd, st, path, startup=startup)
        except OSError as exc:
            os.close(fd)
            self._warn_once(path, f"cannot read {path}: {exc}; other files continue")
            return
        self._warned.discard(path)
        tailer = Tailer(
            path,
            fd,
            st,
            identity=identity,
            offset=offset,
            cfg=self.cfg,
            host=self.host,
            store=self.store,
            via_link=found.real != path,
            fmt=self.pods.format_of(path),
            meta=self.pods.meta(path),
        )
        self.tailers[tailer.key] = tailer
        self._named.setdefault(path, []).append(tailer)
        if not startup:
            metrics.ROTATIONS.labels(kind="new").inc()
        log.info("tailing %s from offset %d", path, offset)

    def _start_position(
        self, fd: int, st: os.stat_result, path: str, *, startup: bool
    ) -> tuple[FileIdentity | None, int]:
        """Resume from a checkpoint whose identity still matches, else head or tail."""
        known = False
        for cp in self.store.candidates(st.st_dev, st.st_ino):
            same = matches(fd, cp.identity)
            if same and (cp.offset <= st.st_size or cp.copy_ino is not None):
                # A copy is never truncated: one shorter than the offset ends where
                # logrotate stopped copying, and the agent had read further (the lines
                # logrotate's copytruncate itself loses).
                offset = min(cp.offset, st.st_size)
                self.store.put(cp.identity, offset, path)
                return cp.identity, offset
            copy = find_copy(self.names, path, cp.identity)
            if copy is None and not same:
                log.info("%s: inode %d reused by a different file; starting it afresh",
                         path, st.st_ino)  # fmt: skip
                self.store.forget(cp.identity.fid)
                continue
            # Shorter than our offset, or a copy of it beside it: truncated (copytruncate)
            # while the agent was down. The rest is in the copy, or being looked for.
            metrics.ROTATIONS.labels(kind="copytruncate").inc()
            log.info("%s was truncated while the agent was down; reading it from 0", path)
            known = True
            if copy is not None:
                self._follow_copy_at(copy, cp.identity, cp.offset, source=path)
                self._follow_unseen_copies(path, copy, (st.st_dev, st.st_ino))
            else:
                self.orphans.append(
                    Orphan(
                        path,
                        path,
                        cp.identity,
                        b"",
                        cp.offset,
                        cp.offset,
                        time.monotonic(),
                        while_down=True,
                    )
                )
        mode = self.cfg.read_from
        if self.store.corrupt:
            mode = self.cfg.on_corrupt_checkpoint
        offset = st.st_size if startup and mode == "tail" and not known else 0
        identity = identify(fd, st)
        if identity is not None:
            self.store.put(identity, offset, path)  # flushed once at the end of discovery
        return identity, offset

    def _follow_unseen_copies(self, path: str, copy: Copy, live: Key | None) -> None:
        """Read from 0 the copies of generations the agent never saw while it was down.

        Down across two copytruncate rotations (or with rotations faster than the
        size checks), the generation the agent was reading is copied to ``.2`` and
        ``.1`` holds a whole generation written and copied meanwhile: no
        checkpoint names it and ``paths: [app.log]`` does not match it, so it was lost
        without a word. A rotated sibling at least as new as *copy* (mtime), unknown
        to the checkpoints, not open already and not starting like a checkpointed
        generation of that directory (the copy of one is read from its checkpoint), is
        such a generation.
        """
        for sibling in sorted(self.names.siblings(path)):
            other = _open_regular(sibling)
            if other is None:
                continue
            key = (other.st.st_dev, other.st.st_ino)
            unseen = (
                stat.S_ISREG(other.st.st_mode)
                and other.st.st_mtime_ns >= copy.st.st_mtime_ns
                and key not in self.tailers
                and key != live
                and not self.store.candidates(*key)
            )
            if unseen and self._known_content(other.fd, path):
                unseen = False
            identity = identify(other.fd, other.st) if unseen else None
            if identity is None:
                os.close(other.fd)
                continue
            log.info("%s was copied and truncated while the agent was down; reading %s",
                     path, sibling)  # fmt: skip
            self._follow_copy_at(other, identity, 0, source=path)

    def _known_content(self, fd: int, path: str) -> bool:
        """Whether the open file starts like a checkpointed file of *path*'s directory."""
        head = os.pread(fd, FINGERPRINT_BYTES, 0)
        directory = os.path.dirname(path)
        return any(
            os.path.dirname(cp.path) == directory
            and len(head) >= cp.identity.fp_len
            and digest(head[: cp.identity.fp_len]) == cp.identity.fingerprint
            for cp in self.store.snapshot().values()
        )

    def _prune_checkpoints(self, seen: set[Key]) -> None:
        """Forget checkpoints of files no longer found under the globs, once they were
        missing from ``PRUNE_AFTER_SCANS`` discoveries in a row (one scan can miss a
        file that is being renamed)."""
        live = seen | set(self.tailers)
        orphaned = {o.identity.fid for o in self.orphans}
        keep = set()
        missed = {}
        for fid, cp in self.store.snapshot().items():
            if (cp.identity.dev, cp.ino) in live or fid in orphaned:
                keep.add(fid)
                continue
            missed[fid] = self._missed.get(fid, 0) + 1
            if missed[fid] < PRUNE_AFTER_SCANS:
                keep.add(fid)
        self._missed = {fid: n for fid, n in missed.items() if fid in keep}
        self.store.forget_all_except(keep)

    def _warn_once(self, path: str, message: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s", message)


def _one_name_per_file(found: list[Found]) -> list[Found]:
    """One match per file (device + inode), in path order: its own name rather than a
    symlink to it (``/var/log/pods/.../0.log`` over its ``/var/log/containers`` link),
    so the rotated names of a container's log and its live file share a base name."""
    best: dict[Key, Found] = {}
    for item in found:
        key = (item.st.st_dev, item.st.st_ino)
        if key not in best or (best[key].real != best[key].path and item.real == item.path):
            best[key] = item
    chosen = {id(item) for item in best.values()}
    return [item for item in found if id(item) in chosen]


def _open_regular(path: str) -> Copy | None:
    """Open *path* for reading (never through a symlink), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return Copy(path, fd, os.fstat(fd))
    except OSError:
        os.close(fd)
        return None


def _key_of(path: str) -> Key | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _remove_lag(path: str) -> None:
    with contextlib.suppress(KeyError):
        metrics.LAG_BYTES.remove(metrics.path_label(path))

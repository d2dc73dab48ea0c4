"""Per-file read checkpoints that survive kill -9 and power loss.

One JSON document maps each file identity (``fid``) to the byte offset up to which
Redis has acknowledged the file's records. It is written the way a crash cannot tear:
a temporary file in the same directory, ``fsync``, ``rename`` over the old one, then
``fsync`` of the directory so the rename itself is durable (Filebeat once shipped a
registry without that and corrupted it on power loss).

Offsets move only when the sender reports an acknowledged XADD (at-least-once: a crash
re-sends at most what was in flight; Fluent Bit saves offsets before delivery and
loses lines, fluent-bit#5912). A corrupt document is never a crash loop: it is moved
aside with a warning and the agent continues as configured (``on_corrupt_checkpoint``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.identity import FileIdentity
from opsq.core.metrics import logs_agent as metrics

log = logging.getLogger(__name__)

FILE_NAME = "checkpoints.json"
FORMAT_VERSION = 1


@dataclass(slots=True)
class Checkpoint:
    identity: FileIdentity
    offset: int
    path: str
    copy_ino: int | None = None
    """Set when the identity's bytes now live in a copytruncate copy (another inode on
    the same device, at ``path``): the copy is read on under the original identity."""

    @property
    def ino(self) -> int:
        """The inode that holds this identity's bytes now."""
        return self.identity.ino if self.copy_ino is None else self.copy_ino


class CheckpointStore:
    """Thread-safe map fid -> :class:`Checkpoint`, persisted atomically on :meth:`flush`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file = directory / FILE_NAME
        self.corrupt = False
        """True when the last load found an unreadable document (and moved it aside)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        """Reader (new identities) and sender (acks) both flush; one writer at a time,
        or one thread's rename could publish the other's half-written temporary file."""
        self._items: dict[str, Checkpoint] = {}
        self._by_key: dict[tuple[int, int], dict[str, None]] = {}
        """(device, inode the bytes live in) -> fids: :meth:`candidates` is asked for
        every file discovery opens, and a scan over all checkpoints each time made the
        first discovery of 10,000 files take minutes."""
        self._dirty = False

    # --- loading ----------------------------------------------------------------------
    def load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            raw = self.file.read_bytes()
        except FileNotFoundError:
            return
        try:
            items = _parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            self._move_aside(exc)
            return
        with self._lock:
            self._items = {}
            self._by_key = {}
            for cp in items:
                self._add(cp)

    def _move_aside(self, exc: Exception) -> None:
        aside = self.file.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
        os.replace(self.file, aside)
        self.corrupt = True
        metrics.CHECKPOINT_ERRORS.inc()
        log.warning(
            "checkpoint file %s is corrupt (%s); moved to %s, continuing with "
            "on_corrupt_checkpoint fallback",
            self.file,
            exc,
            aside,
        )

    # --- queries and updates ----------------------------------------------------------
    def candidates(self, dev: int, ino: int) -> list[Checkpoint]:
        """Checkpoints whose bytes live in this device and inode (any fingerprint)."""
        with self._lock:
            return [self._items[fid] for fid in self._by_key.get((dev, ino), ())]

    def get(self, fid: str) -> Checkpoint | None:
        with self._lock:
            return self._items.get(fid)

    def put(self, identity: FileIdentity, offset: int, path: str) -> None:
        with self._lock:
            current = self._items.get(identity.fid)
            if current is not None and current.offset == offset and current.path == path:
                return
            copy_ino = current.copy_ino if current is not None else None
            self._add(Checkpoint(identity, offset, path, copy_ino))
            self._dirty = True

    def register(self, identity: FileIdentity, offset: int, path: str) -> None:
        """Record a newly identified file and persist it before anything is sent.

        The identity depends on how many bytes the file had when first seen; if the
        agent died before a periodic flush, a restart would fingerprint a longer prefix,
        get another fid and re-send everything under new record ids that no consumer
        could dedupe. Persisting the identity first closes that window.
        """
        self.put(identity, offset, path)
        self.flush()

    def advance(self, fid: str, offset: int) -> None:
        """Move an existing checkpoint forward (never backward: acks may arrive late)."""
        with self._lock:
            current = self._items.get(fid)
            if current is not None and offset > current.offset:
                current.offset = offset
                self._dirty = True

    def move(self, fid: str, ino: int, path: str) -> None:
        """The identity's bytes continue in a copy (inode *ino* at *path*)."""
        with self._lock:
            current = self._items.get(fid)
            if current is not None:
                self._unindex(current)
                current.copy_ino, current.path = ino, path
                self._add(current)
                self._dirty = True

    def copies(self) -> list[Checkpoint]:
        """Checkpoints that point into a copytruncate copy (resumed at start-up)."""
        with self._lock:
            return [
                Checkpoint(cp.identity, cp.offset, cp.path, cp.copy_ino)
                for cp in self._items.values()
                if cp.copy_ino is not None
            ]

    def forget(self, fid: str) -> None:
        with self._lock:
            if self._drop(fid):
                self._dirty = True

    def forget_all_except(self, keep: set[str]) -> None:
        with self._lock:
            for fid in [f for f in self._items if f not in keep]:
                self._drop(fid)
                self._dirty = True

    def _add(self, cp: Checkpoint) -> None:
        """Insert or replace *cp*, keeping its place (lock held)."""
        old = self._items.get(cp.identity.fid)
        if old is not None:
            self._unindex(old)
        self._items[cp.identity.fid] = cp
        self._by_key.setdefault((cp.identity.dev, cp.ino), {})[cp.identity.fid] = None

    def _drop(self, fid: str) -> bool:
        """Remove *fid* if present (lock held); whether it was."""
        cp = self._items.pop(fid, None)
        if cp is not None:
            self._unindex(cp)
        return cp is not None

    def _unindex(self, cp: Checkpoint) -> None:
        key = (cp.identity.dev, cp.ino)
        fids = self._by_key.get(key, {})
        fids.pop(cp.identity.fid, None)
        if not fids:
            self._by_key.pop(key, None)

    def snapshot(self) -> dict[str, Checkpoint]:
        with self._lock:
            return {
                fid: Checkpoint(cp.identity, cp.offset, cp.path, cp.copy_ino)
                for fid, cp in self._items.items()
            }

    # --- persistence ------------------------------------------------------------------
    def flush(self) -> bool:
        """Write the document atomically if anything changed; False if the write failed."""
        with self._flush_lock:
            with self._lock:
                if not self._dirty:
                    return True
                body = _render(self._items.values())
                self._dirty = False
            try:
                atomic_write(self.file, body)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                metrics.CHECKPOINT_ERRORS.inc()
                log.warning("could not write checkpoint file %s: %s (will retry)", self.file, exc)
                return False
            return True


def atomic_write(path: Path, body: bytes) -> None:
    """Replace *path* with *body* so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _render(items: Any) -> bytes:
    files = [_item(cp) for cp in items]
    return json.dumps({"version": FORMAT_VERSION, "files": files}, indent=1).encode()


def _item(cp: Checkpoint) -> dict[str, Any]:
    item: dict[str, Any] = {
        "dev": cp.identity.dev,
        "ino": cp.identity.ino,
        "fingerprint": cp.identity.fingerprint,
        "fp_len": cp.identity.fp_len,
        "offset": cp.offset,
        "path": cp.path,
    }
    if cp.copy_ino is not None:
        item["copy_ino"] = cp.copy_ino  # optional: older documents simply lack it
    return item


def _parse(raw: bytes) -> list[Checkpoint]:
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"expected a version {FORMAT_VERSION} checkpoint document")
    out = []
    for item in doc["files"]:
        identity = FileIdentity(
            dev=_int(item["dev"]),
            ino=_int(item["ino"]),
            fingerprint=str(item["fingerprint"]),
            fp_len=_int(item["fp_len"]),
        )
        copy_ino = _int(item["copy_ino"]) if "copy_ino" in item else None
        out.append(Checkpoint(identity, _int(item["offset"]), str(item["path"]), copy_ino))
    return out


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value

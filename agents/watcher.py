"""Inotify wake-ups for the agent: Linux inotify through ctypes, names kept as bytes.

The watcher never decides anything: it only sets events. ``wake`` makes the reader
look at its files now instead of at the next poll tick; ``rescan`` makes it glob again
because a file appeared, disappeared or was renamed. Polling (every 250 ms, and the
periodic rescan) carries on regardless, so inotify only shortens latency.

Why not watchfiles (Rust ``notify``), which this replaced: it decodes every path to
text and raised on a file name that is not valid UTF-8, which ended the watch for the
rest of the process's life; and its recursive watch follows directory symlinks. Here
event names are never decoded (only the directory's watch descriptor matters),
recursion adds one watch per real subdirectory down to ``max_depth`` without entering
symlinks (the same walk as :mod:`agents.discovery`), and a queue overflow or a failed
``inotify_add_watch`` (``fs.inotify.max_user_watches``) means "rescan", logged once,
never a crash.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading

from agents.discovery import fixed_root

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

CHANGED = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
MASK = CHANGED | IN_MODIFY | IN_CLOSE_WRITE | IN_ONLYDIR | IN_DONT_FOLLOW
EVENT = struct.Struct("iIII")
"""struct inotify_event: wd, mask, cookie, len (then len bytes of NUL-padded name)."""
POLL_MS = 100
"""How often the thread looks at the stop flag while no event arrives."""


def watch_roots(patterns: list[str]) -> dict[str, bool]:
    """The directory to watch per pattern -> whether it must be watched recursively."""
    roots: dict[str, bool] = {}
    for pattern in patterns:
        root, recursive = fixed_root(pattern)
        if os.path.isdir(root):
            roots[root] = roots.get(root, False) or recursive
    return roots


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Watcher(threading.Thread):
    def __init__(
        self,
        patterns: list[str],
        wake: threading.Event,
        rescan: threading.Event,
        *,
        max_depth: int = 8,
    ) -> None:
        super().__init__(name="opsq-agent-inotify", daemon=True)
        self.roots = watch_roots(patterns)
        self.wake = wake
        self.rescan = rescan
        self.max_depth = max_depth
        self._stop_event = threading.Event()
        self._fd = -1
        self._dirs: dict[int, tuple[bytes, int, bool]] = {}
        """watch descriptor -> (directory, depth below its root, recursive)."""
        self._warned = False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(0.5)  # the loop looks at the flag every POLL_MS; a daemon thread anyway

    def run(self) -> None:
        if not self.roots:
            return
        try:
            self._libc = _libc()
            self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if self._fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:  # no inotify: polling alone
            log.warning("inotify unavailable (%s); polling files every 250 ms instead", exc)
            return
        try:
            for root, recursive in self.roots.items():
                self._add_tree(os.fsencode(root), 0, recursive)
            self._loop()
        finally:
            os.close(self._fd)

    # --- watches ----------------------------------------------------------------------
    def _add_tree(self, directory: bytes, depth: int, recursive: bool) -> None:
        if self._stop_event.is_set() or not self._add(directory, depth, recursive):
            return
        if not recursive or depth >= self.max_depth:
            return
        try:
            with os.scandir(directory) as it:
                subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for sub in subdirs:
            self._add_tree(sub, depth + 1, recursive)

    def _add(self, directory: bytes, depth: int, recursive: bool) -> bool:
        wd = self._libc.inotify_add_watch(self._fd, directory, MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC and not self._warned:
                self._warned = True
                log.warning(
                    "inotify watch limit reached (fs.inotify.max_user_watches); "
                    "directories beyond it are polled"
                )
            return False
        self._dirs[wd] = (directory, depth, recursive)
        return True

    # --- events -----------------------------------------------------------------------
    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop_event.is_set():
            if not poller.poll(POLL_MS):
                continue
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        changed = False
        pos = 0
        while pos + EVENT.size <= len(data):
            wd, mask, _cookie, size = EVENT.unpack_from(data, pos)
            name = data[pos + EVENT.size : pos + EVENT.size + size].rstrip(b"\0")
            pos += EVENT.size + size
            changed = self._event(wd, mask, name) or changed
        if changed:
            self.rescan.set()
        self.wake.set()

    def _event(self, wd: int, mask: int, name: bytes) -> bool:
        """Handle one event; True when the set of files may have changed."""
        if mask & IN_Q_OVERFLOW:
            return True  # events were lost: look at everything again
        if mask & IN_IGNORED:
            self._dirs.pop(wd, None)  # the directory is gone (or unmounted)
            return True
        entry = self._dirs.get(wd)
        if entry is not None and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            directory, depth, recursive = entry
            if recursive and depth < self.max_depth:
                self._add_tree(os.path.join(directory, name), depth + 1, recursive)
        return bool(mask & CHANGED)

"""Inotify wake-ups for the agent, via watchfiles (Rust ``notify``).

The watcher never decides anything: it only sets events. ``wake`` makes the reader
look at its files now instead of at the next poll tick; ``rescan`` makes it glob again
because a file appeared or disappeared. When inotify cannot be used (no support, the
``fs.inotify.max_user_watches`` limit, a watched directory vanishing) the thread logs
once and ends; the reader's own polling then carries on alone.
"""

from __future__ import annotations

import logging
import os
import threading

import watchfiles

from agents.discovery import fixed_root

log = logging.getLogger(__name__)
# watchfiles logs "N changes detected" at INFO for every batch of events: on a busy log
# directory that is a line every DEBOUNCE_MS in the agent's own output.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

DEBOUNCE_MS = 50
"""watchfiles groups events for this long (its default, 1600 ms, would add latency)."""


def watch_roots(patterns: list[str]) -> dict[str, bool]:
    """The directory to watch per pattern -> whether it must be watched recursively."""
    roots: dict[str, bool] = {}
    for pattern in patterns:
        root, recursive = fixed_root(pattern)
        if os.path.isdir(root):
            roots[root] = roots.get(root, False) or recursive
    return roots


class Watcher(threading.Thread):
    def __init__(self, patterns: list[str], wake: threading.Event, rescan: threading.Event) -> None:
        super().__init__(name="opsq-agent-inotify", daemon=True)
        self.roots = watch_roots(patterns)
        self.wake = wake
        self.rescan = rescan
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(0.5)  # watchfiles checks the event every ``step`` (20 ms); a daemon thread

    def run(self) -> None:
        if not self.roots:
            return
        recursive = any(self.roots.values())
        try:
            for changes in watchfiles.watch(
                *self.roots, stop_event=self._stop_event, debounce=DEBOUNCE_MS, step=20,
                recursive=recursive, ignore_permission_denied=True, raise_interrupt=False,
            ):  # fmt: skip
                if any(change != watchfiles.Change.modified for change, _ in changes):
                    self.rescan.set()
                self.wake.set()
        except Exception as exc:  # any watcher failure degrades to polling, never a crash
            log.warning("inotify unavailable (%s); polling files every 250 ms instead", exc)

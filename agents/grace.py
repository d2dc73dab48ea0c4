"""Stopping within ``shutdown_grace`` whatever Redis or the sink are doing.

SIGTERM only sets an event; the work in flight then has until the deadline
(``shutdown_grace`` after the signal, less :data:`EXIT_MARGIN_S` for the process to
exit). Three things could hold a process past it, and each has its answer here:

- a sleep between retries: :meth:`Grace.pause` wakes on the stop and never sleeps
  past the deadline;
- a sink call that hangs (an HTTP server that accepts and never answers, a full NFS
  mount): :meth:`Grace.bounded` runs it in a daemon thread and gives up at the
  deadline; the entries stay unacknowledged (delivered again later, at least once);
- a Redis call blocked on a frozen server: redis-py cannot be interrupted safely from
  another thread (closing a connection it is setting up breaks its internal state), so
  :meth:`Grace.watch` runs the caller's last resort at the deadline: ``opsq ship``
  logs what is left and exits. Nothing is lost by that: unacknowledged entries stay
  pending in Redis, and the file sink mends a torn last line on its next start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_MARGIN_S = 1.0
"""Of ``shutdown_grace``, what is left for the process to exit after the drain."""
LAST_RESORT_MARGIN_S = 0.4
"""The last resort (:meth:`Grace.watch`) runs this long before ``shutdown_grace`` ends:
after the drain's own deadline, so a drain that can still finish cleanly does."""
POLL_S = 0.05


class GraceOver(Exception):
    """The shutdown deadline passed while a call was still running."""


class Grace:
    def __init__(self, stop: threading.Event, grace: float) -> None:
        self.stop = stop
        self.grace = max(0.0, grace - EXIT_MARGIN_S)
        self.last_resort = max(self.grace, grace - LAST_RESORT_MARGIN_S)
        self._stop_seen: float | None = None
        self._lock = threading.Lock()

    def deadline(self) -> float:
        """When the drain must be over (infinity while no stop was requested)."""
        if not self.stop.is_set():
            return float("inf")
        with self._lock:
            if self._stop_seen is None:
                self._stop_seen = time.monotonic()
            return self._stop_seen + self.grace

    def over(self) -> bool:
        return time.monotonic() >= self.deadline()

    def pause(self, delay: float) -> None:
        """Sleep *delay* seconds, but never past the deadline (a stop wakes it)."""
        end = time.monotonic() + delay
        if not self.stop.is_set():
            self.stop.wait(delay)
        rest = min(end, self.deadline()) - time.monotonic()
        if rest > 0:
            time.sleep(rest)

    def bounded(self, call: Callable[[], T]) -> T:
        """Run *call*; raise GraceOver if the deadline passes first (it keeps running in
        a daemon thread, which the process exit ends)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="opsq-bounded-call", daemon=True).start()
        while not done.wait(POLL_S):
            if self.over():
                raise GraceOver
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def watch(self, on_deadline: Callable[[], None], finished: threading.Event) -> None:
        """Call *on_deadline* once, shortly before ``shutdown_grace`` ends, unless
        *finished* is set first."""

        def watchdog() -> None:
            self.stop.wait()
            end = self.deadline() - self.grace + self.last_resort
            if not finished.wait(max(0.0, end - time.monotonic())):
                on_deadline()

        threading.Thread(target=watchdog, name="opsq-grace-watchdog", daemon=True).start()

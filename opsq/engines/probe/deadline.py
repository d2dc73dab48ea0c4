"""The deadline of one probe, and each attempt's share of it.

A probe has one budget, ``target.timeout``, for all its attempts and the backoff sleeps
between them. Two rules decide how it is spent:

- **Each attempt gets a share**, not the whole rest: attempt *n* of *N* runs for at
  most ``max(remaining / attempts_left, min(remaining, ATTEMPT_FLOOR_S))``. With
  ``timeout: 4s, retries: 1`` the first attempt has 2 s and the second what is left, so
  a request that hangs once is retried (``retry_on: timeout`` means something); when
  every attempt took the whole remaining time, no timed-out attempt was ever retried.
  An attempt that ends early leaves its unused time to the next ones. The floor keeps
  an attempt long enough to connect and finish a TLS handshake across a continent
  (about three round trips of 100 ms); with many retries and a short timeout that
  means fewer attempts, never attempts too short to succeed.
- **Waiting for a rate-limit token pauses the deadline** (:meth:`Deadline.pause`):
  the wait measures our own throttle, not the target, so it must never turn a healthy
  target down. The wait is reported apart, as the ``ratelimit`` phase, and is not
  part of ``duration_s``.

Backoff pacing itself is :func:`opsq.core.backoff.full_jitter`, shared by all of opsq.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ATTEMPT_FLOOR_S = 0.5
"""The shortest share an attempt gets while the deadline has that much left."""


@dataclass(slots=True)
class Deadline:
    """An absolute monotonic deadline shared by every attempt and sleep of one probe."""

    budget: float
    start: float = field(default_factory=time.monotonic)
    paused: float = 0.0
    """Seconds spent waiting for rate-limit tokens; they extend the deadline."""

    @property
    def at(self) -> float:
        return self.start + self.budget + self.paused

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def elapsed(self) -> float:
        """Time spent probing: since the start, less the rate-limit waits."""
        return time.monotonic() - self.start - self.paused

    def fits(self, seconds: float) -> bool:
        """True when sleeping ``seconds`` still leaves time for another attempt."""
        return time.monotonic() + seconds < self.at

    def pause(self, seconds: float) -> None:
        """Push the deadline back by a wait that is not the target's doing."""
        self.paused += max(0.0, seconds)

    def share(self, attempts_left: int) -> float:
        """Seconds the next attempt may run, ``attempts_left`` counting it."""
        remaining = self.remaining()
        if attempts_left <= 1:
            return remaining
        return max(remaining / attempts_left, min(remaining, ATTEMPT_FLOOR_S))

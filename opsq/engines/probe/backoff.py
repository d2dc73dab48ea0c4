"""Retry pacing: exponential backoff with full jitter, bounded by a deadline.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015) spreads
retries of many probers uniformly over ``[0, min(cap, base * 2**attempt)]`` so a
struggling service is not hit by synchronised waves of retries. The caller never
sleeps past the probe's deadline: :meth:`Deadline.fits` is checked before sleeping.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to sleep before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
    ceiling = min(cap, base * 2.0**attempt)
    return rng.uniform(0.0, ceiling)


@dataclass(slots=True)
class Deadline:
    """An absolute monotonic deadline shared by every attempt and sleep of one probe."""

    budget: float
    start: float = field(default_factory=time.monotonic)

    @property
    def at(self) -> float:
        return self.start + self.budget

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fits(self, seconds: float) -> bool:
        """True when sleeping ``seconds`` still leaves time for another attempt."""
        return time.monotonic() + seconds < self.at

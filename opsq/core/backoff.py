"""Retry pacing for every loop in opsq: exponential backoff with full jitter.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): the n-th
retry waits a uniformly random time in ``[0, min(cap, base * 2**n)]``. Of the schemes
that post compares, it does the least total work when many clients fail together (a
Redis restart takes down every worker, shipper and agent at the same moment); "equal"
jitter and ``delay * uniform(0.8, 1.2)`` keep them in near-lockstep waves.

One module, so every caller retries the same way (STYLE.md, "Where we fall short"):

- :func:`full_jitter` is the whole formula, stateless: for counters kept elsewhere
  (a Celery task's ``request.retries``, a per-object failure count in Redis, a probe's
  attempt number);
- :class:`Backoff` keeps the failure count for a loop (the shipper, the log sender,
  the supervisor's restarts, the informer): ``next()`` after a failure, ``reset()``
  after a success.

The random source is injectable (a ``Callable[[], float]`` in ``[0, 1)``, such as
``random.Random(42).random``) so tests can pin the delay; ``lambda: 1.0`` gives the
ceiling itself. A server's hint (``Retry-After``) is honoured with ``at_least``: the
delay is never shorter than what the server asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Rng = Callable[[], float]
"""A source of floats in ``[0, 1)``; ``random.random`` unless a test pins it."""

_MAX_EXPONENT = 64
"""2**64 times any sane base exceeds every cap; stops ``2.0**n`` overflowing for n > 1023."""


def ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The upper bound of the delay before retry ``attempt + 1``: ``min(cap, base * 2**attempt)``.

    ``attempt`` counts failures so far minus one: 0 for the first retry.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must not be negative (base={base}, cap={cap})")
    return float(min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT)))


def full_jitter(
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: Rng = random.random,
    at_least: float | None = None,
) -> float:
    """Seconds to wait before retry ``attempt + 1``: uniform in ``[0, ceiling]``.

    ``at_least`` (a ``Retry-After`` hint, say) raises the result to that many seconds.
    """
    delay = rng() * ceiling(attempt, base=base, cap=cap)
    return max(delay, at_least or 0.0)


class Backoff:
    """Full-jitter backoff for one retry loop: call :meth:`next` per failure.

    Not thread-safe; each loop owns one.
    """

    def __init__(self, *, base: float, cap: float, rng: Rng = random.random) -> None:
        ceiling(0, base=base, cap=cap)  # fail at construction on a negative base or cap
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self, at_least: float | None = None) -> float:
        """Count one more failure and return how long to wait before the next try."""
        delay = full_jitter(
            self.failures, base=self.base, cap=self.cap, rng=self.rng, at_least=at_least
        )
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits at most ``base`` again."""
        self.failures = 0

    @property
    def next_ceiling(self) -> float:
        """The bound of the delay the next :meth:`next` can return."""
        return ceiling(self.failures, base=self.base, cap=self.cap)

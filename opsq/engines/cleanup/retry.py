"""One retry loop for every request the cleanup sends (LIST pages, GET, DELETE).

A 429 or 503 from a busy API server is normal weather, not a verdict: each request is
retried ``retries`` times with exponential backoff and full jitter, never sooner than
the server's ``Retry-After`` (itself capped at ``cap``: a proxy answering
``Retry-After: 3600`` must not stall a run for hours), and only then raised for the
caller's own loop (Celery's retry, the informer's backoff, the one-shot's exit 3).
Sleeping goes through a stop event when one is given, so SIGTERM ends a backoff at
once instead of after it (:class:`Interrupted`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from opsq.core.backoff import full_jitter
from opsq.core.errors import TemporaryError
from opsq.engines.cleanup.kube import ApiUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Interrupted(TemporaryError):
    """The process is stopping: the request was abandoned, not failed."""


@dataclass
class Retrier:
    retries: int = 5
    base: float = 0.5
    cap: float = 60.0
    stop: threading.Event | None = None
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = field(default=random.random)

    def call(self, request: Callable[[], T]) -> T:
        """Run *request*, retrying :class:`ApiUnavailable` with backoff."""
        for attempt in range(self.retries + 1):
            self.check()
            try:
                return request()
            except ApiUnavailable as exc:
                if attempt >= self.retries:
                    raise
                hint = None if exc.delay is None else min(exc.delay, self.cap)
                delay = full_jitter(
                    attempt, base=self.base, cap=self.cap, rng=self.rng, at_least=hint
                )
                log.warning("kube API unavailable (%s); retrying in %.2fs", exc, delay)
                self.wait(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def wait(self, delay: float) -> None:
        if self.stop is None:
            self.sleep(delay)
        elif self.stop.wait(delay):
            raise Interrupted("stopping")

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Interrupted("stopping")

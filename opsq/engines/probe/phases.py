"""Per-phase timings of one attempt: ratelimit, dns, connect, tls, ttfb, transfer.

Transports report phase boundaries into a :class:`PhaseClock`. The clock of the
attempt in progress lives in a :class:`contextvars.ContextVar` because the hooks that
see the boundaries (our aiohttp connector, httpcore's ``trace`` extension) run
inside the probe's own task but are configured once per shared session: the context
variable routes each event to the right probe without threading a per-request object
through library code that does not carry one.

Phases accumulate, so an attempt that follows redirects reports the sum of its hops.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class PhaseClock:
    """Start/stop marks per phase, summed; plus the chain's expiry if TLS was used."""

    durations: dict[str, float] = field(default_factory=dict)
    cert_expires_at: float | None = None
    """Epoch seconds of the earliest expiry in the certificate chain the peer sent."""
    _started: dict[str, float] = field(default_factory=dict)

    def start(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def stop(self, phase: str) -> None:
        began = self._started.pop(phase, None)
        if began is not None:
            elapsed = time.perf_counter() - began
            self.durations[phase] = self.durations.get(phase, 0.0) + elapsed

    def snapshot(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.durations.items()}


CURRENT: ContextVar[PhaseClock | None] = ContextVar("opsq_probe_phase_clock", default=None)


def current() -> PhaseClock | None:
    """The clock of the attempt running in this task, if any."""
    return CURRENT.get()

"""The deadline that bounds retries and backoff (the jitter math is tests/core's)."""

from __future__ import annotations

import random

from opsq.engines.probe import Deadline, run_probes
from tests.engine.conftest import Servers, target


def test_deadline_refuses_a_sleep_that_would_cross_it() -> None:
    deadline = Deadline(budget=60.0)
    assert deadline.fits(1.0)
    assert not deadline.fits(61.0)
    assert 0 < deadline.remaining() <= 60.0


def test_backoff_never_sleeps_past_the_probe_deadline(servers: Servers, key: str) -> None:
    """A 10 s backoff cannot fit in a 1 s deadline: the probe ends instead of sleeping."""
    t = target(
        f"{servers.http}/hits/{key}/503", timeout=1, retries=5, backoff_base=10, backoff_cap=10
    )
    [result] = run_probes([t], rng=random.Random(0))
    assert (result.up, result.error_kind) == (False, "status")
    assert result.duration_s < 1 + 3
    assert result.attempts == servers.state.hits[key]

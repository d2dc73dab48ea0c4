"""Full-jitter backoff math and the deadline that bounds retries."""

from __future__ import annotations

import random

import pytest

from opsq.engines.probe import Deadline, full_jitter, run_probes
from tests.engine.conftest import Servers, target


@pytest.mark.parametrize("attempt", range(8))
def test_full_jitter_stays_within_zero_and_the_capped_exponential(attempt: int) -> None:
    rng = random.Random(1234)
    base, cap = 0.1, 2.0
    ceiling = min(cap, base * 2**attempt)
    samples = [full_jitter(attempt, base=base, cap=cap, rng=rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # Spread over the whole range, not clustered (full jitter, not equal jitter).
    assert min(samples) < ceiling * 0.05
    assert max(samples) > ceiling * 0.95


def test_full_jitter_cap_wins_over_the_exponential() -> None:
    rng = random.Random(7)
    samples = [full_jitter(30, base=1.0, cap=0.5, rng=rng) for _ in range(1000)]
    assert max(samples) <= 0.5


def test_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    first = [full_jitter(3, base=0.1, cap=5, rng=random.Random(42)) for _ in range(3)]
    again = [full_jitter(3, base=0.1, cap=5, rng=random.Random(42)) for _ in range(3)]
    assert first == again


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

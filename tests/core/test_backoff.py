"""The one backoff helper (opsq.core.backoff): full jitter, capped, injectable rng."""

from __future__ import annotations

import random

import pytest

from opsq.core.backoff import Backoff, ceiling, full_jitter


@pytest.mark.parametrize("attempt", range(8))
def test_full_jitter_spreads_over_zero_to_the_capped_exponential(attempt: int) -> None:
    """Samples cover [0, min(cap, base*2^n)] end to end: full jitter, not equal jitter."""
    rng = random.Random(1234).random
    bound = min(2.0, 0.1 * 2**attempt)
    samples = [full_jitter(attempt, base=0.1, cap=2.0, rng=rng) for _ in range(2000)]
    assert all(0.0 <= s <= bound for s in samples)
    assert min(samples) < bound * 0.05
    assert max(samples) > bound * 0.95


def test_the_rng_decides_where_in_the_range_the_delay_falls() -> None:
    """rng() = 1.0 gives the ceiling, 0.0 gives no wait, 0.5 the middle."""
    assert full_jitter(3, base=0.5, cap=60, rng=lambda: 1.0) == 4.0
    assert full_jitter(3, base=0.5, cap=60, rng=lambda: 0.0) == 0.0
    assert full_jitter(3, base=0.5, cap=60, rng=lambda: 0.5) == 2.0


def test_cap_wins_and_huge_attempt_counts_do_not_overflow() -> None:
    """A per-object failure count can grow large; 2.0**2000 would raise OverflowError."""
    assert ceiling(2000, base=0.5, cap=30.0) == 30.0
    assert full_jitter(2000, base=0.5, cap=30.0, rng=lambda: 1.0) == 30.0


def test_a_retry_after_hint_is_a_floor() -> None:
    """A server's Retry-After is honoured even when the jittered delay is shorter."""
    assert full_jitter(0, base=0.1, cap=1, rng=lambda: 0.0, at_least=7.0) == 7.0
    assert full_jitter(5, base=1, cap=60, rng=lambda: 1.0, at_least=7.0) == 32.0


def test_negative_inputs_fail_loudly() -> None:
    """A negative base, cap or attempt is a bug, not a zero delay."""
    with pytest.raises(ValueError, match="attempt"):
        ceiling(-1, base=1, cap=1)
    with pytest.raises(ValueError, match="negative"):
        Backoff(base=-1, cap=1)


def test_backoff_doubles_its_ceiling_per_failure_and_resets_after_success() -> None:
    """The stateful loop helper: ceilings 0.1, 0.2, 0.4, capped at 0.5, back to 0.1."""
    backoff = Backoff(base=0.1, cap=0.5, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.next_ceiling == pytest.approx(0.1)
    assert backoff.next() == pytest.approx(0.1)


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    """Two loops with the same seed wait the same times (tests can pin delays)."""
    first = Backoff(base=0.1, cap=5, rng=random.Random(42).random)
    again = Backoff(base=0.1, cap=5, rng=random.Random(42).random)
    assert [first.next() for _ in range(5)] == [again.next() for _ in range(5)]

"""Concurrency caps and the rate limiter hook bound what reaches a host."""

from __future__ import annotations

import asyncio
from collections import Counter

from opsq.engines.probe import ProbeEngine, ProbeResult, run_probes
from tests.engine.conftest import HOLD_RELEASE_AT, Servers, target


def _batch(servers: Servers, key: str, n: int = 12) -> list:
    return [target(f"{servers.http}/hold/{key}", name=f"h{i}") for i in range(n)]


def test_per_host_cap_bounds_requests_in_flight(servers: Servers, key: str) -> None:
    results = run_probes(_batch(servers, key), per_host_concurrency=2)
    assert all(r.up for r in results)
    assert 1 <= servers.state.max_in_flight[key] <= 2


def test_without_a_tight_cap_requests_do_overlap(servers: Servers, key: str) -> None:
    """Control for the test above: the server does see overlap when allowed."""
    run_probes(_batch(servers, key), per_host_concurrency=64)
    assert servers.state.max_in_flight[key] >= HOLD_RELEASE_AT


def test_global_cap_bounds_requests_in_flight(servers: Servers, key: str) -> None:
    run_probes(_batch(servers, key), concurrency=1)
    assert servers.state.max_in_flight[key] == 1


class _CountingLimiter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def acquire(self, host: str) -> None:
        self.calls[host] += 1


def test_rate_limiter_is_awaited_before_every_attempt(servers: Servers, key: str) -> None:
    limiter = _CountingLimiter()
    t = target(f"{servers.http}/hits/{key}/503", retries=2)
    [result] = run_probes([t], rate_limiter=limiter)
    assert result.attempts == 3
    assert limiter.calls == Counter({"127.0.0.1": 3})


class _SlowLimiter:
    """Grants a token only after a wait longer than the probe's whole deadline."""

    async def acquire(self, host: str) -> None:
        await asyncio.sleep(1.5)


def test_waiting_for_a_token_does_not_count_against_the_deadline(servers: Servers) -> None:
    """A throttled probe of a healthy target is up: the wait pauses the deadline and is
    reported as the ratelimit phase (it once ended as 'timeout after 5s', uncontacted)."""
    t = target(f"{servers.http}/ok", timeout=1, retries=1)
    [result] = run_probes([t], rate_limiter=_SlowLimiter())
    assert (result.up, result.error_kind, result.attempts) == (True, None, 1), result.error
    assert result.phases["ratelimit"] >= 1.5
    assert result.duration_s < result.phases["ratelimit"]  # the wait is not probe time


def test_on_result_callback_sees_every_result(servers: Servers, key: str) -> None:
    seen: list[ProbeResult] = []

    async def scenario() -> list[ProbeResult]:
        async def record(result: ProbeResult) -> None:
            seen.append(result)

        async with ProbeEngine() as engine:
            return await engine.probe_many(_batch(servers, key, n=5), on_result=record)

    results = asyncio.run(scenario())
    assert sorted(r.name for r in seen) == sorted(r.name for r in results)


def test_one_engine_serves_successive_event_loops(servers: Servers) -> None:
    """Celery tasks may call asyncio.run per batch with a long-lived engine."""
    engine = ProbeEngine(concurrency=1)
    t = target(f"{servers.http}/ok")

    async def batch() -> list[ProbeResult]:
        try:
            return await engine.probe_many([t, t, t])
        finally:
            await engine.aclose()

    assert all(r.up for r in asyncio.run(batch()))
    assert all(r.up for r in asyncio.run(batch()))


def test_a_saturated_host_does_not_hold_global_slots(servers: Servers) -> None:
    """concurrency 2, per host 1: the second slow-host probe waits for its host without
    taking the free global slot, so the other host's probe runs (and finishes) first."""
    slow = f"{servers.http}/slow?delay=1"
    other = f"http://localhost:{servers.http_port}/ok"
    order: list[str] = []

    async def scenario() -> None:
        async with ProbeEngine(concurrency=2, per_host_concurrency=1) as engine:
            await engine.probe_many(
                [target(slow, name="a1"), target(slow, name="a2"), target(other, name="b")],
                on_result=lambda r: order.append(r.name),
            )

    asyncio.run(scenario())
    assert order == ["b", "a1", "a2"]

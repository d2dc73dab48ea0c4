"""Batched metric writes (opsq.engines.probe.tally) give what per-probe writes gave."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from opsq.engines.probe import ProbeEngine
from opsq.engines.probe.tally import FLUSH_AFTER_S, observe_many
from tests.engine.conftest import Servers, target

BUCKETS = (0.005, 0.01, 0.025, 0.1, 1.0)
# Values on bucket bounds, between them, below the first and past the last.
VALUES = [0.0, 0.005, 0.0051, 0.01, 0.02, 0.025, 0.1, 0.5, 1.0, 7.0, 0.005]


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h_seconds", "h", ["g"], buckets=BUCKETS, registry=registry)


def test_observe_many_matches_one_observe_per_value() -> None:
    one_by_one, each = _histogram()
    batched, many = _histogram()
    for value in VALUES:
        each.labels("a").observe(value)
    observe_many(many.labels("a"), VALUES)
    assert _samples(batched) == _samples(one_by_one)


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    """Every sample but the creation timestamps (the two histograms differ there)."""
    return [
        (s.name, s.labels, s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def test_observe_many_falls_back_without_prometheus_internals() -> None:
    """A prometheus_client without the child attributes still gets every value."""
    seen: list[float] = []

    class Plain:
        def observe(self, value: float) -> None:
            seen.append(value)

    observe_many(Plain(), VALUES)
    assert seen == VALUES


def test_a_slow_batch_shows_its_in_flight_probes_before_it_ends(servers: Servers, key: str) -> None:
    """While probe_many waits on a slow target, the timer writes the in-flight gauge."""

    async def scenario() -> tuple[float, float]:
        async with ProbeEngine() as engine:
            slow = target(f"{servers.http}/slow?delay={FLUSH_AFTER_S * 4}&k={key}", timeout=10)
            batch = asyncio.ensure_future(engine.probe_many([slow]))
            await asyncio.sleep(FLUSH_AFTER_S * 2)
            during = REGISTRY.get_sample_value("opsq_probes_in_flight") or 0.0
            await batch
        after = REGISTRY.get_sample_value("opsq_probes_in_flight") or 0.0
        return during, after

    during, after = asyncio.run(scenario())
    assert (during, after) == (1.0, 0.0)

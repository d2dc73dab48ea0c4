"""Rollup records and raw entries survive their compact encodings."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsq.engines.history import raw, recorder
from opsq.engines.history.rollup import Acc, E, bucket_of, decode_blob, encode_blob, lower_edge
from opsq.engines.monitor.state import TargetState
from opsq.engines.monitor.verdict import LocationResult, TargetVerdict

STATES = st.sampled_from(["up", "up", "up", "degraded", "down", "unknown"])
LATENCY = st.one_of(st.none(), st.floats(min_value=1e-5, max_value=200.0))


def _acc(runs: list[tuple[str, float | None]], period: int = 7) -> Acc:
    acc = Acc(period)
    for state, latency in runs:
        acc.add(state, latency if state in ("up", "degraded") else None)
    return acc


def _counts(acc: Acc) -> tuple[int, ...]:
    return (acc.up, acc.degraded, acc.down, acc.unknown, acc.n_lat)


def _round_trip(
    groups: list[list[tuple[str, float | None]]], *, summary: bool
) -> list[tuple[Acc, Acc]]:
    """(added, decoded) for every target with runs, after checking that targets without
    runs stay absent and that counts come back exactly."""
    accs: list[Acc | None] = [_acc(runs) if runs else None for runs in groups]
    decoded = dict(decode_blob(encode_blob(accs, summary=summary), 7))
    pairs = []
    for index, acc in enumerate(accs):
        if acc is None or acc.runs == 0:
            assert index not in decoded
            continue
        assert _counts(decoded[index]) == _counts(acc)
        pairs.append((acc, decoded[index]))
    return pairs


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(STATES, LATENCY), max_size=200), max_size=8))
def test_blob_round_trip_keeps_counts_exact_and_latency_close(
    groups: list[list[tuple[str, float | None]]],
) -> None:
    """Counts and histograms come back exactly; the mean within 0.5% and the max within
    0.2% of what was added (one byte each); absent targets stay absent."""
    for acc, got in _round_trip(groups, summary=False):
        assert got.hist == {k: v for k, v in acc.hist.items() if v}
        if acc.n_lat:
            assert math.isclose(got.mean() or 0, acc.mean() or 0, rel_tol=5e-3)
            assert math.isclose(got.lat_max, acc.lat_max, rel_tol=2e-3)


@given(st.lists(st.floats(min_value=1e-4, max_value=100.0), min_size=1, max_size=300))
def test_quantiles_fall_in_the_bucket_of_the_true_quantile(values: list[float]) -> None:
    """p50 and p95 estimates lie within one bucket (a factor 2**(1/3)) of the exact ones."""
    acc = _acc([("up", v) for v in values])
    ordered = sorted(values)
    for q in (0.5, 0.95):
        exact = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
        estimate = acc.quantile(q)
        assert estimate is not None
        assert lower_edge(bucket_of(exact)) <= estimate * 1.0000001
        assert estimate <= lower_edge(bucket_of(exact) + 1) * 1.0000001


def test_merging_hours_equals_adding_every_run_to_one_day() -> None:
    """Merging 24 hourly accumulators gives the day's accumulator (counts, sum, max, hist)."""
    day, hours = Acc(1), []
    for hour in range(24):
        acc = Acc(hour)
        for i in range(30):
            state = "down" if (hour, i) in {(3, 1), (3, 2)} else "up"
            latency = None if state == "down" else 0.01 * (1 + (hour * i) % 17)
            acc.add(state, latency)
            day.add(state, latency)
        hours.append(acc)
    merged = Acc(1)
    for acc in hours:
        merged.merge(acc)
    assert merged.to_list()[1:6] == day.to_list()[1:6]
    assert merged.hist == day.hist
    assert math.isclose(merged.lat_sum, day.lat_sum)
    assert merged.uptime() == day.uptime() == (24 * 30 - 2) / (24 * 30)


@given(
    st.sampled_from(raw.LEVELS),
    st.sampled_from(raw.LEVELS),
    st.sampled_from(raw.REASONS),
    st.one_of(st.none(), st.floats(min_value=0, max_value=600)),
    st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    st.dictionaries(st.sampled_from(raw.PHASES), st.floats(min_value=0, max_value=30)),
)
def test_raw_entries_round_trip(
    state: str,
    verdict: str,
    reason: str,
    latency: float | None,
    status: int | None,
    phases: dict[str, float],
) -> None:
    """State, verdict, reason and status exactly; seconds to half-float precision."""
    sample = raw.Sample(
        at=1700000000.123,
        state=state,
        verdict=verdict,
        reason=reason,
        latency=latency,
        status=status,
        phases=phases,
    )
    fields = raw.encode(sample)
    got = raw.decode("1700000000123-0", fields)
    assert (got.at, got.state, got.verdict, got.reason, got.status) == (
        1700000000.123,
        state,
        verdict,
        reason,
        status,
    )
    assert (got.latency is None) == (latency is None)
    if latency is not None and got.latency is not None:
        assert math.isclose(got.latency, latency, rel_tol=1e-3, abs_tol=1e-6)
    assert set(got.phases) == set(phases)
    for name, seconds in phases.items():
        assert math.isclose(got.phases[name], seconds, rel_tol=1e-3, abs_tol=1e-6)
    assert len(fields["v"]) <= 2 + 2 + 2 + 1 + 2 * len(raw.PHASES)


def test_locations_are_kept_for_sets_with_several() -> None:
    """Each location's verdict, reason and latency come back from field ``l``."""
    where = {"eu": ["up", "ok", 0.1], "us": ["down", "connect", 0.2]}
    sample = raw.Sample(at=1.0, state="up", verdict="up", reason="ok", latency=0.1, locations=where)
    got = raw.decode("1000-0", raw.encode(sample))
    assert got.locations == {"eu": ["up", "ok", 0.1], "us": ["down", "connect", 0.2]}


def test_every_probe_error_kind_has_a_raw_reason_code() -> None:
    """A new probe error kind must be appended to raw.REASONS, or it would be stored as
    ``other``."""
    from opsq.engines.probe.result import ERROR_KINDS  # noqa: PLC0415

    assert set(ERROR_KINDS) <= set(raw.REASONS)
    assert raw.REASONS[:3] == ("ok", "dns", "connect")  # stored codes never move


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(STATES, LATENCY), max_size=200), max_size=8))
def test_summary_blob_keeps_counts_exact_and_quantiles_mean_max_within_a_grid_step(
    groups: list[list[tuple[str, float | None]]],
) -> None:
    """A summary record (what an hour keeps past 25 hours) has the exact counts and the
    p50, p95, mean and max of its full record within 0.6% (one step of 1/64 doubling),
    and no histogram."""
    for acc, got in _round_trip(groups, summary=True):
        assert got.hist == {}
        if not acc.n_lat:
            assert got.quantile(0.5) is None
            continue
        for q in (0.5, 0.95):
            assert math.isclose(got.quantile(q) or 0, max(acc.quantile(q) or 0, E), rel_tol=6e-3)
        assert math.isclose(got.mean() or 0, acc.mean() or 0, rel_tol=6e-3)
        assert math.isclose(got.lat_max, acc.lat_max, rel_tol=6e-3)


def test_a_summary_merged_with_other_latencies_has_no_percentile_never_a_wrong_one() -> None:
    """Summaries keep p50/p95 but not the histogram: merged alone they keep them, merged
    with any other latencies the result has counts, mean and max but p50/p95 None."""
    fast = _acc([("up", 0.01)] * 50)
    slow = _acc([("up", 1.0)] * 50)
    (summary,) = (a for _, a in decode_blob(encode_blob([slow], summary=True), 7))
    alone = Acc(0)
    alone.merge(summary)
    assert math.isclose(alone.quantile(0.95) or 0, 1.0, rel_tol=6e-3)
    for first, second in ((fast, summary), (summary, fast)):
        merged = Acc(0)
        merged.merge(first)
        merged.merge(second)
        assert (merged.up, merged.n_lat) == (100, 100)
        assert merged.quantile(0.5) is None
        assert merged.quantile(0.95) is None
        assert math.isclose(merged.mean() or 0, 0.505, rel_tol=6e-3)


VERDICTS = st.sampled_from(["up", "degraded", "down", "missing"])


@settings(max_examples=200, deadline=None)
@given(
    location=VERDICTS,
    overall=VERDICTS,
    state=STATES,
    duration=st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)),
    status=st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    phases=st.dictionaries(st.sampled_from(raw.PHASES), st.floats(0.0, 10.0), max_size=5),
    with_result=st.booleans(),
)
def test_one_location_sample_is_the_general_sample(
    location: str,
    overall: str,
    state: str,
    duration: float | None,
    status: int | None,
    phases: dict[str, float],
    with_result: bool,
) -> None:
    """The recorder's one-location shortcut gives the sample and rollup latency the
    general path (sort, median over the answered locations) gives."""
    verdict = TargetVerdict(
        overall,  # type: ignore[arg-type]
        "status" if overall == "down" else "ok",
        None,
        {"here": LocationResult(location, "ok", None, duration, status)},  # type: ignore[arg-type]
    )
    target = TargetState(name="a", url="u", state=state)
    results = {"here": {"phases": phases}} if with_result else {}
    one = recorder._sample_of_one(verdict, target, results, 12.5)
    assert one == recorder._sample_of_many(verdict, target, results, 12.5)
    assert one == recorder.sample_of(verdict, target, results, 12.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(STATES, LATENCY), max_size=40))
def test_live_entry_round_trips_and_reads_what_is_in_redis(
    runs: list[tuple[str, float | None]],
) -> None:
    """The live accumulators survive the acc hash exactly; an entry as stored in Redis
    (bytes written before this version) still reads; a broken histogram is an error."""
    entry = recorder.LiveEntry(_acc(runs, period=497222), _acc(runs[::2], period=20717), 9)
    assert recorder.LiveEntry.loads(entry.dumps()) == entry
    stored = (
        b'{"h":[497222,3,1,0,0,2,0.25,0.2,[16,1,20,1]],'
        b'"d":[20717,3,1,0,1,2,0.25,0.2,[16,1,20,1]],"ms":1790000000123}'
    )
    old = recorder.LiveEntry.loads(stored)
    assert (old.hour.period, old.hour.up, old.hour.degraded, old.hour.hist) == (
        497222,
        3,
        1,
        {16: 1, 20: 1},
    )
    assert (old.day.unknown, old.day.lat_sum, old.last_ms) == (1, 0.25, 1790000000123)
    assert recorder.LiveEntry.loads(old.dumps()) == old
    with pytest.raises(ValueError, match="shorter"):
        Acc.from_list([1, 0, 0, 0, 0, 0, 0.0, 0.0, [16, 1, 20]])

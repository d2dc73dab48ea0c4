"""The target state machine and the quorum verdict, as pure functions."""

from __future__ import annotations

import pytest

from opsq.engines.monitor.state import TargetState, Thresholds, advance
from opsq.engines.monitor.verdict import (
    LocationResult,
    TargetVerdict,
    WarningLines,
    combine,
    judge_result,
)

UP = TargetVerdict("up", "ok", None)
DOWN = TargetVerdict("down", "timeout", "timeout after 5s")
DEGRADED = TargetVerdict("degraded", "latency", "slow")
UNKNOWN = TargetVerdict("unknown", "no_quorum", None)


DEFAULT = Thresholds(3, 2)


def run(verdicts: list[TargetVerdict], thresholds: Thresholds = DEFAULT):
    """Feed verdicts as consecutive runs; return the states after each and transitions."""
    state = TargetState(name="api", url="http://x/")
    states, changes = [], []
    for number, verdict in enumerate(verdicts):
        state, change = advance(
            state,
            verdict,
            thresholds,
            set_name="web",
            target_key="api|x",
            run_id=f"r{number}",
            run_at=float(number),
            now=float(number),
        )
        states.append(state.state)
        if change is not None:
            changes.append((change.from_state, change.to_state, change.reason))
    return states, changes


def test_new_target_is_up_after_its_first_passing_verdict() -> None:
    """A never-judged target becomes up at once; the transition is recorded from unknown."""
    states, changes = run([UP])
    assert states == ["up"]
    assert changes == [("unknown", "up", "ok")]


def test_down_needs_failure_threshold_consecutive_failures() -> None:
    """Two failures (threshold 3) change nothing; the third makes the target down."""
    states, changes = run([UP, DOWN, DOWN, UP, DOWN, DOWN, DOWN])
    assert states == ["up", "up", "up", "up", "up", "up", "down"]
    assert changes[-1] == ("up", "down", "timeout")


def test_recovery_needs_success_threshold_consecutive_passes() -> None:
    """With success_threshold 2, one pass between failures does not recover the target."""
    states, _ = run([UP, DOWN, DOWN, DOWN, UP, DOWN, UP, UP])
    assert states[3:] == ["down", "down", "down", "down", "up"]


def test_degraded_is_a_third_state_between_up_and_down() -> None:
    """Degraded verdicts degrade; mixed degraded/down streaks degrade, then go down."""
    states, changes = run([UP, DEGRADED, DOWN, DOWN, DOWN, UP, UP])
    assert states == ["up", "up", "up", "degraded", "down", "down", "up"]
    assert [c[1] for c in changes] == ["up", "degraded", "down", "up"]


def test_unknown_verdicts_never_change_state_nor_break_streaks() -> None:
    """No-quorum runs are skipped: they neither count as failures nor reset the streak."""
    states, changes = run([UP, DOWN, UNKNOWN, DOWN, UNKNOWN, UNKNOWN, DOWN])
    assert states == ["up", "up", "up", "up", "up", "up", "down"]
    assert len(changes) == 2


def test_threshold_one_follows_every_verdict() -> None:
    """Thresholds of 1 make each known verdict the state."""
    states, _ = run([UP, DOWN, UP, DEGRADED], Thresholds(1, 1))
    assert states == ["up", "down", "up", "degraded"]


def test_an_older_run_finishing_late_is_ignored() -> None:
    """A run that started before the last applied one does not move the state."""
    state = TargetState(name="api", url="u")
    t = Thresholds(1, 1)
    state, _ = advance(state, UP, t, set_name="s", target_key="k", run_id="r2", run_at=20, now=21)
    state, change = advance(
        state, DOWN, t, set_name="s", target_key="k", run_id="r1", run_at=10, now=22
    )
    assert change is None
    assert state.state == "up"
    assert state.last_run == "r2"


def test_transition_ids_are_deterministic_per_run_and_target() -> None:
    """Applying the same run twice would give the same transition id (idempotency key)."""
    one = advance(
        TargetState(name="a", url="u"),
        UP,
        Thresholds(),
        set_name="s",
        target_key="a|u",
        run_id="r",
        run_at=1,
        now=1,
    )[1]
    two = advance(
        TargetState(name="a", url="u"),
        UP,
        Thresholds(),
        set_name="s",
        target_key="a|u",
        run_id="r",
        run_at=1,
        now=5,
    )[1]
    assert one is not None
    assert two is not None
    assert one.id == two.id


def loc(verdict: str, reason: str = "ok") -> LocationResult:
    return LocationResult(verdict, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ({"a": loc("down", "connect"), "b": loc("up"), "c": loc("up")}, "up"),
        ({"a": loc("down", "connect"), "b": loc("down", "timeout"), "c": loc("up")}, "down"),
        ({"a": loc("down", "connect"), "b": loc("up")}, "up"),  # c missing, 1 < quorum
        ({"a": loc("down", "connect"), "b": loc("down", "connect")}, "down"),  # c missing
        ({"a": loc("down", "connect")}, "unknown"),  # 1 answered < quorum 2
        (
            {"a": loc("degraded", "latency"), "b": loc("down", "timeout"), "c": loc("up")},
            "degraded",
        ),
    ],
)
def test_quorum_verdict_of_three_locations(results: dict, expected: str) -> None:
    """Quorum 2 of 3: down needs two failing locations; missing ones never count as failing."""
    verdict = combine(results, ["a", "b", "c"], 2)
    assert verdict.verdict == expected
    assert set(verdict.locations) == {"a", "b", "c"}
    missing = {"a", "b", "c"} - set(results)
    assert all(verdict.locations[m].verdict == "missing" for m in missing)


def test_failing_reason_is_the_category_most_locations_report() -> None:
    """The down verdict's reason is the majority category among failing locations."""
    verdict = combine(
        {"a": loc("down", "dns"), "b": loc("down", "tls"), "c": loc("down", "tls")},
        ["a", "b", "c"],
        2,
    )
    assert (verdict.verdict, verdict.reason) == ("down", "tls")


def test_results_are_judged_against_the_warning_lines() -> None:
    """Up but slow or with a certificate close to expiry is degraded; not up is down."""
    lines = WarningLines(degraded_latency=0.5, cert_warn_days=14)
    assert judge_result({"up": True, "duration_s": 0.1}, lines).verdict == "up"
    slow = judge_result({"up": True, "duration_s": 0.9}, lines)
    assert (slow.verdict, slow.reason) == ("degraded", "latency")
    cert = judge_result({"up": True, "duration_s": 0.1, "cert_days_left": 3.0}, lines)
    assert (cert.verdict, cert.reason) == ("degraded", "cert")
    down = judge_result({"up": False, "error_kind": "5xx", "error": "HTTP 503"}, lines)
    assert (down.verdict, down.reason, down.detail) == ("down", "status", "HTTP 503")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (LocationResult("up", "ok", None, 0.1, 200), ("up", "ok", None)),
        (
            LocationResult("degraded", "latency", "took 2s", 2.0, 200),
            ("degraded", "latency", "took 2s"),
        ),
        (LocationResult("down", "connect", "refused"), ("down", "connect", "refused")),
        (None, ("unknown", "no_quorum", "0 of 1 location(s) answered, quorum is 1")),
    ],
)
def test_one_location_verdict_is_that_locations_own(
    result: LocationResult | None, expected: tuple[str, str, str | None]
) -> None:
    """One location, quorum 1 (most sets, judged by a shortcut): the location's verdict,
    reason and detail; no result is missing and gives unknown."""
    verdict = combine({} if result is None else {"here": result}, ["here"], 1)
    assert (verdict.verdict, verdict.reason, verdict.detail) == expected
    assert verdict.locations == {"here": result or combine({}, ["here", "x"], 2).locations["here"]}


def test_a_state_that_stays_keeps_the_newest_reason_and_detail() -> None:
    """Down, then down for another reason: no transition, but the state says the new why."""
    state = TargetState(name="api", url="http://x/")
    other = TargetVerdict("down", "dns", "no such host")
    for number, verdict in enumerate([DOWN, DOWN, DOWN, other]):
        state, change = advance(
            state, verdict, DEFAULT, set_name="web", target_key="api|x",
            run_id=f"r{number}", run_at=float(number), now=float(number),
        )  # fmt: skip
    assert change is None
    assert (state.state, state.since, state.reason, state.detail) == (
        "down", 2.0, "dns", "no such host"
    )  # fmt: skip
    assert state.last_run == "r3"

"""Durations (opsq.core.durations): finite, not negative, with the fix in the message."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from opsq.core.config.base import Invalid
from opsq.core.config.probes import Expect, ProbeSet
from opsq.core.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m30s", 90.0), ("1h", 3600.0), ("7d", 604800.0), (3, 3.0)],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    """The forms users write (Gatus, Prometheus, Kubernetes style) and plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "NaN", "1e400"])
def test_non_finite_values_are_refused(value: object) -> None:
    """YAML's .nan/.inf (and their spellings as strings) are not durations."""
    with pytest.raises(Invalid, match="not a finite duration") as info:
        parse_duration(value)
    assert "500ms" in info.value.fix


@pytest.mark.parametrize("value", ["-5s", "- 1m", -1, "-0.5"])
def test_negative_values_say_so_with_a_fix(value: object) -> None:
    """Not "not a duration": the problem is the sign, and the fix says to drop it."""
    with pytest.raises(Invalid, match="cannot be negative") as info:
        parse_duration(value)
    assert "drop the minus sign" in info.value.fix


def test_longer_than_a_century_is_refused() -> None:
    """timedelta (beat's schedule) overflows on absurd values; 100 years is the limit."""
    with pytest.raises(Invalid, match="longer than a century"):
        parse_duration("40000d")


def test_max_latency_nan_no_longer_makes_every_probe_fail() -> None:
    """Issue 8 §4: `max_latency: nan` validated, and every latency check then failed."""
    with pytest.raises(ValidationError, match="not a finite duration"):
        Expect.model_validate({"max_latency": "nan"})
    with pytest.raises(ValidationError, match="not a finite duration"):
        Expect.model_validate({"max_latency": math.nan})


def test_interval_inf_is_refused() -> None:
    """Issue 9: `interval: .inf` validated, then beat raised OverflowError."""
    with pytest.raises(ValidationError, match="not a finite duration"):
        ProbeSet.model_validate(
            {"targets": [{"name": "a", "url": "http://h/"}], "interval": math.inf}
        )

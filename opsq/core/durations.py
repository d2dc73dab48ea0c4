"""Human durations in config files: ``500ms``, ``2s``, ``1m30s``, ``1h``, or plain seconds.

Gatus, Prometheus and Kubernetes users write durations this way; a bare number is
seconds. Parsed into float seconds at validation time so engines never see strings.

Only finite, non-negative values below :data:`MAX_DURATION_S` pass: YAML reads ``.inf``
and ``.nan`` as floats, and each failed later (``interval: .inf`` made beat raise
OverflowError, ``max_latency: nan`` made every probe fail "over max_latency nans"). A
negative value gets its own message with the fix rather than "not a duration".
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

from opsq.core.config.base import Invalid

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_EXAMPLES = "a number of seconds or a duration such as 500ms, 2s, 1m30s, 1h or 7d"
MAX_DURATION_S = 100 * 365 * 86400.0
"""A century: anything longer is a typo, and Python's timedelta (beat's schedules)
overflows not far above the range floats allow."""


def parse_duration(value: object) -> float:
    """Return seconds for a duration string or number; raise :class:`Invalid` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid(f"expected a duration, got {value!r}", fix=f"write {_EXAMPLES}")
    if isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        seconds = _parse_text(text.removeprefix("-").strip(), value)
        if negative and seconds:
            seconds = -seconds
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise Invalid(f"{value!r} is not a finite duration", fix=f"write {_EXAMPLES}")
    if seconds < 0:
        shown = str(value).strip().removeprefix("-").strip()
        raise Invalid(
            f"a duration cannot be negative, got {value!r}",
            fix=f"drop the minus sign ({shown}), or use 0 where the field allows it",
        )
    if seconds > MAX_DURATION_S:
        raise Invalid(f"{value!r} is longer than a century", fix=f"write {_EXAMPLES}")
    return seconds


def _parse_text(text: str, original: str) -> float:
    try:
        return float(text)  # "2.5", but also "inf"/"nan": refused by the caller
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise Invalid(f"{original!r} is not a duration", fix=f"write {_EXAMPLES}")
    return total


def format_duration(seconds: float) -> str:
    """Short human form used in tables (``850ms``, ``2.5s``, ``3m``)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A finite, non-negative number of seconds, written as ``2s``/``500ms``/... in config."""

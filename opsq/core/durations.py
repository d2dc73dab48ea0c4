"""Human durations in config files: ``500ms``, ``2s``, ``1m30s``, ``1h``, or plain seconds.

Gatus, Prometheus and Kubernetes users write durations this way; a bare number is
seconds. Parsed into float seconds at validation time so engines never see strings.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return seconds for a duration string or number; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 2s, 1m or 1h, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"expected a duration such as 500ms, 2s, 1m or 1h, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 500ms, 2s, 1m30s or 1h, got {text!r}")
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
"""A non-negative number of seconds, written as ``2s``/``500ms``/... in config."""

"""JSON-safe dataclasses that cross process boundaries (task kwargs, Redis values).

``to_dict`` is ``dataclasses.asdict``; ``from_dict`` ignores keys it does not know, so
a value written by a newer opsq (one more field) still loads in an older worker during
a rolling upgrade, and vice versa.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Self


class Record:
    """Mixin for dataclasses: ``to_dict`` / ``from_dict`` tolerant of unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)  # type: ignore[call-overload]  # dataclasses only
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

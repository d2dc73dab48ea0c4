"""JSON-safe dataclasses that cross process boundaries (task kwargs, Redis values).

``to_dict`` is shallow (``dataclasses.asdict`` deep-copies every nested value: 100 us
for a target state, most of the cost of applying a run; the values here are plain
JSON types, serialised at once). orjson serialises these dataclasses directly, which
is faster still. ``from_dict`` ignores keys it does not know, so
a value written by a newer opsq (one more field) still loads in an older worker during
a rolling upgrade, and vice versa.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Self

_FIELD_NAMES: dict[type, frozenset[str]] = {}
"""Per class: dataclasses.fields() walks the class on every call (40 us, a third of
loading a target state, paid once per target in every applied run)."""


class Record:
    """Mixin for dataclasses: ``to_dict`` / ``from_dict`` tolerant of unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        try:  # the usual case, a value this version wrote: no filtering needed
            return cls(**data)
        except TypeError:
            pass
        known = _FIELD_NAMES.get(cls)
        if known is None:
            known = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

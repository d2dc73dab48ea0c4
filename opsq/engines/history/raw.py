"""Raw verdicts: one stream entry per (set, target) per applied run, kept a short window.

A raw entry says what one run found: the time (the entry id, ms), the state the target
was left in, the run's verdict, the failure category, the latency, the HTTP status and
the phase timings of the location that stands for the run (the median one), and, for
sets with several locations, each location's verdict, reason and latency.

**Why binary.** 1,000 targets every 30 s for 48 h are 5.8 million entries. Field ``v``
packs the common part in 2-17 bytes; with the stream's own per-entry overhead an entry
costs about 30 bytes (``bench/history.py`` measures it), against ~55 with one stream
field per value. Seconds are IEEE half floats (``struct`` format ``e``: 0.05% relative
precision, up to 65,504 s)::

    byte0  bits0-1 state, bits2-3 verdict (0 unknown, 1 up, 2 degraded, 3 down),
           bit4 latency, bit5 status, bit6 phases
    byte1  reason code (:data:`REASONS`; codes are only ever appended)
    [latency f16] [status u16] [phase bitmap u8, one f16 per phase present]

Field ``l`` (only with several locations) is JSON: ``{location: [verdict, reason,
latency_s]}``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

LEVELS = ("unknown", "up", "degraded", "down")
REASONS = (
    "ok",
    "dns",
    "connect",
    "tls",
    "cert",
    "timeout",
    "status",
    "header",
    "body",
    "latency",
    "redirect",
    "other",
    "no_quorum",
    "missing",
)
"""Failure categories (the probe's error kinds, then the monitor's own). A stored code
is an index here, so this is append only, and not derived from the probe's
``ERROR_KINDS`` (a kind added there must be appended here; a test checks it is)."""
PHASES = ("dns", "connect", "tls", "ttfb", "transfer")
_LAT, _STATUS, _PHASES = 0x10, 0x20, 0x40
_HALF_MAX = 65504.0


@dataclass(frozen=True)
class Sample:
    """One run's verdict on one target, as history keeps it."""

    at: float
    state: str
    verdict: str
    reason: str
    latency: float | None = None
    status: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    locations: dict[str, list[Any]] = field(default_factory=dict)
    """location -> [verdict, reason, latency_s]; only for sets with several locations."""

    @property
    def answered(self) -> bool:
        return self.verdict in ("up", "degraded")

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "state": self.state,
            "verdict": self.verdict,
            "up": self.answered,
            "reason": self.reason,
            "latency_s": self.latency,
            "status_code": self.status,
            "phases": self.phases,
            "locations": {
                k: {"verdict": v[0], "reason": v[1], "latency_s": v[2]}
                for k, v in self.locations.items()
            },
        }


def _level(name: str) -> int:
    return LEVELS.index(name) if name in LEVELS else 0


_REASON_CODES = {name: code for code, name in enumerate(REASONS)}


_OTHER = _REASON_CODES["other"]
_PHASE_BITS = tuple((1 << i, name) for i, name in enumerate(PHASES))
_PHASE_FORMATS = tuple("B" + "e" * n for n in range(len(PHASES) + 1))


def _half(seconds: float) -> float:
    return min(max(seconds, 0.0), _HALF_MAX)


def encode(sample: Sample) -> dict[str, bytes]:
    """The stream fields of *sample* (its time is the entry id). One ``struct.pack``
    per entry: the worker encodes one per target per run."""
    flags = _level(sample.state) | _level(sample.verdict) << 2
    fmt, values = ["<BB"], []
    if sample.latency is not None:
        flags |= _LAT
        fmt.append("e")
        values.append(_half(sample.latency))
    if sample.status is not None:
        flags |= _STATUS
        fmt.append("H")
        values.append(min(max(sample.status, 0), 0xFFFF))
    phases = sample.phases
    if phases:
        bitmap, seconds = 0, []
        for bit, name in _PHASE_BITS:
            if name in phases:
                bitmap |= bit
                seconds.append(_half(phases[name]))
        if bitmap:
            flags |= _PHASES
            fmt.append(_PHASE_FORMATS[len(seconds)])
            values.append(bitmap)
            values.extend(seconds)
    reason = _REASON_CODES.get(sample.reason, _OTHER)
    fields = {"v": struct.pack("".join(fmt), flags, reason, *values)}
    if sample.locations:
        fields["l"] = orjson.dumps(sample.locations)
    return fields


def decode(entry_id: str | bytes, fields: dict[Any, Any]) -> Sample:
    """Inverse of :func:`encode` for one stream entry (bytes or str keys)."""
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    at = int(raw_id.split("-", 1)[0]) / 1000
    value: bytes = fields.get(b"v", fields.get("v", b""))
    flags, reason = value[0], value[1]
    pos = 2
    latency = status = None
    if flags & _LAT:
        latency = round(struct.unpack_from("<e", value, pos)[0], 6)
        pos += 2
    if flags & _STATUS:
        status = struct.unpack_from("<H", value, pos)[0]
        pos += 2
    phases: dict[str, float] = {}
    if flags & _PHASES:
        bitmap = value[pos]
        pos += 1
        for i, name in enumerate(PHASES):
            if bitmap & (1 << i):
                phases[name] = round(struct.unpack_from("<e", value, pos)[0], 6)
                pos += 2
    raw_locations = fields.get(b"l", fields.get("l"))
    return Sample(
        at=at,
        state=LEVELS[flags & 0x03],
        verdict=LEVELS[(flags >> 2) & 0x03],
        reason=REASONS[reason] if reason < len(REASONS) else "other",
        latency=latency,
        status=status,
        phases=phases,
        locations=orjson.loads(raw_locations) if raw_locations else {},
    )

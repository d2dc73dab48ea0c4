"""Hourly and daily rollups: a mergeable accumulator and its compact binary record.

An :class:`Acc` counts one target's runs over one period by **state** (the state the
target was in after each run: ``up``, ``degraded``, ``down``, ``unknown``) and keeps
the latency of the runs that answered (``up`` or ``degraded`` verdicts): count, sum,
max and a histogram over fixed logarithmic buckets. Everything merges by addition
(max by max), so 24 hours make a day and 30 days make a month exactly; uptime is
exact, percentiles are estimates within one bucket.

**Why fixed buckets.** They merge exactly and need no state beyond counts. Bucket
``i`` holds latencies in ``[E * 2**(i/2), E * 2**((i+1)/2))`` with ``E = 2**-13 s``
(0.12 ms); 64 buckets reach days. Latencies below ``E`` count in bucket 0 (and as
``E`` for mean and max). Quantiles are interpolated inside their bucket (at worst
+-19% for a bucket 41% wide; much closer for smooth distributions).

**The record** (one per target per period, positional in a blob, see
:func:`encode_blob`) is built to keep 90 days of hourly rollups for 1,000 targets
under 20 MB (``bench/history.py`` measures it)::

    header  u8   bit0 present, bit1 other counts, bit2 latency, bit3 explicit n_lat,
                 bit4 two-byte mean, bit5 n_up is the blob's usual run count
    [n_up   varint]                                     unless bit5
    [n_degraded, n_down, n_unknown  varints]            if bit1
    [n_lat  varint]                                     if bit3 (else up + degraded)
    [first bucket varint, occupancy varint (bit k: bucket first+1+k has runs),
     counts of every occupied bucket but the last (varints), mean u8 (u16 if bit4),
     max u8]                                            if bit2

``mean`` and ``max`` are log positions: the mean within the occupied bucket range,
the max within the last bucket, so the sum (``mean * n_lat``) and the max keep about
0.3% in one or two bytes. A slow outlier costs one occupancy bit and one count, not a
byte per empty bucket in between.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

STATES = ("up", "degraded", "down", "unknown")
E = 2.0**-13
"""Lower edge of bucket 1, in seconds (0.12 ms)."""
STEPS_PER_DOUBLING = 2
N_BUCKETS = 64
BLOB_VERSION = 1

_PRESENT, _OTHER, _LAT, _NLAT, _MEAN16, _RUNS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_MEAN8_SPAN = 4
"""A mean over a wider bucket range takes two bytes (one keeps it within 0.3%)."""
_MEAN16_STEPS = 65535


def bucket_of(seconds: float) -> int:
    if seconds <= E:
        return 0
    index = math.floor(STEPS_PER_DOUBLING * math.log2(seconds / E))
    return min(max(index, 0), N_BUCKETS - 1)


def lower_edge(index: int) -> float:
    return float(E * 2.0 ** (index / STEPS_PER_DOUBLING))


@dataclass
class Acc:
    """One target's runs over one period (an hour or a day); see the module docstring."""

    period: int
    """Epoch hours or epoch days, by context."""
    up: int = 0
    degraded: int = 0
    down: int = 0
    unknown: int = 0
    n_lat: int = 0
    lat_sum: float = 0.0
    lat_max: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return self.up + self.degraded + self.down + self.unknown

    def add(self, state: str, latency: float | None) -> None:
        """Count one run that left the target in *state*; *latency* if it answered."""
        name = state if state in STATES else "unknown"
        setattr(self, name, getattr(self, name) + 1)
        if latency is not None:
            value = max(latency, E)
            self.n_lat += 1
            self.lat_sum += value
            self.lat_max = max(self.lat_max, value)
            index = bucket_of(value)
            self.hist[index] = self.hist.get(index, 0) + 1

    def merge(self, other: Acc) -> None:
        self.up += other.up
        self.degraded += other.degraded
        self.down += other.down
        self.unknown += other.unknown
        self.n_lat += other.n_lat
        self.lat_sum += other.lat_sum
        self.lat_max = max(self.lat_max, other.lat_max)
        for index, count in other.hist.items():
            self.hist[index] = self.hist.get(index, 0) + count

    # --- what readers want ----------------------------------------------------------
    def uptime(self) -> float | None:
        """Share of judged runs the target was available (up or degraded); None if none."""
        judged = self.up + self.degraded + self.down
        return (self.up + self.degraded) / judged if judged else None

    def mean(self) -> float | None:
        return self.lat_sum / self.n_lat if self.n_lat else None

    def quantile(self, q: float) -> float | None:
        """Estimate from the histogram, interpolated geometrically inside the bucket."""
        if not self.n_lat:
            return None
        rank = q * self.n_lat
        seen = 0
        for index in sorted(self.hist):
            count = self.hist[index]
            if seen + count >= rank:
                lo, hi = lower_edge(index), lower_edge(index + 1)
                inside = (rank - seen) / count
                return float(min(lo * (hi / lo) ** inside, self.lat_max))
            seen += count
        return self.lat_max

    # --- the live accumulator (JSON in the acc hash) ----------------------------------
    def to_list(self) -> list[Any]:
        flat = [v for item in sorted(self.hist.items()) for v in item]
        return [
            self.period,
            self.up,
            self.degraded,
            self.down,
            self.unknown,
            self.n_lat,
            self.lat_sum,
            self.lat_max,
            flat,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> Acc:
        flat = data[8]
        hist = {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return cls(
            int(data[0]),
            int(data[1]),
            int(data[2]),
            int(data[3]),
            int(data[4]),
            int(data[5]),
            float(data[6]),
            float(data[7]),
            hist,
        )


# --- varints --------------------------------------------------------------------------
def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _position(value: float, lo: float, hi: float, steps: int = 255) -> int:
    """*value* in [lo, hi] as a log position 0..steps."""
    if hi <= lo:
        return 0
    where = math.log(max(min(value, hi), lo) / lo) / math.log(hi / lo)
    return round(where * steps)


def _from_position(position: int, lo: float, hi: float, steps: int = 255) -> float:
    return float(lo * (hi / lo) ** (position / steps))


# --- records ---------------------------------------------------------------------------
def encode_record(out: bytearray, acc: Acc | None, typical_runs: int = 0) -> None:
    """Append *acc*'s record (one byte 0 when there is none) to *out*."""
    if acc is None or acc.runs == 0:
        out.append(0)
        return
    header = _PRESENT
    if acc.degraded or acc.down or acc.unknown:
        header |= _OTHER
    elif acc.up == typical_runs:
        header |= _RUNS  # the blob's usual run count, all up: no count at all
    buckets = sorted(i for i, c in acc.hist.items() if c)
    if acc.n_lat:
        header |= _LAT
        if acc.n_lat != acc.up + acc.degraded:
            header |= _NLAT
        if buckets[-1] - buckets[0] >= _MEAN8_SPAN:
            header |= _MEAN16
    out.append(header)
    if not header & _RUNS:
        _varint(out, acc.up)
    if header & _OTHER:
        for count in (acc.degraded, acc.down, acc.unknown):
            _varint(out, count)
    if acc.n_lat:
        _encode_latency(out, acc, buckets, header)


def _encode_latency(out: bytearray, acc: Acc, buckets: list[int], header: int) -> None:
    if header & _NLAT:
        _varint(out, acc.n_lat)
    first, last = buckets[0], buckets[-1]
    _varint(out, first)
    _varint(out, sum(1 << (index - first - 1) for index in buckets[1:]))
    for index in buckets[:-1]:  # the last bucket's count is n_lat minus the others
        _varint(out, acc.hist[index])
    steps = _MEAN16_STEPS if header & _MEAN16 else 255
    mean = _position(acc.lat_sum / acc.n_lat, lower_edge(first), lower_edge(last + 1), steps)
    out += mean.to_bytes(2, "little") if header & _MEAN16 else bytes([mean])
    out.append(_position(acc.lat_max, lower_edge(last), lower_edge(last + 1)))


def decode_record(
    data: bytes, pos: int, period: int, typical_runs: int = 0
) -> tuple[Acc | None, int]:
    """The record at *pos* and the position after it."""
    header = data[pos]
    pos += 1
    if not header & _PRESENT:
        return None, pos
    acc = Acc(period)
    if header & _RUNS:
        acc.up = typical_runs
    else:
        acc.up, pos = _read_varint(data, pos)
    if header & _OTHER:
        acc.degraded, pos = _read_varint(data, pos)
        acc.down, pos = _read_varint(data, pos)
        acc.unknown, pos = _read_varint(data, pos)
    if header & _LAT:
        pos = _decode_latency(data, pos, header, acc)
    return acc, pos


def _decode_latency(data: bytes, pos: int, header: int, acc: Acc) -> int:
    acc.n_lat = acc.up + acc.degraded
    if header & _NLAT:
        acc.n_lat, pos = _read_varint(data, pos)
    first, pos = _read_varint(data, pos)
    occupied, pos = _read_varint(data, pos)
    buckets = [first] + [
        first + 1 + bit for bit in range(occupied.bit_length()) if occupied >> bit & 1
    ]
    rest = acc.n_lat
    for index in buckets[:-1]:
        count, pos = _read_varint(data, pos)
        acc.hist[index] = count
        rest -= count
    last = buckets[-1]
    acc.hist[last] = rest
    if header & _MEAN16:
        position, steps = int.from_bytes(data[pos : pos + 2], "little"), _MEAN16_STEPS
        pos += 2
    else:
        position, steps = data[pos], 255
        pos += 1
    mean = _from_position(position, lower_edge(first), lower_edge(last + 1), steps)
    acc.lat_sum = mean * acc.n_lat
    acc.lat_max = _from_position(data[pos], lower_edge(last), lower_edge(last + 1))
    return pos + 1


# --- blobs: one period of a whole set, positional by roster id ----------------------------
def encode_blob(accs: Iterable[Acc | None]) -> bytes:
    """Records in roster order (index = the target's roster id); absent targets: 1 byte.
    The header names the most common run count, which an all-up record then omits."""
    items = list(accs)
    runs = Counter(a.up for a in items if a is not None and a.runs and a.up == a.runs)
    typical = runs.most_common(1)[0][0] if runs else 0
    out = bytearray([BLOB_VERSION])
    _varint(out, len(items))
    _varint(out, typical)
    for acc in items:
        encode_record(out, acc, typical)
    return bytes(out)


def decode_blob(data: bytes, period: int) -> Iterator[tuple[int, Acc]]:
    """(roster id, acc) for every present record."""
    if not data or data[0] != BLOB_VERSION:
        return
    count, pos = _read_varint(data, 1)
    typical, pos = _read_varint(data, pos)
    for roster_id in range(count):
        acc, pos = decode_record(data, pos, period, typical)
        if acc is not None:
            yield roster_id, acc

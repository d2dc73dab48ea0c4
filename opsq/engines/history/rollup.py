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

**Two forms of a blob.** A *full* blob (:data:`BLOB_FULL`) keeps each target's
histogram: daily blobs, and the hourly ones while they can be merged into a 24 h window
(:mod:`.recorder` keeps them as ``hour-hist`` blobs for 25 hours). Every hourly blob
kept for the retention is a *summary* (:data:`BLOB_SUMMARY`): the counts, and the
latency's p50, p95, max and mean on a fixed log grid (1/64 of a doubling, +-0.55%),
with no histogram. A histogram costs about a byte per occupied bucket, so 90 days of
hourly histograms for 1,000 targets took 27 MB (``bench/history.py``); summaries
take about 6 bytes per target-hour. What is lost: an old hour's percentiles cannot be
merged with another's (a merge of a summary yields no percentile, never a wrong one);
7, 30 and 90 day figures merge the daily blobs, which keep their histograms.

**The full record** (one per target per period, positional in a blob, see
:func:`encode_blob`)::

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

**The summary record**: the same header (bit4 unused) and counts, then, with latency,
``[n_lat varint if bit3] p50 varint, p95 - p50 varint, max - p95 varint,
zigzag(mean - p50) varint``, each a step of the grid ``round(64 * log2(x / E))``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

STATES = ("up", "degraded", "down", "unknown")
E = 2.0**-13
"""Lower edge of bucket 1, in seconds (0.12 ms)."""
STEPS_PER_DOUBLING = 2
N_BUCKETS = 64
BLOB_FULL = 1
"""First byte of a blob of full records (histograms)."""
BLOB_SUMMARY = 2
"""First byte of a blob of summary records (p50, p95, max, mean; no histogram)."""
QUANTILES = (0.5, 0.95)
"""The quantiles a summary record keeps."""
GRID = 64
"""Steps per doubling of the summary's log grid: a value is kept within +-0.55%."""

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


def _grid(seconds: float) -> int:
    return max(0, round(GRID * math.log2(max(seconds, E) / E)))


def _from_grid(step: int) -> float:
    return float(E * 2.0 ** (step / GRID))


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
    summary: tuple[float, float] | None = None
    """(p50, p95) of a summary record, whose histogram is gone."""
    lost: bool = False
    """Percentiles unknown: a summary was merged with other latencies."""

    @property
    def runs(self) -> int:
        return self.up + self.degraded + self.down + self.unknown

    def add(self, state: str, latency: float | None) -> None:
        """Count one run that left the target in *state*; *latency* if it answered."""
        # branches, not setattr(getattr()): the recorder adds two per target per run
        if state == "up":
            self.up += 1
        elif state == "degraded":
            self.degraded += 1
        elif state == "down":
            self.down += 1
        else:
            self.unknown += 1
        if latency is not None:
            value = max(latency, E)
            self.n_lat += 1
            self.lat_sum += value
            self.lat_max = max(self.lat_max, value)
            index = bucket_of(value)
            self.hist[index] = self.hist.get(index, 0) + 1

    def merge(self, other: Acc) -> None:
        if other.n_lat and (other.summary is not None or other.lost):
            if self.n_lat:
                self.summary, self.lost = None, True
            else:
                self.summary, self.lost = other.summary, other.lost
        elif other.n_lat and (self.summary is not None):
            self.summary, self.lost = None, True
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
        if not self.n_lat or self.lost:
            return None
        if self.summary is not None:
            return self.summary[QUANTILES.index(q)] if q in QUANTILES else None
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
        flat = list(chain.from_iterable(sorted(self.hist.items())))
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
        # JSON written by to_list: ints and floats already (the recorder parses one per
        # target per run, so no conversions here)
        period, up, degraded, down, unknown, n_lat, lat_sum, lat_max, flat = data
        pairs = iter(flat)  # one iterator twice: no slice copies (a target and run each)
        hist = dict(zip(pairs, pairs, strict=True))  # an odd count raises, as before
        return cls(period, up, degraded, down, unknown, n_lat, lat_sum, lat_max, hist)


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


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _position(value: float, lo: float, hi: float, steps: int = 255) -> int:
    """*value* in [lo, hi] as a log position 0..steps."""
    if hi <= lo:
        return 0
    where = math.log(max(min(value, hi), lo) / lo) / math.log(hi / lo)
    return round(where * steps)


def _from_position(position: int, lo: float, hi: float, steps: int = 255) -> float:
    return float(lo * (hi / lo) ** (position / steps))


# --- records ---------------------------------------------------------------------------
def encode_record(
    out: bytearray, acc: Acc | None, typical_runs: int = 0, *, summary: bool = False
) -> None:
    """Append *acc*'s record (one byte 0 when there is none) to *out*: full, or a
    summary (see the module docstring)."""
    if acc is None or acc.runs == 0:
        out.append(0)
        return
    buckets = sorted(i for i, c in acc.hist.items() if c)
    header = _header(acc, typical_runs, buckets, summary=summary)
    out.append(header)
    if not header & _RUNS:
        _varint(out, acc.up)
    if header & _OTHER:
        for count in (acc.degraded, acc.down, acc.unknown):
            _varint(out, count)
    if header & _NLAT:
        _varint(out, acc.n_lat)
    if acc.n_lat and summary:
        _encode_summary(out, acc)
    elif acc.n_lat:
        _encode_latency(out, acc, buckets, header)


def _header(acc: Acc, typical_runs: int, buckets: list[int], *, summary: bool) -> int:
    header = _PRESENT
    if acc.degraded or acc.down or acc.unknown:
        header |= _OTHER
    elif acc.up == typical_runs:
        header |= _RUNS  # the blob's usual run count, all up: no count at all
    if acc.n_lat:
        header |= _LAT
        if acc.n_lat != acc.up + acc.degraded:
            header |= _NLAT
        if not summary and buckets[-1] - buckets[0] >= _MEAN8_SPAN:
            header |= _MEAN16
    return header


def _encode_summary(out: bytearray, acc: Acc) -> None:
    p50 = _grid(acc.quantile(0.5) or E)
    p95 = max(p50, _grid(acc.quantile(0.95) or E))
    top = max(p95, _grid(acc.lat_max))
    _varint(out, p50)
    _varint(out, p95 - p50)
    _varint(out, top - p95)
    _varint(out, _zigzag(_grid(acc.lat_sum / acc.n_lat) - p50))


def _decode_summary(data: bytes, pos: int, header: int, acc: Acc) -> int:
    del header  # bit4 (two-byte mean) is for full records only
    p50, pos = _read_varint(data, pos)
    p95, pos = _read_varint(data, pos)
    top, pos = _read_varint(data, pos)
    mean, pos = _read_varint(data, pos)
    p95 += p50
    acc.summary = (_from_grid(p50), _from_grid(p95))
    acc.lat_max = _from_grid(p95 + top)
    acc.lat_sum = _from_grid(p50 + _unzigzag(mean)) * acc.n_lat
    return pos


def _encode_latency(out: bytearray, acc: Acc, buckets: list[int], header: int) -> None:
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
    data: bytes, pos: int, period: int, typical_runs: int = 0, *, summary: bool = False
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
        acc.n_lat = acc.up + acc.degraded
        if header & _NLAT:
            acc.n_lat, pos = _read_varint(data, pos)
        decode = _decode_summary if summary else _decode_latency
        pos = decode(data, pos, header, acc)
    return acc, pos


def _decode_latency(data: bytes, pos: int, header: int, acc: Acc) -> int:
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
def encode_blob(accs: Iterable[Acc | None], *, summary: bool = False) -> bytes:
    """Records in roster order (index = the target's roster id); absent targets: 1 byte.
    The header names the most common run count, which an all-up record then omits.
    *summary*: summary records (no histograms)."""
    items = list(accs)
    runs = Counter(a.up for a in items if a is not None and a.runs and a.up == a.runs)
    typical = runs.most_common(1)[0][0] if runs else 0
    out = bytearray([BLOB_SUMMARY if summary else BLOB_FULL])
    _varint(out, len(items))
    _varint(out, typical)
    for acc in items:
        encode_record(out, acc, typical, summary=summary)
    return bytes(out)


def decode_blob(data: bytes, period: int) -> Iterator[tuple[int, Acc]]:
    """(roster id, acc) for every present record, of either form."""
    if not data or data[0] not in (BLOB_FULL, BLOB_SUMMARY):
        return
    summary = data[0] == BLOB_SUMMARY
    count, pos = _read_varint(data, 1)
    typical, pos = _read_varint(data, pos)
    for roster_id in range(count):
        acc, pos = decode_record(data, pos, period, typical, summary=summary)
        if acc is not None:
            yield roster_id, acc

"""What every sink shares: the unit of work, the result of a write, record rendering.

A sink receives a batch of :class:`Delivery` (one decoded stream entry each, with
the entry's original fields kept for the dead-letter stream) and returns only once
the data is durable at the destination: after fsync for a file, after a 2xx for HTTP.
The shipper acknowledges in Redis only what the sink confirmed, which is the whole of
the at-least-once guarantee on this side of the stream.

Failures are types (see :mod:`opsq.core.errors`): :class:`TemporaryError` for the
whole batch (sink down, 5xx, 429) means "back off and retry everything";
:class:`PermanentError` for the whole batch (a 4xx) makes the shipper bisect the batch
to find the entries the sink refuses; per-entry verdicts (Elasticsearch's bulk items)
come back in :class:`Outcome`.

Records are bytes that may hold invalid UTF-8 or NULs. They are decoded with
``backslashreplace`` so invalid bytes stay visible (``\\xff``) instead of being
dropped or crashing, and JSON escaping keeps NUL and control characters as ``\\u0000``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opsq.core.logformat import Entry

# The C-accelerated string escaper behind json.dumps: the file sink renders well over
# 100k records/s, and calling it directly skips json.dumps' per-call setup.
_quote = json.encoder.encode_basestring


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a sink."""

    id: str
    """The stream entry id, ``<ms>-<seq>``."""
    entry: Entry
    fields: dict[bytes, bytes]
    """The raw entry fields, copied into the dead-letter stream if the sink refuses it."""

    @property
    def ms(self) -> int:
        """When Redis accepted the entry (milliseconds since the epoch)."""
        return int(self.id.split("-", 1)[0])

    @property
    def seq(self) -> int:
        return int(self.id.split("-", 1)[1])


@dataclass
class Outcome:
    """Per-entry verdicts of one write; every entry not named here was written."""

    rejected: dict[str, str] = field(default_factory=dict)
    """Stream id -> reason: the sink refuses it for good; it goes to the dead-letter stream."""
    retry: list[Delivery] = field(default_factory=list)
    """Entries the sink could not take now (429/5xx per item); retried after backoff."""

    def merge(self, other: Outcome) -> Outcome:
        return Outcome({**self.rejected, **other.rejected}, [*self.retry, *other.retry])


class Sink(Protocol):
    name: str

    def write(self, batch: Sequence[Delivery]) -> Outcome:
        """Write *batch* durably; raise TemporaryError / PermanentError for the whole batch."""
        ...

    def close(self) -> None: ...


def text(raw: bytes) -> str:
    """Record bytes as text: invalid UTF-8 visible as ``\\xNN`` escapes, never an error."""
    return raw.decode("utf-8", "backslashreplace")


def path_text(path: str) -> str:
    """The entry's path (decoded with surrogateescape) with invalid bytes made visible."""
    return text(path.encode("utf-8", "surrogateescape"))


def iso_ms(ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def json_records(delivery: Delivery, ts_key: str = "ts") -> Iterator[tuple[str, str]]:
    """``(record id, JSON object text)`` for each record of the entry.

    Fields: id, line, offset, path, host, fid and the entry's time. What is the same
    for every record of an entry is escaped once per entry, not once per record.
    """
    entry = delivery.entry
    id_head = f"{entry.fid}:"
    quoted_id_head = _quote(id_head)[:-1]  # without the closing quote
    tail = (
        f',"path":{_quote(path_text(entry.path))},"host":{_quote(entry.host)}'
        f',"fid":{_quote(entry.fid)},"{ts_key}":"{iso_ms(delivery.ms)}"}}'
    )
    for offset, raw in entry.records:
        doc = f'{{"id":{quoted_id_head}{offset}","line":{_quote(text(raw))},"offset":{offset}{tail}'
        yield f"{id_head}{offset}", doc


def jsonl_bytes(batch: Sequence[Delivery]) -> bytes:
    """The batch as JSON lines (one record per line), ready to append."""
    parts = [doc for d in batch for _, doc in json_records(d)]
    parts.append("")
    return "\n".join(parts).encode()

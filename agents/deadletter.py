"""The dead-letter stream: how entries get there, how long they stay, how they come back.

An entry goes to ``<stream>:dead`` (:func:`opsq.core.keys.dead_letter`) with its
original fields plus ``reason``, ``original_id`` and ``group``, in one MULTI with its
XACK, so it is never both pending and dead, nor neither. Dead letters are trimmed by
age (``dead_retention``, XTRIM MINID at now minus the retention: stream ids are
milliseconds), and what the trim removes is counted in
``opsq_stream_trimmed_total{stream="<stream>:dead"}``.

``opsq ship replay --from-dead`` moves dead letters back: the original fields are
added to the stream again (a new id, the same record ids, so sinks dedupe as usual)
and the dead letter is deleted, in one MULTI per entry, oldest first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from opsq.core import keys

OWN_FIELDS = (b"reason", b"original_id", b"group")
"""Fields the dead-letter stream adds to an entry (dropped again by a replay)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    reason: str
    original_id: str
    group: str
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Replayed:
    dead_id: str
    new_id: str
    reason: str


def record(fields: dict[bytes, bytes], entry_id: str, group: str, why: str) -> dict[Any, Any]:
    """The dead-letter entry for *fields* (the original entry's, untouched)."""
    return {
        **fields,
        b"reason": why.encode(),
        b"original_id": entry_id.encode(),
        b"group": group.encode(),
    }


class DeadLetters:
    def __init__(self, client: redis.Redis[bytes], stream: str) -> None:
        self.client = client
        self.stream = stream
        self.key = keys.dead_letter(stream)

    def trim(self, retention: float, now: float | None = None) -> int:
        """Delete dead letters older than *retention* seconds; return how many."""
        cutoff_ms = int(((now if now is not None else time.time()) - retention) * 1000)
        if cutoff_ms <= 0:
            return 0
        return int(self.client.xtrim(self.key, minid=f"{cutoff_ms}-0", approximate=False))

    def length(self) -> int:
        return int(self.client.xlen(self.key))

    def oldest(self, count: int) -> list[DeadLetter]:
        return [_letter(i, f) for i, f in self.client.xrange(self.key, count=count)]

    def replay(self, count: int) -> list[Replayed]:
        """Move up to *count* dead letters (oldest first) back into the stream."""
        return [self._move_back(letter) for letter in self.oldest(count)]

    def _move_back(self, letter: DeadLetter) -> Replayed:
        fields = {k: v for k, v in letter.fields.items() if k not in OWN_FIELDS}
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.stream, fields)
        pipe.xdel(self.key, letter.id)
        new_id, _deleted = pipe.execute()
        return Replayed(letter.id, _text(new_id), letter.reason)


def _letter(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=_text(entry_id),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
        original_id=fields.get(b"original_id", b"").decode(errors="replace"),
        group=fields.get(b"group", b"").decode(errors="replace"),
        fields=fields,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def summary(letters: Sequence[DeadLetter]) -> dict[str, int]:
    """How many of *letters* per reason kind (the reason's text up to the first colon)."""
    out: dict[str, int] = {}
    for letter in letters:
        kind = letter.reason.split(":", 1)[0]
        out[kind] = out.get(kind, 0) + 1
    return out

"""Sink writes that never finished, counted per entry in Redis.

An entry that kills its shipper (a sink call that crashes the process, an OOM kill
while rendering it) must not circulate forever: after ``max_deliveries`` such deaths
it goes to the dead-letter stream. The XPENDING delivery counter cannot tell that
story: every ``XREADGROUP ... 0`` of a restarting shipper raises it, so seven routine
restarts during a sink outage once dead-lettered good lines that never reached the
sink.

So the shipper counts itself, in a hash next to the stream (one per group,
:func:`opsq.core.keys.log_attempts`): ``begin`` adds one to each entry just before a
sink write, a write that comes back (written, refused, or failed because the sink is
down) takes it back with ``finish``, and the XACK deletes the field. Only a write that
never came back leaves its mark: the shipper crashed, was killed, or gave up on a
hung sink at shutdown without reaching Redis. Being in Redis, the count survives
restarts and follows an entry that another shipper claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from opsq.core import keys


class Attempts:
    def __init__(self, client: redis.Redis[bytes], stream: str, group: str) -> None:
        self.client = client
        self.key = keys.log_attempts(stream, group)

    def begin(self, ids: Sequence[str]) -> dict[str, int]:
        """Count a write starting for *ids*; return each one's unfinished writes so far
        (including this one). The caller translates Redis errors."""
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hincrby(self.key, entry_id, 1)
        return {i: int(n) for i, n in zip(ids, pipe.execute(), strict=True)}

    def finish(self, ids: Sequence[str]) -> None:
        """The write came back without finishing the entries (a sink failure): undo."""
        if ids:
            pipe = self.client.pipeline(transaction=False)
            for entry_id in ids:
                pipe.hincrby(self.key, entry_id, -1)
            pipe.execute()

    def forget(self, pipe: Any, ids: Sequence[str]) -> None:
        """Queue the deletion of *ids*' counts on *pipe* (with their XACK)."""
        if ids:
            pipe.hdel(self.key, *ids)

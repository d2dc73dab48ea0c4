"""The audit trail: every real deletion, appended to one Redis stream.

Why a stream (:func:`opsq.core.keys.cleanup_audit`): it is ordered by time, entries
are immutable, several workers append without coordination, and trimming by age is
one argument of the append itself (``XADD ... MINID ~ <now - retention>``), so there
is no janitor for the janitor. Entry IDs are milliseconds, which makes
``opsq cleanup audit --since 24h`` one ``XRANGE`` from ``now - 24h``.

An entry says what was deleted (rule, resource, kind, namespace, name, uid, reason),
who judged it due and when (the planning process: ``opsq watch@host`` or ``opsq
cleanup@host``) and who deleted it and when (the worker or the local process). Dry runs
are not audited: they change nothing. The executor records after the DELETE succeeded;
a failure to record is logged as an error but never turns a done deletion into a
failure (the object is gone either way).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from opsq.core import keys
from opsq.core.config.cleanup import Rule
from opsq.core.redis_errors import redis_errors
from opsq.engines.cleanup.executor import Target

FIELDS = (
    "deleted_at", "rule", "resource", "kind", "namespace", "name", "uid", "reason",
    "judged_by", "judged_at", "deleted_by",
)  # fmt: skip


def identity(program: str) -> str:
    """``opsq watch@host:pid``: who judged or deleted, for the audit trail."""
    return f"{program}@{socket.gethostname()}:{os.getpid()}"


class RedisAudit:
    def __init__(
        self,
        client: redis.Redis[Any],
        *,
        retention: float,
        actor: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.retention = retention
        self.actor = actor
        self.clock = clock

    def record(self, target: Target, rule: Rule, *, deleted_at: float) -> None:
        entry = {
            "deleted_at": f"{deleted_at:.3f}", "rule": rule.name, "resource": target.resource,
            "kind": target.kind, "namespace": target.namespace, "name": target.name,
            "uid": target.uid, "reason": target.reason, "judged_by": target.judged_by,
            "judged_at": "" if target.judged_at is None else f"{target.judged_at:.3f}",
            "deleted_by": self.actor,
        }  # fmt: skip
        oldest_ms = int((self.clock() - self.retention) * 1000)
        with redis_errors("append to the audit trail"):
            self.client.xadd(keys.cleanup_audit(), entry, minid=oldest_ms, approximate=True)

    def ping(self) -> None:
        """Raise RedisUnavailable unless the stream can be written (checked at start)."""
        with redis_errors("reach Redis for the audit trail"):
            self.client.ping()


def read(client: redis.Redis[Any], *, since: float, now: float) -> list[dict[str, str]]:
    """Entries newer than ``now - since``, oldest first, with their stream id."""
    start = max(0, int((now - since) * 1000))  # --since 100y: everything, not a bad ID
    with redis_errors("read the audit trail"):
        raw = client.xrange(keys.cleanup_audit(), min=f"{start}-0", max="+")
    return [{"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}}
            for entry_id, fields in raw]  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

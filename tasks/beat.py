"""RedBeat, but a beat changes the shared schedule only once it holds the lock.

RedBeat keeps every beat entry in Redis, and its ``setup_schedule`` (run when the
scheduler is built, *before* the lock is taken) writes this process's static entries
and deletes every entry a previous beat installed that this one's config lacks. So a
second beat that was only *started* (a standby replica, one started by hand with
another ``--config``, even one that exited at once because its metrics port was taken)
rewrote the schedule under the beat that holds the lock: `opsq up --demo` plus a
`celery -A tasks beat` without the demo config deleted ``probe-set:demo`` and
``alerts-tick``, and the running beat, which reads entries from Redis, silently stopped
running the set and the alerts for good (hostile check 89 F6).

:class:`LockedRedBeatScheduler` defers that sync to its first tick with the lock
(RedBeat takes it in ``beat_init``, blocking while another beat holds it), so the
schedule is always the config of the beat that runs it, and a standby touches nothing.

Redis going away (a restart, a failover) made RedBeat's tick raise and ``celery beat``
exit, so probe sets and the alerts tick stopped for good unless something restarted
beat (hostile check 12 F9). A tick that cannot reach Redis now logs, waits
``beat.max_loop_interval`` and tries again; once Redis answers, the lock is extended,
or taken again when it lapsed (blocking while another beat holds it, as at start), and
the schedule is written again, since a Redis restarted without its data lost it.
"""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler

from opsq.core.errors import RedisUnavailable
from opsq.core.redis_errors import redis_errors

log = logging.getLogger("opsq.beat")


class LockedRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat is untyped
    """``-S tasks.beat.LockedRedBeatScheduler`` (opsq's default ``beat_scheduler``)."""

    _synced = False

    def setup_schedule(self) -> None:
        """Deferred to the first tick that may write (see the module docstring): Celery's
        constructor calls this before RedBeat has even read its lock settings."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            with redis_errors("beat tick"):
                if self.lock is not None and not self.lock.owned():
                    log.warning("beat: the lock lapsed while Redis was away; taking it again")
                    self.lock.acquire(blocking=True)
                    self._synced = False
                # With locking switched off (redbeat_lock_key None) every beat writes.
                if not self._synced and (self.lock_key is None or self.lock is not None):
                    super().setup_schedule()
                    self._synced = True
                return float(super().tick(*args, **kwargs))
        except RedisUnavailable as exc:
            self._synced = False
            log.warning("beat: Redis unavailable (%s); retrying in %gs", exc, self.max_interval)
            return float(self.max_interval)

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
"""

from __future__ import annotations

from typing import Any

from redbeat import RedBeatScheduler


class LockedRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat is untyped
    """``-S tasks.beat.LockedRedBeatScheduler`` (opsq's default ``beat_scheduler``)."""

    _synced = False

    def setup_schedule(self) -> None:
        """Deferred to the first tick that may write (see the module docstring): Celery's
        constructor calls this before RedBeat has even read its lock settings."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        # With locking switched off (redbeat_lock_key None) every beat writes, as RedBeat.
        if not self._synced and (self.lock_key is None or self.lock is not None):
            super().setup_schedule()
            self._synced = True
        return float(super().tick(*args, **kwargs))
